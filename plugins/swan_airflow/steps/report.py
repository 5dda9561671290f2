"""The run summary: what went in, what trained, what the gate and the endpoint validation decided, what serves.

Written to ``runs/{run_id}/summary.json`` and the log whatever happened (the task runs when all
others are done, failed ones included): a failed run's summary names the failed tasks and says
what serves now. The task then fails if any other task failed, so the run's state stays red.

Example:
    >>> summary = summarize_run(RunContext.current(), upload, registered)   # doctest: +SKIP
    >>> summary["serving"]                                                                      # doctest: +SKIP
    {'endpoint': 'swan-anomaly', 'version': '4', 'champion': '4'}
"""

from __future__ import annotations

import json
import logging
import shutil

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from swan_airflow.context import RunContext

log = logging.getLogger(__name__)

#: Task states that make the run fail.
FAILED_STATES = ("failed",)


def summarize_run(ctx: RunContext, upload: dict | None, registered: dict | None) -> dict:
    """Write and log the run summary; fail afterwards when another task of the run failed.

    Raises:
        AirflowSkipException: the run had no videos (nothing was done).
        AirflowFailException: another task failed (the summary is written first).
    """
    from swan_airflow.runtime import lake, optional_result
    from swan_airflow.steps.serving import endpoint_summary, score_sample

    states = ctx.task["ti"].get_task_states(dag_id=ctx.dag_id, run_ids=[ctx.run_id]).get(ctx.run_id, {})
    if states.get("find_videos") == "skipped":
        raise AirflowSkipException("the run had no videos: nothing to summarize")
    failed = sorted(task for task, state in states.items() if state in FAILED_STATES)
    store = lake()
    etl, augment, training, gate, checked, restored = (
        optional_result(store, ctx.run_id, job) for job in ("etl", "augment", "train", "gate", "validation", "endpoint_restore")
    )
    # records of an earlier try that judged another challenger (run_training was cleared since) are not this run's
    challenger = str(registered["version"]) if registered else None
    gate, checked = (r if r is not None and r.get("challenger") == challenger else None for r in (gate, checked))
    summary = {
        "dataset_id": ctx.dataset_id,
        "run_id": ctx.run_id,
        "status": "failed" if failed else "success",
        "failed_tasks": failed,
        **_data(upload, etl, augment),
        **_training(training),
        "gate": _gate(gate),
        "model": _model(registered),
        "endpoint": endpoint_summary(checked) if checked else None,
        "serving": _serving(),
        "endpoint_restore": restored["message"] if restored else None,  # what ensure_validated_endpoint had to put back
        "scores": score_sample(checked["scores"]) if checked else [],
    }
    store.write_result(ctx.run_id, "summary", summary)
    if upload is not None:  # the raw partition holds the data now; without an upload, a cleared upload_to_lake still needs it
        shutil.rmtree(ctx.staging_dir, ignore_errors=True)
    log.info("run summary:\n%s", json.dumps({k: v for k, v in summary.items() if k != "scores"}, indent=2, default=str))
    if failed:
        raise AirflowFailException(
            f"run {ctx.run_id} failed at {', '.join(failed)}; serving {summary['serving']}; summary in runs/{ctx.run_id}/summary.json"
        )
    return summary


def _data(upload: dict | None, etl: dict | None, augment: dict | None) -> dict:
    out: dict = {}
    if upload:
        out["images"] = {"total": upload["images"], "normal": upload["normal"], "abnormal": upload["abnormal"], "groups": upload["groups"]}
        out["families"] = upload["families"]
        out["rejected_videos"] = upload["rejected_videos"]
        out["upload"] = {k: upload[k] for k in ("written", "unchanged", "removed", "uri")}
    if etl:
        out["etl_rows"], out["quarantined"] = etl["silver_rows"], len(etl["quarantined"])
    if augment:
        out["training_rows"], out["rows_by_split"] = augment["gold_rows"], augment["rows_by_split_label"]
        out["split_shortfalls"] = augment.get("split_shortfalls", [])
        for problem in out["split_shortfalls"]:
            log.warning("split too small: %s", problem)
    return out


def _split_report(report: dict, keys: tuple[str, ...]) -> dict:
    """``keys`` of one split's evaluation report, plus ``auroc_text``: the AUROC as people should read it
    (with its interval and class counts, or "too small to measure")."""
    from swan_anomaly.metrics import format_auroc

    return {k: report.get(k) for k in keys} | {"auroc_text": format_auroc(report)}


def _training(training: dict | None) -> dict:
    if not training:
        return {}
    keys = ("auroc", "auroc_ci", "f1", "precision", "recall", "false_alarm_rate", "abnormal", "normal", "groups", "measurable", "too_small")
    splits = {name: _split_report(training[name], keys) for name in ("val", "test")}
    for name, split in splits.items():
        # the novelty score and the served decision (either boundary crossed), as trained: recall and false alarms
        for kind in ("novelty", "decision"):
            if kind in training[name]:
                split[kind] = {k: training[name][kind].get(k) for k in ("auroc", "auroc_ci", "recall", "false_alarm_rate")}
        log.info("%s AUROC: %s", name, split["auroc_text"])
        if split.get("decision", {}).get("false_alarm_rate") is not None:
            log.info("%s normals called abnormal by the served decision: %.1f %%", name, 100.0 * split["decision"]["false_alarm_rate"])
    return {
        **splits,
        "best_epoch": training["best_epoch"],
        "epochs_run": training.get("epochs_run"),
        "threshold": training["threshold"],
        "generalization": training["generalization"],
    }


def _gate(gate: dict | None) -> dict | None:
    if not gate:
        return None
    keys = ("auroc", "auroc_ci", "f1", "f1_held_out", "recall", "decision_false_alarm_rate", "threshold", "version")
    keys += ("abnormal", "normal", "groups")
    reports = {who: _split_report(r, keys) for who, r in (gate.get("reports") or {}).items()}
    for who, r in (gate.get("reports") or {}).items():
        if r.get("broken"):  # its scores are not numbers: nothing was measured, and not for want of images
            reports[who]["auroc_text"] = f"not measured: {r['broken']}"
    # thresholds used, and the verdict at the deployment's: a pass that lowered Params alone allowed is an override (forced)
    shown = ("mode", "passed", "promote", "reasons", "measurable", "images", "champion_version", "forced", "thresholds", "broken")
    return {k: gate.get(k) for k in (*shown, "passed_at_defaults", "reasons_at_defaults")} | {"reports": reports}


def _model(registered: dict | None) -> dict | None:
    if not registered:
        return None
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import aliases_of

    return {
        "name": registered["name"],
        "version": registered["version"],
        "aliases": aliases_of(registry_client(), registered["name"], registered["version"]),
    }


def _serving() -> dict:
    """What serves now: the endpoint's version and the registry's champion (either None when there is none)."""
    from swan_airflow.runtime import registry_client, settings
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.registry import CHAMPION, get_alias
    from swan_anomaly.serving.deploy import served_version

    s = settings()
    champion = get_alias(registry_client(), s.model_name, CHAMPION)
    target = serving_target(start=False)
    if target.backend == "local":
        from swan_anomaly import ConfigError
        from swan_anomaly import EndpointBusy
        from swan_anomaly.serving.local import running_server

        try:
            version = served_version(target.workspace(), target.endpoint, s.model_name) if running_server(s, target.auth.token) else None
        except (ConfigError, EndpointBusy) as exc:  # another deployment's server (or another process) answers there, or ours is full
            return {"endpoint": target.endpoint, "version": None, "champion": str(champion.version) if champion else None, "note": str(exc)}
    else:
        version = served_version(target.workspace(), target.endpoint, s.model_name)
    return {"endpoint": target.endpoint, "version": version, "champion": str(champion.version) if champion else None}
