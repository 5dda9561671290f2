"""The lake: raw, silver, gold, runs and code zones under one root (docs/architecture.md, "Lake layout").

``LocalLake`` is the embedded default: a directory with the same layout as the ADLS Gen2
container (``swan_airflow.azure_lake.WasbLake``); :class:`Lake` is what the rest of the code
uses of either. A dataset upload is complete only when its ``_SUCCESS`` marker exists; the
marker is written last, after ``manifest.json`` (sha256 of every file).

Example:
    >>> lake = LocalLake(Path("/tmp/lake"))                        # doctest: +SKIP
    >>> lake.put_dataset(Path("/tmp/staging/20261126"), "20261126")  # doctest: +SKIP
    'file:///tmp/lake/raw/20261126'
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from swan_anomaly._errors import ConfigError, JobError, LakeError
from swan_anomaly.digests import sha256_file

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
#: Dataset ids of a landing date (``YYYYMMDD``) or of the videos a run named on that date
#: (``YYYYMMDD-videos-<digest>``, :func:`picked_dataset_id`); only these take part in a training window.
DATASET_ID = re.compile(r"(?P<date>\d{8})(?:-videos-[0-9a-f]{8})?")


@dataclass(frozen=True)
class UploadPlan:
    """What an idempotent dataset upload must do, whatever the lake (directory or ADLS).

    ``hashes``: sha256 of every staged file by relative path; ``write``: files that are new or
    changed; ``unchanged``: how many already match; ``remove``: lake files no longer staged.
    """

    hashes: dict[str, str]
    write: list[str]
    unchanged: int
    remove: list[str]


#: Files of a staged dataset that are images and must each have a row in its ``labels.csv``.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS = "labels.csv"


def plan_upload(local_dir: Path, existing: Mapping[str, str | None], *, set_aside: Sequence[tuple[str, str | None]] = ()) -> UploadPlan:
    """Compare a staged dataset with what the lake holds (relative path -> sha256 or None).

    The staged dataset is checked first (:func:`check_staged_dataset`): an upload replaces the
    whole partition, so a missing, empty or inconsistent staging folder must never reach it.

    Args:
        local_dir: the staging folder.
        existing: the lake partition's files.
        set_aside: ``(why, video id or None)`` of each video this run set aside: the upload must
            not delete the frames of a video the partition holds and this run did not stage when it
            may be one of them, unusable only this time (:func:`check_no_video_dropped`).

    Raises:
        LakeError: the staging folder is missing, empty, or disagrees with its ``labels.csv``; or
            the upload would delete the frames of a video this run set aside.
    """
    if not local_dir.is_dir():
        msg = f"{local_dir}: the staging folder does not exist; nothing uploaded and the lake partition left as it was"
        raise LakeError(msg)
    hashes = {
        p.relative_to(local_dir).as_posix(): sha256_file(p)
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and p.name not in (SUCCESS, MANIFEST)
    }
    check_staged_dataset(local_dir, hashes)
    check_no_video_dropped(local_dir, existing, hashes, set_aside)
    write = [rel for rel, digest in hashes.items() if existing.get(rel) != digest]
    remove = sorted(rel for rel in existing if rel not in hashes and rel not in (SUCCESS, MANIFEST))
    return UploadPlan(hashes, write, len(hashes) - len(write), remove)


def _videos(paths: Iterable[str]) -> set[str]:
    """The video ids of the frames among a partition's relative paths (``frames/{video_id}/...``)."""
    return {parts[1] for rel in paths if len(parts := rel.split("/")) > 2 and parts[0] == "frames"}


def check_no_video_dropped(
    local_dir: Path, existing: Iterable[str], hashes: Mapping[str, str], set_aside: Sequence[tuple[str, str | None]]
) -> None:
    """Refuse an upload that would delete the frames of a video the run set aside.

    An upload mirrors the staging folder: a video the partition holds and the run did not stage
    is deleted from it (and then from silver and gold). That is right when the video left the
    landing zone, and wrong when the run could not use it this time (a network share's hiccup on
    the last try, a frame window outside it): the frames an earlier run uploaded are still good.

    Args:
        local_dir: the staging folder (named in the error).
        existing: the partition's files, relative paths.
        hashes: the staged files, by relative path.
        set_aside: ``(why, video id)`` of each video the run set aside; the id (content hash) is
            None when the file could not be read, and then it may be any of the dropped videos.
            A set-aside video whose id is known and not among them (a duplicate of a staged one,
            a file that never was a video) explains no drop.

    Example:
        >>> existing, staged = ["frames/a1/f_0.png", "frames/b2/f_0.png"], {"frames/a1/f_0.png": "x"}
        >>> check_no_video_dropped(Path("s"), existing, staged, [("copy.mp4: the same video as a.mp4", "a1")])
        >>> check_no_video_dropped(Path("s"), existing, staged, [("b.mp4: cannot read it", None)])
        Traceback (most recent call last):
        ...
        swan_anomaly._errors.LakeError: s: nothing uploaded: the lake partition holds the frames of 1 video(s) this run ...

    Raises:
        LakeError: a video would be dropped that a set-aside video may be; it names both.
    """
    dropped = sorted(_videos(existing) - _videos(hashes))
    causes = [why for why, vid in set_aside if vid is None or vid in dropped]
    if dropped and causes:
        msg = (
            f"{local_dir}: nothing uploaded: the lake partition holds the frames of {len(dropped)} video(s) this run did not stage "
            f"({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''}), and this run set aside {len(causes)} video(s) that "
            f"may be them: {'; '.join(causes)[:1500]}. The upload would delete frames an earlier run uploaded. Make the set-aside "
            "videos readable (or fix the Params that set them aside) and clear the run; to drop a video on purpose, remove it "
            "from the landing zone first."
        )
        raise LakeError(msg)


def check_staged_dataset(local_dir: Path, hashes: Mapping[str, str]) -> None:
    """Refuse a staged dataset that would replace a lake partition with less than it claims.

    Args:
        local_dir: the staging folder.
        hashes: sha256 of every file in it, by relative path.

    Raises:
        LakeError: no files at all; no ``labels.csv`` or one that breaks the manifest contract;
            a labelled image that is not staged or whose sha256 differs from its label row; or a
            staged image with no label row. The message names the folder and examples.
    """
    from swan_anomaly._errors import LabelManifestError
    from swan_anomaly.labels import read_manifest

    if not hashes:
        msg = f"{local_dir}: the staging folder is empty; nothing uploaded and the lake partition left as it was"
        raise LakeError(msg)
    if LABELS not in hashes:
        msg = f"{local_dir}: no {LABELS} in the staging folder ({len(hashes)} files); nothing uploaded. Rebuild the labels first."
        raise LakeError(msg)
    try:
        labels = read_manifest(local_dir / LABELS)
    except LabelManifestError as exc:
        msg = f"{local_dir}: nothing uploaded: {exc}"
        raise LakeError(msg) from exc
    labelled = dict(zip(labels.image_path.astype(str), labels.sha256.astype(str)))
    images = {rel for rel in hashes if rel.lower().endswith(IMAGE_SUFFIXES)}
    problems = []
    if missing := sorted(set(labelled) - images):
        problems.append(f"{len(missing)} labelled image(s) not staged, e.g. {missing[:3]}")
    if unlabelled := sorted(images - set(labelled)):
        problems.append(f"{len(unlabelled)} staged image(s) without a label row, e.g. {unlabelled[:3]}")
    if changed := sorted(rel for rel in images & set(labelled) if hashes[rel] != labelled[rel]):
        problems.append(f"{len(changed)} image(s) whose sha256 differs from {LABELS}, e.g. {changed[:3]}")
    if problems:
        msg = f"{local_dir}: the staged files disagree with {LABELS}: {'; '.join(problems)}. Nothing uploaded; rebuild the labels."
        raise LakeError(msg)


def manifest_json(dataset_id: str, hashes: Mapping[str, str]) -> str:
    """The ``manifest.json`` of a dataset partition: sha256 of every file."""
    return json.dumps({"dataset_id": dataset_id, "files": dict(sorted(hashes.items()))}, indent=1, sort_keys=True)


def dataset_id_for(
    *,
    landing_date: str | None,
    interval_start: datetime | None,
    run_after: datetime | None = None,
    videos: Sequence[str] | None = None,
) -> str:
    """The dataset partition of a run: the landing date if given, else the data interval's start day.

    A rerun or a backfill of the same interval gets the same id, so it rewrites the same
    lake partition instead of adding one. A run that names its videos (the ``videos`` Param)
    writes a partition of its own beside its date's, ``YYYYMMDD-videos-<digest of the paths>``:
    rewriting the date's partition with just those videos would delete every video that landed
    on that date from raw, silver and gold. The same videos again rewrite the same partition.

    Example:
        >>> dataset_id_for(landing_date="2026-11-26", interval_start=None, videos=["/srv/extra/cam9.mp4"])
        '20261126-videos-32bcda3e'
    """
    start, _ = landing_window(landing_date=landing_date, interval_start=interval_start, interval_end=None, run_after=run_after)
    if videos:  # absolute paths (the Param's schema): the same id in every task, whatever its working directory
        return picked_dataset_id(start, [str(Path(v)) for v in videos])
    return start.strftime("%Y%m%d")


def landing_window(
    *, landing_date: str | None, interval_start: datetime | None, interval_end: datetime | None, run_after: datetime | None
) -> tuple[date, date]:
    """The arrival dates ``[start, end)`` a run processes, consistent with :func:`dataset_id_for`.

    The landing date if given (a Param or an asset event); else the data interval (at least one
    day); else, for a run without a data interval (a manual trigger without a logical date), the
    day of ``run_after``.

    Example:
        >>> start, end = datetime(2026, 11, 25), datetime(2026, 11, 26)
        >>> landing_window(landing_date=None, interval_start=start, interval_end=end, run_after=None)
        (datetime.date(2026, 11, 25), datetime.date(2026, 11, 26))
    """
    one_day = timedelta(days=1)
    if landing_date:
        start = date.fromisoformat(landing_date)
        return start, start + one_day
    if interval_start is not None:
        start = interval_start.date()
        end = interval_end.date() if interval_end is not None else start
        return start, max(end, start + one_day)
    if run_after is None:
        msg = "cannot tell which videos to process: the run has no landing date, data interval or run_after"
        raise ValueError(msg)
    return run_after.date(), run_after.date() + one_day


def picked_dataset_id(day: date, videos: Iterable[str]) -> str:
    """The dataset id of a run that names its videos: ``YYYYMMDD-videos-<digest of the sorted paths>``.

    Its own partition beside the landing date's, so that it never replaces the videos that
    landed; the same paths, in any order, give the same id (a rerun rewrites its partition).

    Example:
        >>> picked_dataset_id(date(2026, 11, 26), ["/srv/b.mp4", "/srv/a.mp4", "/srv/a.mp4"])
        '20261126-videos-e63fefe4'
    """
    digest = hashlib.sha256("\n".join(sorted(set(videos))).encode()).hexdigest()[:8]
    return f"{day:%Y%m%d}-videos-{digest}"


def dataset_date(dataset_id: str) -> date | None:
    """The date of a dataset id (:data:`DATASET_ID`), or None for any other id.

    Example:
        >>> dataset_date("20261126"), dataset_date("20261126-videos-e63fefe4"), dataset_date("2026-11-26"), dataset_date("20261341")
        (datetime.date(2026, 11, 26), datetime.date(2026, 11, 26), None, None)
    """
    if not (found := DATASET_ID.fullmatch(dataset_id)):
        return None
    try:
        return datetime.strptime(found["date"], "%Y%m%d").date()
    except ValueError:
        return None


def window_ids(partitions: Iterable[str], dataset_id: str, window_days: int = 1) -> list[str]:
    """The partitions of the training window of ``dataset_id`` among ``partitions``, oldest first.

    The window is the ``window_days`` days ending with ``dataset_id``'s date, both ends
    included: the landing dates and the partitions of videos that runs named on those dates.
    Partitions whose id is not dated (:data:`DATASET_ID`) are ignored, and so are partitions
    of later dates: a backfill never trains on data that arrived later. ``dataset_id`` itself
    is always in the list (whether it is among ``partitions`` or not), and always last: the
    newest, whose groups win over the same groups in the others (:func:`load_gold`).

    Raises:
        ConfigError: ``window_days`` is below 1, or above 1 while ``dataset_id`` is not a date
            (a ``ValueError``; a job exits with the permanent-failure status, no retries).

    Example:
        >>> window_ids(["20261123", "20261124", "20261126", "20261127", "latest"], "20261126", 3)
        ['20261124', '20261126']
    """
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
        msg = f"window_days must be a whole number of days, at least 1, got {window_days!r}"
        raise ConfigError(msg)
    if window_days == 1:
        return [dataset_id]
    end = dataset_date(dataset_id)
    if end is None:
        msg = f"a training window of {window_days} days needs a dataset id that is a date (YYYYMMDD), got {dataset_id!r}"
        raise ConfigError(msg)
    start = end - timedelta(days=window_days - 1)
    found = {p for p in partitions if (day := dataset_date(p)) is not None and start <= day <= end} - {dataset_id}
    return [*sorted(found), dataset_id]


def window_dataset_ids(lake: Lake, dataset_id: str, window_days: int = 1) -> list[str]:
    """The gold partitions of the training window of ``dataset_id`` (:func:`window_ids` over the lake's gold).

    ``lake``: a :class:`LocalLake` (the jobs) or the Airflow side's ``WasbLake``, so both
    sides form the window the same way.
    """
    return window_ids(lake.gold_partitions(), dataset_id, window_days)


def partition_value(name: str) -> str | None:
    """The dataset id of a ``dataset_id=<id>`` partition folder name, else None."""
    key, sep, value = name.partition("=")
    return value if key == "dataset_id" and sep and value else None


def is_data_file(rel: str) -> bool:
    """False for what Spark itself skips when it reads a partition: names under ``_`` or ``.``
    (``_SUCCESS``, ``_committed_*``/``_started_*`` markers, ``.crc`` checksums)."""
    return not any(part.startswith(("_", ".")) for part in rel.split("/"))


#: In a gold partition: the names of the data files Spark reads there, written by the augmentation
#: job after its write (``DataFrame.inputFiles()``). On Databricks a failed task or job attempt can
#: leave uncommitted Parquet files beside the committed ones (the DBIO commit protocol, until the
#: automatic VACUUM); Spark skips them, and a reader without Spark keeps to this list too.
GOLD_FILES = "_swan_files.json"
#: In a silver partition: which raw upload the ETL made it from (Spark skips names under ``_``).
SILVER_SOURCE = "_swan_source.json"


def committed(names: Iterable[str], listed: Iterable[str] | None) -> list[str]:
    """The data files among ``names`` (sorted) that a partition's :data:`GOLD_FILES` lists (all of them without one).

    Example:
        >>> committed(["part-0-tid-1.parquet", "part-0-tid-2.parquet", "_committed_2"], ["part-0-tid-2.parquet"])
        ['part-0-tid-2.parquet']
        >>> committed(["part-0.parquet", "_SUCCESS"], None)
        ['part-0.parquet']
    """
    data = sorted(n for n in names if is_data_file(n))
    return data if listed is None else [n for n in data if n in set(listed)]


def gold_files_digest(files: Mapping[str, Iterable[tuple[str, int]]]) -> str:
    """sha256 of gold data files, ``{dataset_id: [(name in the partition, size), ...]}``.

    Spark names the files of every write anew, so a rewritten partition changes the digest,
    while a partition nobody wrote to keeps it: the identity of a training run's input data.
    """
    listing = {i: sorted([name, size] for name, size in entries) for i, entries in files.items()}
    return sha256_text(json.dumps(listing, sort_keys=True))


def sha256_text(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def safe_run_id(run_id: str) -> str:
    """A run id usable as a path segment on every filesystem (``:``/``+`` replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


@dataclass(frozen=True)
class UploadReport:
    """What an upload did: files written, files already identical, files removed.

    ``digest`` is the sha256 of the partition's manifest: it changes exactly when a file does.
    """

    uri: str
    written: int
    unchanged: int
    removed: int
    digest: str


@runtime_checkable
class Lake(Protocol):
    """What code outside the lake classes uses of a lake: :class:`LocalLake` or ``swan_airflow.azure_lake.WasbLake``.

    Both conform (tests/test_labels_splits_lake.py compares every member's parameters).
    """

    def put_dataset(self, local_dir: Path, dataset_id: str, *, set_aside: Sequence[tuple[str, str | None]] = ()) -> UploadReport:
        """Upload a staged dataset to ``raw/{dataset_id}/`` idempotently, ``_SUCCESS`` last (``set_aside``: :func:`plan_upload`)."""
        ...

    def read_raw(self, dataset_id: str, rel: str) -> bytes:
        """Bytes of a file in ``raw/{dataset_id}/``."""
        ...

    def gold_partitions(self) -> list[str]:
        """The dataset ids of the gold partitions, sorted."""
        ...

    def gold_files(self, dataset_ids: Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """The data files of some gold partitions: ``{dataset_id: [(name in the partition, size), ...]}``."""
        ...

    def has_code(self, version: str) -> bool:
        """True when ``code/{version}/_SUCCESS`` exists."""
        ...

    def put_code(self, version: str, files: Mapping[str, Path]) -> None:
        """Put ``{relative name: local file}`` under ``code/{version}/``, ``_SUCCESS`` last."""
        ...

    def write_result(self, run_id: str, job: str, result: dict) -> Path | str:
        """Write ``runs/{run_id}/{job}.json``; returns where it went (a path, or a blob name)."""
        ...

    def delete_result(self, run_id: str, job: str) -> None:
        """Remove ``runs/{run_id}/{job}.json`` if it exists."""
        ...

    def read_result(self, run_id: str, job: str) -> dict:
        """Read ``runs/{run_id}/{job}.json``; raises :class:`LakeError` when the job wrote none."""
        ...


@dataclass(frozen=True)
class LocalLake:
    """A lake in a local directory."""

    root: Path

    def raw(self, dataset_id: str) -> Path:
        return self.root / "raw" / dataset_id

    @property
    def silver(self) -> Path:
        return self.root / "silver" / "images"

    @property
    def gold(self) -> Path:
        return self.root / "gold" / "training"

    def silver_partition(self, dataset_id: str) -> Path:
        """The folder of one dataset's silver rows, ``silver/images/dataset_id={dataset_id}/``."""
        return self.silver / f"dataset_id={dataset_id}"

    def drop_derived(self, dataset_id: str) -> list[str]:
        """Remove the silver and gold partitions of ``dataset_id`` (rows built from an older upload).

        Returns:
            The zones that had a partition, e.g. ``["silver", "gold"]``.
        """
        dropped = []
        for zone, folder in (("silver", self.silver_partition(dataset_id)), ("gold", self.gold_partition(dataset_id))):
            if folder.is_dir():
                shutil.rmtree(folder)
                dropped.append(zone)
                log.warning("removed the %s partition %s", zone, folder)
        return dropped

    @property
    def quarantine(self) -> Path:
        """Rows the ETL set aside: ``image_path``, ``stage``, ``reason`` per ``dataset_id``."""
        return self.root / "quarantine" / "images"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / safe_run_id(run_id)

    def put_dataset(self, local_dir: Path, dataset_id: str, *, set_aside: Sequence[tuple[str, str | None]] = ()) -> UploadReport:
        """Copy a staged dataset to ``raw/{dataset_id}/``, idempotently.

        Files whose sha256 already matches are skipped; files no longer staged are
        removed, so the partition equals the staging directory. ``_SUCCESS`` is removed
        first and written last: readers never see a half-written partition as complete.

        Args:
            local_dir: the staging folder.
            dataset_id: the partition.
            set_aside: ``(why, video id or None)`` of each video the run set aside (:func:`plan_upload`).

        Raises:
            LakeError: the staging folder is missing, empty or disagrees with its labels, or
                the upload would delete the frames of a video the run set aside
                (:func:`plan_upload`); the partition is then left exactly as it was.
        """
        target = self.raw(dataset_id)
        existing = {p.relative_to(target).as_posix(): sha256_file(p) for p in target.rglob("*") if p.is_file()} if target.is_dir() else {}
        plan = plan_upload(local_dir, existing, set_aside=set_aside)
        target.mkdir(parents=True, exist_ok=True)
        (target / SUCCESS).unlink(missing_ok=True)
        for rel in plan.write:
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(local_dir / rel, tmp)
            tmp.replace(dst)
        for rel in plan.remove:
            (target / rel).unlink()
        manifest = manifest_json(dataset_id, plan.hashes)
        (target / MANIFEST).write_text(manifest)
        (target / SUCCESS).write_text("")
        report = UploadReport(target.as_uri(), len(plan.write), plan.unchanged, len(plan.remove), sha256_text(manifest))
        log.info("lake %s: %d written, %d unchanged, %d removed", target, report.written, report.unchanged, report.removed)
        return report

    def require_complete(self, dataset_id: str) -> Path:
        """The raw partition of ``dataset_id``; raises unless its ``_SUCCESS`` exists."""
        target = self.raw(dataset_id)
        if not (target / SUCCESS).is_file():
            msg = f"{target}: no {SUCCESS} marker; the upload of dataset {dataset_id!r} is missing or incomplete. Rerun upload_to_lake."
            raise LakeError(msg)
        return target

    def read_raw(self, dataset_id: str, rel: str) -> bytes:
        """Bytes of a file in ``raw/{dataset_id}/``."""
        return (self.raw(dataset_id) / rel).read_bytes()

    def gold_partition(self, dataset_id: str) -> Path:
        """The folder of one dataset's gold rows, ``gold/training/dataset_id={dataset_id}/``."""
        return self.gold / f"dataset_id={dataset_id}"

    def gold_partitions(self) -> list[str]:
        """The dataset ids of the gold partitions, sorted."""
        if not self.gold.is_dir():
            return []
        return sorted(v for child in self.gold.iterdir() if child.is_dir() and (v := partition_value(child.name)) is not None)

    def gold_rewrites(self) -> list[str]:
        """The dataset ids of the gold partitions an augmentation job is writing now, sorted.

        Spark's dynamic partition overwrite writes a partition under ``gold/.spark-staging-<job>/``,
        then deletes the old folder and renames the new one in: in between, the partition is missing.
        """
        if not self.gold.is_dir():
            return []
        staged = (child for stage in self.gold.glob(".spark-staging-*") if stage.is_dir() for child in stage.iterdir())
        return sorted({v for child in staged if child.is_dir() and (v := partition_value(child.name)) is not None})

    def gold_files(self, dataset_ids: Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """The data files of some gold partitions: ``{dataset_id: [(name in the partition, size), ...]}``.

        Every id gets an entry; a missing partition has no files.
        """
        files = {}
        for dataset_id in dataset_ids:
            folder = self.gold_partition(dataset_id)
            sizes = (
                {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else {}
            )
            files[dataset_id] = [(rel, sizes[rel]) for rel in committed(sizes, self.gold_listing(dataset_id))]
        return files

    def gold_listing(self, dataset_id: str) -> list[str] | None:
        """The partition's :data:`GOLD_FILES` list, or None when the job that wrote it wrote none."""
        path = self.gold_partition(dataset_id) / GOLD_FILES
        return json.loads(path.read_text())["files"] if path.is_file() else None

    def gold_built_from(self, dataset_id: str) -> str | None:
        """The :meth:`raw_manifest_digest` the partition's gold was built from (in :data:`GOLD_FILES`); None when not recorded."""
        path = self.gold_partition(dataset_id) / GOLD_FILES
        return json.loads(path.read_text()).get("raw_manifest") if path.is_file() else None

    def write_gold_listing(self, dataset_id: str, names: Iterable[str], *, raw_manifest: str | None = None) -> None:
        """Write the partition's :data:`GOLD_FILES`: the data files Spark reads there, by name, and the raw upload it was built from."""
        path = self.gold_partition(dataset_id) / GOLD_FILES
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"files": sorted(names), **({"raw_manifest": raw_manifest} if raw_manifest else {})}, indent=1))
        tmp.replace(path)

    def write_silver_source(self, dataset_id: str, raw_manifest: str | None) -> None:
        """Record in the silver partition which raw upload (:meth:`raw_manifest_digest`) the ETL made it from."""
        path = self.silver_partition(dataset_id) / SILVER_SOURCE
        if path.parent.is_dir() and raw_manifest:
            path.write_text(json.dumps({"raw_manifest": raw_manifest}))

    def silver_built_from(self, dataset_id: str) -> str | None:
        """The raw upload the silver partition was made from (:meth:`write_silver_source`); None when not recorded."""
        path = self.silver_partition(dataset_id) / SILVER_SOURCE
        return json.loads(path.read_text()).get("raw_manifest") if path.is_file() else None

    def raw_manifest_digest(self, dataset_id: str) -> str | None:
        """sha256 of ``raw/{dataset_id}/manifest.json``: which upload of the dataset the raw partition holds (None: none)."""
        path = self.raw(dataset_id) / MANIFEST
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def read_gold(self, dataset_id: str, columns: list[str] | None = None):
        """The gold rows of one dataset as a pandas DataFrame: the files Spark reads there (:data:`GOLD_FILES`)."""
        import pandas as pd

        folder = self.gold_partition(dataset_id)
        files = [p.name for p in folder.iterdir() if p.is_file()]
        every, names = committed(files, None), committed(files, self.gold_listing(dataset_id))
        if every == names:  # nothing beside what Spark wrote: one read of the folder
            return pd.read_parquet(folder, columns=columns)
        log.warning(
            "gold %s: reading the %d files Spark committed; %s are not among them", folder, len(names), sorted(set(every) - set(names))
        )
        return pd.concat([pd.read_parquet(folder / n, columns=columns) for n in names], ignore_index=True)

    def has_code(self, version: str) -> bool:
        """True when ``code/{version}/_SUCCESS`` exists."""
        return (self.root / "code" / version / SUCCESS).is_file()

    def put_code(self, version: str, files: Mapping[str, Path]) -> None:
        """Copy ``{relative name: local file}`` to ``code/{version}/``; ``_SUCCESS`` last."""
        target = self.root / "code" / version
        for rel, src in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target / rel)
        (target / SUCCESS).write_text("")

    def result_path(self, run_id: str, job: str) -> Path:
        """``runs/{run_id}/{job}.json``: where a job's result lives."""
        return self.run_dir(run_id) / f"{job}.json"

    def write_result(self, run_id: str, job: str, result: dict) -> Path:
        """Write ``runs/{run_id}/{job}.json`` (what a job hands back to Airflow)."""
        path = self.result_path(run_id, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
        return path

    def delete_result(self, run_id: str, job: str) -> None:
        """Remove ``runs/{run_id}/{job}.json`` if it exists."""
        self.result_path(run_id, job).unlink(missing_ok=True)

    def read_result(self, run_id: str, job: str) -> dict:
        """Read ``runs/{run_id}/{job}.json``."""
        path = self.result_path(run_id, job)
        if not path.is_file():
            msg = f"{path}: job {job!r} wrote no result for run {run_id!r}; did the job finish?"
            raise LakeError(msg)
        return json.loads(path.read_text())


def _rows_gone_from_raw(lake: LocalLake, dataset_id: str) -> int:
    """How many of a gold partition's source images the raw partition no longer holds as they were (by its manifest)."""
    import pyarrow.parquet as pq

    path = lake.raw(dataset_id) / MANIFEST
    folder = lake.gold_partition(dataset_id)
    if not folder.is_dir():
        return 0
    files = json.loads(path.read_text())["files"] if path.is_file() else {}
    listed = committed([p.name for p in folder.iterdir() if p.is_file()], lake.gold_listing(dataset_id))
    if not listed:
        return 0
    named = {"image_path", "source_sha256"} & set(pq.read_schema(folder / listed[0]).names)
    rows = lake.read_gold(dataset_id, columns=sorted(named))  # no image bytes: the names and hashes are enough
    hashes = rows.source_sha256 if "source_sha256" in rows else [None] * len(rows)
    return sum(1 for p, sha in zip(rows.image_path, hashes) if files.get(p) is None or (isinstance(sha, str) and sha and files[p] != sha))


def _read_partition(lake: LocalLake, dataset_id: str) -> pd.DataFrame:
    """One gold partition with its ``dataset_id`` column (empty when the partition is missing)."""
    import pandas as pd

    table = lake.read_gold(dataset_id) if lake.gold_partition(dataset_id).is_dir() else pd.DataFrame()
    # the partition value lives in the directory name; keep it as the string it is
    return table.assign(dataset_id=dataset_id) if not table.empty else table


def load_gold(lake: LocalLake, dataset_id: str, window_days: int = 1) -> pd.DataFrame:
    """The gold rows of the training window of ``dataset_id`` (pyarrow, no Spark needed).

    Reads every partition of :func:`window_dataset_ids` and adds a ``dataset_id`` column. Splits
    are assigned per partition by source group (video + time block), so the same video landing
    on two days would put the same group, and the same images, into two partitions, possibly
    into different splits. A group is therefore kept only from the newest partition that has it:
    an older partition loses every group whose name, or any of whose images (``image_path``),
    occurs in a newer partition of the window. What is dropped is logged.

    Args:
        lake: the lake.
        dataset_id: the newest partition of the window; it must exist and hold rows.
        window_days: days of partitions, ending with ``dataset_id`` (1: that partition only).

    Returns:
        The rows sorted by ``(dataset_id, sample_id)``, index ``0..n-1``.

    Raises:
        JobError: the partition of ``dataset_id`` is missing or empty, and no augmentation job is
            writing it (it was never built: a retry meets the same).
        LakeError: a partition of the window names raw images that its date's raw partition no
            longer holds as they were (uploaded again since: by a run still going, which a retry
            waits out, or by one that failed before its augmentation).
        LakeError: a partition of the window is being rewritten by another run's augmentation
            (missing while Spark renames it in, or vanished after it was listed): the job fails
            and its retry reads the window whole.
        ConfigError: as for :func:`window_dataset_ids` (:func:`swan_anomaly.lake.window_ids`).

    Example:
        >>> gold = load_gold(LocalLake(Path(".swan/lake")), "20261126", window_days=7)  # doctest: +SKIP
        >>> sorted(gold.dataset_id.unique())                                           # doctest: +SKIP
        ['20261124', '20261126']
    """
    import pandas as pd

    ids = window_dataset_ids(lake, dataset_id, window_days)
    # a partition of the window that another run's augmentation is writing: missing now, or about to change
    rewriting = [d for d in lake.gold_rewrites() if d in window_ids([*ids, d], dataset_id, window_days)]
    if rewriting:
        msg = (
            f"gold partitions {rewriting} of the training window of {dataset_id} are being rewritten by another run's "
            "augmentation (Spark is renaming them in); a retry reads them whole"
        )
        raise LakeError(msg)
    # gold built from an earlier upload of its date whose rows name raw images that are gone or changed now: only the gate
    # would find them, after the whole training. An upload that only added video leaves every image the gold names in place
    changed = [d for d in ids if (built := lake.gold_built_from(d)) and built != lake.raw_manifest_digest(d)]
    stale = {d: gone for d in changed if (gone := _rows_gone_from_raw(lake, d))}
    if stale:
        counts = ", ".join(f"{d}: {gone}" for d, gone in stale.items())
        msg = (
            f"gold partitions of the training window of {dataset_id} name raw images that are gone or changed since they were "
            f"built ({counts} rows): a run of that date uploaded it again. If that run is still going, a retry reads its new "
            "gold; if it failed before its augmentation finished, run that date again (or clear its run_etl with downstream "
            "tasks), or train on a window without it"
        )
        raise LakeError(msg)
    current = _read_partition(lake, dataset_id)
    if current.empty:
        msg = f"{lake.gold_partition(dataset_id)}: no gold rows for dataset {dataset_id!r}; run the augmentation job first"
        raise JobError(msg)
    kept = [current]
    seen_groups, seen_images = set(current.group), set(current.image_path)
    for older_id in reversed(ids[:-1]):  # newest first, so each group stays with the newest partition that has it
        older = _read_partition(lake, older_id)
        if older.empty:  # listed a moment ago: another run's augmentation is rewriting it (Spark deletes, then renames in)
            msg = (
                f"gold partition {older_id} of the training window of {dataset_id} was listed but holds no rows now: another run "
                "is rewriting it; a retry reads it whole (training without it would quietly drop a day of data)"
            )
            raise LakeError(msg)
        clash = older.group.isin(seen_groups) | older.image_path.isin(seen_images)
        dropped_groups = set(older.group[clash])
        drop = older.group.isin(dropped_groups)
        seen_groups |= set(older.group)
        seen_images |= set(older.image_path)
        if drop.any():
            names = sorted(dropped_groups)
            log.warning(
                "gold partition %s: dropped %d rows of %d groups that a newer partition of the window also has: %s%s",
                older_id,
                int(drop.sum()),
                len(names),
                ", ".join(names[:10]),
                f" and {len(names) - 10} more" if len(names) > 10 else "",
            )
        if drop.all():
            log.info("gold partition %s of the training window adds nothing after the overlap rule", older_id)
            continue
        kept.append(older[~drop])
    gold = pd.concat(kept, ignore_index=True) if len(kept) > 1 else current
    gold = gold.sort_values(["dataset_id", "sample_id"], ignore_index=True)
    log.info(
        "training window of %s (%d days): %s",
        dataset_id,
        window_days,
        ", ".join(f"{d} {n} rows" for d, n in gold.dataset_id.value_counts(sort=False).sort_index().items()),
    )
    return gold
