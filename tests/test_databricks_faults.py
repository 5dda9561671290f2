"""Fault handling of Databricks runs through the real provider operator and hook, against the double."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from databricks_double import DatabricksDouble

TOKEN = "dapi-faults-0123456789"


@pytest.fixture
def double(monkeypatch):
    d = DatabricksDouble(token=TOKEN).start()
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_FAULTS", d.connection())
    yield d
    d.stop()


def _operator(script, **kwargs):
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

    payload = {
        "run_name": "fault test",
        "tasks": [
            {
                "task_key": "job",
                "new_cluster": {"num_workers": 0},
                "spark_python_task": {"python_file": str(script), "parameters": ["--frame", "7"]},
            }
        ],
    }
    return DatabricksSubmitRunOperator(
        task_id="run_job",
        databricks_conn_id="databricks_faults",
        json=payload,
        polling_period_seconds=0.2,
        databricks_retry_delay=0.1,
        databricks_retry_limit=4,
        do_xcom_push=False,
        **kwargs,
    )


def test_failed_run_fails_the_task_with_the_databricks_state_message(double, tmp_path):
    from airflow.sdk.exceptions import AirflowException

    script = tmp_path / "job.py"
    script.write_text("import sys\nraise ValueError(f'undecodable frame {sys.argv[2]} in video abc')\n")
    with pytest.raises(AirflowException) as err:
        _operator(script).execute(context={})
    message = str(err.value)
    assert "'result_state': 'FAILED'" in message and "Workload failed" in message
    assert "ValueError: undecodable frame 7 in video abc" in message


def test_throttling_and_unavailability_are_retried(double, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("print('ok')\n")
    double.fail_next("runs/submit", 429, times=1)
    double.fail_next("runs/get", 503, times=2)
    op = _operator(script)
    op.execute(context={})
    statuses = [(path.rsplit("/", 1)[-1], status) for _, path, status in double.requests]
    assert ("submit", 429) in statuses and statuses.count(("get", 503)) == 2
    assert double.runs[op.run_id].result_state == "SUCCESS"
    assert len(double.submissions) == 1


def test_a_bad_token_is_refused(double, tmp_path, monkeypatch):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_WRONG", double.connection(token="wrong"))
    with pytest.raises(Exception, match="403.*Invalid access token"):  # what a workspace answers, not retried
        DatabricksHook(databricks_conn_id="databricks_wrong", retry_limit=1).submit_run({"tasks": []})


def _wait_terminal(hook, token: str, double) -> str:
    import time

    run_id = double.by_token[token]
    for _ in range(300):
        state = hook.get_run_state(run_id)
        if state.is_terminal:
            return state.result_state
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def test_a_failed_run_gets_exactly_one_fresh_run_and_a_succeeded_one_is_reused(double, tmp_path):
    import logging

    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    from swan_airflow.submit_run import claim_token, token_base

    script = tmp_path / "job.py"  # fails on its first run (a transient fault), succeeds after
    script.write_text(
        f"import pathlib, sys\nm = pathlib.Path({str(tmp_path / 'seen')!r})\nif not "
        f"m.exists():\n    m.touch(); sys.exit('transient fault')\n"
    )
    payload = {
        "run_name": "rerun test",
        "tasks": [{"task_key": "job", "new_cluster": {"num_workers": 0}, "spark_python_task": {"python_file": str(script)}}],
    }
    hook = DatabricksHook(databricks_conn_id="databricks_faults")
    log = logging.getLogger("test")
    base = token_base("swan", "scheduled__2026-11-20", "run_etl", -1, payload, "manifest-digest-1")

    first = claim_token(hook, payload, base, log)
    assert _wait_terminal(hook, first, double) == "FAILED"
    retry = claim_token(hook, payload, base, log)  # the next try (a retry or a cleared task)
    assert retry != first and _wait_terminal(hook, retry, double) == "SUCCESS"
    rerun = claim_token(hook, payload, base, log)  # the task or the DAG run cleared again
    assert rerun == retry
    assert len(double.submissions) == 2, "a rerun after success must not start another run"

    new_data = token_base("swan", "scheduled__2026-11-20", "run_etl", -1, payload, "manifest-digest-2")
    assert claim_token(hook, payload, new_data, log) not in (first, retry)
    assert len(double.submissions) == 3, "new input data must start a new run"


def test_mlflow_on_databricks_authenticates_with_the_airflow_connection(double, monkeypatch):
    import mlflow

    from swan_airflow.runtime import registry_client

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("SWAN_DATABRICKS_CONN_ID", "databricks_faults")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "databricks")
    # registry_client() exports the workspace for MLflow; empty values (restored afterwards)
    # stand for "not set in this process"
    monkeypatch.setenv("DATABRICKS_HOST", "")
    monkeypatch.setenv("DATABRICKS_TOKEN", "")
    try:
        assert list(registry_client().search_registered_models()) == []
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert ("GET", "/api/2.0/mlflow/registered-models/search", 200) in double.requests


def test_a_databricks_workspaces_mlflow_gets_a_workspace_path_for_its_experiment():
    """The default experiment 'swan-anomaly' went to the clusters, and the workspace refuses a relative name: the training job
    failed after loading and decoding its data, on every retry (a new GPU cluster each)."""
    from swan_anomaly import ConfigError, Settings

    assert Settings.from_env({}).experiment == "swan-anomaly"  # a local MLflow takes any name
    assert Settings.from_env({"MLFLOW_TRACKING_URI": "databricks"}).experiment == "/Shared/swan-anomaly"
    named = {"MLFLOW_TRACKING_URI": "databricks", "SWAN_EXPERIMENT": "/Users/me@example.com/swan"}
    assert Settings.from_env(named).experiment == "/Users/me@example.com/swan"
    with pytest.raises(ConfigError, match=r"SWAN_EXPERIMENT='swan-anomaly': a Databricks workspace's MLflow .* refuses a relative"):
        Settings.from_env({"MLFLOW_TRACKING_URI": "databricks", "SWAN_EXPERIMENT": "swan-anomaly"})


def test_unity_catalog_needs_a_three_level_model_name():
    from swan_anomaly import ConfigError, Settings

    env = {"MLFLOW_TRACKING_URI": "databricks", "MLFLOW_REGISTRY_URI": "databricks-uc"}
    with pytest.raises(ConfigError, match="three-level name"):
        Settings.from_env({**env, "SWAN_MODEL_NAME": "swan_anomaly_vit"})
    assert Settings.from_env({**env, "SWAN_MODEL_NAME": "main.swan.swan_anomaly_vit"}).model_name == "main.swan.swan_anomaly_vit"


def test_a_unity_catalog_model_name_is_taken_in_lower_case_as_unity_catalog_keeps_it():
    """Unity Catalog keeps names in lower case: a mixed-case SWAN_MODEL_NAME never matched the versions it returned, so a
    retried or cleared register_model (find_version_for_run) missed the version its training run had registered and made
    a second one of the same weights."""
    from swan_anomaly import Settings

    uc = {"MLFLOW_TRACKING_URI": "databricks", "MLFLOW_REGISTRY_URI": "databricks-uc", "SWAN_MODEL_NAME": "Main.Swan.Swan_Anomaly_ViT"}
    assert Settings.from_env(uc).model_name == "main.swan.swan_anomaly_vit"
    # the workspace registry and a local MLflow keep the case they are given
    assert Settings.from_env({"SWAN_MODEL_NAME": "Swan_Anomaly_ViT"}).model_name == "Swan_Anomaly_ViT"


@pytest.mark.parametrize("failure", ["permanent", "crash", "crash after an earlier permanent failure"])
def test_a_job_that_fails_for_good_on_databricks_is_not_retried_and_a_crash_is(double, tmp_path, monkeypatch, failure):
    """Databricks reports a failed run as FAILED whatever the job's exit status: a JobError (bad input data) was retried
    SWAN_RETRIES times, each a fresh run on a new cluster, and failed the same way."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

    from conftest import ROOT
    from swan_anomaly.entrypoint import failure_record
    from swan_anomaly.lake import LocalLake

    lake_root, run_id = tmp_path / "lake", "manual__failing"
    for key, value in {"SWAN_LAKE_ROOT": str(lake_root), "SWAN_JOB_LAKE_ROOT": str(lake_root)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # a store a cluster can reach
    error = "JobError('the validation split holds one class')" if failure == "permanent" else "ValueError('out of memory, maybe')"
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'include')!r})\n"
        "from swan_anomaly import JobError\n"
        "from swan_anomaly.entrypoint import job_parser, run_entrypoint\n"
        "def work():\n"
        f"    raise {error}\n"
        "run_entrypoint('probe', job_parser('probe').parse_args(sys.argv[1:]), work)\n"
    )
    if failure.endswith("earlier permanent failure"):  # an earlier generation's record: not this run's
        LocalLake(lake_root).write_result(run_id, failure_record("probe"), {"error": "JobError: an older run's"})
    params = ["--lake-root", str(lake_root), "--dataset-id", "20261130", "--run-id", run_id]
    task = {"task_key": "probe", "new_cluster": {"num_workers": 0}, "spark_python_task": {"python_file": str(script), "parameters": params}}
    op = _job_operator("probe", task)  # deferrable, as the pipeline's: the trigger polls the run, then execute_complete judges it
    context = {"run_id": run_id, "ti": SimpleNamespace(dag_id="swan_anomaly_pipeline", run_id=run_id, task_id="run_probe", map_index=-1)}
    with pytest.raises(AirflowException) as raised:
        try:
            op.execute(context)
        except TaskDeferred as deferred:
            op.execute_complete(context, asyncio.run(_first_event(deferred.trigger)).payload)
    if failure == "permanent":
        assert isinstance(raised.value, AirflowFailException)
        assert "the probe job failed on Databricks for a reason a retry cannot fix: JobError: the validation split" in str(raised.value)
    else:
        assert not isinstance(raised.value, AirflowFailException), raised.value  # a crash is worth a retry


async def _first_event(trigger):
    async for event in trigger.run():
        return event


def _pipeline_job(tmp_path, monkeypatch, version: str):
    """An ``etl`` task on Databricks as the DAG builds it, its payload pointing at ``code/{version}/`` of a local lake."""

    lake_root = tmp_path / "lake"
    for key, value in {"SWAN_LAKE_ROOT": str(lake_root), "SWAN_JOB_LAKE_ROOT": str(lake_root)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # a store a cluster can reach
    code = lake_root / "code" / version
    (code / "jobs").mkdir(parents=True, exist_ok=True)
    (code / "jobs" / "etl.py").write_text("print('etl done')\n")
    (code / "swan_anomaly-0.1.0-py3-none-any.whl").write_bytes(b"")
    task = {
        "task_key": "etl",
        "new_cluster": {"num_workers": 0},
        "libraries": [{"whl": str(code / "swan_anomaly-0.1.0-py3-none-any.whl")}],
        "spark_python_task": {"python_file": str(code / "jobs" / "etl.py"), "parameters": ["--dataset-id", "20261130"]},
    }
    return _job_operator("etl", task, inputs="digest-of-the-upload-an-earlier-try-reported")  # upload_to_lake's XCom


def _job_operator(job: str, task: dict, **kwargs):
    """The task of ``job`` on Databricks (deferrable, as the pipeline builds it) for one run ``task``, against the double."""
    from swan_airflow.submit_run import SwanJobOperator

    return SwanJobOperator(
        task_id=f"run_{job}",
        job=job,
        job_args=[],
        dataset_id="20261130",
        backend="databricks",
        json={"run_name": job, "tasks": [task]},
        databricks_conn_id="databricks_faults",
        polling_period_seconds=0.2,
        databricks_retry_delay=0.1,
        do_xcom_push=False,
        deferrable=True,
        **kwargs,
    )


def _execute(op, run_id: str = "manual__cleared") -> None:
    from types import SimpleNamespace

    from airflow.sdk.exceptions import TaskDeferred

    context = {"run_id": run_id, "ti": SimpleNamespace(dag_id="swan_anomaly_pipeline", run_id=run_id, task_id=op.task_id, map_index=-1)}
    with contextlib.suppress(TaskDeferred):  # a run still going defers; a finished one completes inline
        op.execute(context)


def test_a_cleared_job_runs_again_on_the_raw_data_the_lake_holds_now(double, tmp_path, monkeypatch):
    """The token digested upload_to_lake's XCom: after another run re-uploaded the date (a video added), clearing this
    run's run_etl reused its old Databricks run, and the new video never reached silver or gold."""
    import time

    from swan_airflow.code_deploy import code_version
    from swan_anomaly.lake import LocalLake

    lake = LocalLake(tmp_path / "lake")
    (lake.raw("20261130")).mkdir(parents=True)
    (lake.raw("20261130") / "manifest.json").write_text('{"dataset_id": "20261130", "files": {"frames/a.png": "aa"}}')
    _execute(_pipeline_job(tmp_path, monkeypatch, code_version()))
    deadline = time.monotonic() + 30
    while next(iter(double.runs.values())).result_state is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(double.submissions) == 1
    _execute(_pipeline_job(tmp_path, monkeypatch, code_version()))  # cleared, the same data: its succeeded run is reused
    assert len(double.submissions) == 1
    (lake.raw("20261130") / "manifest.json").write_text('{"dataset_id": "20261130", "files": {"frames/a.png": "aa", "frames/b.png": "bb"}}')
    _execute(_pipeline_job(tmp_path, monkeypatch, code_version()))  # another run re-uploaded the date since
    assert len(double.submissions) == 2, "new raw data under the same dataset id must run the job again"


def test_a_job_runs_the_dags_code_even_when_an_earlier_deploy_code_shipped_other_code(double, tmp_path, monkeypatch):
    """deploy_code's result is an XCom: after a code change (a fix and a cleared run_etl, or a deployment while the run
    waited for the training pool) the job ran the old code/{version}/ on Databricks and reused its run, while the local
    backend ran the new code."""
    from swan_airflow.code_deploy import code_version
    from swan_anomaly.lake import LocalLake

    lake = LocalLake(tmp_path / "lake")
    (lake.raw("20261130")).mkdir(parents=True)
    (lake.raw("20261130") / "manifest.json").write_text('{"dataset_id": "20261130", "files": {}}')
    current = code_version()
    _pipeline_job(tmp_path, monkeypatch, current)  # this code is deployed already (deploy_code would build it once)
    (lake.root / "code" / current / "_SUCCESS").write_text("")
    _execute(_pipeline_job(tmp_path, monkeypatch, "0.1.0-0123456789ab"))  # the payload of an earlier deploy_code
    [submitted] = double.submissions
    task = submitted["tasks"][0]
    assert task["spark_python_task"]["python_file"] == f"{lake.root}/code/{current}/jobs/etl.py"
    assert [lib["whl"] for lib in task["libraries"] if "whl" in lib] == [f"{lake.root}/code/{current}/swan_anomaly-0.1.0-py3-none-any.whl"]
