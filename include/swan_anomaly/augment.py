"""Augmentation job: silver images -> gold training set with a split column (Spark pandas UDF).

Splits are assigned per source group (:mod:`swan_anomaly.splits`). Only the train split is
augmented, and both classes get exactly the same operations. Every random choice is seeded
from the row's identity, so reruns and repartitioning produce the same bytes.

Example:
    >>> report = run_augmentation(lake_root=Path(".swan/lake"), dataset_id="20261126", seed=42)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from swan_anomaly._errors import JobError
from swan_anomaly.anomalies import stable_seed
from swan_anomaly.images import decode_image, encode_jpeg
from swan_anomaly.lake import LocalLake
from swan_anomaly.splits import Split, assign_splits

log = logging.getLogger(__name__)

#: Augmentations applied to every train image, both classes alike ("none" keeps the original).
TRAIN_AUGMENTATIONS = ("none", "hflip", "rot180", "jitter")


def augment_image(image: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one named augmentation to an RGB ``[H, W, 3]`` uint8 image."""
    if op == "none":
        return image
    if op == "hflip":
        return np.ascontiguousarray(image[:, ::-1])
    if op == "rot180":
        return np.ascontiguousarray(image[::-1, ::-1])
    if op == "jitter":
        gain = rng.uniform(0.8, 1.2)
        bias = rng.uniform(-20, 20)
        return np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    msg = f"unknown augmentation {op!r}; known: {TRAIN_AUGMENTATIONS}"
    raise ValueError(msg)


def make_augment_udf(seed: int, quality: int):
    """A pandas UDF ``(content, aug, image_path) -> content`` seeded per row."""

    @F.pandas_udf(T.BinaryType())
    def augment(content: pd.Series, aug: pd.Series, key: pd.Series) -> pd.Series:
        out = []
        for data, op, k in zip(content, aug, key):
            if op == "none":
                out.append(bytes(data))
                continue
            rng = np.random.default_rng(stable_seed(seed, k, op))
            out.append(encode_jpeg(augment_image(decode_image(bytes(data), name=k), op, rng), quality=quality))
        return pd.Series(out)

    return augment


def with_splits(images: DataFrame, splits: DataFrame) -> DataFrame:
    """Attach the split of each image's group."""
    return images.join(F.broadcast(splits), on="group", how="inner")


def expand_augmentations(images: DataFrame, augmentations: tuple[str, ...] = TRAIN_AUGMENTATIONS) -> DataFrame:
    """One row per (train image, augmentation); val and test rows keep only ``none``."""
    spark = images.sparkSession
    ops = spark.createDataFrame([(a,) for a in augmentations], ["aug"])
    train = images.where(F.col("split") == Split.TRAIN.value).crossJoin(F.broadcast(ops))
    rest = images.where(F.col("split") != Split.TRAIN.value).withColumn("aug", F.lit("none"))
    return train.unionByName(rest)


def run_augmentation(
    *, lake_root: Path, dataset_id: str, seed: int = 42, jpeg_quality: int = 95, spark: SparkSession | None = None
) -> dict:
    """Build the gold training set of one dataset and return its report (rows per split and label)."""
    from swan_anomaly.spark import build_spark

    lake = LocalLake(lake_root)
    spark = spark or build_spark("swan-augment")
    partition = lake.silver / f"dataset_id={dataset_id}"
    if not partition.is_dir():
        msg = f"{partition}: no silver images for dataset {dataset_id!r}; run the ETL job first"
        raise JobError(msg)
    # Read the one partition directly: no schema inference across other datasets, and
    # dataset_id stays a string (partition discovery would turn 20261126 into an integer).
    silver = spark.read.parquet(str(partition)).withColumn("dataset_id", F.lit(dataset_id))
    groups = sorted(r.group for r in silver.select("group").distinct().collect())
    if not groups:
        msg = f"{lake.silver}: no silver rows for dataset {dataset_id!r}; run the ETL job first"
        raise JobError(msg)
    split_of = assign_splits(groups, seed=seed)
    splits = spark.createDataFrame(sorted(split_of.items()), ["group", "split"])
    rows = expand_augmentations(with_splits(silver, splits))
    augment = make_augment_udf(seed, jpeg_quality)
    gold = (
        rows.withColumn("content", augment("content", "aug", "image_path"))
        .withColumn("sample_id", F.concat_ws("#", "image_path", "aug"))
        .select("sample_id", "image_path", "content", "label", "family", "group", "split", "aug", "video_id", "frame_index", "dataset_id")
    )
    gold.orderBy("sample_id").write.mode("overwrite").partitionBy("dataset_id").parquet(str(lake.gold))
    written = spark.read.parquet(str(lake.gold / f"dataset_id={dataset_id}"))
    counts = written.groupBy("split", "label").count().collect()
    by_split: dict[str, dict[str, int]] = {}
    for r in counts:
        by_split.setdefault(r.split, {})[str(r.label)] = int(r["count"])
    for split in Split:
        labels = by_split.get(split.value, {})
        if split is not Split.TRAIN and ("0" not in labels or "1" not in labels):
            log.warning("split %s lacks a class: %s", split.value, labels)
    report = {
        "dataset_id": dataset_id,
        "gold_path": str(lake.gold),
        "gold_rows": int(sum(sum(v.values()) for v in by_split.values())),
        "rows_by_split_label": dict(sorted(by_split.items())),
        "groups_by_split": {s.value: sorted(g for g, sp in split_of.items() if sp == s.value) for s in Split},
        "augmentations": list(TRAIN_AUGMENTATIONS),
        "seed": seed,
    }
    log.info("augmentation %s: %d gold rows %s", dataset_id, report["gold_rows"], report["rows_by_split_label"])
    return report
