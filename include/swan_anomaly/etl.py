"""ETL job: raw frames + labels -> silver images at model resolution (Spark).

Steps: list images with the ``binaryFile`` source, join the label manifest, crop around a
biased centre, resize with area interpolation, JPEG-encode, and write Parquet partitioned by
``dataset_id`` with dynamic partition overwrite (a rerun replaces its partition).

Nothing good is lost to something bad: an image that cannot be decoded, is over the size
limit or declares a decompression bomb, an image without a label and a label without an image
each become a row of ``quarantine/images/dataset_id=.../`` naming the file, the stage and the reason,
while every good image reaches silver. ``on_label_mismatch="fail"`` turns join mismatches
into an error instead. When no image at all is good, the dataset's silver and gold partitions
are removed (they belong to an older upload of the same date) and the job fails for good:
stale rows never pass for new data.

The transforms are pure ``DataFrame -> DataFrame`` functions; :func:`run_etl` is the only
place that reads and writes.

Example:
    >>> report = run_etl(lake_root=Path(".swan/lake"), dataset_id="20261126", image_size=64)  # doctest: +SKIP
    >>> report["silver_rows"]                                                                # doctest: +SKIP
    192
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from swan_anomaly._errors import ImageDecodeError, JobError
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y
from swan_anomaly.images import JPEG_QUALITY, crop_and_resize, decode_image, encode_jpeg
from swan_anomaly.labels import read_manifest
from swan_anomaly.lake import LocalLake

log = logging.getLogger(__name__)

IMAGE_GLOB = "*.{png,jpg,jpeg,PNG,JPG,JPEG}"

#: Files larger than this are quarantined without being decoded.
MAX_IMAGE_BYTES = 64 * 1024 * 1024

QUARANTINE_COLUMNS = ("image_path", "stage", "reason")

SILVER_SCHEMA = T.StructType(
    [
        T.StructField("image_path", T.StringType()),
        T.StructField("content", T.BinaryType()),
        T.StructField("label", T.LongType()),
        T.StructField("family", T.StringType()),
        T.StructField("group", T.StringType()),
        T.StructField("video_id", T.StringType()),
        T.StructField("frame_index", T.LongType()),
        T.StructField("source_sha256", T.StringType()),
        T.StructField("error", T.StringType()),
    ]
)


def list_images(spark: SparkSession, raw_dir: str) -> DataFrame:
    """All image files under a raw dataset directory: path relative to it and size in bytes.

    The ``binaryFile`` source lists them; its ``content`` column is not selected, so no file is
    read here. The transform reads each file in the Python worker that processes it, which
    keeps image bytes out of the JVM and out of any shuffle.
    """
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").option("pathGlobFilter", IMAGE_GLOB).load(raw_dir)
    prefix = raw_dir.rstrip("/").split(":", 1)[-1].lstrip("/")
    quoted = r"\Q" + prefix.replace(r"\E", r"\E\\E\Q") + r"\E"  # a literal in Java's regex: c++, (prod), $HOME...
    rel = F.regexp_replace(F.col("path"), r"^[a-z]+:/*" + quoted + "/", "")
    return files.select(rel.alias("image_path"), "length")


def join_labels(images: DataFrame, labels: DataFrame) -> DataFrame:
    """The listed images that have a label, with their label columns.

    The label table is small and broadcast, and the listing carries paths and sizes only, so no
    image byte is shuffled.
    """
    return images.join(F.broadcast(labels), on="image_path", how="inner")


#: ``errno`` values of a read that say what the *file* is (a directory, a link loop), not how the storage
#: or its rights are: only these set a file aside as unreadable. Any other read error (an I/O error, a
#: stale mount, missing rights on a new cluster or volume) fails the job naming the file, and nothing
#: already in silver or gold is dropped for it.
UNREADABLE_FILE_ERRNOS = frozenset({errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})


def unreadable_file(exc: OSError) -> bool:
    """Whether a failed read says the file itself can never be read as an image (it is set aside, the rest goes on).

    Example:
        >>> unreadable_file(OSError(errno.ELOOP, "Too many levels of symbolic links"))
        True
        >>> unreadable_file(OSError(errno.EIO, "Input/output error")), unreadable_file(PermissionError(errno.EACCES, "no"))
        (False, False)
    """
    return exc.errno in UNREADABLE_FILE_ERRNOS


def encode_image(data: bytes, path: str, *, size: int, bias_x: float, bias_y: float, quality: int) -> tuple[bytes | None, str | None]:
    """``(JPEG at the model's size, None)`` of one image's bytes, or ``(None, why)`` when the image itself is bad.

    Only what the bytes cause (:class:`~swan_anomaly.ImageDecodeError`, an OpenCV error) is a
    quarantine reason; anything else (a worker out of memory, a bug) says nothing about the image
    and is raised: the job fails, named and retried, instead of setting good images aside.
    """
    import cv2

    try:
        img = crop_and_resize(decode_image(data, name=path), size=size, bias_x=bias_x, bias_y=bias_y)
        return encode_jpeg(img, quality=quality), None
    except (ImageDecodeError, cv2.error) as exc:
        if isinstance(exc, cv2.error) and getattr(exc, "code", None) == cv2.Error.StsNoMem:
            raise  # OpenCV out of memory: the worker, not the image

        return None, f"{type(exc).__name__}: {exc}"


def crop_resize_encode(
    images: DataFrame, raw_dir: str, *, size: int, bias_x: float, bias_y: float, quality: int, max_bytes: int = MAX_IMAGE_BYTES
) -> DataFrame:
    """Read, decode, crop, resize and JPEG-encode each image (``mapInPandas`` over Arrow batches).

    Args:
        images: labelled rows with ``image_path`` (relative to ``raw_dir``) and ``length``.
        raw_dir: the raw partition as the workers see it (a local or volume path).

    Images that cannot be processed keep their row with ``content = null`` and the reason in
    ``error``; files over ``max_bytes`` are not even read. So does a path that is no file to read
    (a directory, a link loop: :func:`unreadable_file`). Any other read error (an I/O error, a
    stale mount, missing rights) fails the job instead, naming the file: it says nothing about the
    image, and quarantining every image of a date for it would drop the date's silver and gold.
    """

    def transform(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import cv2

        cv2.setNumThreads(1)  # Spark runs one task per core; OpenCV threads would oversubscribe
        for pdf in batches:
            contents, errors = [], []
            for path, length in zip(pdf["image_path"], pdf["length"]):
                if length > max_bytes:
                    contents.append(None)
                    errors.append(f"ImageDecodeError: {path}: file of {length:,} bytes is over the {max_bytes:,}-byte limit; not decoded")
                    continue
                try:
                    data = Path(raw_dir, path).read_bytes()
                except OSError as exc:
                    if not unreadable_file(exc):  # the storage or its rights, not the image: fail (retried), named
                        raise OSError(exc.errno, exc.strerror or str(exc), str(Path(raw_dir, path))) from exc
                    contents.append(None)
                    errors.append(f"{type(exc).__name__}: {path}: cannot read the file: {exc.strerror or exc}")
                    continue
                content, error = encode_image(data, path, size=size, bias_x=bias_x, bias_y=bias_y, quality=quality)
                contents.append(content)
                errors.append(error)
            out = pdf[[f.name for f in SILVER_SCHEMA.fields if f.name not in ("content", "error")]].copy()
            out["content"] = contents
            out["error"] = errors
            yield out[[f.name for f in SILVER_SCHEMA.fields]]

    cols = [F.col(f.name).cast(f.dataType) for f in SILVER_SCHEMA.fields if f.name not in ("content", "error")]
    return images.select(*cols, "length").mapInPandas(transform, schema=SILVER_SCHEMA)


def run_etl(
    *,
    lake_root: Path,
    dataset_id: str,
    image_size: int,
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
    jpeg_quality: int = JPEG_QUALITY,
    max_bytes: int = MAX_IMAGE_BYTES,
    on_label_mismatch: str = "quarantine",
    partitions: int | None = None,
    spark: SparkSession | None = None,
) -> dict:
    """Run the ETL for one dataset partition and return its report (row counts, quarantine).

    Args:
        on_label_mismatch: ``quarantine`` (default: images without a label and labels without
            an image become quarantine rows) or ``fail`` (raise, listing them).
        partitions: process the images in this many Spark tasks (default: two per core).
            The output does not depend on it.
    """
    from swan_anomaly.spark import build_spark, progress

    if on_label_mismatch not in ("quarantine", "fail"):
        msg = f"on_label_mismatch must be 'quarantine' or 'fail', got {on_label_mismatch!r}"
        raise ValueError(msg)
    if not 1 <= jpeg_quality <= 100:
        msg = f"jpeg_quality must be in 1..100, got {jpeg_quality}"
        raise ValueError(msg)
    lake = LocalLake(lake_root)
    raw_dir = lake.require_complete(dataset_id)
    raw_manifest = lake.raw_manifest_digest(dataset_id)  # the upload this silver is made from: the gold records it after
    manifest = read_manifest(raw_dir / "labels.csv")
    spark = spark or build_spark("swan-etl")
    labels = spark.createDataFrame(manifest.rename(columns={"sha256": "source_sha256"}).drop(columns=["family_params", "timestamp_s"]))
    listing = list_images(spark, str(raw_dir)).cache()
    listed = {r.image_path for r in listing.select("image_path").collect()}
    labelled_paths = set(manifest.image_path)
    missing_paths = sorted(labelled_paths - listed)
    # Spark's file sources skip zero-byte files; they are bad images, not missing ones.
    empty = [p for p in missing_paths if (raw_dir / p).is_file() and (raw_dir / p).stat().st_size == 0]
    missing_paths = [p for p in missing_paths if p not in empty]
    unlabelled_paths = sorted(listed - labelled_paths)
    log.info(
        "ETL %s: %d image files listed in %s, %d labelled (%d labels without an image)",
        dataset_id,
        len(listed),
        raw_dir,
        len(labelled_paths),
        len(missing_paths) + len(empty),
    )
    if on_label_mismatch == "fail" and (missing_paths or unlabelled_paths):
        msg = (
            f"{raw_dir}: labels and images do not match: {len(missing_paths)} labels without an image "
            f"(e.g. {missing_paths[:3]}), {len(unlabelled_paths)} images without a label (e.g. {unlabelled_paths[:3]})"
        )
        raise JobError(msg)
    # Even, small, sorted tasks: the listing's partitions follow file sizes, which would leave
    # cores idle at the end; ranges of image_path make each task's output a sorted slice, so
    # the silver files come out in order without shuffling any image after the transform.
    labelled = join_labels(listing, labels).repartitionByRange(partitions or 2 * spark.sparkContext.defaultParallelism, "image_path")
    processed = crop_resize_encode(
        labelled, str(raw_dir), size=image_size, bias_x=bias_x, bias_y=bias_y, quality=jpeg_quality, max_bytes=max_bytes
    ).cache()
    with progress(spark, f"ETL {dataset_id} decode, crop, resize", len(listed)):
        bad = sorted((r.image_path, r.error) for r in processed.where(F.col("error").isNotNull()).select("image_path", "error").collect())
    quarantine = (
        sorted(
            [(p, "decode", reason) for p, reason in bad] + [(p, "decode", f"ImageDecodeError: {p}: empty image (0 bytes)") for p in empty]
        )
        + [(p, "join", "label without an image: the manifest lists it but the lake has no such file") for p in missing_paths]
        + [(p, "join", "image without a label: not in labels.csv") for p in unlabelled_paths]
    )
    for path, stage, reason in quarantine:
        log.warning("quarantined %s (%s): %s", path, stage, reason)
    write_quarantine(lake, dataset_id, quarantine)
    bad_paths = {p for p, _ in bad}
    if not (manifest.image_path.isin(listed) & ~manifest.image_path.isin(bad_paths)).any():
        processed.unpersist()
        listing.unpersist()
        # Dynamic partition overwrite writes no partition for no rows: the previous silver (and the gold built
        # from it) would stay and pass for this upload's data. Remove both, then fail for good.
        dropped = lake.drop_derived(dataset_id)
        msg = (
            f"{raw_dir}: every one of the {len(manifest)} labelled images was quarantined ({len(quarantine)} quarantine rows in "
            f"{lake.quarantine / f'dataset_id={dataset_id}'}); no silver rows. "
            + (
                f"Removed the stale {' and '.join(dropped)} partitions of {dataset_id!r} so no old rows pass for this data. "
                if dropped
                else ""
            )
            + "Fix the upload and rerun the pipeline for this date."
        )
        raise JobError(msg)
    good = processed.where(F.col("error").isNull()).drop("error").withColumn("dataset_id", F.lit(dataset_id))
    kept = manifest[manifest.image_path.isin(listed) & ~manifest.image_path.isin(bad_paths)]
    with progress(spark, f"ETL {dataset_id} write silver", len(kept)):
        good.sortWithinPartitions("image_path").write.mode("overwrite").partitionBy("dataset_id").parquet(str(lake.silver))
    lake.write_silver_source(dataset_id, raw_manifest)
    processed.unpersist()
    listing.unpersist()
    counts = kept.label.value_counts().to_dict()
    report = {
        "dataset_id": dataset_id,
        "silver_path": str(lake.silver),
        "silver_rows": int(sum(counts.values())),
        "rows_by_label": {str(k): int(v) for k, v in sorted(counts.items())},
        "image_size": image_size,
        "crop_bias": [bias_x, bias_y],
        "jpeg_quality": jpeg_quality,
        "unlabelled_images": unlabelled_paths,
        "missing_images": missing_paths,
        "quarantined": [{"image_path": p, "stage": stage, "reason": r} for p, stage, r in quarantine],
        "quarantine_path": str(lake.quarantine),
    }
    log.info("ETL %s: %d silver rows %s, %d quarantined", dataset_id, report["silver_rows"], report["rows_by_label"], len(quarantine))
    return report


def write_quarantine(lake: LocalLake, dataset_id: str, rows: list[tuple[str, str, str]]) -> None:
    """Replace ``quarantine/images/dataset_id=.../`` with these rows (one small Parquet file; none when empty)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    partition = lake.quarantine / f"dataset_id={dataset_id}"
    shutil.rmtree(partition, ignore_errors=True)
    if not rows:
        return
    partition.mkdir(parents=True)
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(QUARANTINE_COLUMNS)})
    pq.write_table(table, partition / "part-00000.parquet")
