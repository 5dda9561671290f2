"""Augmentation job: silver images -> gold training set with a split column (Spark pandas UDF).

Splits are assigned per source group (:mod:`swan_anomaly.splits`), with the fixed
:data:`~swan_anomaly.splits.SPLIT_SEED`; a rebuilt partition (more video landed for its date, a
rerun with another seed) keeps every group of its earlier build in the split it had
(:func:`earlier_splits`), so no model is ever judged on rows it trained on. Only the train split is
augmented, and both classes get exactly the same operations. Every random choice is seeded
from the row's identity (image, operation, variant), so reruns and repartitioning produce
the same bytes.

JPEG passes: silver images were JPEG-encoded once by the ETL. ``none`` rows keep those bytes;
every other operation decodes, transforms and encodes once more, for both classes alike, so
the number of JPEG passes never tells the classes apart. Geometric operations fill with
reflected pixels, never black corners.

Class ratio: with ``target_abnormal_share`` the minority class of the train split gets extra
variants (the same operations again with new random draws, ``variant`` 1, 2, ...) until the
share is as close as whole variants per image allow. Nothing is dropped and every row has its
own ``sample_id``, so no variant overwrites another.

Example:
    >>> report = run_augmentation(lake_root=Path(".swan/lake"), dataset_id="20261126", seed=42)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from swan_anomaly._errors import JobError
from swan_anomaly.anomalies import stable_seed
from swan_anomaly.images import JPEG_QUALITY, decode_image, encode_jpeg
from swan_anomaly.contract import ABNORMAL, NORMAL
from swan_anomaly.lake import LocalLake
from swan_anomaly.gate import MIN_IMAGES_PER_CLASS
from swan_anomaly.splits import MIN_HELD_OUT_IMAGES, SPLIT_SEED, Split, assign_splits, frames_beside_held_out, split_shortfalls

log = logging.getLogger(__name__)

#: Every operation this job knows.
AUGMENTATIONS = ("none", "hflip", "vflip", "rot90", "rot180", "rot270", "affine", "color")

#: The default set applied to every train image, both classes alike ("none" keeps the original).
TRAIN_AUGMENTATIONS = ("none", "hflip", "rot180", "affine", "color")


#: The images each held-out split is corrected towards: what the gate needs to measure a model (twice its default images per
#: class, ``SWAN_GATE_MIN_IMAGES_PER_CLASS``), so that a day of footage the fractions leave a block short still gets a verdict.
HELD_OUT_IMAGES = max(MIN_HELD_OUT_IMAGES, 2 * MIN_IMAGES_PER_CLASS)


def _affine(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Squash-and-skew: independent x/y scale and a shear about the centre, reflected borders."""
    import cv2

    h, w = image.shape[:2]
    sx, sy = rng.uniform(0.85, 1.15, size=2)
    shear = rng.uniform(-0.2, 0.2)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = np.array([[sx, shear, 0.0], [0.0, sy, 0.0]])
    m[:, 2] = [cx - sx * cx - shear * cy, cy - sy * cy]
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def augment_image(image: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one named augmentation to an RGB ``[H, W, 3]`` uint8 image (square for rot90/rot270).

    Example:
        >>> img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        >>> bool((augment_image(img, "rot180", np.random.default_rng(0)) == img[::-1, ::-1]).all())
        True
    """
    if op == "none":
        return image
    if op == "hflip":
        return np.ascontiguousarray(image[:, ::-1])
    if op == "vflip":
        return np.ascontiguousarray(image[::-1])
    if op in ("rot90", "rot180", "rot270"):
        return np.ascontiguousarray(np.rot90(image, k={"rot90": 1, "rot180": 2, "rot270": 3}[op]))
    if op == "affine":
        return _affine(image, rng)
    if op == "color":
        contrast = rng.uniform(0.75, 1.25)
        brightness = rng.uniform(-25, 25)
        mean = image.mean()
        return np.clip((image.astype(np.float32) - mean) * contrast + mean + brightness, 0, 255).astype(np.uint8)
    msg = f"unknown augmentation {op!r}; known: {AUGMENTATIONS}"
    raise ValueError(msg)


def make_augment_udf(seed: int, quality: int):
    """A pandas UDF ``(content, aug, variant, image_path) -> content`` seeded per row."""

    @F.pandas_udf(T.BinaryType())
    def augment(content: pd.Series, aug: pd.Series, variant: pd.Series, key: pd.Series) -> pd.Series:
        import cv2

        cv2.setNumThreads(1)
        out = []
        for data, op, v, k in zip(content, aug, variant, key):
            if op == "none":
                out.append(bytes(data))
                continue
            rng = np.random.default_rng(stable_seed(seed, k, op) if v == 0 else stable_seed(seed, k, op, v))
            out.append(encode_jpeg(augment_image(decode_image(bytes(data), name=k), op, rng), quality=quality))
        return pd.Series(out)

    return augment


def variant_plan(
    train_counts: dict[int, int], augmentations: tuple[str, ...], target_abnormal_share: float | None
) -> dict[int, list[tuple[str, int]]]:
    """``label -> [(operation, variant), ...]`` applied to each train image of that label.

    Both labels get every operation once; with a target share the minority label also gets
    extra variants of the non-``none`` operations.

    Example:
        >>> variant_plan({0: 10, 1: 30}, ("none", "hflip"), 0.5)[0]
        [('none', 0), ('hflip', 0), ('hflip', 1), ('hflip', 2), ('hflip', 3), ('hflip', 4)]
    """
    base = [(op, 0) for op in augmentations]
    plan = {ABNORMAL: list(base), NORMAL: list(base)}
    n0, n1 = train_counts.get(ABNORMAL, 0), train_counts.get(NORMAL, 0)
    if target_abnormal_share is None or not n0 or not n1:
        return plan
    if not 0 < target_abnormal_share < 1:
        msg = f"target_abnormal_share must be in (0, 1), got {target_abnormal_share}"
        raise ValueError(msg)
    k = len(base)
    extra_ops = [op for op in augmentations if op != "none"]
    # rows per image of the minority label so that its share of all train rows is the target
    if n0 / (n0 + n1) < target_abnormal_share:
        minority, rows = ABNORMAL, target_abnormal_share * n1 * k / ((1 - target_abnormal_share) * n0)
    else:
        minority, rows = NORMAL, (1 - target_abnormal_share) * n0 * k / (target_abnormal_share * n1)
    extra = max(0, round(rows) - k)
    if extra and not extra_ops:
        msg = "a class-ratio target needs at least one augmentation besides 'none'"
        raise ValueError(msg)
    plan[minority] += [(extra_ops[j % len(extra_ops)], 1 + j // len(extra_ops)) for j in range(extra)]
    return plan


def with_splits(images: DataFrame, splits: DataFrame) -> DataFrame:
    """Attach the split of each image's group."""
    return images.join(F.broadcast(splits), on="group", how="inner")


def expand_augmentations(images: DataFrame, plan: dict[int, list[tuple[str, int]]]) -> DataFrame:
    """One row per (train image, operation, variant) of its label's plan; val and test keep only ``none``."""
    spark = images.sparkSession
    ops = spark.createDataFrame(
        [(label, op, v) for label, pairs in sorted(plan.items()) for op, v in pairs], "label long, aug string, variant int"
    )
    train = images.where(F.col("split") == Split.TRAIN.value).join(F.broadcast(ops), on="label")
    rest = images.where(F.col("split") != Split.TRAIN.value).withColumn("aug", F.lit("none")).withColumn("variant", F.lit(0))
    return train.unionByName(rest)


def _without_frames_beside_held_out(images: DataFrame, dataset_id: str) -> tuple[DataFrame, int]:
    """``images`` without the training frames (and their anomalous copies) next to a held-out frame; and how many frames.

    Kept when leaving them out would leave training without a class (data too small to spare them).
    """
    frames = images.select("video_id", "frame_index", "split", "label").distinct().collect()
    beside = frames_beside_held_out({(r.video_id, r.frame_index, r.split) for r in frames})
    if not beside:
        return images, 0
    left = {int(r.label) for r in frames if r.split == Split.TRAIN.value and (r.video_id, r.frame_index) not in beside}
    if not {ABNORMAL, NORMAL} <= left:
        log.warning(
            "augmentation %s: %d training frames sit next to held-out ones, kept: training would lack a class", dataset_id, len(beside)
        )
        return images, 0
    log.info("augmentation %s: %d training frames next to a held-out frame left out of training (near-duplicates)", dataset_id, len(beside))
    spark = images.sparkSession
    apart = spark.createDataFrame(sorted(beside), "video_id string, frame_index long").withColumn("split", F.lit(Split.TRAIN.value))
    return images.join(F.broadcast(apart), on=["video_id", "frame_index", "split"], how="left_anti"), len(beside)


def earlier_splits(lake: LocalLake, dataset_id: str) -> dict[str, str]:
    """``{group: split}`` of the dataset's gold partition as its last build left it (the files Spark committed); empty when none.

    What a rebuild keeps: a model trained on the earlier build trained on its train groups, and the
    gate and the endpoint validation score models on the held-out ones.
    """
    if not lake.gold_partition(dataset_id).is_dir():
        return {}
    rows = lake.read_gold(dataset_id, columns=["group", "split"]).drop_duplicates()
    if rows.group.duplicated().any():  # not written by this job: a group sits in two splits
        msg = f"{lake.gold_partition(dataset_id)}: a group sits in two splits: {sorted(rows.group[rows.group.duplicated()])[:5]}"
        raise JobError(msg)
    return dict(zip(rows.group, rows.split, strict=True))


def run_augmentation(
    *,
    lake_root: Path,
    dataset_id: str,
    seed: int = 42,
    jpeg_quality: int = JPEG_QUALITY,
    augmentations: tuple[str, ...] = TRAIN_AUGMENTATIONS,
    target_abnormal_share: float | None = None,
    partitions: int | None = None,
    spark: SparkSession | None = None,
) -> dict:
    """Build the gold training set of one dataset and return its report (rows per split and label).

    Args:
        augmentations: operations for every train image (must include ``none``, the original).
        target_abnormal_share: wanted share of abnormal rows in the train split (None: as is).
        partitions: Spark partitions for the transform; the output does not depend on it.
    """
    from swan_anomaly.spark import build_spark, progress

    unknown = sorted(set(augmentations) - set(AUGMENTATIONS))
    if unknown or "none" not in augmentations:
        msg = f"augmentations must include 'none' and come from {AUGMENTATIONS}; got {augmentations}"
        raise ValueError(msg)
    lake = LocalLake(lake_root)
    spark = spark or build_spark("swan-augment")
    partition = lake.silver_partition(dataset_id)
    # the upload the ETL made this silver from, recorded with the gold (the raw partition may have been uploaded again since)
    raw_manifest = lake.silver_built_from(dataset_id) or lake.raw_manifest_digest(dataset_id)
    if not partition.is_dir():
        msg = f"{partition}: no silver images for dataset {dataset_id!r}; run the ETL job first"
        raise JobError(msg)
    # Read the one partition directly: no schema inference across other datasets, and
    # dataset_id stays a string (partition discovery would turn 20261126 into an integer).
    silver = spark.read.parquet(str(partition)).withColumn("dataset_id", F.lit(dataset_id))
    sizes: dict[str, dict[int, int]] = {}  # {group: {label: images}}: splits reach their minimum images and both classes
    for r in silver.groupBy("group", "label").count().collect():
        sizes.setdefault(r.group, {})[int(r.label)] = int(r["count"])
    if not sizes:
        msg = f"{lake.silver}: no silver rows for dataset {dataset_id!r}; run the ETL job first"
        raise JobError(msg)
    earlier = earlier_splits(lake, dataset_id)
    if earlier:
        log.info("augmentation %s: %d groups keep the splits of the partition's earlier build", dataset_id, len(set(earlier) & set(sizes)))
    # SPLIT_SEED, not the run's seed; logs a warning for each held-out split short of its minimums
    split_of = assign_splits(sizes, seed=SPLIT_SEED, keep=earlier, min_images=HELD_OUT_IMAGES)
    splits = spark.createDataFrame(sorted(split_of.items()), ["group", "split"])
    images = with_splits(silver, splits)
    images, set_apart = _without_frames_beside_held_out(images, dataset_id)
    train_counts = {r.label: int(r["count"]) for r in images.where(F.col("split") == Split.TRAIN.value).groupBy("label").count().collect()}
    plan = variant_plan(train_counts, tuple(augmentations), target_abnormal_share)
    rows = expand_augmentations(images, plan)
    if partitions:
        rows = rows.repartition(partitions, "image_path", "aug", "variant")
    augment = make_augment_udf(seed, jpeg_quality)
    sample_id = F.when(F.col("variant") == 0, F.concat_ws("#", "image_path", "aug")).otherwise(
        F.concat_ws("#", "image_path", "aug", F.col("variant").cast("string"))
    )
    gold = (
        rows.withColumn("content", augment("content", "aug", "variant", "image_path"))
        .withColumn("sample_id", sample_id)
        .select(
            "sample_id",
            "image_path",
            "content",
            "label",
            "family",
            "group",
            "split",
            "aug",
            "variant",
            "video_id",
            "frame_index",
            "source_sha256",  # of the raw image the row was made from: what the gate and endpoint validation check
            "dataset_id",
        )
    )
    source_images = sum(n for by_label in sizes.values() for n in by_label.values())
    per_label = {label: len(variants) for label, variants in sorted(plan.items())}
    log.info(
        "augmentation %s: %d silver images in %d groups; variants per training image by label: %s",
        dataset_id,
        source_images,
        len(sizes),
        per_label,
    )
    with progress(spark, f"augmentation {dataset_id} augment and write gold", source_images, unit="source images"):
        gold.orderBy("sample_id").write.mode("overwrite").partitionBy("dataset_id").parquet(str(lake.gold))
    written = spark.read.parquet(str(lake.gold_partition(dataset_id)))
    # the files Spark reads there: on Databricks a failed attempt's uncommitted files may lie beside them
    lake.write_gold_listing(dataset_id, {uri.rsplit("/", 1)[-1] for uri in written.inputFiles()}, raw_manifest=raw_manifest)
    counts = written.groupBy("split", "label").count().collect()
    by_split: dict[str, dict[str, int]] = {}
    for r in counts:
        by_split.setdefault(r.split, {})[str(r.label)] = int(r["count"])
    for split in Split:
        labels = by_split.get(split.value, {})
        if split is not Split.TRAIN and ("0" not in labels or "1" not in labels):
            log.warning("split %s lacks a class: %s", split.value, labels)
    train = by_split.get(Split.TRAIN.value, {})
    train_rows = sum(train.values())
    report = {
        "dataset_id": dataset_id,
        "gold_path": str(lake.gold),
        "gold_rows": int(sum(sum(v.values()) for v in by_split.values())),
        "rows_by_split_label": dict(sorted(by_split.items())),
        "groups_by_split": {s.value: sorted(g for g, sp in split_of.items() if sp == s.value) for s in Split},
        "split_shortfalls": split_shortfalls(split_of, sizes, min_images=HELD_OUT_IMAGES),
        "augmentations": list(augmentations),
        "variants_per_image": {str(label): len(pairs) for label, pairs in sorted(plan.items())},
        "target_abnormal_share": target_abnormal_share,
        "train_abnormal_share": round(train.get(str(ABNORMAL), 0) / train_rows, 4) if train_rows else math.nan,
        "seed": seed,
        "split_seed": SPLIT_SEED,
        "groups_kept": len(set(earlier) & set(sizes)),  # from the partition's earlier build, in the splits they had
        "train_frames_set_apart": set_apart,  # next to a held-out frame: left out of training
    }
    log.info("augmentation %s: %d gold rows %s", dataset_id, report["gold_rows"], report["rows_by_split_label"])
    return report
