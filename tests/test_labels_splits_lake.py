"""Label manifest contract, group splits, lake uploads, frame extraction."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from swan_anomaly import LabelManifestError, LakeError, VideoError
from swan_anomaly.anomalies import synthesize_dataset
from swan_anomaly.labels import build_manifest, read_manifest, write_manifest
from swan_anomaly.lake import Lake, LocalLake, safe_run_id
from swan_anomaly.entrypoint import PERMANENT_ERRORS
from swan_anomaly.splits import assign_splits
from swan_anomaly.video import extract_frames, video_id


@pytest.fixture(scope="module")
def staged(tmp_path_factory, demo_video):
    """A staged dataset: frames of the demo video, anomalies at ratio 0.5, labels.csv."""
    ds = tmp_path_factory.mktemp("staged") / "20261126"
    frames = [f.to_dict() for f in extract_frames(demo_video, ds / "frames", every_seconds=1.0)]
    anomalies = synthesize_dataset(frames, ds, anomaly_ratio=0.5, seed=7, families=["salt_pepper_polygons"])
    table = build_manifest(frames, anomalies, ds, block_seconds=4.0)
    write_manifest(table, ds / "labels.csv")
    return ds, frames, anomalies, table


def test_frames_are_sampled_in_time_and_identified_by_content(demo_video, staged):
    _, frames, _, _ = staged
    assert [f["timestamp_s"] for f in frames] == [float(i) for i in range(20)]
    assert [f["frame_index"] for f in frames] == [i * 10 for i in range(20)]
    assert {f["video_id"] for f in frames} == {video_id(demo_video)}
    assert all(Path(f["path"]).is_file() for f in frames)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is not a video at all", "OpenCV cannot open|no decodable frames")],
)
def test_bad_videos_get_a_clear_error_naming_the_file(tmp_path, content, reason):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoError, match=f"broken.mp4: ({reason})"):
        extract_frames(bad, tmp_path / "out")


def test_truncated_video_keeps_what_decodes_or_fails_clearly(tmp_path, demo_video):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(demo_video.read_bytes()[:2000])
    try:
        frames = extract_frames(cut, tmp_path / "out")
    except VideoError as exc:
        assert "cut.mp4" in str(exc)
    else:
        assert all(Path(f.path).is_file() for f in frames)


def test_manifest_round_trips_and_matches_files(staged):
    ds, frames, anomalies, table = staged
    assert len(table) == len(frames) + len(anomalies) == 40
    assert set(table.label) == {0, 1}
    assert (table[table.label == 1].family == "none").all()
    assert (table[table.label == 0].family == "salt_pepper_polygons").all()
    params = json.loads(table[table.label == 0].family_params.iloc[0])
    assert {"n_regions", "density", "salt_share", "grain", "vertices"} <= set(params)
    back = read_manifest(ds / "labels.csv")
    pd.testing.assert_frame_equal(back, table)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.assign(label=t.label.where(t.index != 0, 7)), "unknown label"),
        (lambda t: pd.concat([t, t.iloc[[0]]]), "duplicate image"),
        (lambda t: t.drop(columns=["group"]), "lacks columns"),
        (lambda t: t.assign(label=t.label.astype(float).where(t.index != 0, 0.5)), "wrong type"),
        (lambda t: t.assign(video_id=t.video_id.where(t.index != 0, None)), "video_id.*null"),
        (lambda t: t.assign(family_params=t.family_params.where(t.index != 0, "{not json")), "not JSON"),
        (lambda t: t.assign(image_path=t.image_path.where(t.index != 0, "frames/gone.png")), "missing from"),
    ],
)
def test_manifest_rejects_broken_contracts(staged, mutate, message):
    ds, *_, table = staged
    with pytest.raises(LabelManifestError, match=message):
        write_manifest(mutate(table.copy()), ds / "broken.csv")


def test_reading_a_manifest_checks_types_and_files(tmp_path, staged):
    ds, *_, table = staged
    path = ds / "labels.csv"
    text = path.read_text().splitlines()
    (tmp_path / "typo.csv").write_text("\n".join([text[0], text[1].replace(",0,", ",zero,", 1), *text[2:]]) + "\n")
    with pytest.raises(LabelManifestError, match=r"typo\.csv.*expected schema"):
        read_manifest(tmp_path / "typo.csv")
    moved = ds / table.image_path.iloc[0]
    moved.rename(moved.with_suffix(".bak"))
    try:
        assert len(read_manifest(path)) == len(table)  # the ETL quarantines missing files itself
        with pytest.raises(LabelManifestError, match="missing from"):
            read_manifest(path, check_files=True)
    finally:
        moved.with_suffix(".bak").rename(moved)


def test_splits_never_share_a_group():
    groups = [f"v{v}-b{b:04d}" for v in range(3) for b in range(10)]
    split_of = assign_splits(groups, seed=3)
    assert set(split_of) == set(groups)
    assert set(split_of.values()) == {"train", "val", "test"}
    assert split_of == assign_splits(list(reversed(groups)), seed=3)
    # a day of footage too short to split (one video of a second or two): the augmentation job retried it as if transient
    with pytest.raises(PERMANENT_ERRORS, match=r"need at least 3 split groups \(video x time block\) for train/val/test, got 2"):
        assign_splits(["a", "b"], seed=0)


def test_upload_is_idempotent_and_marks_success_last(tmp_path, staged):
    ds, *_ = staged
    lake = LocalLake(tmp_path / "lake")
    with pytest.raises(LakeError, match="no _SUCCESS"):
        lake.require_complete("20261126")
    first = lake.put_dataset(ds, "20261126")
    assert first.written == 41 and first.unchanged == 0  # 40 images + labels.csv
    target = lake.require_complete("20261126")
    manifest = json.loads((target / "manifest.json").read_text())
    assert len(manifest["files"]) == 41
    again = lake.put_dataset(ds, "20261126")
    assert (again.written, again.unchanged, again.removed) == (0, 41, 0)
    (target / "frames" / "stale.png").write_bytes(b"x")
    assert lake.put_dataset(ds, "20261126").removed == 1


def _remove_first_labelled_image(ds: Path) -> None:
    (ds / read_manifest(ds / "labels.csv").image_path.iloc[0]).unlink()


def _change_first_labelled_image(ds: Path) -> None:
    (ds / read_manifest(ds / "labels.csv").image_path.iloc[0]).write_bytes(b"other bytes")


BAD_STAGING = {  # case: (break the copied staging folder, reason in the error)
    "missing folder": (lambda ds: shutil.rmtree(ds), "the staging folder does not exist"),
    "empty folder": (lambda ds: (shutil.rmtree(ds), ds.mkdir()), "the staging folder is empty"),
    "no labels.csv": (lambda ds: (ds / "labels.csv").unlink(), "no labels.csv in the staging folder"),
    "labels.csv of another schema": (lambda ds: (ds / "labels.csv").write_text("path,y\na.png,0\n"), "label manifest"),
    "labelled image not staged": (_remove_first_labelled_image, r"1 labelled image\(s\) not staged"),
    "image without a label": (
        lambda ds: (ds / "frames" / "stray.png").write_bytes(b"x"),
        r"1 staged image\(s\) without a label row.*stray\.png",
    ),
    "image changed after labelling": (_change_first_labelled_image, r"1 image\(s\) whose sha256 differs from labels\.csv"),
}


@pytest.mark.parametrize("case", list(BAD_STAGING))
def test_upload_refuses_a_bad_staging_folder_and_deletes_nothing(tmp_path, staged, case):
    ds, *_ = staged
    lake = LocalLake(tmp_path / "lake")
    lake.put_dataset(ds, "20261126")
    raw = lake.raw("20261126")
    before = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    bad = tmp_path / "staging" / "20261126"
    shutil.copytree(ds, bad)
    break_it, reason = BAD_STAGING[case]
    break_it(bad)
    with pytest.raises(LakeError, match=f"{bad}.*{reason}"):
        lake.put_dataset(bad, "20261126")
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before
    assert lake.require_complete("20261126") == raw


def _two_videos(ds: Path, videos=("a1b2c3d4e5f60718", "f9e8d7c6b5a40312")) -> Path:
    from conftest import label_staged_images

    shutil.rmtree(ds, ignore_errors=True)
    for vid in videos:
        (ds / "frames" / vid).mkdir(parents=True)
        for i in range(3):
            (ds / "frames" / vid / f"frame_{i:05d}.png").write_bytes(f"{vid} {i}".encode())
    label_staged_images(ds)
    return ds


def test_a_rerun_that_set_a_video_aside_never_deletes_the_frames_an_earlier_run_uploaded(tmp_path):
    """The rerun could not read one video this time (its last try failed, a frame window outside it): the upload mirrored
    the staging folder and deleted that video's good frames from the partition, then ETL from silver and gold."""
    lake, ds = LocalLake(tmp_path / "lake"), tmp_path / "staging" / "20261126"
    lake.put_dataset(_two_videos(ds), "20261126")
    raw = lake.raw("20261126")
    before = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    _two_videos(ds, videos=("a1b2c3d4e5f60718",))  # the rerun staged one video: the other was set aside
    unreadable = ("/landing/cam2.mp4: could not be read after 3 tries: OSError: [Errno 5] Input/output error", "f9e8d7c6b5a40312")
    hidden = ("/landing/cam2.mp4: cannot read it (Input/output error)", None)  # no content hash: it may be any dropped video
    for set_aside in ([unreadable], [hidden]):
        with pytest.raises(LakeError, match=r"holds the frames of 1 video\(s\) this run did not stage \(f9e8d7c6b5a40312\).*cam2\.mp4"):
            lake.put_dataset(ds, "20261126", set_aside=set_aside)
        assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before
        assert lake.require_complete("20261126") == raw
    # a set-aside duplicate of a staged video, or a file that never was a video, explains no drop: the video left the
    # landing zone, and the partition follows the staging folder
    others = [("/landing/copy.mp4: the same video as /landing/cam1.mp4", "a1b2c3d4e5f60718"), ("/landing/notes.mp4: not a video", "0d0e")]
    assert lake.put_dataset(ds, "20261126", set_aside=others).removed == 3
    assert not list(raw.glob("frames/f9e8d7c6b5a40312/*.png"))


def test_the_upload_step_passes_the_set_aside_videos_and_fails_at_once(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.context import RunContext
    from swan_airflow.steps.data import upload_to_lake

    monkeypatch.setenv("SWAN_LAKE_ROOT", str(tmp_path / "lake"))
    ctx = RunContext(dag_id="swan_anomaly_pipeline", run_id="manual__rerun", dataset_id="20261126", params={})
    lake = LocalLake(tmp_path / "lake")
    lake.put_dataset(_two_videos(tmp_path / "first"), "20261126")
    _two_videos(ctx.staging_dir, videos=("a1b2c3d4e5f60718",))
    rejected = [
        {
            "video": "/landing/cam2.mp4",
            "reason": "/landing/cam2.mp4: frames_end_s 90 is past the end of the video (60 s)",
            "video_id": "f9e8d7c6b5a40312",
        }
    ]
    with pytest.raises(AirflowFailException, match=r"this run set aside 1 video\(s\) that may be them: /landing/cam2\.mp4: frames_end_s"):
        upload_to_lake(ctx, {"images": 3, "rejected_videos": rejected})
    assert len(list(lake.raw("20261126").glob("frames/*/*.png"))) == 6


def test_a_set_aside_video_carries_its_content_id_to_the_upload_when_it_can_be_read(tmp_path, monkeypatch):
    """The upload tells a set-aside video that may be one it would drop (no id, or a dropped id) from one that cannot."""
    from swan_airflow.context import RunContext
    from swan_airflow.steps.data import extract_frames, find_videos

    monkeypatch.setenv("SWAN_STAGING_DIR", str(tmp_path / "staging"))
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for path in (first, second):
        path.write_text("not a video at all")  # the same bytes under two names: b.mp4 is a duplicate of a.mp4
    params = {"videos": [str(second), str(first)], "every_seconds": 1.0}
    ctx = RunContext(dag_id="swan_anomaly_pipeline", run_id="manual__ids", dataset_id="20261126", params=params)
    found = find_videos(ctx)
    assert [(f["video"], f["reason"] is None, f.get("video_id")) for f in found] == [
        (str(first), True, None),
        (str(second), False, video_id(first)),  # set aside as a duplicate, with the id of the content it shares
    ]
    results = [extract_frames(ctx, f) for f in found]
    assert results[0]["error"] and results[0]["frames"] == 0  # a.mp4 cannot be decoded: set aside
    assert [r["content_id"] for r in results] == [video_id(first), video_id(first)]


def test_run_ids_become_safe_path_segments():
    assert safe_run_id("manual__2026-11-26T05:40:20.734652+00:00") == "manual__2026-11-26T05_40_20.734652_00_00"


def _lake_protocol_problems(cls: type) -> list[str]:
    """How ``cls`` falls short of :class:`Lake`: a missing member, or parameters of other names or kinds."""
    problems = []
    for name in sorted(n for n in vars(Lake) if not n.startswith("_")):
        wanted = inspect.getattr_static(Lake, name)
        try:
            found = inspect.getattr_static(cls, name)
        except AttributeError:
            problems.append(f"{cls.__name__} has no {name}")
            continue
        if isinstance(wanted, property) or isinstance(found, property):
            if not (isinstance(wanted, property) and isinstance(found, property)):
                problems.append(f"{cls.__name__}.{name}: a property in one and not in the other")
            continue
        expected = [(q.name, q.kind) for q in inspect.signature(wanted).parameters.values()]
        actual = [(q.name, q.kind) for q in inspect.signature(found).parameters.values()]
        if actual != expected:
            problems.append(f"{cls.__name__}.{name}{inspect.signature(found)} is not {name}{inspect.signature(wanted)}")
    return problems


def test_both_lakes_have_every_member_of_the_lake_protocol_with_its_signature():
    from swan_airflow.azure_lake import WasbLake

    assert {n for n in vars(Lake) if not n.startswith("_")}, "the protocol lists no member"
    for cls in (LocalLake, WasbLake):
        assert _lake_protocol_problems(cls) == []
        assert issubclass(cls, Lake)

    class Renamed(LocalLake):
        def read_raw(self, dataset: str, rel: str) -> bytes:
            return b""

    class Lacking:  # one member only
        put_dataset = LocalLake.put_dataset

    assert [problem.split("(")[0] for problem in _lake_protocol_problems(Renamed)] == ["Renamed.read_raw"]  # a renamed parameter
    assert "Lacking has no read_result" in _lake_protocol_problems(Lacking)


def test_a_run_that_names_its_videos_adds_a_partition_and_keeps_every_frame_of_its_date(tmp_path, monkeypatch, demo_video):
    """A manual run with the ``videos`` Param wrote the partition of its date, the one the scheduled run had filled from the
    landing zone: the upload mirrored its staging folder and deleted the landed videos' frames, then ETL from silver and gold."""
    import datetime as dt
    from types import SimpleNamespace

    import airflow.sdk

    from swan_airflow.context import RunContext
    from swan_airflow.params import pipeline_params
    from swan_airflow.steps import data
    from swan_anomaly.config import Settings

    monkeypatch.setenv("SWAN_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("SWAN_STAGING_DIR", str(tmp_path / "staging"))
    lake = LocalLake(tmp_path / "lake")
    lake.put_dataset(_two_videos(tmp_path / "landed"), "20261126")  # the scheduled run of 2026-11-26
    raw = lake.raw("20261126")
    before = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    params = {name: p.value for name, p in pipeline_params(Settings.from_env({})).items()}
    params.update(videos=[str(demo_video)], max_frames=4, every_seconds=2.0, anomaly_ratio=0.5)

    def task_context(run_id: str, videos: list[str]) -> dict:
        return {
            "params": {**params, "videos": videos},
            "dag": SimpleNamespace(dag_id="swan_anomaly_pipeline"),
            "dag_run": SimpleNamespace(run_id=run_id, run_after=dt.datetime(2026, 11, 27, 9, tzinfo=dt.UTC)),
            "data_interval_start": dt.datetime(2026, 11, 26, tzinfo=dt.UTC),  # a manual trigger of that date's interval
            "data_interval_end": dt.datetime(2026, 11, 27, tzinfo=dt.UTC),
        }

    def run_data_steps(run_id: str, videos: list[str]) -> dict:
        monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: task_context(run_id, videos))
        found = data.find_videos(RunContext.current())
        extracted = [data.extract_frames(RunContext.current(), f) for f in found]
        labels = data.build_labels(RunContext.current(), data.synthesize_anomalies(RunContext.current(), extracted))
        return data.upload_to_lake(RunContext.current(), labels)

    added = run_data_steps("manual__picked", [str(demo_video)])
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before  # the date's partition is intact
    picked = added["dataset_id"]
    assert picked != "20261126" and picked.startswith("20261126")  # a partition of its own, of the same date
    assert len(list(lake.require_complete(picked).glob("frames/*/*.png"))) == 4

    # the same videos again (a rerun, or a new trigger naming them) rewrite that partition; other videos get another
    assert run_data_steps("manual__again", [str(demo_video)])["dataset_id"] == picked
    copy = tmp_path / "copy.mp4"
    shutil.copyfile(demo_video, copy)
    assert run_data_steps("manual__other", [str(copy)])["dataset_id"] not in {picked, "20261126"}
    assert {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before
