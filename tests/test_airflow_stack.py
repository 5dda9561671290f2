"""The real Airflow on a temporary home: api-server, scheduler (LocalExecutor) and dag-processor.

One stack for the module; the tests run in file order and build on each other:

1. the scheduler runs the latest daily interval on its own (a scheduled run), while
2. ``airflow backfill create`` of two past dates, without ``--max-active-runs``, runs them beside it
   (Airflow runs backfills side by side, beside the DAG's ``max_active_runs``): three runs at once,
   each on its own partition, and no run's promotion, deployment and validation interleaves with
   another's; the training subprocess of one backfill run is killed mid-way, the retry finishes the
   run, and the lake and the registry hold no duplicate rows or model versions;
3. the REST API refuses a conf that fails Param validation with a 400 naming the Param;
4. a video dropped into the inbox is landed by the ingest DAG, whose asset event triggers a run
   for today that finds that video.

(That a new run of an already processed date reproduces its lake data exactly is checked on
``dag.test()`` runs, in tests/test_pipeline_e2e.py, without a third whole run here.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from conftest import ROOT, _free_port, run_checked

pytestmark = pytest.mark.slow

DAG_ID = "swan_anomaly_pipeline"
INGEST_DAG_ID = "swan_ingest_videos"
# Two past days, relative to the clock (a fixed date would be in the future on a machine whose clock is behind it,
# and Airflow refuses to backfill intervals that have not ended): before yesterday, so a two-day window of either of
# them never reaches the scheduled run's newer partition.
BACKFILL_DATES = tuple((dt.datetime.now(dt.UTC) - dt.timedelta(days=n)).date().isoformat() for n in (6, 5))
RUN_TIMEOUT_S = 900


class Stack:
    """Handles on the running stack: environment, REST client, lake and registry."""

    def __init__(self, home: Path, port: int, env: dict[str, str]) -> None:
        self.home, self.port, self.env = home, port, env
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v2", timeout=30)
        self.procs: list[subprocess.Popen] = []
        self.services: dict[str, tuple[tuple[str, ...], subprocess.Popen]] = {}
        self.restarts: list[str] = []

    @property
    def settings(self):
        from swan_anomaly.config import Settings

        return Settings.from_env(self.env)

    @property
    def lake(self):
        from swan_anomaly.lake import LocalLake

        return LocalLake(self.settings.lake_root)

    def registry(self):
        from swan_anomaly.registry import mlflow_client

        return mlflow_client(*self.settings.mlflow_uris)

    def airflow(self, *args: str) -> subprocess.CompletedProcess:
        """Run an Airflow CLI command; a failure reports the command's output."""
        return run_checked([sys.executable, "-m", "airflow", *args], env=self.env, timeout=300)

    def create_backfill(self, *args: str, attempts: int = 3) -> None:
        """``airflow backfill create``, again when the scheduler held the SQLite metadata database.

        Airflow removes a partial backfill after such a lock error "so the user can retry"; if
        the backfill row was committed before the lock, it stands and the scheduler runs it.
        """
        for attempt in range(1, attempts + 1):
            try:
                self.airflow("backfill", "create", "--dag-id", DAG_ID, *args)
                return
            except AssertionError as exc:
                if "database is locked" not in str(exc) or attempt == attempts:
                    raise
                response = self.api.get("/backfills", params={"dag_id": DAG_ID})
                if response.status_code == 200 and any(b["completed_at"] is None for b in response.json()["backfills"]):
                    return
                time.sleep(2)

    def start(self, *args: str, log: str) -> None:
        out = (self.home / log).open("a")
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        self.services[log] = (args, proc)

    def supervise(self) -> None:
        """Start again a component that exited, as a deployment's supervisor does (compose's ``restart: always``).

        Airflow 3.3's scheduler can die on a race with ``airflow backfill create`` on SQLite (an
        IntegrityError while the CLI creates the backfill's task instances, rolled back under the
        scheduler: ``ObjectDeletedError``); a supervised scheduler comes back and carries on.
        """
        for log, (args, proc) in list(self.services.items()):
            if proc.poll() is not None:
                self.restarts.append(f"{args[0]} exited with code {proc.returncode}; started again")
                print(f"[stack] {self.restarts[-1]}", file=sys.stderr)
                self.start(*args, log=log)

    def runs(self, dag_id: str = DAG_ID) -> list[dict]:
        response = self.api.get(f"/dags/{dag_id}/dagRuns")
        response.raise_for_status()
        return response.json()["dag_runs"]

    def xcom(self, run_id: str, task_id: str):
        response = self.api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        response.raise_for_status()
        value = response.json()["value"]
        return json.loads(value) if isinstance(value, str) and value.startswith('"') else value  # a JSON string, or the value

    def task_instances(self, run_id: str) -> dict[str, dict]:
        response = self.api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return {(t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"): t for t in response.json()["task_instances"]}

    def wait_for(self, what: str, predicate, timeout: float = RUN_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervise()
            value = predicate()
            if value:
                return value
            time.sleep(2)
        logs = "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in sorted(self.home.glob("*.log")))
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")

    def wait_finished(self, run_id: str, dag_id: str = DAG_ID) -> dict:
        def finished():
            run = next((r for r in self.runs(dag_id) if r["dag_run_id"] == run_id), None)
            return run if run and run["state"] in ("success", "failed") else None

        run = self.wait_for(f"{dag_id} run {run_id} to finish", finished)
        if run["state"] != "success":
            if dag_id != DAG_ID:
                raise AssertionError(f"{dag_id} run {run_id} ended {run['state']}")
            failed = {k: v["state"] for k, v in self.task_instances(run_id).items() if v["state"] not in ("success", "skipped")}
            raise AssertionError(f"run {run_id} ended {run['state']}; unfinished tasks {failed}\n{self.task_log(run_id, failed)}")
        return run

    def task_log(self, run_id: str, tasks) -> str:
        texts = []
        for path in sorted((self.home / "airflow" / "logs").rglob("*.log")):
            if run_id.replace(":", "") in str(path).replace(":", "") and any(t.split("[")[0] in str(path) for t in tasks):
                texts.append(f"--- {path}\n{path.read_text()[-4000:]}")
        return "\n".join(texts)

    def versions_of_run(self, run_id: str) -> list:
        return [
            v for v in self.registry().search_model_versions(f"name='{self.settings.model_name}'") if v.tags.get("airflow_run_id") == run_id
        ]

    def stop(self) -> None:
        from swan_anomaly.serving.local import stop_local_server

        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        stop_local_server(self.settings)
        self.api.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from swan_anomaly.video import render_demo_video

    home = tmp_path_factory.mktemp("stack")
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "SWAN_HOME": str(home / "swan"),
        "SWAN_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}",
        "SWAN_RETRY_DELAY_SECONDS": "1",
        "SWAN_INGEST_SETTLE_SECONDS": "0",
        "SWAN_PROMOTION_POKE_SECONDS": "5",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT / "include")]),
    }
    s = Stack(home, port, env)
    s.airflow("db", "migrate")
    s.airflow("pools", "set", os.environ.get("SWAN_POOL", "swan_training"), "1", "one run trains at a time")
    # The newest complete daily interval is yesterday's: the scheduler runs it on unpause (catchup off).
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    for seed, day in enumerate((yesterday, *BACKFILL_DATES)):  # another video each day: distinct split groups
        render_demo_video(s.settings.landing_dir / day / "swans.mp4", seconds=20, fps=10, seed=seed)
    s.yesterday = yesterday
    s.start("api-server", "--port", str(port), log="api-server.log")
    s.start("scheduler", log="scheduler.log")
    s.start("dag-processor", log="dag-processor.log")
    try:
        s.wait_for("the api-server and the parsed DAGs", lambda: _dags_parsed(s), timeout=180)
        yield s
    finally:
        s.stop()


def _dags_parsed(s: Stack) -> bool:
    try:
        response = s.api.get("/dags")
    except httpx.TransportError:
        return False
    return response.status_code == 200 and {d["dag_id"] for d in response.json()["dags"]} >= {DAG_ID, INGEST_DAG_ID}


def _training_process(stack: Stack, run_id: str):
    """The training job's subprocess of ``run_id`` while its ``run_training`` runs, else None."""
    if stack.task_instances(run_id).get("run_training", {}).get("state") != "running":
        return None
    matches = {}
    for proc in psutil.process_iter(["cmdline", "ppid", "status"]):
        cmd = proc.info["cmdline"] or []
        if any(c.endswith("jobs/train.py") for c in cmd) and run_id in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            matches[proc.pid] = proc
    # the job itself, not a child forked from it (which carries the same command line until it execs)
    return next((p for p in matches.values() if p.info["ppid"] not in matches), None)


def _gone(proc) -> bool:
    """The process has exited: reaped, or a zombie its parent has yet to reap."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _dataset(day: str) -> str:
    return day.replace("-", "")


def test_the_scheduler_runs_the_latest_daily_interval(stack):
    response = stack.api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
    assert response.status_code == 200, response.text
    # the backfill of the next test starts now, so that its runs and the scheduled one run side by side
    conf = {"training_window_days": 2, "anomaly_families": ["salt_pepper_polygons"]}  # one family: no leave-one-out models
    stack.create_backfill("--from-date", BACKFILL_DATES[0], "--to-date", BACKFILL_DATES[-1], "--dag-run-conf", json.dumps(conf))
    runs = stack.wait_for(
        "two backfill runs", lambda: found if len(found := [r for r in stack.runs() if r["run_type"] == "backfill"]) == 2 else None
    )
    # the training subprocess of the first backfill run dies mid-way (SIGKILL: no cleanup, no result file); the next test checks
    stack.killed = next(r["dag_run_id"] for r in runs if r["logical_date"].startswith(BACKFILL_DATES[0]))
    victim = stack.wait_for("the training subprocess", lambda: _training_process(stack, stack.killed))
    # what was killed, for the next test's "try 2" (one CI run saw try 1 succeed: the kill reached no job process)
    print(f"[stack] SIGKILL pid {victim.pid} (started {victim.create_time():.3f}): {' '.join(victim.cmdline())}", file=sys.stderr)
    try:
        victim.suspend()  # stopped first: it starts nothing more while its children are listed
    except psutil.NoSuchProcess:
        raise AssertionError("the training job ended before it could be killed") from None
    assert not (stack.lake.run_dir(stack.killed) / "train.json").exists(), "the job wrote its result before the kill"
    family = [*victim.children(recursive=True), victim]
    for proc in family:  # the job and whatever it started: nothing of it goes on with the work
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    stack.wait_for("the killed job to be gone", lambda: all(_gone(p) for p in family), timeout=30)
    [run] = stack.wait_for("the scheduled run", lambda: [r for r in stack.runs() if r["run_type"] == "scheduled"])
    assert run["logical_date"].startswith(stack.yesterday)
    stack.wait_finished(run["dag_run_id"])
    summary = stack.lake.read_result(run["dag_run_id"], "summary")
    assert summary["dataset_id"] == _dataset(stack.yesterday)
    assert (stack.lake.gold / f"dataset_id={_dataset(stack.yesterday)}").is_dir()
    [version] = stack.versions_of_run(run["dag_run_id"])
    assert summary["model"]["version"] == str(version.version)
    assert version.tags["dataset_id"] == _dataset(stack.yesterday)


def test_a_backfill_runs_side_by_side_with_the_scheduled_run_and_never_interleaves_promotion(stack):
    runs = stack.wait_for(
        "two backfill runs", lambda: found if len(found := [r for r in stack.runs() if r["run_type"] == "backfill"]) == 2 else None
    )
    by_date = {r["logical_date"][:10]: r for r in runs}
    assert set(by_date) == set(BACKFILL_DATES)
    for day in BACKFILL_DATES:
        stack.wait_finished(by_date[day]["dag_run_id"])
    training = stack.task_instances(stack.killed)["run_training"]
    assert training["state"] == "success" and training["try_number"] == 2, training
    versions, sections = set(), {}
    for day in BACKFILL_DATES:
        run_id = by_date[day]["dag_run_id"]
        summary = stack.lake.read_result(run_id, "summary")
        assert summary["dataset_id"] == _dataset(day) and summary["status"] == "success"
        gold = pd.read_parquet(stack.lake.gold / f"dataset_id={_dataset(day)}")
        assert len(gold) == summary["training_rows"] > 0 and gold.sample_id.is_unique
        assert len(pd.read_parquet(stack.lake.silver / f"dataset_id={_dataset(day)}")) == len(
            pd.read_csv(stack.lake.raw(_dataset(day)) / "labels.csv")
        )
        [version] = stack.versions_of_run(run_id)
        assert version.tags["dataset_id"] == _dataset(day) and summary["model"]["version"] == str(version.version)
        versions.add(version.version)
        # the window reached the job through the backfill's conf, and never reaches a newer partition
        train = stack.lake.read_result(run_id, "train")
        earlier = (dt.date.fromisoformat(day) - dt.timedelta(days=1)).strftime("%Y%m%d")
        assert train["window_days"] == 2 and _dataset(day) in train["dataset_ids"] and set(train["dataset_ids"]) <= {earlier, _dataset(day)}
    entered = {}
    for run in stack.runs():  # the scheduled run of the first test ran beside them
        tis = stack.task_instances(run["dag_run_id"])
        sections[run["dag_run_id"]] = (tis["gate_model"]["start_date"], tis["ensure_validated_endpoint"]["end_date"])
        # when the sensor let the run in, which require_turn reads of other runs to tell which one holds the section
        entered[run["dag_run_id"]] = dt.datetime.fromisoformat(stack.xcom(run["dag_run_id"], "wait_for_promotion_turn"))
        if run["run_type"] == "scheduled":
            versions |= {v.version for v in stack.versions_of_run(run["dag_run_id"])}
    assert len(sections) == 3 and len(versions) == 3
    # one run at a time from its gate to the end of its promotion section, whatever the order
    ordered = sorted(sections.values())
    for (_, end), (next_start, _) in zip(ordered, ordered[1:]):
        assert end <= next_start, f"promotion sections interleave: {sections}"
    assert sorted(entered, key=entered.get) == sorted(sections, key=sections.get), (entered, sections)


def test_the_rest_api_refuses_a_bad_conf_with_a_clear_400(stack):
    response = stack.api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"anomaly_ratio": 1.5}})
    assert response.status_code == 400, response.text
    assert "anomaly_ratio" in response.json()["detail"] and "1.5" in response.json()["detail"]
    response = stack.api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": {"anomaly_families": ["not_a_family"]}})
    assert response.status_code == 400 and "anomaly_families" in response.json()["detail"]
    assert not [r for r in stack.runs() if r["run_type"] == "manual"], "a refused conf must not create a run"


def test_videos_landed_by_the_ingest_dag_trigger_a_run_through_the_asset(stack):
    inbox = stack.settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(stack.settings.landing_dir / BACKFILL_DATES[0] / "swans.mp4", inbox / "cam1.mp4")
    before = {r["dag_run_id"] for r in stack.runs()}
    assert stack.api.patch(f"/dags/{INGEST_DAG_ID}", json={"is_paused": False}).status_code == 200
    response = stack.api.post(f"/dags/{INGEST_DAG_ID}/dagRuns", json={"logical_date": None})
    assert response.status_code == 200, response.text
    stack.wait_finished(response.json()["dag_run_id"], INGEST_DAG_ID)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    landed = list((stack.settings.landing_dir / today).glob("cam1-*.mp4"))
    everywhere = sorted(str(p.relative_to(stack.settings.landing_dir)) for p in stack.settings.landing_dir.rglob("cam1*"))
    assert len(landed) == 1 and not (inbox / "cam1.mp4").exists(), (today, everywhere, sorted(p.name for p in inbox.glob("*")))
    run = stack.wait_for(
        "the asset-triggered run",
        lambda: next((r for r in stack.runs() if r["dag_run_id"] not in before and r["run_type"] == "asset_triggered"), None),
    )
    run_id = run["dag_run_id"]
    # the run processes the date its event names: its find_videos found exactly the landed video (the rest of a
    # pipeline run is what the other tests of this module check, so this one stops there)
    stack.wait_for(
        "find_videos of the asset-triggered run", lambda: stack.task_instances(run_id).get("find_videos", {}).get("state") == "success"
    )
    response = stack.api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/find_videos/xcomEntries/return_value")
    assert response.status_code == 200, response.text
    assert response.json()["value"] == [{"video": str(landed[0]), "reason": None}], (run, response.json()["value"])
    assert stack.api.patch(f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"}).status_code == 200
