"""Operations without a scheduler: schedule, pools, timeouts, Params, failure notifier, force-promote guard, ingest."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import PIPELINE_DAG_ID, ROOT, RecordingNotifier, as_unprivileged, world_readable_dir

DAG_ID = PIPELINE_DAG_ID


def test_schedule_is_daily_or_when_videos_land(dagbag):
    from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

    from swan_airflow.ingest import LANDING_ASSET

    dag = dagbag.dags[DAG_ID]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert isinstance(dag.timetable.timetable, CronDataIntervalTimetable)  # data intervals: backfillable
    assert dag.timetable.timetable.expression in ("@daily", "0 0 * * *")
    assert dag.timetable.asset_condition.name == LANDING_ASSET.name
    ingest = dagbag.dags["swan_ingest_videos"]
    [task] = ingest.tasks
    assert [o.name for o in task.outlets] == [LANDING_ASSET.name]


def test_every_task_has_a_timeout_and_trainings_share_one_pool(dagbag):
    dag = dagbag.dags[DAG_ID]
    turn = dag.get_task("wait_for_promotion_turn")
    for task in dag.tasks:
        assert task.execution_timeout is not None and task.execution_timeout <= dt.timedelta(hours=6) + (
            dt.timedelta(minutes=5) if task is turn else dt.timedelta()
        ), task.task_id
        assert task.retries >= 2 and task.retry_exponential_backoff, task.task_id
    assert turn.execution_timeout.total_seconds() > turn.timeout  # the wait ends with AirflowSensorTimeout, which is not retried
    pooled = {t.task_id for t in dag.tasks if t.pool == os.environ.get("SWAN_POOL", "swan_training")}
    assert pooled == {"run_training"}  # the promotion section takes turns by its sensor; training must not cut into it
    assert dag.get_task("run_training").execution_timeout > dag.get_task("run_etl").execution_timeout


@pytest.mark.parametrize(
    ("conf", "param"),
    [
        ({"anomaly_ratio": 1.5}, "anomaly_ratio"),
        ({"anomaly_families": ["salt_pepper_polygons", "glitter"]}, "anomaly_families"),
        ({"epochs": 0}, "epochs"),
        ({"backend": "kubernetes"}, "backend"),
        ({"landing_date": 20261126}, "landing_date"),
        ({"training_window_days": 0}, "training_window_days"),
        ({"gate_min_val_auroc": 1.2}, "gate_min_val_auroc"),
        ({"gate_min_images_per_class": 0}, "gate_min_images_per_class"),
        ({"force_promote": "yes"}, "force_promote"),
    ],
)
def test_params_refuse_a_bad_conf_naming_the_param(dagbag, conf, param):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dagbag.dags[DAG_ID].params)
    with pytest.raises(ParamValidationError, match=param):
        params.update(conf)
        params.validate()


def test_every_param_is_described_titled_and_grouped_and_the_defaults_validate(dagbag):
    from airflow.sdk.definitions.param import ParamsDict

    params = dagbag.dags[DAG_ID].params
    for name in params:
        param = params.get_param(name)
        assert param.description and len(param.description) > 20, name
        assert param.schema.get("title") and param.schema.get("section") in ("Data", "Training", "Promotion"), name
    assert ParamsDict(params).validate()["backend"] == "local"


def test_a_configured_notifier_is_called_on_failure_and_a_broken_setting_is_loud(tmp_path, monkeypatch, caplog):
    from swan_airflow import callbacks

    out = tmp_path / "notified.txt"
    message = (
        "swan-anomaly: task {{ ti.task_id }} of {{ ti.dag_id }} failed (run {{ ti.run_id }}, try {{ ti.try_number }}): {{ exception }}"
    )
    env = {
        "SWAN_FAILURE_NOTIFIER": "conftest:RecordingNotifier",
        "SWAN_FAILURE_NOTIFIER_KWARGS": json.dumps({"message": message, "path": str(out)}),
    }
    log_cb, notifier = callbacks.failure_callbacks(env)
    assert log_cb is callbacks.log_failure and isinstance(notifier, RecordingNotifier)
    ti = SimpleNamespace(dag_id=DAG_ID, task_id="run_training", run_id="manual__x", try_number=3)
    context = {"ti": ti, "task_instance": ti, "exception": RuntimeError("job train exited with code -9")}
    with caplog.at_level("ERROR", logger="swan_airflow.failures"):
        for callback in (log_cb, notifier):
            callback(context)
    assert "task=run_training" in caplog.text and "code -9" in caplog.text
    assert out.read_text() == f"swan-anomaly: task run_training of {DAG_ID} failed (run manual__x, try 3): job train exited with code -9"
    assert callbacks.failure_callbacks({}) == [callbacks.log_failure]
    with pytest.raises(ValueError, match="cannot import"):
        callbacks.failure_callbacks({"SWAN_FAILURE_NOTIFIER": "no.such.module:Notifier"})
    with pytest.raises(ValueError, match="not an Airflow notifier"):
        callbacks.failure_callbacks({"SWAN_FAILURE_NOTIFIER": "json:JSONDecoder"})
    with pytest.raises(ValueError, match="JSON object"):
        callbacks.failure_callbacks({**env, "SWAN_FAILURE_NOTIFIER_KWARGS": "[1]"})


def test_force_promote_needs_a_reason_and_can_be_switched_off():
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.steps.promotion import force_promote_reason

    assert force_promote_reason({"force_promote_reason": "  hotfix for the night camera  "}, env={}) == "hotfix for the night camera"
    with pytest.raises(AirflowFailException, match="at least 10 characters"):
        force_promote_reason({"force_promote_reason": "because"}, env={})
    with pytest.raises(AirflowFailException, match="at least 10 characters"):
        force_promote_reason({"force_promote_reason": None}, env={})
    with pytest.raises(AirflowFailException, match="disabled in this deployment"):
        force_promote_reason({"force_promote_reason": "hotfix for the night camera"}, env={"SWAN_ALLOW_FORCE_PROMOTE": "false"})
    with pytest.raises(AirflowFailException, match="SWAN_ALLOW_FORCE_PROMOTE must be one of .* got 'flase'"):
        force_promote_reason({"force_promote_reason": "hotfix for the night camera"}, env={"SWAN_ALLOW_FORCE_PROMOTE": "flase"})


def test_boolean_settings_accept_the_usual_words_and_refuse_typos(monkeypatch):
    from swan_anomaly import ConfigError
    from swan_anomaly.config import env_flag
    from swan_anomaly.serving.deploy import ServingConfig

    for word, expected in {
        "1": True,
        "TRUE": True,
        " yes ": True,
        "On": True,
        "0": False,
        "false": False,
        "NO": False,
        "off": False,
    }.items():
        assert env_flag("SWAN_X", not expected, {"SWAN_X": word}) is expected, word
    assert env_flag("SWAN_X", True, {}) is True and env_flag("SWAN_X", False, {"SWAN_X": "  "}) is False
    with pytest.raises(ConfigError, match="SWAN_X must be one of .* got 'ture'"):
        env_flag("SWAN_X", False, {"SWAN_X": "ture"})
    monkeypatch.delenv("SWAN_SERVING_SCALE_TO_ZERO", raising=False)
    assert ServingConfig.from_env().scale_to_zero is True
    monkeypatch.setenv("SWAN_SERVING_SCALE_TO_ZERO", "on")
    assert ServingConfig.from_env().scale_to_zero is True  # "on" used to read as off here
    monkeypatch.setenv("SWAN_SERVING_SCALE_TO_ZERO", "off")
    assert ServingConfig.from_env().scale_to_zero is False
    monkeypatch.setenv("SWAN_SERVING_SCALE_TO_ZERO", "nope")
    with pytest.raises(ConfigError, match="SWAN_SERVING_SCALE_TO_ZERO"):
        ServingConfig.from_env()


def _old(path: Path) -> Path:
    stamp = path.stat().st_mtime - 120
    os.utime(path, (stamp, stamp))
    return path


def test_land_inbox_moves_settled_readable_videos_and_sets_bad_ones_aside(tmp_path, demo_video):
    from swan_airflow.ingest import land_inbox

    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    _old(Path(shutil.copy(demo_video, inbox / "cam1.mp4")))
    _old(Path(shutil.copy(demo_video, inbox / "cam1-again.mp4")))  # the same bytes under another name
    (inbox / "notes.mp4").write_text("not a video\n")
    _old(inbox / "notes.mp4")
    shutil.copy(demo_video, inbox / "uploading.mp4")  # modified just now: still being written
    landed = land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30)
    assert landed.landing_date == "2026-11-26"
    [landed_name] = sorted(p.name for p in (landing / "2026-11-26").iterdir())
    assert landed_name.startswith("cam1-again-") and [Path(v).name for v in landed.videos] == [landed_name]
    reasons = {r["video"]: r["reason"] for r in landed.rejected}
    assert set(reasons) == {"notes.mp4", "cam1.mp4"} and "notes.mp4" in reasons["notes.mp4"]
    assert f"the same bytes as {landing / '2026-11-26' / landed_name}" in reasons["cam1.mp4"]  # one video, two names: landed once
    assert (inbox / "rejected" / "notes.mp4").exists() and (inbox / "rejected" / "notes.mp4.reason.txt").read_text().strip()
    assert landed.waiting == [str(inbox / "uploading.mp4")] and (inbox / "uploading.mp4").exists()
    assert not (inbox / "cam1.mp4").exists() and not (inbox / "cam1-again.mp4").exists()
    # landing the same bytes again under the same name the same day adds nothing
    _old(Path(shutil.copy(demo_video, inbox / "cam1-again.mp4")))
    again = land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30)
    assert len(list((landing / "2026-11-26").iterdir())) == 1 and [Path(v).name for v in again.videos] == [landed_name]


def test_one_bad_file_never_stops_an_ingest_pass_and_each_is_set_aside_with_its_reason(tmp_path, demo_video):
    """Unreadable, unsupported and undecodable files beside good videos: the good ones land, the others get a reason."""
    import cv2
    import numpy as np

    from swan_airflow.ingest import land_inbox

    base = world_readable_dir("swan-ingest-")  # reachable by an unprivileged user
    try:
        inbox, landing = base / "inbox", base / "landing"
        inbox.mkdir()
        _old(Path(shutil.copy(demo_video, inbox / "cam1.mp4")))
        webm = cv2.VideoWriter(str(inbox / "cam2.webm"), cv2.VideoWriter_fourcc(*"VP80"), 10, (64, 48))
        for i in range(20):
            webm.write(np.full((48, 64, 3), 10 * i, np.uint8))
        webm.release()
        _old(inbox / "cam2.webm")
        _old(_write(inbox / "loop.gif", b"GIF89a" + bytes(64)))
        _old(_write(inbox / "photo.mp4", cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()))
        _old(_write(inbox / ".cam3.mp4.part", b"an uploader still writing"))  # hidden: left alone
        secret = _old(Path(shutil.copy(demo_video, inbox / "secret.mp4")))
        secret.chmod(0)  # nobody but root can read it
        inbox.chmod(0o777)
        landed = as_unprivileged(lambda: vars(land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30)))
        assert sorted(Path(v).name.split("-")[0] for v in landed["videos"]) == ["cam1", "cam2"]
        reasons = {r["video"]: r["reason"] for r in landed["rejected"]}
        assert set(reasons) == {"loop.gif", "photo.mp4", "secret.mp4"}
        assert ".gif is not a supported video type" in reasons["loop.gif"]
        assert "a PNG image, not a video" in reasons["photo.mp4"]
        assert "secret.mp4: cannot read it (Permission denied)" in reasons["secret.mp4"]
        for name in reasons:
            assert (inbox / "rejected" / name).exists() and name in (inbox / "rejected" / f"{name}.reason.txt").read_text()
        assert sorted(p.name for p in inbox.iterdir()) == [".cam3.mp4.part", "rejected"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_rejected_file_never_replaces_one_rejected_before_under_the_same_name(tmp_path):
    """An uploader with fixed names: each day's unreadable cam1.mp4 was moved onto rejected/cam1.mp4, replacing the one the
    operator had been told to fix and drop in again, and its reason."""
    from swan_airflow.ingest import land_inbox

    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    for day, body in ((26, b"first upload, not a video\n"), (27, b"second upload, not a video either\n")):
        _old(_write(inbox / "cam1.mp4", body))
        [rejected] = land_inbox(inbox, landing, today=dt.date(2026, 11, day), settle_seconds=30).rejected
        assert rejected["video"] == "cam1.mp4"
    kept = sorted(p.name for p in (inbox / "rejected").iterdir())
    assert len(kept) == 4, kept  # two files, two reasons
    bodies = sorted(p.read_bytes() for p in (inbox / "rejected").iterdir() if not p.name.endswith(".reason.txt"))
    assert bodies == [b"first upload, not a video\n", b"second upload, not a video either\n"]
    for name in (n for n in kept if not n.endswith(".reason.txt")):
        assert "cam1.mp4" in (inbox / "rejected" / f"{name}.reason.txt").read_text()


def test_a_file_that_cannot_be_removed_from_the_inbox_does_not_stop_the_pass_or_land_again_and_again(tmp_path, demo_video, monkeypatch):
    """A shared drop folder (sticky bit) with one file of another user: it landed (as a copy), its unlink failed, and the
    pass failed there, every pass: the files after it never landed and those before it got no asset event."""
    from swan_airflow.ingest import land_inbox

    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _old(Path(shutil.copy(demo_video, inbox / name)))
    with (inbox / "a.mp4").open("ab") as f:  # three different videos (the same bytes would be one video)
        f.write(b"\0")
    with (inbox / "c.mp4").open("ab") as f:
        f.write(b"\0\0")
    _old(inbox / "a.mp4"), _old(inbox / "c.mp4")
    unlink = Path.unlink

    def not_ours(self, *args, **kwargs):
        if self.name == "b.mp4":
            raise PermissionError(1, "Operation not permitted", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", not_ours)
    first = land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30)
    assert sorted(Path(v).name.split("-")[0] for v in first.videos) == ["a", "b", "c"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == ["b.mp4"]
    [landed_b] = [Path(v) for v in first.videos if Path(v).name.startswith("b-")]
    assert landed_b.stat().st_ino != (inbox / "b.mp4").stat().st_ino  # its own bytes: its owner may rewrite b.mp4 in place
    for day in (26, 27):  # the same day, and the next: nothing new, so no asset event and no pipeline run every pass
        again = land_inbox(inbox, landing, today=dt.date(2026, 11, day), settle_seconds=30)
        assert again.videos == [] and again.rejected == []
    assert len(list((landing / "2026-11-26").iterdir())) == 3 and not (landing / "2026-11-27").exists()


def test_a_rejected_file_that_cannot_be_moved_leaves_no_copy_behind(tmp_path, monkeypatch):
    """Another user's bad file in a shared (sticky) drop folder: moving it copied it into rejected/ and then failed to
    remove it, so every pass left one more full copy there (under a new name), until the disk filled."""
    import errno

    from swan_airflow.ingest import land_inbox

    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    _old(_write(inbox / "theirs.mp4", b"not a video, and not ours\n" * 1000))
    rename, unlink = os.rename, os.unlink

    def sticky(op):
        def guarded(src, *args, **kwargs):
            if Path(src).name == "theirs.mp4" and Path(src).parent == inbox:
                raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
            return op(src, *args, **kwargs)

        return guarded

    monkeypatch.setattr(os, "rename", sticky(rename))
    monkeypatch.setattr(os, "unlink", sticky(unlink))
    for _ in range(3):
        [rejected] = land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30).rejected
        assert rejected["video"] == "theirs.mp4"
    assert (inbox / "theirs.mp4").exists()
    assert not [p for p in (inbox / "rejected").iterdir() if not p.name.endswith(".reason.txt")]


def test_land_inbox_links_on_one_filesystem_and_copies_across(tmp_path, demo_video, monkeypatch):
    import errno

    from swan_airflow.ingest import land_inbox

    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    inode = _old(Path(shutil.copy(demo_video, inbox / "cam1.mp4"))).stat().st_ino
    [video] = land_inbox(inbox, landing, today=dt.date(2026, 11, 26), settle_seconds=30).videos
    assert Path(video).stat().st_ino == inode and Path(video).stat().st_nlink == 1  # moved, not copied
    assert Path(video).read_bytes() == demo_video.read_bytes()

    # a file with another name (a backup's hard link) is copied: changing that name must not change the landed video
    backup = tmp_path / "backup.mp4"
    _old(Path(shutil.copy(demo_video, inbox / "cam3.mp4")))
    os.link(inbox / "cam3.mp4", backup)
    [video] = land_inbox(inbox, landing, today=dt.date(2026, 11, 27), settle_seconds=30).videos  # another day: not a duplicate of cam1
    assert Path(video).stat().st_ino != backup.stat().st_ino and backup.stat().st_nlink == 1

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))

    monkeypatch.setattr(os, "link", cross_device)  # an inbox on another filesystem
    _old(Path(shutil.copy(demo_video, inbox / "cam2.mp4")))
    [video] = land_inbox(inbox, landing, today=dt.date(2026, 11, 28), settle_seconds=30).videos
    assert Path(video).read_bytes() == demo_video.read_bytes() and not (inbox / "cam2.mp4").exists()
    assert not [p for p in (landing / "2026-11-28").iterdir() if p.name.endswith(".part")]


def test_the_landing_date_of_a_run_comes_from_its_newest_landing_event():
    from airflow.sdk import Asset

    from swan_airflow.ingest import LANDING_ASSET, landing_date_from_events

    def event(day: str, hour: int):
        stamp = dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=dt.UTC)
        return SimpleNamespace(extra={"landing_date": day, "videos": []}, timestamp=stamp)

    assert landing_date_from_events(None) is None and landing_date_from_events({}) is None
    events = {LANDING_ASSET: [event("2026-11-25", 23), event("2026-11-26", 1)], Asset(name="other"): [event("2026-01-01", 5)]}
    assert landing_date_from_events(events) == "2026-11-26"
    assert landing_date_from_events({Asset(name="other"): [event("2026-01-01", 5)]}) is None
    # an event posted over the REST API with a malformed date fails the task at once, naming it (every task of the run
    # derives its dataset from it: retries with backoff could never fix it)
    from airflow.sdk.exceptions import AirflowFailException

    for value in ("26/11/2026", 20261126, "2026-W48-4", "2026-02-30"):
        bad = SimpleNamespace(extra={"landing_date": value}, timestamp=dt.datetime(2026, 11, 26, 2, tzinfo=dt.UTC))
        with pytest.raises(AirflowFailException, match=rf"swan_landing_videos.*{value!r}.*YYYY-MM-DD"):
            landing_date_from_events({LANDING_ASSET: [event("2026-11-25", 23), bad]})


@pytest.mark.slow
def test_the_ingest_dag_lands_videos_and_emits_the_landing_asset_event(airflow_db, demo_video, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from swan_anomaly.config import Settings

    monkeypatch.setenv("SWAN_INGEST_SETTLE_SECONDS", "0")
    settings = Settings.from_env()
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_video, settings.inbox_dir / "ingest-test.mp4")
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("swan_ingest_videos")
    run = dag.test()
    assert str(run.state) == "success"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    [landed] = (settings.landing_dir / today).glob("ingest-test-*.mp4")
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "swan_landing_videos", AssetEvent.source_run_id == run.run_id)
            .all()
        )
        assert len(events) == 1 and events[0].extra["landing_date"] == today and events[0].extra["videos"] == [str(landed)]
    landed.unlink()  # other tests look up landing dates of their own


def test_the_newest_day_of_data_of_each_kind_of_run():
    """What the gate compares: a weekly run brings data through its interval's last day, not its first; videos a run
    names are new on the day it runs, whatever date the form's default interval gives their partition."""
    from swan_airflow.context import RunContext

    run_after = dt.datetime(2026, 11, 27, 9, tzinfo=dt.UTC)
    day = (dt.datetime(2026, 11, 26, tzinfo=dt.UTC), dt.datetime(2026, 11, 27, tzinfo=dt.UTC))
    week = (dt.datetime(2026, 11, 16, tzinfo=dt.UTC), dt.datetime(2026, 11, 23, tzinfo=dt.UTC))
    cases = {
        "daily": (RunContext(DAG_ID, "scheduled__1", "20261126", {}, interval=day, run_after=run_after), dt.date(2026, 11, 26)),
        "weekly": (RunContext(DAG_ID, "scheduled__2", "20261116", {}, interval=week, run_after=run_after), dt.date(2026, 11, 22)),
        "landing_date": (
            RunContext(DAG_ID, "manual__3", "20261120", {}, landing_date="2026-11-20", run_after=run_after),
            dt.date(2026, 11, 20),
        ),
        "named videos": (
            RunContext(DAG_ID, "manual__4", "20261126-videos-0a1b2c3d", {"videos": ["/srv/new.mp4"]}, interval=day, run_after=run_after),
            dt.date(2026, 11, 27),
        ),
    }
    assert {name: ctx.data_through for name, (ctx, _) in cases.items()} == {name: want for name, (_, want) in cases.items()}


def test_each_kind_of_run_processes_the_landing_date_its_dataset_id_names():
    from swan_anomaly.lake import dataset_id_for, landing_window

    day = dt.date(2026, 11, 25)
    interval = (dt.datetime(2026, 11, 25, tzinfo=dt.UTC), dt.datetime(2026, 11, 26, tzinfo=dt.UTC))
    run_after = dt.datetime(2026, 11, 26, 10, 30, tzinfo=dt.UTC)
    cases = {  # (landing_date, interval_start, interval_end, run_after) -> expected window
        "scheduled / backfill": ((None, *interval, run_after), (day, day + dt.timedelta(days=1))),
        "asset event or landing_date Param": (
            ("2026-11-26", None, None, run_after),
            (day + dt.timedelta(days=1), day + dt.timedelta(days=2)),
        ),
        "manual, no logical date": ((None, None, None, run_after), (run_after.date(), run_after.date() + dt.timedelta(days=1))),
        "weekly interval": ((None, interval[0], interval[0] + dt.timedelta(days=7), run_after), (day, day + dt.timedelta(days=7))),
    }
    for name, ((landing_date, start, end, after), expected) in cases.items():
        window = landing_window(landing_date=landing_date, interval_start=start, interval_end=end, run_after=after)
        assert window == expected, name
        assert dataset_id_for(landing_date=landing_date, interval_start=start, run_after=after) == window[0].strftime("%Y%m%d"), name
    with pytest.raises(ValueError, match="which videos"):
        landing_window(landing_date=None, interval_start=None, interval_end=None, run_after=None)


def test_an_interrupted_task_stops_its_local_job_subprocess(tmp_path, monkeypatch, caplog):
    """A timeout or SIGTERM raised in the task while its job runs kills the job: no orphan keeps training."""
    import signal
    import time

    import psutil

    from swan_airflow.jobs import run_job

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "sleepy.py").write_text("import os, time\nprint('pid', os.getpid(), flush=True)\ntime.sleep(120)\n")
    monkeypatch.setenv("SWAN_JOBS_DIR", str(jobs))
    monkeypatch.setenv("SWAN_LAKE_BACKEND", "local")

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted("execution_timeout")

    caplog.set_level("INFO", logger="swan_airflow.jobs")
    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(3)
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            run_job("sleepy", dataset_id="20261126", run_id="manual__interrupt")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 60, "run_job waited for the job instead of stopping it"
    started_pid = [int(line.split()[-1]) for line in caplog.messages if line.startswith("[sleepy] pid ")]
    assert started_pid, f"the job never started: {caplog.messages}"
    with contextlib.suppress(psutil.NoSuchProcess):
        assert psutil.Process(started_pid[0]).status() == psutil.STATUS_ZOMBIE, "the job outlived its task"


def test_the_local_backend_kill_does_not_try_to_cancel_a_databricks_run(dagbag, capsys, monkeypatch):
    task = dagbag.dags[DAG_ID].get_task("run_training")
    monkeypatch.setattr(task, "backend", "local")
    task.on_kill()
    out = capsys.readouterr()
    assert "local train job stops with it" in out.out + out.err and "invalid run_id" not in out.out + out.err
    monkeypatch.setattr(task, "backend", "databricks")
    task.on_kill()  # the provider's path: no Databricks run was started, so it says so
    out = capsys.readouterr()
    assert "invalid run_id" in out.out + out.err


def test_a_job_that_fails_on_bad_input_is_not_retried_and_a_crash_is(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.jobs import JobCrashed, run_job
    from swan_anomaly import JobError
    from swan_anomaly.entrypoint import EXIT_PERMANENT, job_parser, run_entrypoint

    args = job_parser("test").parse_args(["--lake-root", str(tmp_path / "lake"), "--dataset-id", "20261126", "--run-id", "r1"])

    def bad_data():
        raise JobError("gold partition 20261126 has no anomalies in the val split")

    with pytest.raises(SystemExit) as exited:
        run_entrypoint("train", args, bad_data)
    assert exited.value.code == EXIT_PERMANENT

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "rejects.py").write_text(f"import sys\nprint('bad input: labels.csv has no label column')\nsys.exit({EXIT_PERMANENT})\n")
    (jobs / "crashes.py").write_text("import os\nprint('out of memory, probably')\nos._exit(137)\n")
    monkeypatch.setenv("SWAN_JOBS_DIR", str(jobs))
    monkeypatch.setenv("SWAN_LAKE_BACKEND", "local")
    with pytest.raises(AirflowFailException, match=r"(?s)rejects exited with code 3.*no label column"):
        run_job("rejects", dataset_id="20261126", run_id="r1")
    with pytest.raises(JobCrashed, match=r"(?s)crashes exited with code 137.*out of memory"):
        run_job("crashes", dataset_id="20261126", run_id="r1")


def test_a_run_waits_for_its_promotion_turn_while_another_run_is_in_its_section():
    from swan_airflow.steps.promotion import runs_in_promotion

    states = {
        "backfill__1": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},  # gate, promotion, validation under way
        "backfill__2": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": "success"},  # done
        "backfill__3": {"wait_for_promotion_turn": "up_for_reschedule"},  # waiting like me
        "backfill__4": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": "failed"},  # it restored a version
        "backfill__5": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": "skipped"},  # ended
        "backfill__6": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": "up_for_retry"},  # validating again
        "me": {"wait_for_promotion_turn": "running"},
    }
    assert runs_in_promotion(states, me="me") == ["backfill__1", "backfill__6"]
    assert runs_in_promotion({"me": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None}}, me="me") == []


def test_the_same_video_under_two_names_and_an_unreadable_one_are_set_aside(tmp_path, demo_video):
    from swan_anomaly.video import distinct_videos, video_id

    first = Path(shutil.copy(demo_video, tmp_path / "a_cam.mp4"))
    twin = Path(shutil.copy(demo_video, tmp_path / "b_cam.mp4"))
    gone = tmp_path / "c_cam.mp4"
    kept, rejected = distinct_videos([twin, gone, first])
    assert kept == [first]
    assert rejected == [
        {"video": str(twin), "reason": f"{twin}: the same video as {first} (same content); processed once", "video_id": video_id(first)},
        {"video": str(gone), "reason": f"{gone}: cannot read it (No such file or directory)"},
    ]


def _ctx(run_id: str = "manual__x", ti=None, **params):
    from swan_airflow.context import RunContext

    return RunContext(dag_id=DAG_ID, run_id=run_id, dataset_id="20261126", params=params, task=None if ti is None else {"ti": ti})


def test_a_video_that_fails_its_last_try_for_an_unexpected_reason_is_set_aside(demo_video):
    """An unreadable video (an OSError, not a VideoError): retried while tries are left, then set aside with the reason."""
    from swan_airflow.steps import data

    base = world_readable_dir("swan-extract-")
    try:
        video = Path(shutil.copy(demo_video, base / "cam.mp4"))
        video.chmod(0)

        def extract(try_number: int):
            ctx = _ctx(ti=SimpleNamespace(try_number=try_number, max_tries=2), every_seconds=1.0)
            try:
                return data.extract_frames(ctx, {"video": str(video), "reason": None})
            except OSError as exc:
                return {"raised": type(exc).__name__}

        assert as_unprivileged(lambda: extract(1)) == {"raised": "PermissionError"}  # tries left: Airflow retries it
        last = as_unprivileged(lambda: extract(3))
        assert last["video_id"] is None and last["frames"] == 0
        assert last["error"].startswith(f"{video}: could not be read after 3 tries: PermissionError")
    finally:
        shutil.rmtree(base, ignore_errors=True)


class _SectionTI:
    """The task-SDK task instance calls the promotion section's check makes: task states, run states and XComs, of runs
    whose sensor let them in at ``entered`` and whose section tasks claimed it at ``claims`` (a failing read: ``None``)."""

    def __init__(self, states: dict, entered: dict | None = None, claims: dict | None = None, run_state: str = "running"):
        self.states, self.entered, self.claims, self.run_state, self.pushed = states, dict(entered or {}), dict(claims or {}), run_state, []

    def get_task_states(self, dag_id, task_ids):
        return self.states

    def get_dagrun_state(self, dag_id, run_id):
        return self.run_state

    def xcom_pull(self, task_ids, dag_id, run_id, key="return_value"):
        if self.entered.get(run_id) is ConnectionError:
            raise ConnectionError("the API server did not answer")
        if key == "return_value":
            return self.entered.get(run_id)
        return [self.claims.get(run_id) if t == "update_endpoint" else None for t in task_ids]

    def xcom_push(self, key, value):
        self.pushed.append((key, value))


def test_a_section_task_cleared_without_its_turn_fails_while_another_run_holds_the_section():
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.steps.promotion import require_turn

    states = {
        "backfill__1": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},
        "me": {"wait_for_promotion_turn": "success"},
    }
    with pytest.raises(
        AirflowFailException, match=r"run\(s\) backfill__1 are promoting, deploying or validating; .*clear wait_for_promotion_turn"
    ):
        require_turn(_ctx("me", _SectionTI(states)))
    free = _SectionTI(states, run_state="failed")
    require_turn(_ctx("me", free))  # the other run ended half-way: nothing holds the section
    assert [key for key, _ in free.pushed] == ["promotion_claim"]  # and this run claims it
    # backfill__1 holds the section: it entered after me, so my section had ended when it entered
    later = {"me": "2026-11-29T08:00:00+00:00", "backfill__1": "2026-11-30T08:00:00+00:00"}
    with pytest.raises(AirflowFailException, match=r"run\(s\) backfill__1 are promoting"):
        require_turn(_ctx("me", _SectionTI(states, later)))


def test_a_run_cleared_after_its_section_ended_does_not_take_the_section_from_the_run_that_holds_it():
    """Run A's section had ended (its validation failed) and backfill B entered its own; then "clear failed tasks" on A reset
    A's last task, so A looked busy again. The check was symmetric: B's update_endpoint failed for good, A's and B's last tasks
    each saw the other busy and failed, and B's promoted champion was left never deployed nor validated."""
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.steps.promotion import require_turn

    states = {
        "scheduled__A": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},  # cleared: looks busy
        "backfill__B": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},  # in its section
    }
    entered = {"scheduled__A": "2026-11-29T08:00:01+00:00", "backfill__B": "2026-11-29T09:30:00+00:00"}
    claims = {"scheduled__A": "2026-11-29T08:20:00+00:00"}  # A's own section went on until 08:20
    require_turn(_ctx("backfill__B", _SectionTI(states, entered, claims)))  # B holds the section: its tasks go on
    with pytest.raises(AirflowFailException, match=r"run\(s\) backfill__B are promoting, deploying or validating"):
        require_turn(_ctx("scheduled__A", _SectionTI(states, entered, claims)))  # A's cleared tasks fail
    # a run of an earlier version of this code, which recorded nothing, counts as having gone on before B
    require_turn(_ctx("backfill__B", _SectionTI(states, {"backfill__B": entered["backfill__B"]})))
    # but one whose record cannot be read may hold the section: strict, as before claims existed
    with pytest.raises(AirflowFailException, match=r"run\(s\) scheduled__A are promoting"):
        require_turn(_ctx("backfill__B", _SectionTI(states, {**entered, "scheduled__A": ConnectionError}, claims)))


def test_the_run_that_went_on_in_its_section_last_holds_it_whenever_it_entered():
    """A and B had both finished; A's update_endpoint was cleared with its downstream tasks (nobody was busy, so it went on),
    then B's. B entered after A, and was let go on beside A's deployment: who holds the section is who claimed it last."""
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.steps.promotion import require_turn

    states = {
        "scheduled__A": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},
        "backfill__B": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None},
    }
    entered = {"scheduled__A": "2026-11-29T08:00:00+00:00", "backfill__B": "2026-11-29T09:30:00+00:00"}
    claims = {"scheduled__A": "2026-11-29T11:00:00+00:00", "backfill__B": "2026-11-29T09:45:00+00:00"}  # A went on at 11:00
    with pytest.raises(AirflowFailException, match=r"run\(s\) scheduled__A are promoting"):
        require_turn(_ctx("backfill__B", _SectionTI(states, entered, claims)))
    require_turn(_ctx("scheduled__A", _SectionTI(states, entered, claims)))


def test_the_summary_of_a_failed_run_is_written_keeps_the_staged_data_and_fails_the_run(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.steps.report import summarize_run

    monkeypatch.setenv("SWAN_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("SWAN_MODEL_NAME", "ops_nothing_registered")
    states = {"manual__x": {"find_videos": "success", "upload_to_lake": "failed", "run_etl": "upstream_failed", "summarize_run": "running"}}
    ctx = _ctx(ti=SimpleNamespace(get_task_states=lambda dag_id, run_ids: states))
    ctx.staging_dir.mkdir(parents=True)
    (ctx.staging_dir / "labels.csv").write_text("staged, not uploaded\n")
    with pytest.raises(AirflowFailException, match="run manual__x failed at upload_to_lake"):
        summarize_run(ctx, None, None)
    from swan_anomaly.lake import LocalLake

    summary = LocalLake(tmp_path / "lake").read_result("manual__x", "summary")
    assert summary["status"] == "failed" and summary["failed_tasks"] == ["upload_to_lake"]
    assert summary["serving"]["champion"] is None and summary["model"] is None and summary["endpoint"] is None
    assert (ctx.staging_dir / "labels.csv").is_file(), "a cleared upload_to_lake still needs the staged data"


#: Secrets a task's environment may hold (the compose stack's worker holds all of these).
TASK_SECRETS = {
    "DATABRICKS_TOKEN": "dapi-x",
    "AIRFLOW_CONN_SWAN_LAKE": "wasb://a:b@c",
    "AIRFLOW__CORE__FERNET_KEY": "fernet",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-login",
    "HF_TOKEN": "hf-token",
}


def test_each_local_job_gets_only_the_secrets_it_needs(monkeypatch):
    """Every job got the training job's secrets: the ETL and augmentation jobs read the lake and a model config only."""
    from swan_airflow.jobs import local_job_env

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    task_env = {"PATH": "/bin", "SWAN_LAKE_ROOT": "/lake", **TASK_SECRETS}
    got = {job: set(local_job_env(job, task_env)) & set(TASK_SECRETS) for job in ("train", "etl", "augment", "probe")}
    assert got == {"train": {"MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"}, "etl": {"HF_TOKEN"}, "augment": set(), "probe": set()}
    assert all({"PATH", "SWAN_LAKE_ROOT"} <= set(local_job_env(job, task_env)) for job in got)


def test_the_wheel_build_gets_no_secret_and_a_failed_build_says_why_and_fails_at_once(tmp_path, monkeypatch):
    """pip ran with the task's whole environment, and a failed build said only 'returned non-zero exit status 1' (and was retried)."""
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.code_deploy import build_wheel

    project, seen = tmp_path / "project", tmp_path / "env.json"
    project.mkdir()
    (project / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n')
    (project / "setup.py").write_text(  # the build backend runs it: it records what it was given, then fails
        "import json, os, sys\n"
        f"open({str(seen)!r}, 'w').write(json.dumps(sorted(os.environ)))\n"
        "sys.exit('setup.py: the sources are broken')\n"
    )
    for name, value in TASK_SECRETS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AirflowFailException, match=r"(?s)pip wheel of .*project failed \(exit 1\): .*setup\.py: the sources are broken"):
        build_wheel(tmp_path / "out", root=project)
    env = set(json.loads(seen.read_text()))
    assert not env & set(TASK_SECRETS) and "PATH" in env


def test_the_demo_summary_of_a_run_whose_gate_refused_its_first_model_says_so(capsys):
    """The gate refused the first model (a validation split too small to measure): nothing was promoted, so nothing was
    deployed or validated, and the demo's summary crashed on the missing endpoint record (TypeError) after a green run."""
    import runpy

    from conftest import ROOT

    print_summary = runpy.run_path(str(ROOT / "scripts" / "demo.py"))["print_summary"]
    split = {"auroc": 1.0, "auroc_ci": [1.0, 1.0], "f1": 1.0, "abnormal": 16, "normal": 16, "measurable": True, "groups": 2}
    reason = "validation split too small to measure: 16 abnormal and 16 normal images, fewer than 25 per class"
    summary = {
        "dataset_id": "20261201",
        "run_id": "manual__1",
        "images": {"normal": 192, "abnormal": 192, "groups": 24},
        "families": {"cutpaste": 192},
        "rejected_videos": [],
        "upload": {"written": 387, "unchanged": 0, "removed": 0, "uri": "file:///lake/raw/20261201"},
        "etl_rows": 384,
        "quarantined": 0,
        "training_rows": 1308,
        "rows_by_split": {},
        "val": split,
        "test": split,
        "best_epoch": 3,
        "epochs_run": 5,
        "generalization": [],
        "gate": {"mode": "enabled", "passed": False, "reasons": [reason], "reports": {}},
        "model": {"name": "swan_anomaly_vit", "version": "1", "aliases": ["challenger"]},
        "endpoint": None,
        "serving": {"endpoint": "swan-anomaly", "version": None, "champion": None},
    }
    print_summary(summary, reused_video=False, seconds=1.0)
    out = capsys.readouterr().out
    assert f"gate           : refused: {reason} (enabled; no model scored)" in out
    assert "endpoint       : swan-anomaly serves vNone (champion: None); not validated" in out
