"""Landing new videos: inbox -> ``landing/YYYY-MM-DD/``, and the asset event that triggers training.

Whatever brings videos (a camera uploader, an operator with ``cp``) drops them into the inbox
(``SWAN_INBOX_DIR``, default ``$SWAN_HOME/inbox``). The ingest DAG moves every finished, readable
video into the landing zone partition of its arrival date and emits an event on
:data:`LANDING_ASSET`; the pipeline DAG is scheduled on that asset *or* its daily timetable
(``AssetOrTimeSchedule``), so it runs when videos land and stays backfillable.

A file still being written (modified within the last ``settle_seconds``) waits for the next
ingest run. A file that is not a readable video goes to ``inbox/rejected/`` with a
``.reason.txt`` beside it, so it neither blocks the inbox nor reaches the pipeline.

Example:
    >>> landed = land_inbox(Path("inbox"), Path("landing"), today=dt.date(2026, 11, 26))  # doctest: +SKIP
    >>> landed.videos
    ['/srv/swan/landing/2026-11-26/cam1-3f2a9c0d1b2e.mp4']
"""

from __future__ import annotations

import datetime as dt
import logging
import os
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


def _content_id(path: Path) -> str:
    from swan_anomaly.lake import sha256_file

    return sha256_file(path)[:12]


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
    tmp = target.with_name(f".{target.name}.part")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)
    return "copy"


def land_inbox(inbox: Path, landing_dir: Path, *, today: dt.date | None = None, settle_seconds: float = 30.0) -> Landed:
    """Move every settled, readable video of ``inbox`` into ``landing_dir/<today>/``.

    The landed name is ``<stem>-<first 12 hex of the content's sha256><suffix>``: two uploads
    with the same name do not overwrite each other, and the same bytes uploaded twice land once.

    Args:
        inbox: the drop folder (created if missing).
        landing_dir: the landing zone root.
        today: the arrival date (default: today in UTC).
        settle_seconds: a file modified more recently than this is left for the next pass.

    Returns:
        A :class:`Landed` with the landed videos, the rejected ones (file and reason) and the
        ones still settling.
    """
    from swan_anomaly import VideoError
    from swan_anomaly.video import VIDEO_SUFFIXES, probe_video

    today = today or dt.datetime.now(dt.UTC).date()
    landed = Landed(landing_date=today.isoformat())
    inbox.mkdir(parents=True, exist_ok=True)
    rejected_dir = inbox / "rejected"
    target_dir = landing_dir / today.isoformat()
    now = time.time()
    for path in sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
        if now - path.stat().st_mtime < settle_seconds:
            landed.waiting.append(str(path))
            continue
        try:
            probe_video(path)
        except VideoError as exc:
            rejected_dir.mkdir(exist_ok=True)
            shutil.move(str(path), rejected_dir / path.name)
            (rejected_dir / f"{path.name}.reason.txt").write_text(f"{exc}\n")
            landed.rejected.append({"video": path.name, "reason": str(exc)})
            log.warning("rejected %s: %s (moved to %s)", path, exc, rejected_dir)
            continue
        target = target_dir / f"{path.stem}-{_content_id(path)}{path.suffix.lower()}"
        target_dir.mkdir(parents=True, exist_ok=True)
        try:
            how = "already there" if target.exists() else _put(path, target)
        except FileExistsError:  # landed by someone else in the meantime: the same bytes (same content id)
            how = "already there"
        path.unlink()
        log.info("landed %s -> %s (%s)", path.name, target, how)
        landed.videos.append(str(target))
    log.info(
        "ingest %s: %d landed, %d rejected, %d still being written",
        landed.landing_date, len(landed.videos), len(landed.rejected), len(landed.waiting),
    )
    return landed


def landing_date_from_events(events) -> str | None:
    """The landing date of the newest :data:`LANDING_ASSET` event among a run's triggering events.

    Args:
        events: the ``triggering_asset_events`` of a task's context (a mapping from asset to
            its events), or ``None``.

    Returns:
        ``"YYYY-MM-DD"``, or ``None`` when the run was not triggered by landed videos.
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
    others = sorted({d for _, d in dates} - {newest})
    if others:
        log.info("the triggering events also name landing dates %s; their daily runs cover them", others)
    return newest
