"""The Spark ETL and augmentation jobs on a tiny dataset (one Spark session for the module)."""

from __future__ import annotations

import hashlib
import re
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


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image)[1].tobytes()


def _bomb_png(width: int, height: int) -> bytes:
    """A small PNG file that declares (and would decode to) width x height grey pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(height)), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def bad_input_corpus(frame: np.ndarray) -> dict[str, tuple[bytes, str | None]]:
    """file name -> (bytes, expected quarantine reason or None when the file is good)."""
    import cv2

    rng = np.random.default_rng(3)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    rgba = np.dstack([frame, np.full(frame.shape[:2], 128, np.uint8)])
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "zero.png": (b"", "empty image (0 bytes)"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 20, "not a decodable image"),
        "bomb.png": (_bomb_png(8000, 7000), "over the 50,000,000-pixel limit"),
        "huge.png": (_png(rng.integers(0, 255, (700, 800, 3), dtype=np.uint8)), "over the 1,000,000-byte limit"),
        "alpha.png": (_png(rgba), None),
        "gray.png": (_png(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)), None),
        "deep16.png": (_png(frame.astype(np.uint16) * 257), None),
        "gray.jpg": (cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))[1].tobytes(), None),
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory, demo_video) -> LocalLake:
    """A lake holding one raw dataset: 20 frames, 20 anomalies, the bad-input corpus (labelled),
    an image without a label and a label without an image."""
    root = tmp_path_factory.mktemp("lake")
    ds = tmp_path_factory.mktemp("staging") / DATASET
    frames = [f.to_dict() for f in extract_frames(demo_video, ds / "frames", every_seconds=1.0)]
    anomalies = synthesize_dataset(frames, ds, anomaly_ratio=0.5, seed=11, families=["salt_pepper_polygons"])
    table = build_manifest(frames, anomalies, ds, block_seconds=4.0)
    corpus_dir = ds / "frames" / "corpus"
    corpus_dir.mkdir()
    rows = []
    normal = table[table.label == 1].iloc[[0]]
    frame = __import__("cv2").imread(str(ds / normal.image_path.iloc[0]))
    for i, (name, (data, _)) in enumerate(bad_input_corpus(frame).items()):
        (corpus_dir / name).write_bytes(data)
        rows.append(normal.assign(image_path=f"frames/corpus/{name}", frame_index=90000 + i, sha256=sha256_file(corpus_dir / name)))
    write_manifest(pd.concat([table, *rows], ignore_index=True), ds / "labels.csv")
    lake = LocalLake(root)
    lake.put_dataset(ds, DATASET)
    # What an upload refuses but a lake written by other tools may hold: a label without an image, an image without a label.
    raw = lake.raw(DATASET)
    ghost = normal.assign(image_path="frames/corpus/ghost.png", frame_index=99999, sha256="0" * 64)
    write_manifest(
        pd.concat([table, *rows, ghost], ignore_index=True), raw / "labels.csv", check_files=False
    )  # ghost.png is missing on purpose
    (raw / "frames" / "stray.png").write_bytes((ds / table.image_path.iloc[1]).read_bytes())
    return lake


def _digest(frame: pd.DataFrame, key: str) -> list[tuple[str, str]]:
    return sorted((k, hashlib.sha256(bytes(c)).hexdigest()) for k, c in zip(frame[key], frame.content))


def test_etl_quarantines_bad_input_and_keeps_every_good_file(spark, lake):
    report = run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, spark=spark)
    corpus = bad_input_corpus(np.zeros((240, 320, 3), np.uint8))
    good_corpus = {f"frames/corpus/{n}" for n, (_, reason) in corpus.items() if reason is None}
    assert report["silver_rows"] == 40 + len(good_corpus)
    assert report["rows_by_label"] == {"0": 20, "1": 20 + len(good_corpus)}
    reasons = {q["image_path"]: (q["stage"], q["reason"]) for q in report["quarantined"]}
    for name, (_, expected) in corpus.items():
        path = f"frames/corpus/{name}"
        if expected is None:
            assert path not in reasons
        else:
            assert reasons[path][0] == "decode" and expected in reasons[path][1] and name in reasons[path][1], reasons[path]
    assert reasons["frames/stray.png"] == ("join", "image without a label: not in labels.csv")
    assert reasons["frames/corpus/ghost.png"][0] == "join" and "label without an image" in reasons["frames/corpus/ghost.png"][1]
    silver = pd.read_parquet(lake.silver / f"dataset_id={DATASET}")
    assert len(silver) == report["silver_rows"] and silver.image_path.is_unique
    assert good_corpus <= set(silver.image_path)
    assert {decode_image(bytes(c)).shape for c in silver.content} == {(32, 32, 3)}
    quarantine = pd.read_parquet(lake.quarantine / f"dataset_id={DATASET}")
    assert sorted(zip(quarantine.image_path, quarantine.stage, quarantine.reason)) == sorted((p, st, r) for p, (st, r) in reasons.items())


def test_a_read_the_storage_may_get_through_later_fails_the_job_and_a_file_never_readable_is_quarantined(spark, tmp_path):
    """A read error said nothing about the image, yet its row was set aside as undecodable: after a storage hiccup good
    images left silver quietly, or all of them and the date's silver and gold were dropped for good."""
    from pyspark.errors import PythonException

    from swan_anomaly.etl import crop_resize_encode

    raw = tmp_path / "raw"
    (raw / "frames").mkdir(parents=True)
    (raw / "frames" / "corrupt.png").write_bytes(b"not an image at all")
    (raw / "frames" / "loop.png").symlink_to(raw / "frames" / "loop.png")  # never readable (ELOOP): quarantined
    (raw / "frames" / "eio.png").symlink_to("/proc/self/mem")  # reading it is an I/O error (EIO), as on a failing mount
    rows = [(f"frames/{name}", 1, "", "g", "v", 0, "x", 19) for name in ("corrupt.png", "loop.png", "eio.png")]
    columns = ["image_path", "label", "family", "group", "video_id", "frame_index", "source_sha256", "length"]
    images = spark.createDataFrame(rows, columns)

    def encoded(frame):
        return {r.image_path: r for r in crop_resize_encode(frame, str(raw), size=32, bias_x=0.5, bias_y=0.5, quality=90).collect()}

    kept = encoded(images.where("image_path != 'frames/eio.png'"))
    assert kept["frames/corrupt.png"].content is None and kept["frames/corrupt.png"].error.startswith("ImageDecodeError")
    loop = kept["frames/loop.png"]
    assert loop.content is None and "frames/loop.png: cannot read the file: Too many levels" in loop.error
    with pytest.raises(PythonException, match=r"Input/output error: '.*frames/eio\.png'"):
        encoded(images)


def test_a_lake_root_with_regex_characters_in_its_path_is_read_like_any_other(spark, lake, tmp_path):
    """The listing's paths were made relative with an unquoted Java regex: under /srv/c++/lake every image became "without
    a label" and every label "without an image", so the ETL dropped the date's silver and gold and failed for good."""
    root = tmp_path / "c++ lake (prod) $1"  # Hadoop globs [ ] { } * ?: such a path cannot be read at all
    shutil.copytree(lake.raw(DATASET), LocalLake(root).raw(DATASET))
    report = run_etl(lake_root=root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, spark=spark)
    good_corpus = [n for n, (_, reason) in bad_input_corpus(np.zeros((240, 320, 3), np.uint8)).items() if reason is None]
    assert report["silver_rows"] == 40 + len(good_corpus)
    assert {q["stage"] for q in report["quarantined"]} == {"decode", "join"}
    assert sorted(q["image_path"] for q in report["quarantined"] if q["stage"] == "join") == ["frames/corpus/ghost.png", "frames/stray.png"]


def test_only_what_an_image_s_bytes_cause_sets_it_aside(monkeypatch):
    """Any exception while encoding an image became its quarantine reason: a worker out of memory, or a bug, quietly
    dropped good images from silver (or all of them, and the date's silver and gold with them)."""
    import cv2

    from swan_anomaly import etl

    frame = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    content, error = etl.encode_image(frame, "frames/a.png", size=32, bias_x=0.5, bias_y=0.5, quality=90)
    assert error is None and decode_image(content).shape == (32, 32, 3)
    content, error = etl.encode_image(b"not an image", "frames/b.png", size=32, bias_x=0.5, bias_y=0.5, quality=90)
    assert content is None and error.startswith("ImageDecodeError: ") and "frames/b.png" in error

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 3 GiB")

    monkeypatch.setattr(etl, "crop_and_resize", out_of_memory)
    with pytest.raises(MemoryError):
        etl.encode_image(frame, "frames/a.png", size=32, bias_x=0.5, bias_y=0.5, quality=90)

    def opencv_out_of_memory(*args, **kwargs):  # how OpenCV reports a failed allocation: a cv2.error of code StsNoMem
        exc = cv2.error("OpenCV(4.x) alloc.cpp: error: (-4:Insufficient memory) Failed to allocate 3 GiB")
        exc.code = cv2.Error.StsNoMem
        raise exc

    monkeypatch.setattr(etl, "crop_and_resize", opencv_out_of_memory)
    with pytest.raises(cv2.error, match="Insufficient memory"):
        etl.encode_image(frame, "frames/a.png", size=32, bias_x=0.5, bias_y=0.5, quality=90)


def test_etl_can_fail_on_label_mismatch_instead(spark, lake):
    from swan_anomaly import JobError

    with pytest.raises(JobError, match=r"1 labels without an image .*ghost\.png.*1 images without a label .*stray\.png"):
        run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, on_label_mismatch="fail", spark=spark)


def test_an_all_quarantined_upload_never_lets_stale_rows_through(spark, lake, tmp_path):
    """Every image of a new upload of a date is bad: the date's older silver and gold must not pass for it."""
    from conftest import label_staged_images
    from swan_anomaly import JobError

    dataset = "20261124"
    old = pd.read_parquet(lake.silver_partition(DATASET)).head(6) if lake.silver_partition(DATASET).is_dir() else None
    if old is None:
        run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, spark=spark)
        old = pd.read_parquet(lake.silver_partition(DATASET)).head(6)
    for folder in (lake.silver_partition(dataset), lake.gold_partition(dataset)):  # rows of an earlier, good upload of the date
        folder.mkdir(parents=True)
        old.drop(columns=["dataset_id"], errors="ignore").to_parquet(folder / "part-00000.parquet", index=False)
    staging = tmp_path / dataset
    (staging / "frames" / "v1").mkdir(parents=True)
    for i in range(3):
        (staging / "frames" / "v1" / f"frame_{i:05d}.png").write_bytes(b"a camera wrote text, not an image\n" * 4)
    label_staged_images(staging)
    lake.put_dataset(staging, dataset)
    with pytest.raises(
        JobError, match=rf"every one of the 3 labelled images was quarantined.*Removed the stale silver and gold partitions of '{dataset}'"
    ):
        run_etl(lake_root=lake.root, dataset_id=dataset, image_size=32, spark=spark)
    assert not lake.silver_partition(dataset).exists() and not lake.gold_partition(dataset).exists()
    assert len(pd.read_parquet(lake.quarantine / f"dataset_id={dataset}")) == 3
    assert lake.silver_partition(DATASET).is_dir(), "another date's rows are untouched"
    with pytest.raises(JobError, match="no silver images"):
        run_augmentation(lake_root=lake.root, dataset_id=dataset, seed=1, spark=spark)


def _rows(partition) -> pd.DataFrame:
    frame = pd.read_parquet(partition)
    frame["content"] = [hashlib.sha256(bytes(c)).hexdigest() for c in frame.content]
    key = "sample_id" if "sample_id" in frame else "image_path"
    return frame.sort_values(key, ignore_index=True)


def test_etl_rerun_and_repartitioning_give_identical_rows_and_touch_no_other_partition(spark, lake):
    run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, spark=spark)
    first = _rows(lake.silver / f"dataset_id={DATASET}")
    other = lake.silver / "dataset_id=19990101"
    shutil.copytree(lake.silver / f"dataset_id={DATASET}", other)
    kept = sorted(p.name for p in other.iterdir())
    for partitions in (None, 3):
        run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, partitions=partitions, spark=spark)
        pd.testing.assert_frame_equal(_rows(lake.silver / f"dataset_id={DATASET}"), first)
    assert sorted(p.name for p in other.iterdir()) == kept
    shutil.rmtree(other)


def test_augmentation_splits_by_group_and_treats_both_classes_alike(spark, lake):
    report = run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    gold = pd.read_parquet(lake.gold / f"dataset_id={DATASET}")
    assert len(gold) == report["gold_rows"] and gold.sample_id.is_unique
    assert gold.groupby("group").split.nunique().max() == 1, "a group sits in two splits"
    train = gold[gold.split == "train"]
    assert set(gold[gold.split != "train"].aug) == {"none"}
    k = len(TRAIN_AUGMENTATIONS)
    for label in (0, 1):  # both classes get the same operations, once per image
        ops = train[train.label == label].aug.value_counts().to_dict()
        assert ops == {a: (train.label == label).sum() // k for a in TRAIN_AUGMENTATIONS}
    flipped = train[train.aug == "hflip"].iloc[0]
    original = gold[(gold.image_path == flipped.image_path) & (gold.aug == "none")].iloc[0]
    assert bytes(original.content) == bytes(
        pd.read_parquet(lake.silver / f"dataset_id={DATASET}").set_index("image_path").content[flipped.image_path]
    )
    a, b = decode_image(bytes(flipped.content)).astype(int), decode_image(bytes(original.content))[:, ::-1].astype(int)
    assert np.abs(a - b).mean() < 3  # a flip, up to one JPEG pass
    for row in train[train.aug == "affine"].itertuples():  # reflected borders: no black corners
        img = decode_image(bytes(row.content))
        assert min(img[:2, :2].mean(), img[:2, -2:].mean(), img[-2:, :2].mean(), img[-2:, -2:].mean()) > 12
    # every row names the raw image it was made from, by its bytes: what the gate and the endpoint validation check later
    raw = lake.raw(DATASET)
    assert all(gold.source_sha256 == gold.image_path.map(lambda p: sha256_file(raw / p)))


def test_no_training_frame_sits_next_to_a_held_out_frame_of_its_video(spark, lake):
    """Blocks go to splits whole, but the last frame of one block and the first of the next are one frame interval apart
    (0.5 s): a held-out frame had a near-duplicate in training, so held-out metrics overstated new footage."""
    report = run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    gold = pd.read_parquet(lake.gold / f"dataset_id={DATASET}", columns=["video_id", "frame_index", "split", "group"])
    silver = pd.read_parquet(lake.silver / f"dataset_id={DATASET}", columns=["video_id", "frame_index", "group"])
    split_of = gold.drop_duplicates("group").set_index("group").split
    frames = silver.drop_duplicates(["video_id", "frame_index"]).assign(split=lambda f: f.group.map(split_of)).sort_values("frame_index")
    trained = set(zip(gold.video_id[gold.split == "train"], gold.frame_index[gold.split == "train"]))
    beside = 0
    for video, part in frames.groupby("video_id"):
        order = list(zip(part.frame_index, part.split))
        for (index, split), (next_index, next_split) in zip(order, order[1:]):
            if (split == "train") != (next_split == "train"):  # a boundary between training and a held-out split
                beside += 1
                train_side = index if split == "train" else next_index
                assert (video, train_side) not in trained, (video, index, next_index)
    assert beside > 0 and report["train_frames_set_apart"] > 0  # the data has such boundaries, and the job acted on them


def test_the_gold_records_the_upload_its_silver_was_made_from_not_one_that_came_after(spark, lake):
    """The augmentation recorded the raw upload it saw when it started: another run re-uploading the date between this run's
    ETL and its augmentation labelled gold made from the older silver with the newer upload, so the stale-gold check
    passed it (only the gate's sha256 check caught it, after the training)."""
    made_from = lake.silver_built_from(DATASET)
    assert made_from is not None and made_from == lake.raw_manifest_digest(DATASET)
    manifest = lake.raw(DATASET) / "manifest.json"
    original = manifest.read_bytes()
    manifest.write_bytes(original.replace(b'"dataset_id"', b'"uploaded_again": true, "dataset_id"', 1))  # another upload
    try:
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
        assert lake.gold_built_from(DATASET) == made_from != lake.raw_manifest_digest(DATASET)
    finally:
        manifest.write_bytes(original)
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    assert lake.gold_built_from(DATASET) == lake.raw_manifest_digest(DATASET)


def test_augmentation_reruns_and_repartitioning_give_identical_bytes(spark, lake):
    run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    first = _rows(lake.gold / f"dataset_id={DATASET}")
    for partitions, shuffle in ((None, "2"), (3, "5")):
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)
        try:
            run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, partitions=partitions, spark=spark)
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", "2")
        pd.testing.assert_frame_equal(_rows(lake.gold / f"dataset_id={DATASET}"), first)


def test_a_rebuilt_partition_keeps_every_group_in_its_earlier_split_whatever_the_run_seed(spark, lake):
    """A date's partition is rebuilt when more video lands for it, or by a run with another seed Param. The splits were
    drawn again from the run's seed and the day's group sizes, so groups the champion trained on moved into val or test,
    where the gate and the endpoint validation scored the champion on its own training rows."""
    folder = lake.gold_partition(DATASET)
    run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    built = pd.read_parquet(folder, columns=["group", "split"]).drop_duplicates().set_index("group").split
    try:
        report = run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=6, spark=spark)  # another seed Param
        again = pd.read_parquet(folder, columns=["group", "split"]).drop_duplicates().set_index("group").split
        pd.testing.assert_series_equal(again.sort_index(), built.sort_index())
        assert report["groups_kept"] == len(built) and report["seed"] == 6
        # an earlier build that split otherwise (another rule, another code version) is kept as it was, group by group
        moved = built[built == "train"].index[0]
        gold = pd.read_parquet(folder)
        gold.loc[gold.group == moved, "split"] = "val"
        for old in folder.glob("*.parquet"):
            old.unlink()
        gold.drop(columns="dataset_id", errors="ignore").to_parquet(folder / "part-00000-earlier.parquet")
        lake.write_gold_listing(DATASET, ["part-00000-earlier.parquet"])
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
        rebuilt = pd.read_parquet(folder, columns=["group", "split"]).drop_duplicates().set_index("group").split
        assert rebuilt[moved] == "val" and (rebuilt.drop(moved) == built.drop(moved)).all()
    finally:
        shutil.rmtree(folder)
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)  # the module's partition, as built


def test_a_file_spark_did_not_commit_beside_the_gold_partition_is_never_read_without_spark(spark, lake):
    """On Databricks a failed task or job attempt leaves its Parquet files beside the committed ones (DBIO) until VACUUM:
    Spark skips them, but the training job read the folder with pandas and got every row twice, and the window digest
    counted them."""
    from swan_anomaly.lake import GOLD_FILES, load_gold

    report = run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    folder = lake.gold_partition(DATASET)
    written = sorted(p.name for p in folder.glob("part-*.parquet"))
    assert lake.gold_listing(DATASET) == written and (folder / GOLD_FILES).is_file()
    before = (lake.gold_files([DATASET]), load_gold(lake, DATASET))
    assert len(before[1]) == report["gold_rows"]
    shutil.copy(folder / written[0], folder / "part-00000-tid-4242424242-a-failed-attempt-c000.snappy.parquet")  # uncommitted
    assert lake.gold_files([DATASET]) == before[0]
    pd.testing.assert_frame_equal(load_gold(lake, DATASET), before[1])
    assert spark.read.parquet(str(folder)).count() > report["gold_rows"]  # local Spark has no DBIO: it reads the stray file


def test_augmentation_reaches_a_class_ratio_target_without_dropping_rows(spark, lake):
    from swan_anomaly.augment import AUGMENTATIONS, augment_image

    report = run_augmentation(
        lake_root=lake.root, dataset_id=DATASET, seed=5, target_abnormal_share=0.7, augmentations=AUGMENTATIONS, spark=spark
    )
    gold = pd.read_parquet(lake.gold / f"dataset_id={DATASET}")
    train = gold[gold.split == "train"]
    assert gold.sample_id.is_unique
    assert abs((train.label == 0).mean() - 0.7) < 0.05 and report["train_abnormal_share"] == round((train.label == 0).mean(), 4)
    for image_path, rows in train.groupby("image_path"):  # every image keeps every operation
        assert set(AUGMENTATIONS) <= set(rows.aug), image_path
    assert train[train.label == 1].variant.max() == 0 and train[train.label == 0].variant.max() >= 1
    extra = train[(train.label == 0) & (train.variant == 1)].iloc[0]
    same_op = train[(train.image_path == extra.image_path) & (train.aug == extra.aug) & (train.variant == 0)].iloc[0]
    if extra.aug in ("affine", "color"):  # a new random draw, not a copy
        assert bytes(extra.content) != bytes(same_op.content)
    square = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    assert (augment_image(square, "rot90", np.random.default_rng(0)) == np.rot90(square)).all()
    run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)  # back to the default for later tests


def test_python_workers_keep_frame_memory_between_frames_here_and_on_databricks(spark, tmp_path):
    """The allocator settings of swan_anomaly.spark reach the Python workers (local session) and the CPU cluster spec.

    A worker that reads and decodes frames of growing size reuses its heap with them; with glibc's
    defaults each frame is mapped afresh (about 2,500 page faults per frame here, 4 KiB each).
    """
    from swan_airflow.databricks_runs import cluster_spec
    from swan_anomaly.spark import PYTHON_WORKER_ENV, python_worker_conf

    rng = np.random.default_rng(0)
    for i in range(9):  # written here: encoding them in the worker would warm its allocator up
        (tmp_path / f"{i}.png").write_bytes(_png(rng.integers(0, 255, (720 + 8 * i, 1280, 3), dtype=np.uint8)))
    folder = str(tmp_path)

    def decode_frames(batches):
        import os
        import resource
        from pathlib import Path

        from swan_anomaly.images import crop_and_resize, decode_image, encode_jpeg

        for _ in batches:
            frames = sorted(Path(folder).glob("*.png"))
            encode_jpeg(crop_and_resize(decode_image(frames[0].read_bytes()), size=224))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for frame in frames[1:]:
                encode_jpeg(crop_and_resize(decode_image(frame.read_bytes()), size=224))
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (len(frames) - 1)
            yield pd.DataFrame({"faults_per_frame": [faults], **{name: [os.environ.get(name)] for name in PYTHON_WORKER_ENV}})

    schema = "faults_per_frame double, " + ", ".join(f"{name} string" for name in PYTHON_WORKER_ENV)
    seen = spark.range(1).mapInPandas(decode_frames, schema).toPandas().iloc[0]
    assert {name: seen[name] for name in PYTHON_WORKER_ENV} == PYTHON_WORKER_ENV
    assert seen.faults_per_frame < 500, f"{seen.faults_per_frame:.0f} page faults per decoded frame"
    assert python_worker_conf().items() <= cluster_spec("cpu")["spark_conf"].items()


def test_the_spark_jobs_log_progress_with_files_rows_and_rate(spark, lake, monkeypatch, caplog):
    """Progress lines while the images are transformed (tasks done, images, rate), not only a final line."""
    import logging

    from swan_anomaly.augment import run_augmentation

    monkeypatch.setenv("SWAN_SPARK_PROGRESS_SECONDS", "0.1")
    with caplog.at_level(logging.INFO, logger="swan_anomaly"):
        report = run_etl(lake_root=lake.root, dataset_id=DATASET, image_size=32, max_bytes=1_000_000, partitions=8, spark=spark)
        run_augmentation(lake_root=lake.root, dataset_id=DATASET, seed=5, spark=spark)
    lines = [r.getMessage() for r in caplog.records]
    [listed] = [int(m.group(1)) for line in lines if (m := re.match(rf"ETL {DATASET}: (\d+) image files listed", line))]
    assert listed >= report["silver_rows"] + len(report["unlabelled_images"]) > 0
    ticks = [
        line for line in lines if re.search(r"decode, crop, resize: stage \d+/\d+ tasks \(\d+ %\), ~\d+ of \d+ images, \d+ images/s", line)
    ]
    assert ticks, lines
    assert any(
        re.search(rf"ETL {DATASET} write silver: {report['silver_rows']} images in [\d.]+ s \(\d+ images/s\)", line) for line in lines
    )
    assert any(re.search(rf"augmentation {DATASET} augment and write gold: \d+ source images in [\d.]+ s", line) for line in lines)


def test_a_status_tracker_that_fails_once_costs_one_progress_line_not_the_rest(spark, monkeypatch, caplog):
    """The progress reporter keeps going after a failed look at Spark's status tracker, and never fails the action."""
    import logging
    import time

    from swan_anomaly import spark as spark_module

    calls = []

    def flaky(tracker):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("tracker gone for a moment")
        return 1, 4

    monkeypatch.setattr(spark_module, "_result_stage", flaky)
    with caplog.at_level(logging.INFO, logger="swan_anomaly"):
        with spark_module.progress(spark, "probe", 100, every=0.05):
            assert spark.range(0, 1000, numPartitions=4).selectExpr("sum(id) AS s").collect()[0].s == 499500
            time.sleep(0.5)  # several report ticks after the failed one
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("probe: stage 1/4 tasks (25 %), ~25 of 100 images") for line in lines), lines
    assert any(line.startswith("probe: 100 images in") for line in lines)


def test_the_etl_job_has_no_crop_of_its_own_the_served_model_would_not_share():
    """jobs/etl.py took --crop-bias-x/-y, which reached the silver crop but neither the training's nor the served model's
    (PreprocessSpec) nor the anomaly placement: with 0.6, the model trained on crops 64 px aside of what it serves on."""
    import runpy

    from conftest import ROOT

    main = runpy.run_path(str(ROOT / "jobs" / "etl.py"))["main"]
    for option in ("--crop-bias-x", "--crop-bias-y"):
        with pytest.raises(SystemExit) as refused:
            main(["--lake-root", "/nowhere", "--dataset-id", "20260101", "--run-id", "r", option, "0.6"])
        assert refused.value.code == 2  # argparse: no such option (not the job failing on its lake)
