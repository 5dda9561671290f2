"""Fault handling of Databricks runs through the real provider operator and hook, against the double."""

from __future__ import annotations


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
        "tasks": [{"task_key": "job", "new_cluster": {"num_workers": 0}, "spark_python_task": {"python_file": str(script), "parameters": ["--frame", "7"]}}],
    }
    return DatabricksSubmitRunOperator(
        task_id="run_job", databricks_conn_id="databricks_faults", json=payload, polling_period_seconds=0.2,
        databricks_retry_delay=0.1, databricks_retry_limit=4, do_xcom_push=False, **kwargs,
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
    with pytest.raises(Exception, match="401|UNAUTHENTICATED|Invalid access token"):
        DatabricksHook(databricks_conn_id="databricks_wrong", retry_limit=1).submit_run({"tasks": []})
