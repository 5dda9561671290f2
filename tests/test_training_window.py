"""Training on a window of gold partitions: which partitions, the overlap rule, errors, the job end to end."""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest

from conftest import label_staged_images, water_frame
from swan_anomaly._errors import ConfigError, JobError
from swan_anomaly.lake import LocalLake
from swan_anomaly.lake import load_gold, window_dataset_ids

GOLD_COLUMNS = ["sample_id", "image_path", "content", "label", "family", "group", "split", "aug", "variant", "video_id", "frame_index"]


def _image(seed: int, abnormal: bool) -> bytes:
    """A 32 px JPEG of smooth water, with a black-and-white square when ``abnormal``."""
    from swan_anomaly.images import encode_jpeg

    return encode_jpeg(water_frame(seed, abnormal=abnormal, height=32, width=32))


def _rows(groups: dict[str, str], frames: int = 2) -> pd.DataFrame:
    """Gold rows (as the augmentation job writes them, ``none`` only): per group ``frames`` normal and abnormal images.

    ``groups`` maps a group name ``{video}-b{block:04d}`` to its split; frame indices follow the block,
    so the same group name means the same images, whatever partition it lands in.
    """
    rows = []
    for group, split in groups.items():
        video, block = group.rsplit("-b", 1)
        for k in range(frames):
            index = int(block) * 100 + k
            for label, path in (
                (1, f"frames/{video}/frame_{index:05d}.png"),
                (0, f"anomalies/{video}/frame_{index:05d}_salt_pepper_polygons_0.png"),
            ):
                content = _image(index * 2 + label + sum(map(ord, video)), abnormal=label == 0)
                family = "none" if label == 1 else "salt_pepper_polygons"
                rows.append((f"{path}#none", path, content, label, family, group, split, "none", 0, video, index))
    return pd.DataFrame(rows, columns=GOLD_COLUMNS)


def _write(lake: LocalLake, dataset_id: str, rows: pd.DataFrame) -> None:
    partition = lake.gold / f"dataset_id={dataset_id}"
    partition.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(partition / "part-00000.snappy.parquet", index=False)


def _days(lake: LocalLake, ids: list[str]) -> None:
    """One partition per id, each with its own video (so nothing overlaps)."""
    for i, dataset_id in enumerate(ids):
        _write(lake, dataset_id, _rows({f"v{i}-b0000": "train", f"v{i}-b0001": "val", f"v{i}-b0002": "test"}, frames=1))


def test_window_of_one_day_reads_only_the_current_partition(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260101", "20260102", "20260103"])
    gold = load_gold(lake, "20260102")
    assert set(gold.dataset_id) == {"20260102"}
    assert gold.dataset_id.map(type).eq(str).all(), "dataset_id must stay a string, not a partition-discovered integer"
    assert len(gold) == 6 and list(gold.sample_id) == sorted(gold.sample_id)
    assert gold.index.tolist() == list(range(len(gold)))
    # the default is a one-day window: a two-day window of the same date reads more
    assert set(load_gold(lake, "20260102", window_days=2).dataset_id) == {"20260101", "20260102"}


def test_window_of_three_days_takes_the_dates_in_range_only(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    # 20251230 is one day too old, 20260103 is newer than the run's dataset; the window crosses a year
    _days(lake, ["20251230", "20251231", "20260101", "20260102", "20260103"])
    (lake.gold / "dataset_id=latest").mkdir()  # not a date: ignored
    (lake.gold / "dataset_id=2026010").mkdir()  # seven digits: not a date either
    (lake.gold / "_SUCCESS").write_text("")
    assert window_dataset_ids(lake, "20260102", 3) == ["20251231", "20260101", "20260102"]
    gold = load_gold(lake, "20260102", window_days=3)
    assert sorted(gold.dataset_id.unique()) == ["20251231", "20260101", "20260102"]
    assert gold.groupby("dataset_id").size().to_dict() == {"20251231": 6, "20260101": 6, "20260102": 6}
    assert list(zip(gold.dataset_id, gold.sample_id)) == sorted(zip(gold.dataset_id, gold.sample_id))
    # a backfill of an old date sees neither its future nor anything outside the window
    assert sorted(load_gold(lake, "20251231", window_days=3).dataset_id.unique()) == ["20251230", "20251231"]
    # a missing day inside the window is no error
    assert window_dataset_ids(lake, "20260105", 4) == ["20260102", "20260103", "20260105"]


def test_the_training_token_digest_changes_exactly_when_a_partition_of_the_window_is_rewritten(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.submit_run import SwanJobOperator

    lake = LocalLake(tmp_path / "lake")
    monkeypatch.setenv("SWAN_LAKE_ROOT", str(lake.root))
    _days(lake, ["20251231", "20260101", "20260102", "20260103"])
    older = lake.gold_partition("20260101")
    (older / "part-00001.snappy.parquet").write_bytes(b"second file")
    (older / "_SUCCESS").write_text("")
    (older / ".part-00001.snappy.parquet.crc").write_bytes(b"crc")
    files = lake.gold_files(["20260101", "20260104"])
    assert files == {
        "20260101": [
            ("part-00000.snappy.parquet", (older / "part-00000.snappy.parquet").stat().st_size),
            ("part-00001.snappy.parquet", 11),
        ],
        "20260104": [],
    }
    assert lake.gold_partitions() == ["20251231", "20260101", "20260102", "20260103"]

    # the operator of run_training, as the DAG builds it: the window length is a rendered Param
    op = SwanJobOperator(task_id="run_training", job="train", job_args=[], dataset_id="20260102", json={}, window_days="2")
    before = op.window_inputs("20260102")
    assert op.window_inputs("20260102") == before  # nothing written: a cleared task reuses its Databricks run
    # partitions outside the window (older than it, newer than the run) and Spark's marker files do not count
    _write(lake, "20251231", _rows({"vX-b0000": "train"}, frames=3))
    (lake.gold_partition("20260103") / "part-00009.snappy.parquet").write_bytes(b"later data")
    (older / "_committed_123").write_text("{}")
    assert op.window_inputs("20260102") == before
    # the older partition of the window rebuilt by Spark: new file names (or sizes) -> a new token
    (older / "part-00001.snappy.parquet").rename(older / "part-00001-c0ffee.snappy.parquet")
    assert op.window_inputs("20260102") != before
    # a window of several days needs a date: fails the task (no retries) with the reason
    with pytest.raises(AirflowFailException, match="needs a dataset id that is a date"):
        op.window_inputs("latest")


def test_a_group_in_two_partitions_is_kept_only_from_the_newest(tmp_path, caplog):
    lake = LocalLake(tmp_path / "lake")
    # video A landed on both days and its groups got other splits the second time; vD's frames were
    # grouped differently on the second day (another time block), so only the images tell the overlap
    old = _rows({"vA-b0000": "train", "vA-b0001": "val", "vB-b0000": "test", "vB-b0001": "train", "vD-b0001": "train"})
    new = _rows({"vA-b0000": "test", "vA-b0001": "train", "vC-b0000": "val", "vC-b0001": "train"})
    new = pd.concat([new, _rows({"vD-b0001": "val"}).assign(group="vD-b0000")], ignore_index=True)
    _write(lake, "20260101", old)
    _write(lake, "20260102", new)
    with caplog.at_level(logging.INFO, logger="swan_anomaly.lake"):
        gold = load_gold(lake, "20260102", window_days=2)
    assert gold.groupby("group").split.nunique().max() == 1, "a group sits in two splits"
    assert gold.groupby("group").dataset_id.nunique().max() == 1, "a group comes from two partitions"
    assert not gold.image_path.duplicated().any(), "an image appears twice"
    assert not gold.sample_id.duplicated().any()
    by_group = gold.groupby("group").agg(dataset_id=("dataset_id", "first"), split=("split", "first")).to_dict("index")
    assert by_group == {
        "vA-b0000": {"dataset_id": "20260102", "split": "test"},
        "vA-b0001": {"dataset_id": "20260102", "split": "train"},
        "vB-b0000": {"dataset_id": "20260101", "split": "test"},
        "vB-b0001": {"dataset_id": "20260101", "split": "train"},
        "vC-b0000": {"dataset_id": "20260102", "split": "val"},
        "vC-b0001": {"dataset_id": "20260102", "split": "train"},
        "vD-b0000": {"dataset_id": "20260102", "split": "val"},
    }
    assert len(gold) == len(new) + 2 * 2 * 2  # the newest partition whole, plus vB's two groups of the older one
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "20260101" in dropped[0] and "12 rows of 3 groups" in dropped[0]
    assert all(g in dropped[0] for g in ("vA-b0000", "vA-b0001", "vD-b0001"))


def test_the_partitions_of_named_videos_join_the_window_of_their_date_and_the_run_s_own_stays_newest(tmp_path):
    """A run that names its videos writes ``YYYYMMDD-videos-<digest>`` beside its date's partition: a window of that
    date trains on both, and whichever of two partitions of one date the run writes is the one whose groups win."""
    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260101", "20260102-videos-0a1b2c3d", "20260102", "20260103-videos-4e5f6a7b"])
    (lake.gold / "dataset_id=20260102-videos-XYZ").mkdir()  # not a digest: ignored
    assert window_dataset_ids(lake, "20260102", 2) == ["20260101", "20260102-videos-0a1b2c3d", "20260102"]
    assert window_dataset_ids(lake, "20260102-videos-0a1b2c3d", 2) == ["20260101", "20260102", "20260102-videos-0a1b2c3d"]
    picked = "20260102-videos-0a1b2c3d"
    assert set(load_gold(lake, picked, window_days=2).dataset_id) == {"20260101", "20260102", picked}
    # the same video named on the date it landed: the partition of the run that trains keeps the group, in its own split
    _write(lake, "20260102", _rows({"vA-b0000": "train", "vA-b0001": "val"}))
    _write(lake, "20260102-videos-0a1b2c3d", _rows({"vA-b0000": "val", "vA-b0001": "test"}))
    for current, split in (("20260102", "train"), ("20260102-videos-0a1b2c3d", "val")):
        gold = load_gold(lake, current, window_days=2)
        assert gold.groupby("group").dataset_id.nunique().max() == 1, "a group comes from two partitions"
        assert gold[gold.group == "vA-b0000"].split.unique().tolist() == [split]
        assert set(gold[gold.group.str.startswith("vA")].dataset_id) == {current}


def test_the_held_out_rows_name_the_raw_image_the_model_was_tested_with_not_the_one_there_now():
    """The training job took the held-out images' sha256 from the raw manifests after training, hours later: a re-upload of
    the date in the meantime (a backfill beside it) gave the new images' hashes, so the gate and the endpoint validation
    scored other images than the model was tested on and never noticed."""
    from swan_anomaly.training import held_out_rows

    gold = _rows({"vA-b0000": "val"}, frames=1).assign(dataset_id="20260101")
    tested = {p: f"{i:064x}" for i, p in enumerate(gold.image_path)}
    now = {("20260101", p): "f" * 64 for p in gold.image_path}  # what raw/20260101/labels.csv says after the re-upload
    rows = held_out_rows(gold.assign(source_sha256=gold.image_path.map(tested)), now)
    assert {(d, p): sha for d, p, _, _, sha, _ in rows} == {("20260101", p): sha for p, sha in tested.items()}
    # gold written before it carried the hash: the manifest is all there is
    assert {sha for *_, sha, _ in held_out_rows(gold, now)} == {"f" * 64}


def test_a_window_partition_rewritten_while_it_is_read_fails_the_job_for_a_retry_instead_of_being_left_out(tmp_path):
    """Another run's augmentation rewrote an older partition of the window (Spark deletes it, then renames the new one in):
    the training read it in that gap, logged "no rows; skipped" at info level and trained without that day."""
    from swan_anomaly import LakeError

    class ListedBeforeTheRewrite(LocalLake):
        def gold_partitions(self) -> list[str]:
            return [*super().gold_partitions(), "20260101"]  # it was there when listed

    lake = ListedBeforeTheRewrite(tmp_path / "lake")
    _days(lake, ["20260102"])
    with pytest.raises(LakeError, match="gold partition 20260101 of the training window of 20260102 was listed but holds no rows"):
        load_gold(lake, "20260102", window_days=2)


@pytest.mark.parametrize("rewritten", ["20260102", "20260101"])
def test_a_window_partition_spark_is_renaming_in_fails_the_job_for_a_retry(tmp_path, rewritten):
    """A same-date run's augmentation rewrites the partition (Spark writes it under .spark-staging-<job>/, deletes the old
    folder, then renames the new one in). The run's own partition missing in that gap failed the training for good
    ("run the augmentation job first", no retry), and an older one missing when listed was left out of the window."""
    from swan_anomaly import LakeError

    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260101", "20260102"])
    shutil.move(lake.gold_partition(rewritten), lake.gold / ".spark-staging-4f2a" / f"dataset_id={rewritten}")
    with pytest.raises(LakeError, match=rf"gold partitions \['{rewritten}'\] of the training window of 20260102 are being rewritten"):
        load_gold(lake, "20260102", window_days=2)
    assert rewritten not in lake.gold_partitions()
    # a partition being rewritten outside the window is none of this training's business
    other = "20260102" if rewritten == "20260101" else "20260101"
    assert set(load_gold(lake, other, window_days=1 if rewritten == "20260101" else 2).dataset_id) == {other}


def test_missing_or_empty_current_partition_is_a_clear_error(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260101"])
    with pytest.raises(JobError, match=r"dataset_id=20260102: no gold rows for dataset '20260102'.*augmentation job"):
        load_gold(lake, "20260102", window_days=2)  # the older day alone must not stand in for it
    _write(lake, "20260102", _rows({}).astype({"label": "int64", "variant": "int64", "frame_index": "int64"}))
    with pytest.raises(JobError, match="dataset_id=20260102: no gold rows"):
        load_gold(lake, "20260102", window_days=2)


@pytest.mark.parametrize("days", [0, -1, 1.5, True])
def test_window_days_below_one_or_not_whole_is_refused(tmp_path, days):
    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260101"])
    with pytest.raises(ConfigError, match="window_days must be a whole number of days, at least 1"):
        load_gold(lake, "20260101", window_days=days)


def test_a_window_needs_a_dated_dataset_id(tmp_path):
    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["manual"])
    assert set(load_gold(lake, "manual").dataset_id) == {"manual"}  # a single partition needs no date
    with pytest.raises(ConfigError, match="needs a dataset id that is a date"):
        load_gold(lake, "manual", window_days=2)  # a ConfigError: the training job exits as a permanent failure


@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5"])
def test_train_job_refuses_a_bad_window_as_a_usage_error(tmp_path, value, capsys):
    from jobs.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--lake-root", str(tmp_path), "--dataset-id", "20260101", "--run-id", "r", "--window-days", value])
    assert exc.value.code == 2
    assert "--window-days: must be a whole number of days, at least 1" in capsys.readouterr().err


def test_train_job_trains_on_a_two_day_window_and_logs_the_lineage(tmp_path, monkeypatch):
    import mlflow

    from jobs.train import main
    from swan_anomaly.tracking import gold_dataset

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("SWAN_MLFLOW_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("SWAN_EXPERIMENT", "swan-window-test")
    lake = LocalLake(tmp_path / "lake")
    _write(lake, "20251231", _rows({"vZ-b0000": "train", "vZ-b0001": "val", "vZ-b0002": "test"}))  # outside a two-day window
    _write(lake, "20260101", _rows({"vA-b0000": "train", "vA-b0001": "train", "vA-b0002": "val", "vA-b0003": "test", "vB-b0000": "train"}))
    _write(lake, "20260102", _rows({"vB-b0000": "test", "vC-b0000": "train", "vC-b0001": "val", "vC-b0002": "test"}))
    result = main(
        [
            "--lake-root",
            str(lake.root),
            "--dataset-id",
            "20260102",
            "--run-id",
            "manual__window",
            "--model",
            "vit-micro-offline",
            "--epochs",
            "2",
            "--patience",
            "5",
            "--batch-size",
            "16",
            "--generalization",
            "off",
            "--compile",
            "off",
            "--window-days",
            "2",
        ]
    )
    written = json.loads((lake.run_dir("manual__window") / "train.json").read_text())
    assert written["dataset_ids"] == result["dataset_ids"] == ["20260101", "20260102"]
    assert written["dataset_id"] == "20260102" and written["window_days"] == 2
    # 20260101 without vB-b0000 (the newer day has it): 4 groups x 2 frames x 2 labels, plus 4 groups of 20260102
    assert written["images"] == {"train": 12, "val": 8, "test": 12}

    run = mlflow.MlflowClient(uri).get_run(written["mlflow_run_id"])
    assert run.data.params["window_days"] == "2"
    assert run.data.params["training_dataset_ids"] == run.data.tags["training_dataset_ids"] == "20260101,20260102"
    assert run.data.params["dataset_id"] == run.data.tags["dataset_id"] == "20260102"
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["gold-20260101", "gold-20260102"]
    gold = load_gold(lake, "20260102", window_days=2)
    for dataset_id in ("20260101", "20260102"):
        source = json.loads(inputs[f"gold-{dataset_id}"].source)
        assert str(lake.gold / f"dataset_id={dataset_id}") in json.dumps(source)
        used = gold[gold.dataset_id == dataset_id]
        assert (
            inputs[f"gold-{dataset_id}"].digest == gold_dataset(lake, dataset_id, used).digest
        ), "the digest must cover the rows that trained"
    # per-epoch values have keys of their own: val_auroc is the restored best epoch's, logged once
    client = mlflow.MlflowClient(uri)
    [final] = client.get_metric_history(run.info.run_id, "val_auroc")
    assert final.value == pytest.approx(written["val"]["auroc"]) and run.data.metrics["val_f1"] == pytest.approx(written["val"]["f1"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_auroc")] == list(range(1, written["epochs_run"] + 1))
    for split in ("val", "test"):
        low, high = written[split]["auroc_ci"]
        assert 0 <= low <= written[split]["auroc"] <= high <= 1
        assert (run.data.metrics[f"{split}_auroc_ci_low"], run.data.metrics[f"{split}_auroc_ci_high"]) == pytest.approx((low, high))
    # the held-out rows the gate and the endpoint validation score again: exactly the split's images
    val = gold[gold.split == "val"]
    assert written["held_out"]["val"] == sorted(
        [d, p, int(lab), f, None, g] for d, p, lab, f, g in zip(val.dataset_id, val.image_path, val.label, val.family, val.group)
    )
    # their intervals resampled whole groups, which the report counts
    assert written["val"]["groups"] == val.group.nunique() and written["test"]["groups"] >= 2
    assert len(written["held_out"]["test"]) == written["images"]["test"] and (written["val"]["abnormal"], written["val"]["normal"]) == (
        4,
        4,
    )
    assert (
        inputs["gold-20260101"].digest
        != gold_dataset(lake, "20260101", pd.read_parquet(lake.gold / "dataset_id=20260101").assign(dataset_id="20260101")).digest
    )


def test_a_window_partition_built_from_an_earlier_upload_fails_the_training_before_it_starts(tmp_path):
    """A run of an older date uploaded that date again (other frames), then failed before its augmentation: the date's gold
    still named raw images of the earlier upload that were gone or changed. A later run with a window over that date
    trained for hours on them, and only its gate found the missing images (LakeError for every row). An upload that only
    added video leaves every image the gold names in place: that gold still trains."""
    from swan_anomaly import LakeError
    from swan_anomaly.digests import sha256_file

    lake = LocalLake(tmp_path / "lake")
    _days(lake, ["20260102"])
    staged = tmp_path / "staged"
    rows = _rows({"v7-b0000": "train", "v7-b0001": "val", "v7-b0002": "test"}, frames=1)
    for path, content in zip(rows.image_path, rows.content):
        (staged / path).parent.mkdir(parents=True, exist_ok=True)
        (staged / path).write_bytes(content)
    label_staged_images(staged)
    lake.put_dataset(staged, "20260101")
    hashes = {p: sha256_file(staged / p) for p in rows.image_path}
    _write(lake, "20260101", rows.assign(source_sha256=rows.image_path.map(hashes)))
    lake.write_gold_listing("20260101", ["part-00000.snappy.parquet"], raw_manifest=lake.raw_manifest_digest("20260101"))
    assert set(load_gold(lake, "20260102", window_days=2).dataset_id) == {"20260101", "20260102"}  # built from this upload
    (staged / "frames" / "v9").mkdir(parents=True)
    (staged / "frames" / "v9" / "frame_00000.png").write_bytes(b"a frame of more video")  # the date uploaded again, with more
    label_staged_images(staged)
    lake.put_dataset(staged, "20260101")
    assert set(load_gold(lake, "20260102", window_days=2).dataset_id) == {"20260101", "20260102"}  # nothing it names changed
    (staged / rows.image_path[0]).write_bytes(b"another frame under the same name")  # and again, with a frame changed
    label_staged_images(staged)
    lake.put_dataset(staged, "20260101")
    with pytest.raises(LakeError, match=r"name raw images that are gone or changed since they were built \(20260101: 1 rows\)"):
        load_gold(lake, "20260102", window_days=2)
    assert set(load_gold(lake, "20260102", window_days=1).dataset_id) == {"20260102"}  # a window without it trains
