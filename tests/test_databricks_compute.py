"""The Spark and training jobs as Databricks one-time runs: the real DatabricksSubmitRunOperator
(deferrable) against the Databricks REST API double, which really runs the submitted files."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from conftest import ROOT, captured_output, stored_run_texts
from databricks_double import DatabricksDouble

LANDING_DATE = "2026-11-21"
DATASET = "20261121"
TOKEN = "dapi-double-0123456789"


@pytest.fixture(scope="module")
def double():
    d = DatabricksDouble(token=TOKEN).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def databricks_run(airflow_db, demo_video, double):
    """The DAG run once with the `backend` Param set to databricks in the run's conf, against the double."""
    from airflow.dag_processing.dagbag import DagBag

    from swan_anomaly.config import Settings

    mp = pytest.MonkeyPatch()
    mp.delenv("SWAN_COMPUTE_BACKEND", raising=False)  # the deployment default stays local; this run asks for Databricks
    mp.setenv("SWAN_DATABRICKS_POLL_SECONDS", "1")
    mp.setenv("SWAN_DATABRICKS_RETRY_DELAY", "1")
    mp.setenv("AIRFLOW_CONN_DATABRICKS_DEFAULT", double.connection())
    landing = Settings.from_env().landing_dir / LANDING_DATE
    landing.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_video, landing / "swans.mp4")
    try:
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["swan_anomaly_pipeline"]
        assert type(dag.get_task("run_etl")).__name__ == "SwanJobOperator" and dag.params["backend"] == "local"
        logical = dt.datetime.fromisoformat(LANDING_DATE).replace(tzinfo=dt.UTC)
        with captured_output() as captured:
            dag_run = dag.test(logical_date=logical, run_conf={"landing_date": LANDING_DATE, "backend": "databricks"})
        dag_run.logs = captured.getvalue()
        yield dag_run
    finally:
        mp.undo()


@pytest.mark.slow
def test_jobs_run_on_databricks_with_the_deployed_code(databricks_run, double):
    from airflow.providers.databricks.utils.databricks import normalise_json_content

    from swan_airflow.databricks_runs import cluster_spec, job_env
    from swan_airflow.submit_run import generation_token, token_base
    from swan_anomaly.config import Settings
    from swan_anomaly.lake import MANIFEST, LocalLake, gold_files_digest, sha256_text

    assert str(databricks_run.state) == "success"
    assert [s["tasks"][0]["task_key"] for s in double.submissions] == ["etl", "augment", "train"]
    lake = LocalLake(Settings.from_env().lake_root)
    tokens = set()
    for payload, cluster in zip(double.submissions, ("cpu", "cpu", "gpu")):
        task = payload["tasks"][0]
        assert task["new_cluster"] == normalise_json_content(
            {**cluster_spec(cluster), "spark_env_vars": job_env()}
        )  # the provider sends numbers as strings
        wheel = task["libraries"][0]["whl"]
        assert wheel.endswith("-py3-none-any.whl") and "/code/" in wheel
        code_dir = wheel.rsplit("/", 1)[0]
        assert task["spark_python_task"]["python_file"] == f"{code_dir}/jobs/{task['task_key']}.py"
        params = task["spark_python_task"]["parameters"]
        assert params[:6] == ["--lake-root", str(lake.root), "--dataset-id", DATASET, "--run-id", databricks_run.run_id]
        assert 0 < len(payload["idempotency_token"]) <= 64
        tokens.add(payload["idempotency_token"])
        result = lake.read_result(databricks_run.run_id, task["task_key"])
        assert ".whl" in result["package_path"], "the job did not run the deployed wheel"
    assert len(tokens) == 3
    train = lake.read_result(databricks_run.run_id, "train")
    assert train["val"]["auroc"] >= 0.9
    # the training run's token digests its input partition and the gold files of its window as they were
    train_payload, raw_digest = double.submissions[2], sha256_text((lake.raw(DATASET) / MANIFEST).read_text())
    window = gold_files_digest(lake.gold_files([DATASET]))
    base = token_base(databricks_run.dag_id, databricks_run.run_id, "run_training", -1, train_payload, f"{raw_digest}|gold:{window}")
    assert train_payload["idempotency_token"] == generation_token(base, 0)
    assert f"gold files digest {window[:16]}" in databricks_run.logs


@pytest.mark.slow
def test_resubmitting_with_the_same_token_attaches_to_the_same_run(databricks_run, double):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    hook = DatabricksHook(databricks_conn_id="databricks_double")
    first = double.submissions[0]
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_DATABRICKS_DOUBLE", double.connection())
    try:
        run_id = hook.submit_run(first)
    finally:
        mp.undo()
    assert run_id == double.by_token[first["idempotency_token"]]
    assert len(double.submissions) == 3


@pytest.mark.slow
def test_the_token_stays_out_of_logs_xcom_and_rendered_templates(databricks_run):
    stored = stored_run_texts(databricks_run.run_id)
    assert "spark_python_task" in stored["rendered templates"], "the Databricks payloads were not rendered"
    assert "run_etl" in databricks_run.logs and len(databricks_run.logs) > 10_000
    for where, text in {"task logs": databricks_run.logs, **stored}.items():
        assert TOKEN not in text, f"the Databricks token leaked into {where}"
