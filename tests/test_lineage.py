"""What a job task reports to Airflow after its job: once, and never at the cost of the job's success."""

from __future__ import annotations

import collections
import json
import logging
import types

import pytest
from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

from swan_airflow import lineage
from swan_airflow.submit_run import SwanJobOperator

DATASET = "20261130"


def _operator(backend: str = "local") -> SwanJobOperator:
    return SwanJobOperator(
        task_id="run_etl",
        job="etl",
        job_args=[],
        dataset_id=DATASET,
        backend=backend,
        json={"run_name": "x", "tasks": [{"task_key": "etl"}]},
        databricks_conn_id="databricks_default",
    )


def _context(run_id: str = "manual__lineage") -> dict:
    return {"run_id": run_id, "outlet_events": collections.defaultdict(types.SimpleNamespace), "ti": None}


@pytest.fixture
def lake_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SWAN_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.delenv("SWAN_JOB_LAKE_ROOT", raising=False)
    return tmp_path / "lake"


def test_the_silver_event_names_the_partition_where_the_jobs_write_it(lake_root):
    context = _context()
    run_dir = lake_root / "runs" / "manual__lineage"
    run_dir.mkdir(parents=True)
    (run_dir / "etl.json").write_text(json.dumps({"dataset_id": DATASET, "silver_rows": 40}))
    _operator().record_outputs(context)
    extra = context["outlet_events"][lineage.SILVER].extra
    assert extra == {"dataset_id": DATASET, "uri": str(lake_root / "silver" / "images" / f"dataset_id={DATASET}"), "rows": 40}


def test_a_lineage_failure_after_a_successful_job_is_a_warning_not_a_failed_task(lake_root, caplog):
    """No result file to read (a lake hiccup): before, the task failed, and its retry re-attached to the same
    successful Databricks run and failed again."""
    context = _context()
    with caplog.at_level(logging.WARNING, logger="swan_airflow.lineage"):
        assert _operator().record_outputs(context) is None
    assert any("lineage: _record_outputs failed (LakeError" in r.getMessage() for r in caplog.records)
    assert lineage.SILVER not in context["outlet_events"]


def test_a_databricks_run_that_ended_at_once_records_its_outputs_once(lake_root, monkeypatch):
    """The provider completes a run that is already terminal at submit inline, through ``execute_complete``
    (``_handle_deferrable_databricks_operator_execution``); ``execute`` must not record a second time."""
    monkeypatch.setattr(DatabricksSubmitRunOperator, "execute", lambda self, context: self.execute_complete(context, {}))
    monkeypatch.setattr(DatabricksSubmitRunOperator, "execute_complete", lambda self, context, event: None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")  # what a cluster can reach
    monkeypatch.setenv("SWAN_JOB_LAKE_ROOT", str(lake_root))
    op = _operator(backend="databricks")
    # not the subject here (tests/test_databricks_faults.py): the payload's code and the raw partition's manifest
    monkeypatch.setattr(op, "use_current_code", lambda: None)
    monkeypatch.setattr(op, "raw_inputs", lambda dataset_id: "manifest-digest")
    calls = []
    monkeypatch.setattr(op, "record_outputs", lambda context, result=None: calls.append(context["run_id"]))
    op.execute(_context())
    assert calls == ["manual__lineage"]
