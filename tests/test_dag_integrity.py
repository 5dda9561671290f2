"""The DAG file parses, is wired as documented, and stays cheap to import."""

from __future__ import annotations

import json
import re
import os
import sys

from conftest import PIPELINE_DAG_ID as DAG_ID
from conftest import ROOT, run_checked

EXPECTED_TASKS = {
    "find_videos",
    "extract_frames",
    "synthesize_anomalies",
    "build_labels",
    "check_labels",
    "upload_to_lake",
    "run_etl",
    "run_augmentation",
    "run_training",
    "register_model",
    "wait_for_promotion_turn",
    "gate_model",
    "promote_model",
    "keep_champion",
    "update_endpoint",
    "validate_endpoint",
    "ensure_validated_endpoint",
    "summarize_run",
    "deploy_code",
}


def test_dagbag_has_no_import_errors_and_sane_defaults(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors
    dag = dagbag.dags.get(DAG_ID)
    assert dag is not None
    assert dag.tags and dag.default_args["retries"] >= 2
    assert set(dag.task_ids) == EXPECTED_TASKS
    assert dag.max_active_runs == 1


def test_both_dags_retry_as_swan_retries_says(dagbag):
    from swan_anomaly.config import Settings

    settings = Settings.from_env()
    for dag_id in (DAG_ID, "swan_ingest_videos"):
        dag = dagbag.dags[dag_id]
        assert dag.default_args["retries"] == settings.retries, dag_id
        assert dag.default_args["retry_delay"].total_seconds() == settings.retry_delay_seconds, dag_id


def test_pipeline_order_reads_like_the_diagram(dagbag):
    dag = dagbag.dags[DAG_ID]
    chain = [
        "find_videos",
        "extract_frames",
        "synthesize_anomalies",
        "build_labels",
        "upload_to_lake",
        "run_etl",
        "run_augmentation",
        "run_training",
        "register_model",
        "wait_for_promotion_turn",
        "gate_model",
    ]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert "run_etl" in dag.get_task("deploy_code").downstream_task_ids
    assert dag.get_task("gate_model").downstream_task_ids == {"promote_model", "keep_champion"}
    assert {"promote_model", "keep_champion"} <= dag.get_task("update_endpoint").upstream_task_ids
    assert "update_endpoint" in dag.get_task("validate_endpoint").upstream_task_ids
    # the promotion section: one run at a time, its turn checked by one sensor at a time, released by the task that leaves a
    # validated version serving whatever failed before it (a timed-out validation, an endpoint update that failed for good)
    turn = dag.get_task("wait_for_promotion_turn")
    assert turn.mode == "poke" and turn.max_active_tis_per_dag == 1
    secured = dag.get_task("ensure_validated_endpoint")
    assert secured.trigger_rule == "all_done" and secured.upstream_task_ids == {"validate_endpoint"}
    # the summary runs whatever happened upstream, and is the run's only leaf (its failure keeps a failed run red)
    summary = dag.get_task("summarize_run")
    assert summary.trigger_rule == "all_done"
    assert {"ensure_validated_endpoint", "upload_to_lake", "register_model"} <= summary.upstream_task_ids
    assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["summarize_run"]


def test_importing_the_dag_file_imports_no_heavy_library():
    heavy = ["torch", "pyspark", "cv2", "transformers", "mlflow"]
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(ROOT / 'dags' / 'swan_anomaly_pipeline.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    out = run_checked([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the DAG file imported {loaded} at parse time"


def test_the_anomaly_family_param_offers_exactly_the_library_families(dagbag):
    """The DAG cannot import the (cv2-heavy) anomalies package at parse time, so it reads swan_anomaly.contract: check it."""
    from swan_anomaly.anomalies import DEFAULT_FAMILIES, FAMILIES

    param = dagbag.dags[DAG_ID].params.get_param("anomaly_families")
    assert param.schema["items"]["enum"] == list(FAMILIES)
    assert set(param.value) <= set(DEFAULT_FAMILIES)


def test_the_ui_gets_the_lineage_outlets_and_the_task_links(dagbag, airflow_db):
    """What the serialized DAG (the scheduler's and UI's copy) says each task produces and links to."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.get_dag("swan_anomaly_pipeline")))
    outlets = {t.task_id: sorted(a.name for a in t.outlets) for t in serialized.tasks if t.outlets}
    assert outlets == {
        "upload_to_lake": ["swan_lake_raw"],
        "run_etl": ["swan_lake_silver"],
        "run_augmentation": ["swan_lake_gold"],
        "register_model": ["swan_model_version"],
        "validate_endpoint": ["swan_model_champion"],  # the champion once the endpoint serves it validated
    }
    links = {t.task_id: {link.name: link.xcom_key for link in t.operator_extra_links} for t in serialized.tasks if t.operator_extra_links}
    assert links["run_training"]["MLflow run"] and "See Databricks Job Run" in links["run_training"]
    assert set(links["register_model"]) == set(links["promote_model"]) == {"Model version"}
    assert set(links["update_endpoint"]) == set(links["validate_endpoint"]) == {"Serving endpoint"}


def _readme_flowchart() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """The README's mermaid flowchart: the labels' first words each node id is drawn with, and its edges (ids)."""
    text = (ROOT / "README.md").read_text()
    chart = text.split("```mermaid", 1)[1].split("```", 1)[0]
    labels: dict[str, set[str]] = {}
    edges = set()
    node = r"(\w+)(?:[\[{]([\w ]+?)(?:<br/>|[\]}]))?"
    for line in chart.splitlines()[1:]:
        found = re.findall(node + r".*?(?:-->|-\.->)(?:\|[^|]*\|)?\s*" + node, line)
        for source, source_label, target, target_label in found:
            edges.add((source, target))
            for ident, label in ((source, source_label), (target, target_label)):
                if label:
                    labels.setdefault(ident, set()).add(label.split()[0])
    return labels, edges


def test_the_readme_diagram_draws_each_task_once_with_the_dags_edges(dagbag):
    dag = dagbag.dags[DAG_ID]
    labels, edges = _readme_flowchart()
    twice = {ident: names for ident, names in labels.items() if len(names) > 1}
    assert not twice, f"one node id drawn as two boxes: {twice}"
    task_of = {ident: names.pop() for ident, names in labels.items()}
    folders = {"inbox", "landing"}
    assert set(task_of.values()) - folders == set(dag.task_ids)
    for source, target in edges:
        if task_of[source] in folders:
            continue
        assert task_of[target] in dag.get_task(task_of[source]).downstream_task_ids, (task_of[source], task_of[target])
