"""The label manifest: one row per image, validated on write and on read.

Columns (docs/architecture.md, "Contracts"): ``image_path`` (relative to the dataset directory),
``label`` (0 = abnormal, 1 = normal), ``video_id``, ``frame_index``, ``timestamp_s``,
``family`` (``none`` for normal images), ``family_params`` (JSON), ``group`` (video +
time block, the unit of splitting) and ``sha256`` of the image file.

Time blocks are :data:`BLOCK_SECONDS` (4 s) long, shorter for a short video: each video is cut
into at least :data:`MIN_BLOCKS_PER_VIDEO` blocks (block = its span / that number), but a block
is never shorter than :data:`MIN_BLOCK_SECONDS` (:func:`block_seconds_for`). A 10 s video gets
1.25 s blocks, hence 8 groups instead of 3; a video of 32 s or more keeps 4 s blocks.

The contract is a pyarrow schema (:data:`SCHEMA`): values are converted strictly (``1.5`` is
not a label, an empty cell is not a path), then the rules Arrow cannot express are checked:
known labels only, normal images without a family, no duplicate image, and every listed file
present next to the manifest.

Example:
    >>> from pathlib import Path
    >>> table = build_manifest(frames, anomalies, Path("/tmp/ds"), block_seconds=4.0)  # doctest: +SKIP
    >>> write_manifest(table, Path("/tmp/ds/labels.csv"))                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from swan_anomaly._errors import LabelManifestError
from swan_anomaly.anomalies import AnomalyRecord
from swan_anomaly.contract import ABNORMAL, LABEL_NAMES, NORMAL, NORMAL_FAMILY
from swan_anomaly.digests import sha256_file

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("family_params", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


#: Length of a split block (seconds): frames this close are near-identical and stay in one split.
BLOCK_SECONDS = 4.0
#: A video shorter than this many blocks gets shorter blocks, so that it still gives this many groups...
MIN_BLOCKS_PER_VIDEO = 8
#: ...but never blocks shorter than this (seconds): closer frames would leak across splits.
MIN_BLOCK_SECONDS = 1.0


def group_of(video_id: str, timestamp_s: float, block_seconds: float) -> str:
    """The split group of a frame: its video and its time block."""
    return f"{video_id}-b{int(timestamp_s // block_seconds):04d}"


def video_span(timestamps) -> float:
    """Seconds a video's sampled frames cover: first to last timestamp plus one (median) frame interval.

    Example:
        >>> video_span([0.0, 0.5, 1.0, 1.5]), video_span([3.0])
        (2.0, 0.0)
    """
    ts = sorted(set(float(t) for t in timestamps))
    if len(ts) < 2:
        return 0.0
    steps = sorted(b - a for a, b in zip(ts, ts[1:]))
    return ts[-1] - ts[0] + steps[len(steps) // 2]


def block_seconds_for(
    span_s: float,
    *,
    block_seconds: float = BLOCK_SECONDS,
    min_blocks: int = MIN_BLOCKS_PER_VIDEO,
    min_block_seconds: float = MIN_BLOCK_SECONDS,
) -> float:
    """The split block length of a video covering ``span_s`` seconds.

    ``block_seconds``, shortened to ``span_s / min_blocks`` for a short video so that it still
    gives ``min_blocks`` groups, and never below ``min_block_seconds``.

    Example:
        >>> block_seconds_for(96.0), block_seconds_for(10.0), block_seconds_for(4.0)
        (4.0, 1.25, 1.0)
    """
    return max(min(min_block_seconds, block_seconds), min(block_seconds, span_s / max(min_blocks, 1)))


def build_manifest(
    frames: list[dict],
    anomalies: list[AnomalyRecord],
    dataset_dir: Path,
    *,
    block_seconds: float = BLOCK_SECONDS,
    min_blocks_per_video: int = MIN_BLOCKS_PER_VIDEO,
    min_block_seconds: float = MIN_BLOCK_SECONDS,
) -> pd.DataFrame:
    """Build the manifest for the frames and anomalies staged under ``dataset_dir``.

    Args:
        block_seconds: length of a split block (the ``group`` column).
        min_blocks_per_video: a shorter video gets shorter blocks, so that it gives this many
            groups (:func:`block_seconds_for`; 1 keeps ``block_seconds`` for every video).
        min_block_seconds: the shortest block.
    """
    rows = []
    for f in frames:
        rel = str(Path(f["path"]).relative_to(dataset_dir))
        rows.append((rel, NORMAL, f["video_id"], f["frame_index"], f["timestamp_s"], NORMAL_FAMILY, "{}"))
    for a in anomalies:
        rows.append((a.path, ABNORMAL, a.video_id, a.frame_index, a.timestamp_s, a.family, a.family_params))
    table = pd.DataFrame(rows, columns=list(COLUMNS)[:7])
    _require_files(table.image_path, dataset_dir, source=str(dataset_dir))
    block_of = {
        video: block_seconds_for(
            video_span(ts), block_seconds=block_seconds, min_blocks=min_blocks_per_video, min_block_seconds=min_block_seconds
        )
        for video, ts in table.groupby("video_id").timestamp_s
    }
    table["group"] = [group_of(v, t, block_of[v]) for v, t in zip(table.video_id, table.timestamp_s)]
    for video, block in sorted(block_of.items()):
        if block < block_seconds:
            groups = table[table.video_id == video].group.nunique()
            log.info("video %s is short: split blocks of %.2f s instead of %.1f s (%d groups)", video, block, block_seconds, groups)
    table["sha256"] = [sha256_file(dataset_dir / p) for p in table.image_path]
    return validate_manifest(table.sort_values("image_path", ignore_index=True), source=str(dataset_dir))


def _require_files(paths, dataset_dir: Path, *, source: str) -> None:
    missing = [p for p in paths if not (dataset_dir / p).is_file()]
    if missing:
        msg = f"{source}: {len(missing)} image(s) of the label manifest are missing from {dataset_dir}, e.g. {missing[:3]}"
        raise LabelManifestError(msg)


def validate_manifest(table: pd.DataFrame, *, source: str, dataset_dir: Path | None = None) -> pd.DataFrame:
    """Check the manifest contract and return it with canonical dtypes.

    Args:
        table: the manifest rows.
        source: what to call the manifest in errors (its path).
        dataset_dir: when given, every ``image_path`` must exist under it.

    Raises:
        LabelManifestError: missing columns, values of the wrong type or empty, an unknown
            label, a normal image with a family (or the reverse), family parameters that are not
            JSON, a duplicate image path, or a missing file.
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        msg = f"{source}: label manifest lacks columns {missing}; expected {list(COLUMNS)}"
        raise LabelManifestError(msg)
    try:
        arrow = pa.Table.from_pandas(table[list(COLUMNS)], schema=SCHEMA, preserve_index=False, safe=True)
        arrow.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        msg = f"{source}: label manifest has values of the wrong type: {exc}"
        raise LabelManifestError(msg) from exc
    # (no null check here: SCHEMA's fields are non-nullable, so from_pandas already refused empty values)
    table = arrow.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
    bad = table[~table.label.isin(list(LABEL_NAMES))]
    if len(bad):
        msg = (
            f"{source}: unknown label(s) {sorted(bad.label.unique().tolist())} for "
            f"{bad.image_path.iloc[0]!r}; labels are 0 (abnormal) and 1 (normal)"
        )
        raise LabelManifestError(msg)
    wrong = table[(table.label == NORMAL) != (table.family == NORMAL_FAMILY)]
    if len(wrong):
        msg = f"{source}: {wrong.image_path.iloc[0]!r} has label {wrong.label.iloc[0]} but family {wrong.family.iloc[0]!r}"
        raise LabelManifestError(msg)
    for path, params in zip(table.image_path, table.family_params):
        try:
            json.loads(params)
        except json.JSONDecodeError as exc:
            msg = f"{source}: family_params of {path!r} is not JSON: {exc}"
            raise LabelManifestError(msg) from exc
    dup = table[table.image_path.duplicated()]
    if len(dup):
        msg = f"{source}: duplicate image {dup.image_path.iloc[0]!r} in the label manifest"
        raise LabelManifestError(msg)
    if dataset_dir is not None:
        _require_files(table.image_path, dataset_dir, source=source)
    return table


def write_manifest(table: pd.DataFrame, path: Path, *, check_files: bool = True) -> Path:
    """Validate and write the manifest as CSV (its images must sit next to it unless ``check_files=False``)."""
    validate_manifest(table, source=str(path), dataset_dir=path.parent if check_files else None).to_csv(path, index=False)
    return path


def read_manifest(path: Path, *, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a manifest CSV (types converted strictly by the Arrow schema).

    Args:
        check_files: also require every image next to the manifest (the ETL instead
            quarantines the missing ones and goes on).
    """
    if not path.is_file():
        msg = f"{path}: label manifest not found"
        raise LabelManifestError(msg)
    try:
        arrow = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        msg = f"{path}: label manifest cannot be read with the expected schema: {exc}"
        raise LabelManifestError(msg) from exc
    return validate_manifest(arrow.to_pandas(), source=str(path), dataset_dir=path.parent if check_files else None)
