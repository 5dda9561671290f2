"""Landing new videos: inbox -> ``landing/YYYY-MM-DD/``, and the asset event that triggers training.

Whatever brings videos (a camera uploader, an operator with ``cp``) drops them into the inbox
(``SWAN_INBOX_DIR``, default ``$SWAN_HOME/inbox``). The ingest DAG moves every finished, readable
video into the landing zone partition of its arrival date and emits an event on
:data:`LANDING_ASSET`; the pipeline DAG is scheduled on that asset *or* its daily timetable
(``AssetOrTimeSchedule``), so it runs when videos land and stays backfillable.

A file still being written (modified within the last ``settle_seconds``) waits for the next
ingest run. A file that cannot land (an unsupported type, not a readable video, unreadable, a
duplicate) goes to ``inbox/rejected/`` with a ``.reason.txt`` beside it, so it neither blocks the
inbox nor reaches the pipeline, and the other files of the pass land.

Example:
    >>> landed = land_inbox(Path("inbox"), Path("landing"), today=dt.date(2026, 11, 26))  # doctest: +SKIP
    >>> landed.videos  # doctest: +SKIP
    ['/srv/swan/landing/2026-11-26/cam1-3f2a9c0d1b2e.mp4']
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from airflow.sdk import Asset

log = logging.getLogger(__name__)

#: The landing zone as an Airflow asset: one event per ingest run that landed videos, with
#: ``extra = {"landing_date": "YYYY-MM-DD", "videos": [...]}``.
LANDING_ASSET = Asset(name="swan_landing_videos", group="swan-anomaly")


@dataclass
class Landed:
    """What one ingest pass did."""

    landing_date: str
    videos: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    def event_extra(self) -> dict:
        """The asset event's ``extra``: the landing date and the videos that arrived."""
        return {"landing_date": self.landing_date, "videos": self.videos}


def _name_digest(path: Path) -> str:
    from swan_anomaly.digests import sha256_file

    return sha256_file(path)[:12]


def _marker_matches(marker: Path, stat: os.stat_result) -> bool:
    """Whether ``marker`` records this very file (size and modification time) as landed already."""
    try:
        size, mtime_ns, _ = marker.read_text().split(" ", 2)
    except (OSError, ValueError):
        return False
    return (int(size), int(mtime_ns)) == (stat.st_size, stat.st_mtime_ns)


def _put_copy(path: Path, target: Path) -> None:
    """Make ``target`` a copy of ``path`` with its own bytes, in one atomic step (a hidden ``.part`` renamed into place)."""
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)


def _put(path: Path, target: Path) -> str:
    """Make ``target`` a complete copy of ``path`` in one atomic step; say how.

    On the same filesystem, for a file with no other name, a hard link: no bytes copied,
    however large the video (the inbox name is removed next, so the landed file is the only
    name of those bytes). Across filesystems (``EXDEV``), where hard links are not supported,
    or when the file has other names (``cp -l``, a backup's links) that could change it later, a
    copy to a hidden ``.part`` file renamed into place. Either way the pipeline never sees a
    half-written video.
    """
    if path.stat().st_nlink == 1:
        try:
            os.link(path, target)
            return "hard link"
        except FileExistsError:
            raise
        except OSError as exc:
            log.debug("cannot hard-link %s to %s (%s): copying", path, target, exc)
    _put_copy(path, target)
    return "copy"


def land_inbox(inbox: Path, landing_dir: Path, *, today: dt.date | None = None, settle_seconds: float = 30.0) -> Landed:
    """Move every settled, readable video of ``inbox`` into ``landing_dir/<today>/``.

    The landed name is ``<stem>-<first 12 hex of the content's sha256><suffix>``: two uploads
    with the same name do not overwrite each other, and the same bytes uploaded twice land once
    (under another name the same day, the second is set aside as a duplicate).

    Everything else is set aside in ``inbox/rejected/`` with a ``<name>.reason.txt`` and goes on
    the ``rejected`` list, so nothing sits in the inbox without feedback and one bad file never
    stops the others: a file of an unsupported type (``.gif``), one that is not a readable video
    (a photo renamed ``.mp4``, a truncated upload, a thumbnail-sized clip), one that cannot be
    read at all (permissions), and a duplicate. Hidden files (an uploader's ``.part``) and files
    modified within ``settle_seconds`` wait for the next pass.

    Args:
        inbox: the drop folder (created if missing).
        landing_dir: the landing zone root.
        today: the arrival date (default: today in UTC).
        settle_seconds: a file modified more recently than this is left for the next pass.

    Returns:
        A :class:`Landed` with the landed videos, the rejected ones (file and reason) and the
        ones still settling.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    landed = Landed(landing_date=today.isoformat())
    inbox.mkdir(parents=True, exist_ok=True)
    target_dir = landing_dir / today.isoformat()
    now = time.time()
    stuck = inbox / ".landed"  # files that landed but that this process cannot remove from the inbox
    for path in sorted(p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            stat = path.stat()
            if now - stat.st_mtime < settle_seconds:
                landed.waiting.append(str(path))
                continue
            if _marker_matches(stuck / path.name, stat):
                log.debug("%s landed already (%s); only its owner can remove it from the inbox", path.name, stuck / path.name)
                continue
            reason, content = _check(path, target_dir)
        except OSError as exc:  # unreadable (permissions) or gone meanwhile: a retry of the pass would fail the same way
            reason = f"{path.name}: cannot read it ({exc.strerror or exc}); fix its permissions and drop it in again"
        if reason:
            _set_aside(path, inbox / "rejected", reason, landed)
            continue
        target = target_dir / f"{path.stem}-{content}{path.suffix.lower()}"
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            how = "already there" if target.exists() else _put(path, target)
        except FileExistsError:  # landed by someone else in the meantime: the same bytes (same content id)
            how = "already there"
        except OSError as exc:  # the landing zone refused it (full, read-only): nothing landed, the next pass tries again
            log.warning("cannot land %s in %s (%s); it stays in the inbox for the next pass", path.name, target_dir, exc.strerror or exc)
            landed.waiting.append(str(path))
            continue
        try:
            path.unlink()
        except OSError as exc:  # another user's file in a shared (sticky) drop folder: it landed, but stays in the inbox too
            if how == "hard link":  # the landed video must not share its bytes with a file its owner may rewrite in place
                _put_copy(path, target)
            stuck.mkdir(exist_ok=True)
            (stuck / path.name).write_text(f"{stat.st_size} {stat.st_mtime_ns} {target}\n")  # later passes, any day, skip it
            log.warning(
                "landed %s -> %s (%s) but cannot remove it from the inbox (%s): its owner must remove it; later passes skip it",
                path.name,
                target,
                how,
                exc.strerror or exc,
            )
            if how == "already there":  # landed by an earlier pass: nothing new, so no asset event (and no run) for it
                continue
        else:
            (stuck / path.name).unlink(missing_ok=True)
            log.info("landed %s -> %s (%s)", path.name, target, how)
        landed.videos.append(str(target))
    log.info(
        "ingest %s: %d landed, %d rejected, %d still being written",
        landed.landing_date,
        len(landed.videos),
        len(landed.rejected),
        len(landed.waiting),
    )
    return landed


def _check(path: Path, target_dir: Path) -> tuple[str | None, str]:
    """``(why the inbox file cannot land or None, its content id)``; raises ``OSError`` when it cannot be read."""
    from swan_anomaly import VideoError
    from swan_anomaly.video import VIDEO_SUFFIXES, probe_video

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        kind = path.suffix.lower() or "a file without an extension"
        return (
            f"{path.name}: {kind} is not a supported video type; supported: {', '.join(VIDEO_SUFFIXES)} (convert it, e.g. with ffmpeg)",
            "",
        )
    try:
        probe_video(path)
    except VideoError as exc:
        return str(exc), ""
    content = _name_digest(path)
    twin = (
        next((p for p in sorted(target_dir.glob(f"*-{content}.*")) if p.stem != f"{path.stem}-{content}"), None)
        if target_dir.is_dir()
        else None
    )
    if twin is not None:
        return f"{path.name}: the same bytes as {twin}, landed already under another name; not landed twice", content
    return None, content


def _set_aside(path: Path, rejected_dir: Path, reason: str, landed: Landed) -> None:
    """Move ``path`` to ``rejected_dir`` with a ``.reason.txt`` beside it; record and log why.

    An earlier rejected file of the same name (an uploader with fixed names) is never replaced: this one
    gets the first free name ``<stem>-2<suffix>``, ``<stem>-3<suffix>``...
    """
    rejected_dir.mkdir(exist_ok=True)
    try:
        target, n = rejected_dir / path.name, 1
        while target.exists() or target.with_name(f"{target.name}.reason.txt").exists():
            n += 1
            target = rejected_dir / f"{path.stem}-{n}{path.suffix}"
        os.rename(path, target)  # the same filesystem: never a copy left behind when the file cannot be moved
        target.with_name(f"{target.name}.reason.txt").write_text(f"{reason}\n")
        where = f"moved to {target}"
    except OSError as exc:  # cannot even move it: say so, and the next pass says it again
        where = f"left in the inbox: it cannot be moved ({exc.strerror or exc})"
    landed.rejected.append({"video": path.name, "reason": reason})
    log.warning("rejected %s: %s (%s)", path, reason, where)


def landing_date_from_events(events) -> str | None:
    """The landing date of the newest :data:`LANDING_ASSET` event among a run's triggering events.

    Args:
        events: the ``triggering_asset_events`` of a task's context (a mapping from asset to
            its events), or ``None``.

    Returns:
        ``"YYYY-MM-DD"``, or ``None`` when the run was not triggered by landed videos.

    Raises:
        AirflowFailException: the newest event names no ISO date (one posted by hand over the REST
            API): every task derives the run's dataset from it, and no retry can fix it.
    """
    if not events:
        return None
    dates = []
    for asset, asset_events in events.items():
        if getattr(asset, "name", None) != LANDING_ASSET.name:
            continue
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("landing_date"):
                dates.append((getattr(event, "timestamp", None) or dt.datetime.min.replace(tzinfo=dt.UTC), extra["landing_date"]))
    if not dates:
        return None
    newest = max(dates)[1]
    try:
        if not (isinstance(newest, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", newest)):
            raise ValueError(newest)
        dt.date.fromisoformat(newest)
    except ValueError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        msg = f"the {LANDING_ASSET.name} event that triggered this run names landing_date {newest!r}, not a date YYYY-MM-DD"
        raise AirflowFailException(msg) from exc
    others = sorted({d for _, d in dates} - {newest})
    if others:
        log.info("the triggering events also name landing dates %s; their daily runs cover them", others)
    return newest
