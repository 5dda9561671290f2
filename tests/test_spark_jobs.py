"""The Spark ETL and augmentation jobs on a tiny dataset (one Spark session for the module)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from swan_anomaly.anomalies import synthesize_dataset
from swan_anomaly.augment import TRAIN_AUGMENTATIONS, run_augmentation
from swan_anomaly.etl import run_etl
from swan_anomaly.images import decode_image
from swan_anomaly.labels import build_manifest, write_manifest
from swan_anomaly.lake import LocalLake, sha256_file
from swan_anomaly.video import extract_frames

DATASET = "20261125"


@pytest.fixture(scope="module")
def lake(tmp_path_factory, demo_video) -> LocalLake:
    """A lake holding one raw dataset with a corrupt labelled image and an unlabelled image."""
    root = tmp_path_factory.mktemp("lake")
    ds = tmp_path_factory.mktemp("staging") / DATASET
    frames = [f.to_dict() for f in extract_frames(demo_video, ds / "frames", every_seconds=1.0)]
    anomalies = synthesize_dataset(frames, ds, anomaly_ratio=0.5, seed=11)
    table = build_manifest(frames, anomalies, ds, block_seconds=4.0)
    bad = ds / "frames" / frames[0]["video_id"] / "frame_99999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    row = table.iloc[[0]].assign(image_path=str(bad.relative_to(ds)), frame_index=99999, sha256=sha256_file(bad))
    write_manifest(pd.concat([table, row], ignore_index=True), ds / "labels.csv")
    (ds / "frames" / "stray.png").write_bytes((ds / table.image_path.iloc[1]).read_bytes())
    lake = LocalLake(root)
    lake.put_dataset(ds, DATASET)
    return lake


def _digest(frame: pd.DataFrame, key: str) -> list[tuple[str, str]]:
    return sorted((k, hashlib.sha256(bytes(c)).hexdigest()) for k, c in zip(frame[key], frame.content))


def test_etl_crops_resizes_quarantines_and_reports(spark, lake):
    report = run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, spark=spark)
    assert report["silver_rows"] == 40
    assert report["rows_by_label"] == {"0": 20, "1": 20}
    assert [q["image_path"] for q in report["quarantined"]] == [f"frames/{report['quarantined'][0]['image_path'].split('/')[1]}/frame_99999.png"]
    assert "not a decodable image" in report["quarantined"][0]["reason"]
    assert report["unlabelled_images"] == ["frames/stray.png"]
    silver = pd.read_parquet(lake.silver / f"dataset_id={DATASET}")
    assert len(silver) == 40 and silver.image_path.is_unique
    assert {decode_image(bytes(c)).shape for c in silver.content} == {(32, 32, 3)}


def test_etl_rerun_rewrites_its_partition_only(spark, lake):
    first = _digest(pd.read_parquet(lake.silver / f"dataset_id={DATASET}"), "image_path")
    other = lake.silver / "dataset_id=19990101"
    shutil.copytree(lake.silver / f"dataset_id={DATASET}", other)
    kept = sorted(p.name for p in other.iterdir())
    run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, spark=spark)
    assert _digest(pd.read_parquet(lake.silver / f"dataset_id={DATASET}"), "image_path") == first
    assert sorted(p.name for p in other.iterdir()) == kept


def test_augmentation_splits_by_group_and_is_reproducible(spark, lake):
    report = run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    gold = pd.read_parquet(lake.gold / f"dataset_id={DATASET}")
    assert len(gold) == report["gold_rows"] and gold.sample_id.is_unique
    assert gold.groupby("group").split.nunique().max() == 1, "a group sits in two splits"
    train = gold[gold.split == "train"]
    assert set(train.aug) == set(TRAIN_AUGMENTATIONS)
    assert set(gold[gold.split != "train"].aug) == {"none"}
    for label in (0, 1):  # both classes get the same operations
        assert train[train.label == label].aug.value_counts().to_dict() == {a: (train.label == label).sum() // 4 for a in TRAIN_AUGMENTATIONS}
    flipped = train[train.aug == "hflip"].iloc[0]
    original = gold[(gold.image_path == flipped.image_path) & (gold.aug == "none")].iloc[0]
    a, b = decode_image(bytes(flipped.content)).astype(int), decode_image(bytes(original.content))[:, ::-1].astype(int)
    assert np.abs(a - b).mean() < 3  # a flip, up to one JPEG pass
    before = _digest(gold, "sample_id")
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    try:
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
    assert _digest(pd.read_parquet(lake.gold / f"dataset_id={DATASET}"), "sample_id") == before
