"""The ADLS lake through the Azure provider's WasbHook, against Azurite (a real Azure Storage emulator)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest


from conftest import AZURITE_ACCOUNT, AZURITE_KEY, label_staged_images


@pytest.fixture(scope="module", autouse=True)
def lake_connection(azurite):
    """An Airflow ``wasb`` connection to Azurite, as an environment variable."""
    mp = pytest.MonkeyPatch()
    mp.setenv(
        "AIRFLOW_CONN_SWAN_LAKE_TEST", json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite["connection_string"]}})
    )
    yield
    mp.undo()


@pytest.fixture
def staged(tmp_path) -> Path:
    ds = tmp_path / "20261126"
    for i in range(6):
        (ds / "frames" / "v1").mkdir(parents=True, exist_ok=True)
        (ds / "frames" / "v1" / f"frame_{i:05d}.png").write_bytes(f"frame {i}".encode() * 50)
    label_staged_images(ds)
    return ds


def _lake(container: str):
    from swan_airflow.azure_lake import WasbLake

    return WasbLake(conn_id="swan_lake_test", container=container, prefix="lake", max_workers=4)


def _blobs(lake) -> dict[str, bytes]:
    container = lake.hook.blob_service_client.get_container_client(lake.container)
    return {b.name: container.download_blob(b.name).readall() for b in container.list_blobs()}


def test_upload_writes_files_manifest_and_success(azurite, staged):
    lake = _lake("upload")
    report = lake.put_dataset(staged, "20261126")
    assert (report.written, report.unchanged, report.removed) == (7, 0, 0)
    assert report.uri == f"abfss://upload@{AZURITE_ACCOUNT}.dfs.core.windows.net/lake/raw/20261126"
    blobs = _blobs(lake)
    prefix = "lake/raw/20261126/"
    assert blobs[prefix + "frames/v1/frame_00003.png"] == (staged / "frames/v1/frame_00003.png").read_bytes()
    assert set(json.loads(blobs[prefix + "manifest.json"])["files"]) == {
        p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()
    }
    assert blobs[prefix + "_SUCCESS"] == b""
    assert lake.is_complete("20261126")


def test_reupload_skips_unchanged_replaces_changed_and_removes_stale(azurite, staged):
    lake = _lake("rerun")
    lake.put_dataset(staged, "20261126")
    again = lake.put_dataset(staged, "20261126")
    assert (again.written, again.unchanged, again.removed) == (0, 7, 0)
    (staged / "frames/v1/frame_00001.png").write_bytes(b"changed")
    (staged / "frames/v1/frame_00005.png").unlink()
    label_staged_images(staged)
    third = lake.put_dataset(staged, "20261126")
    assert (third.written, third.unchanged, third.removed) == (2, 4, 1)  # the image and labels.csv changed
    blobs = _blobs(lake)
    assert blobs["lake/raw/20261126/frames/v1/frame_00001.png"] == b"changed"
    assert "lake/raw/20261126/frames/v1/frame_00005.png" not in blobs
    # a removed image reads as the local lake's does: a file that is not there (the gate and the validation say so at once)
    with pytest.raises(FileNotFoundError, match=r"raw/20261126/frames/v1/frame_00005\.png"):
        lake.read_raw("20261126", "frames/v1/frame_00005.png")


def test_a_rerun_on_a_hierarchical_namespace_account_keeps_its_directory_entries(azurite, staged):
    """ADLS Gen2 lists each directory as a blob with ``hdi_isfolder``; the rerun planned to delete them, which the Blob API
    refuses there, so every retry failed and the partition stayed without ``_SUCCESS``."""
    lake = _lake("hns")
    lake.put_dataset(staged, "20261126")
    for folder in ("lake/raw/20261126/frames", "lake/raw/20261126/frames/v1"):  # as an HNS account lists them
        lake.hook.load_string("", "hns", folder, overwrite=True, metadata={"hdi_isfolder": "true"})
    again = lake.put_dataset(staged, "20261126")
    assert (again.written, again.unchanged, again.removed) == (0, 7, 0)
    blobs = _blobs(lake)
    assert "lake/raw/20261126/frames" in blobs and "lake/raw/20261126/frames/v1" in blobs and lake.is_complete("20261126")


def test_failed_upload_leaves_the_partition_incomplete(azurite, staged, monkeypatch):
    lake = _lake("failure")
    lake.put_dataset(staged, "20261126")
    (staged / "frames/v1/frame_00002.png").write_bytes(b"new content")
    label_staged_images(staged)
    real_upload = lake.hook.upload

    def flaky(container, name, data, **kwargs):
        if name.endswith("frame_00002.png"):
            raise OSError("connection reset while uploading")
        return real_upload(container, name, data, **kwargs)

    monkeypatch.setattr(lake.hook, "upload", flaky)
    with pytest.raises(OSError, match="connection reset"):
        lake.put_dataset(staged, "20261126")
    assert not lake.is_complete("20261126"), "_SUCCESS must not survive a failed upload"
    monkeypatch.setattr(lake.hook, "upload", real_upload)
    report = lake.put_dataset(staged, "20261126")
    # the retry writes the image, and labels.csv too unless it went up in the failed pass: uploads run in parallel, and
    # Executor.map cancels the ones not yet started when the first fails, so which is timing; nothing else is rewritten
    assert report.written in (1, 2) and report.written + report.unchanged == 7 and report.removed == 0, report
    assert lake.is_complete("20261126")
    assert lake.read_raw("20261126", "frames/v1/frame_00002.png") == b"new content"


@pytest.mark.parametrize("case", ["missing", "empty", "unlabelled image"])
def test_a_bad_staging_folder_is_refused_before_any_blob_changes(azurite, staged, tmp_path, case):
    import shutil

    from swan_anomaly import LakeError

    lake = _lake("refuse")
    lake.put_dataset(staged, "20261126")
    before = _blobs(lake)
    bad = tmp_path / "bad"
    if case == "empty":
        bad.mkdir()
    elif case == "unlabelled image":
        shutil.copytree(staged, bad)
        (bad / "frames" / "v1" / "stray.png").write_bytes(b"not in labels.csv")
    with pytest.raises(LakeError, match=f"{bad}: .*(does not exist|is empty|without a label row).*[Nn]othing uploaded"):
        lake.put_dataset(bad, "20261126")
    assert _blobs(lake) == before and lake.is_complete("20261126")


def test_results_round_trip_and_the_key_stays_out_of_logs(azurite, caplog):
    lake = _lake("results")
    lake.hook.create_container("results")
    with caplog.at_level(logging.DEBUG):
        lake.write_result("manual__2026-11-26T05:40:20+00:00", "etl", {"silver_rows": 384})
        assert lake.read_result("manual__2026-11-26T05:40:20+00:00", "etl") == {"silver_rows": 384}
    assert AZURITE_KEY not in caplog.text
    assert "lake/runs/manual__2026-11-26T05_40_20_00_00/etl.json" in _blobs(lake)


def test_gold_files_list_the_container_as_the_local_lake_lists_a_directory(azurite, tmp_path):
    import pandas as pd

    from swan_anomaly.lake import GOLD_FILES, LocalLake

    lake, local = _lake("gold"), LocalLake(tmp_path / "lake")
    lake.hook.create_container("gold")
    parts = {
        "dataset_id=20261125/part-00000-a1.snappy.parquet": pd.DataFrame({"sample_id": ["a", "b"]}),
        "dataset_id=20261126/part-00000-b2.snappy.parquet": pd.DataFrame({"sample_id": ["c"]}),
        "dataset_id=20261126/part-00001-b2.snappy.parquet": pd.DataFrame({"sample_id": ["d", "e", "f"]}),
    }
    for rel, frame in parts.items():
        (local.gold / rel).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(local.gold / rel, index=False)
        lake.hook.load_file(str(local.gold / rel), "gold", f"lake/gold/training/{rel}", overwrite=True)
    lake.hook.load_string("", "gold", "lake/gold/training/_SUCCESS", overwrite=True)  # not a partition
    lake.hook.load_string("", "gold", "lake/silver/images/dataset_id=20261126/x.parquet", overwrite=True)  # another zone
    lake.hook.load_string("{}", "gold", "lake/gold/training/dataset_id=20261126/_committed_42", overwrite=True)  # a commit marker
    # a directory entry as a hierarchical-namespace (ADLS Gen2) account lists it
    lake.hook.load_string("", "gold", "lake/gold/training/dataset_id=20261126/tmp", overwrite=True, metadata={"hdi_isfolder": "true"})
    # the files Spark committed, as the augmentation job lists them, and one a failed attempt left (DBIO)
    local.write_gold_listing("20261126", ["part-00000-b2.snappy.parquet", "part-00001-b2.snappy.parquet"])
    stray = "dataset_id=20261126/part-00002-tid-9-failed.snappy.parquet"
    pd.DataFrame({"sample_id": ["stale"]}).to_parquet(local.gold / stray, index=False)
    for rel in (f"dataset_id=20261126/{GOLD_FILES}", stray):
        lake.hook.load_file(str(local.gold / rel), "gold", f"lake/gold/training/{rel}", overwrite=True)
    ids = ["20261125", "20261126", "20261127"]
    assert lake.gold_partitions() == local.gold_partitions() == ["20261125", "20261126"]
    files = lake.gold_files(ids)
    assert files == local.gold_files(ids)
    assert [name for name, _ in files["20261126"]] == ["part-00000-b2.snappy.parquet", "part-00001-b2.snappy.parquet"]
    assert all(size > 0 for entries in files.values() for _, size in entries) and files["20261127"] == []
    assert lake.read_gold("20261126").sample_id.tolist() == ["c", "d", "e", "f"] == local.read_gold("20261126").sample_id.tolist()
