"""Data steps: the run's videos -> frames -> anomalies -> labels -> the raw lake partition.

Everything is staged in the run's own folder (:attr:`RunContext.staging_dir`). A video that
cannot be used (unreadable, a duplicate, not a video, too small, truncated) is set aside with its
reason and the others go on; the reasons reach the run summary. Errors a retry cannot fix (bad
Params, no usable video at all, a staging folder that disagrees with its labels) fail the task
at once with :class:`AirflowFailException`.

Example:
    >>> find_videos(RunContext.current())     # doctest: +SKIP
    [{'video': '/srv/swan/landing/2026-11-26/cam1-3f2a9c0d1b2e.mp4', 'reason': None}]
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from swan_airflow.context import RunContext

log = logging.getLogger(__name__)


def find_videos(ctx: RunContext) -> list[dict]:
    """The run's videos: the ``videos`` Param, or those that landed on its landing date; each content once.

    Returns:
        ``[{"video": path, "reason": None | why it is set aside}, ...]``: one entry per file, so
        that each shows as one mapped ``extract_frames`` (a set-aside one only reports its reason).

    Raises:
        AirflowSkipException: no video arrived for the run.
        AirflowFailException: videos arrived but none can be read.
    """
    from swan_airflow.runtime import find_landed_videos, settings
    from swan_anomaly.lake import landing_window
    from swan_anomaly.video import distinct_videos

    shutil.rmtree(ctx.staging_dir, ignore_errors=True)  # staging is scratch space of this run
    if ctx.params.get("videos"):
        candidates = [Path(v).absolute() for v in ctx.params["videos"]]
    else:
        start, end = landing_window(
            landing_date=ctx.landing_date, interval_start=ctx.interval[0], interval_end=ctx.interval[1], run_after=ctx.run_after
        )
        candidates = find_landed_videos(settings().landing_dir, start, end)
    if not candidates:
        raise AirflowSkipException("no new videos for this run; nothing to do")
    kept, rejected = distinct_videos(candidates)
    for r in rejected:
        log.warning("REJECTED video %s", r["reason"])
    if not kept:
        raise AirflowFailException(f"none of the {len(candidates)} videos can be used: " + "; ".join(r["reason"] for r in rejected))
    log.info("%d videos for dataset %s (%d set aside)", len(kept), ctx.dataset_id, len(rejected))
    return [{"video": str(p), "reason": None} for p in kept] + rejected


def extract_frames(ctx: RunContext, candidate: dict) -> dict:
    """Frames of one video, written losslessly to the run's staging folder.

    A video that cannot be read (corrupt, truncated, empty, a still image, too small), or that
    :func:`find_videos` set aside, returns its reason instead of failing the run: the other
    videos still arrive.
    """
    from swan_anomaly import VideoError
    from swan_anomaly.video import extract_frames as extract

    video = candidate["video"]
    if candidate.get("reason"):
        return {"video": video, "video_id": None, "frames": 0, "error": candidate["reason"], "content_id": candidate.get("video_id")}
    staging = ctx.staging_dir
    p = ctx.params
    try:
        frames = extract(
            Path(video),
            staging / "frames",
            every_seconds=p["every_seconds"],
            start_s=p.get("frames_start_s"),
            end_s=p.get("frames_end_s"),
            max_frames=p.get("max_frames"),
            dedupe_distance=p.get("dedupe_distance"),
        )
    except VideoError as exc:
        log.warning("REJECTED video %s: %s", video, exc)
        return {"video": video, "video_id": None, "frames": 0, "error": str(exc), "content_id": _content_id(video)}
    except ValueError as exc:  # a Param out of range for this video: every retry fails the same way
        raise AirflowFailException(f"{video}: {exc}") from exc
    except Exception as exc:
        ti = ctx.task["ti"] if ctx.task else None
        if ti is None or ti.try_number <= ti.max_tries:  # retries left: it may be passing (a network share, memory)
            raise
        log.exception("REJECTED video %s after %d tries", video, ti.try_number)  # the last try: set it aside, the others go on
        return {
            "video": video,
            "video_id": None,
            "frames": 0,
            "error": f"{video}: could not be read after {ti.try_number} tries: {type(exc).__name__}: {exc}",
            "content_id": _content_id(video),
        }
    records = [r.to_dict() for r in frames]
    vid = records[0]["video_id"]
    for r in records:
        r["path"] = str(Path(r["path"]).relative_to(staging))
    (staging / "frames" / vid / "index.json").write_text(json.dumps(records, indent=1))
    return {"video": video, "video_id": vid, "frames": len(records), "error": None}


def _content_id(video: str) -> str | None:
    """The video id (content hash) of a set-aside video, or None when it cannot be read now."""
    from swan_anomaly.video import video_id

    try:
        return video_id(Path(video))
    except OSError:
        return None


def _staged_frames(staging: Path, video_ids: list[str]) -> list[dict]:
    frames = []
    for vid in video_ids:
        frames += [{**r, "path": str(staging / r["path"])} for r in json.loads((staging / "frames" / vid / "index.json").read_text())]
    return frames


def synthesize_anomalies(ctx: RunContext, videos: list[dict]) -> dict:
    """Seeded anomalies of the chosen families at the controlled ratio, over every video that gave frames."""
    from swan_anomaly.anomalies import synthesize_dataset

    staging = ctx.staging_dir
    rejected = [{"video": v["video"], "reason": v["error"], "video_id": v.get("content_id")} for v in videos if v.get("error")]
    good = [v for v in videos if not v.get("error")]
    if not good:
        reasons = "; ".join(f"{r['video']}: {r['reason']}" for r in rejected)
        raise AirflowFailException(f"none of the {len(rejected)} videos could be read: {reasons}")
    frames = _staged_frames(staging, [v["video_id"] for v in good])
    shutil.rmtree(staging / "anomalies", ignore_errors=True)  # a rerun replaces, never accumulates
    try:
        records = synthesize_dataset(
            frames, staging, anomaly_ratio=ctx.params["anomaly_ratio"], seed=ctx.params["seed"], families=ctx.params["anomaly_families"]
        )
    except ValueError as exc:  # a bad ratio or family: only a new trigger fixes it
        raise AirflowFailException(str(exc)) from exc
    (staging / "anomalies").mkdir(exist_ok=True)
    (staging / "anomalies" / "index.json").write_text(json.dumps([r.__dict__ for r in records], indent=1))
    return {"frames": len(frames), "anomalies": len(records), "videos": [v["video_id"] for v in good], "rejected_videos": rejected}


def build_labels(ctx: RunContext, synthesis: dict) -> dict:
    """The validated label manifest (``labels.csv``) of the staged dataset, and its counts."""
    from swan_anomaly import LabelManifestError
    from swan_anomaly.anomalies import AnomalyRecord
    from swan_anomaly.labels import build_manifest, write_manifest

    staging = ctx.staging_dir
    frames = _staged_frames(staging, synthesis["videos"])
    anomalies = [AnomalyRecord(**r) for r in json.loads((staging / "anomalies" / "index.json").read_text())]
    try:
        table = build_manifest(frames, anomalies, staging)
        write_manifest(table, staging / "labels.csv")
    except LabelManifestError as exc:
        raise AirflowFailException(str(exc)) from exc
    counts = table.label.value_counts().to_dict()
    return {
        "images": len(table),
        "abnormal": int(counts.get(0, 0)),
        "normal": int(counts.get(1, 0)),
        "groups": int(table.group.nunique()),
        "families": table[table.label == 0].family.value_counts().sort_index().to_dict(),
        "rejected_videos": synthesis["rejected_videos"],
    }


def check_labels(ctx: RunContext) -> dict:
    """Optional (off by default): a vision model names what a seeded sample of normal frames shows."""
    from swan_airflow.label_check import label_check_enabled, run_label_check
    from swan_anomaly.labels import read_manifest

    if not label_check_enabled(ctx.params):
        return {"enabled": False}
    staging = ctx.staging_dir
    return {"enabled": True, **run_label_check(staging, read_manifest(staging / "labels.csv"), seed=ctx.params["seed"])}


def upload_to_lake(ctx: RunContext, labels: dict) -> dict:
    """The staged dataset to ``raw/{dataset_id}/``; ``manifest.json`` and ``_SUCCESS`` last.

    Raises:
        AirflowFailException: the staging folder is missing, empty or disagrees with its labels,
            or the upload would delete the frames of a video the partition holds while this run set
            videos aside (it may be one of them, unreadable only this time); the lake partition is
            left exactly as it was.
    """
    from swan_airflow.runtime import lake
    from swan_anomaly import LakeError

    set_aside = [(v["reason"], v.get("video_id")) for v in labels.get("rejected_videos", [])]
    try:
        report = lake().put_dataset(ctx.staging_dir, ctx.dataset_id, set_aside=set_aside)
    except LakeError as exc:
        raise AirflowFailException(str(exc)) from exc
    return {**report.__dict__, "dataset_id": ctx.dataset_id, **labels}
