"""The label manifest: one row per image, validated on write and on read.

Columns (DESIGN.md "Contracts"): ``image_path`` (relative to the dataset directory),
``label`` (0 = abnormal, 1 = normal), ``video_id``, ``frame_index``, ``timestamp_s``,
``family`` (``none`` for normal images), ``family_params`` (JSON), ``group`` (video +
time block, the unit of splitting) and ``sha256`` of the image file.

Example:
    >>> from pathlib import Path
    >>> table = build_manifest(frames, anomalies, Path("/tmp/ds"), block_seconds=4.0)  # doctest: +SKIP
    >>> write_manifest(table, Path("/tmp/ds/labels.csv"))                               # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from swan_anomaly._errors import LabelManifestError
from swan_anomaly.anomalies import NORMAL_FAMILY, AnomalyRecord
from swan_anomaly.lake import sha256_file

ABNORMAL, NORMAL = 0, 1
LABEL_NAMES = {ABNORMAL: "abnormal", NORMAL: "normal"}

COLUMNS: dict[str, str] = {
    "image_path": "string",
    "label": "int64",
    "video_id": "string",
    "frame_index": "int64",
    "timestamp_s": "float64",
    "family": "string",
    "family_params": "string",
    "group": "string",
    "sha256": "string",
}


def group_of(video_id: str, timestamp_s: float, block_seconds: float) -> str:
    """The split group of a frame: its video and its time block."""
    return f"{video_id}-b{int(timestamp_s // block_seconds):04d}"


def build_manifest(frames: list[dict], anomalies: list[AnomalyRecord], dataset_dir: Path, *, block_seconds: float = 4.0) -> pd.DataFrame:
    """Build the manifest for the frames and anomalies staged under ``dataset_dir``."""
    rows = []
    for f in frames:
        rel = str(Path(f["path"]).relative_to(dataset_dir))
        rows.append((rel, NORMAL, f["video_id"], f["frame_index"], f["timestamp_s"], NORMAL_FAMILY, "{}"))
    for a in anomalies:
        rows.append((a.path, ABNORMAL, a.video_id, a.frame_index, a.timestamp_s, a.family, a.family_params))
    table = pd.DataFrame(rows, columns=list(COLUMNS)[:7])
    table["group"] = [group_of(v, t, block_seconds) for v, t in zip(table.video_id, table.timestamp_s)]
    table["sha256"] = [sha256_file(dataset_dir / p) for p in table.image_path]
    return validate_manifest(table.sort_values("image_path", ignore_index=True), source=str(dataset_dir))


def validate_manifest(table: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Check the manifest contract and return it with canonical dtypes.

    Raises:
        LabelManifestError: missing columns, an unknown label, a normal image with a family,
            or a duplicate image path.
    """
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        msg = f"{source}: label manifest lacks columns {missing}; expected {list(COLUMNS)}"
        raise LabelManifestError(msg)
    try:
        table = table[list(COLUMNS)].astype(COLUMNS)
    except (ValueError, TypeError) as exc:
        msg = f"{source}: label manifest has values of the wrong type: {exc}"
        raise LabelManifestError(msg) from exc
    bad = table[~table.label.isin(list(LABEL_NAMES))]
    if len(bad):
        msg = f"{source}: unknown label(s) {sorted(bad.label.unique().tolist())} for {bad.image_path.iloc[0]!r}; labels are 0 (abnormal) and 1 (normal)"
        raise LabelManifestError(msg)
    wrong = table[(table.label == NORMAL) != (table.family == NORMAL_FAMILY)]
    if len(wrong):
        msg = f"{source}: {wrong.image_path.iloc[0]!r} has label {wrong.label.iloc[0]} but family {wrong.family.iloc[0]!r}"
        raise LabelManifestError(msg)
    dup = table[table.image_path.duplicated()]
    if len(dup):
        msg = f"{source}: duplicate image {dup.image_path.iloc[0]!r} in the label manifest"
        raise LabelManifestError(msg)
    return table


def write_manifest(table: pd.DataFrame, path: Path) -> Path:
    """Validate and write the manifest as CSV."""
    validate_manifest(table, source=str(path)).to_csv(path, index=False)
    return path


def read_manifest(path: Path) -> pd.DataFrame:
    """Read and validate a manifest CSV."""
    if not path.is_file():
        msg = f"{path}: label manifest not found"
        raise LabelManifestError(msg)
    return validate_manifest(pd.read_csv(path, dtype=str, keep_default_na=False), source=str(path))
