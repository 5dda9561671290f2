"""Promotion steps: one run at a time, a gate on the same rows, then promote or keep the champion.

**One run at a time.** From ``wait_for_promotion_turn`` to the end of ``ensure_validated_endpoint``
a run holds the promotion section: another run's gate, promotion, deployment or validation
never interleaves with it, however the runs were started (schedule, asset event, manual
trigger, a backfill, which Airflow runs beside the DAG's ``max_active_runs``). The sensor
(``max_active_tis_per_dag=1``: one instance runs at a time, so no two runs can both see the
section free) enters only when no other active run has entered and not yet finished
its section (:func:`runs_in_promotion`).

**The gate** (:func:`gate_model`) scores the challenger and the current champion (and the best
versions of the champion's line per metric, its ``gate_reference`` tag) on the same images, the challenger's
validation split read from the raw partitions, each through its own registered pyfunc and at its
own stored threshold (F1 is compared out of sample: ``swan_anomaly.gate.COMPARED_AS``), and decides with
:func:`swan_anomaly.gate.decide`. The scored models' metrics go to the challenger's MLflow run
(``challenger_val_auroc``, ``champion_val_auroc``, ...), the decision to ``gate/decision.json``
there and to ``runs/{run_id}/gate.json`` in the lake.

Example:
    >>> runs_in_promotion({"r1": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None}}, me="r2")
    ['r1']
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException

from swan_airflow.context import RunContext

if TYPE_CHECKING:
    from swan_anomaly.gate import GateMode
    from swan_anomaly.lake import Lake

log = logging.getLogger(__name__)

#: The first and last task of the promotion section.
SECTION_START, SECTION_END = "wait_for_promotion_turn", "ensure_validated_endpoint"
#: The section's tasks that check their run's turn (:func:`require_turn`) and, when it holds, push when they did
#: (XCom :data:`CLAIM_KEY`): which run holds the section is the one that claimed it last.
CLAIMING_TASKS = ("gate_model", "promote_model", "update_endpoint", "validate_endpoint", SECTION_END)
CLAIM_KEY = "promotion_claim"
#: Task states after which a task will not run again unless cleared.
FINISHED_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
#: DAG run states in which a run's tasks may still run.
ACTIVE_RUN_STATES = frozenset({"queued", "running"})
#: Metrics of each model that the gate logs on the challenger's MLflow run.
LOGGED_METRICS = ("auroc", "f1", "f1_held_out", "precision", "recall", "average_precision", "decision_false_alarm_rate")


def runs_in_promotion(task_states: Mapping[str, Mapping[str, str | None]], *, me: str) -> list[str]:
    """Runs other than ``me`` that entered the promotion section and have not finished it.

    Args:
        task_states: ``{run_id: {task_id: state}}`` of the section's first and last task.
        me: this run's id.
    """
    return sorted(
        run_id
        for run_id, states in task_states.items()
        if run_id != me and states.get(SECTION_START) == "success" and states.get(SECTION_END) not in FINISHED_STATES
    )


def _busy_runs(ctx: RunContext) -> list[str]:
    """Other active runs between their promotion turn and the end of their promotion section."""
    ti = ctx.task["ti"]
    states = ti.get_task_states(dag_id=ctx.dag_id, task_ids=[SECTION_START, SECTION_END])
    return [r for r in runs_in_promotion(states, me=ctx.run_id) if ti.get_dagrun_state(ctx.dag_id, r) in ACTIVE_RUN_STATES]


def promotion_turn(ctx: RunContext):
    """Whether no other active run is between its promotion turn and the end of its promotion section.

    Returns:
        False while another run is; then a ``PokeReturnValue`` whose XCom is when this run entered
        (UTC, ISO 8601), its first claim on the section (:func:`require_turn`).
    """
    from airflow.sdk import PokeReturnValue

    busy = _busy_runs(ctx)
    if busy:
        log.info("waiting for run(s) %s: promoting, deploying or validating; this run's gate comes after", ", ".join(busy))
        return False
    log.info("promotion turn of run %s: no other run is promoting, deploying or validating", ctx.run_id)
    return PokeReturnValue(is_done=True, xcom_value=_now())


class _Unknown:
    """A run's last claim that could not be read: it may hold the section."""


def _last_claim(ctx: RunContext, run_id: str) -> str | None | type[_Unknown]:
    """When ``run_id`` last entered or went on in its promotion section (UTC, ISO 8601): the latest of its sensor's XCom
    and its section tasks' :data:`CLAIM_KEY` XComs. None: it recorded none (a run of an earlier version of this code);
    :class:`_Unknown`: they could not be read."""
    ti = ctx.task["ti"]
    try:
        entered = ti.xcom_pull(task_ids=SECTION_START, dag_id=ctx.dag_id, run_id=run_id)
        claims = ti.xcom_pull(task_ids=list(CLAIMING_TASKS), dag_id=ctx.dag_id, run_id=run_id, key=CLAIM_KEY)
    except Exception as exc:  # noqa: BLE001 - an API hiccup: unknown, and the check stays strict
        log.warning("could not read when run %s last went on in its promotion section: %s", run_id, exc)
        return _Unknown
    stamps = [v for v in [entered, *(claims or [])] if isinstance(v, str)]
    return max(stamps) if stamps else None


def _now() -> str:
    """A claim's time: now, UTC, ISO 8601 (strings of this form order as the times do)."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat()


def _claim(ctx: RunContext) -> None:
    """Record that this run goes on in its promotion section now (this task's :data:`CLAIM_KEY` XCom)."""
    ctx.task["ti"].xcom_push(key=CLAIM_KEY, value=_now())


def entered_section(ctx: RunContext) -> bool:
    """True when this run's ``wait_for_promotion_turn`` succeeded: it holds, or held, the promotion section."""
    if ctx.task is None:  # a step called outside a DAG run (tests)
        return True
    states = ctx.task["ti"].get_task_states(dag_id=ctx.dag_id, task_ids=[SECTION_START], run_ids=[ctx.run_id])
    return states.get(ctx.run_id, {}).get(SECTION_START) == "success"


def require_turn(ctx: RunContext) -> None:
    """Fail a section task that runs while another run holds the promotion section.

    That happens only when a task of the section was cleared without ``wait_for_promotion_turn``
    (whose success still stands): the run would interleave with the one that holds the section.
    The run that holds it is the one that claimed it last: its sensor let it in, or one of its
    section's tasks went on, after every other run's last claim (a run's claim is made only while
    no other run is busy, or while it holds the section). A run whose section had ended, and
    that looks busy again because its tasks were cleared without the sensor, fails; the holder
    goes on. When a claim cannot be read, the check fails as it did before claims existed.

    Raises:
        AirflowFailException: another active run is in its section; clear the sensor with its
            downstream tasks instead, so this run waits for its turn.
    """
    if ctx.task is None:  # a step called outside a DAG run (tests): no other runs to interleave with
        return
    if busy := _busy_runs(ctx):
        mine = _last_claim(ctx, ctx.run_id)
        theirs = [_last_claim(ctx, run) for run in busy]
        if isinstance(mine, str) and all(t is None or (isinstance(t, str) and t < mine) for t in theirs):
            # They last went on before this run did, so their section had ended then: a clear of their tasks without
            # wait_for_promotion_turn made them look busy again. This run holds the section; their tasks fail.
            log.warning(
                "run(s) %s look as if in their promotion section, but last went on in it before this run did (their tasks were "
                "cleared without %s): this run holds the section",
                ", ".join(busy),
                SECTION_START,
            )
            _claim(ctx)
            return
        msg = (
            f"run(s) {', '.join(busy)} are promoting, deploying or validating; this task was cleared without "
            f"{SECTION_START}: clear {SECTION_START} with its downstream tasks so that this run waits for its turn"
        )
        raise AirflowFailException(msg)
    _claim(ctx)


def failed_validation(client, name: str, version: str) -> str | None:
    """Why ``version`` failed an endpoint validation (its ``endpoint_validation`` tag), or None."""
    from swan_anomaly.registry import endpoint_validation, verdict

    tag = endpoint_validation(client, name, version)
    return tag if verdict(tag) == "failed" else None


def gate_model(ctx: RunContext, registered: dict) -> str:
    """Decide ``promote_model`` or ``keep_champion``: the challenger against the champion on the same rows."""
    from swan_airflow.runtime import lake, registry_client
    from swan_anomaly.gate import GateMode, gate_mode
    from swan_anomaly.registry import CHAMPION, get_alias

    require_turn(ctx)
    params, store, client = ctx.params, lake(), registry_client()
    mode = gate_mode(params.get("gate_mode"))
    name, version = registered["name"], registered["version"]
    champion = get_alias(client, name, CHAMPION)
    champion_version = str(champion.version) if champion is not None else None
    if failed := failed_validation(client, name, version):  # a cleared gate after a rollback: never again, forced or not
        reason = f"v{version} failed its endpoint validation ({failed}); a version that failed is never promoted again"
        log.warning("gate: %s", reason)
        store.write_result(
            ctx.run_id,
            "gate",
            {
                "challenger": version,
                "mode": mode.value,
                "passed": False,
                "promote": False,
                "reasons": [reason],
                "champion_version": champion_version,
            },
        )
        return "keep_champion"
    if mode is GateMode.DISABLED:
        record = {
            "challenger": version,
            "mode": GateMode.DISABLED.value,
            "passed": None,
            "promote": True,
            "reasons": ["gate disabled"],
            "champion_version": champion_version,
        }
        log.info("gate disabled: v%s is promoted unjudged", version)
    else:
        from swan_anomaly import LakeError

        try:
            record = _judge(ctx, store, client, registered, champion_version, mode)
        except (LakeError, ValueError) as exc:  # what the lake or the registry holds: a retry reads the same
            if isinstance(exc, json.JSONDecodeError):  # a half-written file or a proxy's page: it may read well next time
                raise
            raise AirflowFailException(f"the gate cannot judge v{version}: {exc}") from exc
    override = gate_override(params, mode, record)
    if override:
        try:
            reason = force_promote_reason(params, what=override)
        except AirflowFailException as exc:
            if override == "force_promote":  # asked for by name: say at once why it cannot be
                raise
            # a dry run, a disabled gate or lowered thresholds without leave or reason: the gate's verdict at the
            # deployment's defaults stands, and the run reports why
            log.warning("gate: %s; v%s is not promoted", exc, version)
            record = {**record, "promote": False, "reasons": [*record["reasons"], str(exc)]}
        else:
            log.warning("FORCE PROMOTE of v%s (gate passed=%s) by %s: %s", version, record["passed"], override, reason)
            forced = reason if override == "force_promote" else f"{override}: {reason}"
            record = {**record, "promote": True, "forced": forced}
    store.write_result(ctx.run_id, "gate", record)
    return "promote_model" if record["promote"] else "keep_champion"


def gate_override(params, mode, record: dict) -> str | None:
    """What in this run's Params promotes a challenger the enforced gate, at the deployment's thresholds, did not pass; None if nothing.

    ``force_promote``; ``gate_mode`` ``dry_run`` or ``disabled`` promoting a challenger that failed
    or was not judged; or gate thresholds lowered below the deployment's defaults that let it pass
    (``record["passed_at_defaults"]`` False). Each is an override of the gate: it needs what
    ``force_promote`` needs (:func:`force_promote_reason`), and the version is tagged with it.
    Without it, ``force_promote`` fails the task; the others keep the champion, saying why.
    """
    if params.get("force_promote"):
        return "force_promote"
    if record["promote"] and not record["passed"]:
        return f"gate_mode={mode.value}"
    if record["promote"] and record.get("passed_at_defaults") is False:
        return "gate thresholds below the deployment's defaults (" + "; ".join(record["reasons_at_defaults"]) + ")"
    return None


def _non_finite(anomaly, rows) -> str | None:
    """Why the ``anomaly`` scores of ``rows`` are unusable (some are NaN or infinite), or None.

    Example:
        >>> import numpy as np
        >>> rows = [["d", "a.png", 0, "cutpaste"], ["d", "b.png", 1, "none"], ["d", "c.png", 1, "none"]]
        >>> _non_finite(np.array([0.1, np.nan, np.inf]), rows)
        'no finite anomaly_score for 2 of 3 validation images (first: d/b.png)'
    """
    import numpy as np

    from swan_anomaly.scoring import HeldOutRow

    bad = np.flatnonzero(~np.isfinite(anomaly))
    if not len(bad):
        return None
    first = HeldOutRow.of(rows[int(bad[0])])
    return f"no finite anomaly_score for {len(bad)} of {len(rows)} validation images (first: {first.dataset_id}/{first.image_path})"


def _judge(ctx: RunContext, store: Lake, client, registered: dict, champion_version: str | None, mode: GateMode) -> dict:
    """Score both models on the challenger's validation rows, decide, and record it (MLflow and model version tags)."""
    from swan_airflow.runtime import read_held_out_rows, settings
    from swan_anomaly.gate import GateMode, MinThreshold, decide, next_references, promotion_thresholds, too_small
    from swan_anomaly.metrics import cross_fitted_f1, decision_false_alarms, evaluation_report, format_interval
    from swan_anomaly.registry import GATE_REFERENCE_TAG, data_through, gate_references, stored_threshold, tag_version
    from swan_anomaly.scoring import class_counts, groups_of, labels_of, registry_scorer, score_rows

    params = ctx.params
    name, version = registered["name"], registered["version"]
    rows = read_held_out_rows(store, ctx.run_id, "val")
    counts = class_counts(rows)
    base = {"challenger": version, "images": counts, "champion_version": champion_version, "training_val": registered.get("val")}
    if small := too_small(counts, params["gate_min_images_per_class"]):  # refuse before loading any model
        decision = decide({}, None, mode, thresholds={}, class_counts=counts, min_images_per_class=params["gate_min_images_per_class"])
        log.warning("gate (%s): %s; promote=%s", decision.mode, small, decision.promote)
        record = {
            **base,
            "mode": decision.mode,
            "passed": False,
            "promote": decision.promote,
            "reasons": decision.reasons,
            "measurable": False,
            "reports": {},
        }
        tag_version(client, name, version, {"gate_passed": False, "gate_reasons": "; ".join(decision.reasons)})
        return record
    models, named = {"challenger": version}, {}
    if champion_version is not None and champion_version != version:
        models["champion"] = champion_version
        # per metric, the best of the champion's line, which it was let within the tolerance of: small regressions add up
        named = {m: v for m, v in gate_references(client, name, champion_version).items() if v != version}
        models |= {f"reference_v{v}": v for v in named.values()}
    # [N, 2]: anomaly_score and novelty_score (NaN for a version without a novelty bank)
    scorers, unavailable = {}, {}
    for who, v in models.items():
        try:
            scorers[who] = registry_scorer(f"models:/{name}/{v}", novelty=True)
        except Exception as exc:
            if who in ("challenger", "champion"):
                raise
            # a reference does not serve, so nothing else would show it broken: no bar, and said so (not a blocked line for good)
            unavailable[v] = f"{type(exc).__name__}: {exc}"
            log.warning("gate: the line's reference v%s cannot be loaded (%s); challengers are not held to it", v, unavailable[v])
    models = {who: v for who, v in models.items() if who in scorers}
    log.info("gate: scoring %s on the %d validation images %s", ", ".join(f"{k} v{v}" for k, v in models.items()), len(rows), counts)
    scores = score_rows(store, rows, scorers)
    labels = labels_of(rows)
    # a model with no finite anomaly_score for an image is broken: a client reads NaN as "normal" (NaN >= threshold is false)
    broken = {who: _non_finite(scores[who][:, 0], rows) for who in models}
    broken = {who: why for who, why in broken.items() if why}
    for who, why in broken.items():
        log.warning("gate: %s v%s is broken: %s", who, models[who], why)
        if who.startswith("reference_v"):  # no bar, as an unloadable one
            unavailable[models[who]] = why
    models = {who: v for who, v in models.items() if not (who.startswith("reference_v") and who in broken)}
    reports = {}
    for who, v in models.items():
        threshold = stored_threshold(client, name, v)
        if who in broken:  # no metric of scores that are not numbers (None, which no threshold passes; JSON has no NaN)
            reports[who] = {k: None for k in LOGGED_METRICS} | {"auroc_ci": None, "threshold": threshold}
            reports[who] |= {"version": v, "broken": broken[who]}
            continue
        report = evaluation_report(labels, scores[who][:, 0], threshold=threshold, seed=params["seed"], groups=groups_of(rows))
        _, rate = decision_false_alarms(labels, scores[who][:, 0], scores[who][:, 1], threshold=threshold)
        reports[who] = {**report, "decision_false_alarm_rate": rate, "version": v}
        # f1_held_out, what F1 is compared by (gate.COMPARED_AS): the challenger's threshold was chosen on these rows, so its
        # served F1 is estimated with a threshold chosen the same way on half the groups, judged on the other half; the others'
        # thresholds were chosen elsewhere
        if who == "challenger":
            how = registered.get("threshold_method") or {"method": "max_f1", "target_fpr": 0.01}
            groups = groups_of(rows)
            held_out_f1 = cross_fitted_f1(labels, scores[who][:, 0], groups, **how) if groups is not None else None
            reports[who]["f1_held_out"] = held_out_f1
        else:
            reports[who]["f1_held_out"] = report["f1"]
    thresholds = {"auroc": MinThreshold(params["gate_min_val_auroc"]), "f1": MinThreshold(params["gate_min_val_f1"])}
    if params.get("gate_min_unseen_auroc") is not None:
        thresholds["unseen_auroc"] = MinThreshold(params["gate_min_unseen_auroc"])
    challenger = {
        "broken": broken.get("challenger"),
        "auroc": reports["challenger"]["auroc"],
        "f1": reports["challenger"]["f1"],
        "f1_held_out": reports["challenger"].get("f1_held_out"),  # None when broken, or rows without groups
        "unseen_auroc": registered.get("unseen_auroc"),
        "decision_false_alarm_rate": reports["challenger"]["decision_false_alarm_rate"],
    }
    champion = {k: reports["champion"].get(k) for k in ("auroc", "f1", "f1_held_out", "version")} if "champion" in reports else None
    if "champion" in broken:  # no metric to compare with: it bars nothing, as a broken reference; its line still binds
        champion = {"version": champion_version, "broken": broken["champion"]}
    measured = {m: reports[f"reference_v{v}"] for m, v in named.items() if v not in unavailable}
    references = {m: {k: report.get(k) for k in ("auroc", "f1", "f1_held_out", "version")} for m, report in measured.items()}
    through = {who: data_through(client, name, v) for who, v in models.items() if who in ("challenger", "champion")}
    base["data_through"] = {who: d.isoformat() if d else None for who, d in through.items()}
    decision = decide(
        challenger,
        champion,
        mode,
        thresholds=thresholds,
        class_counts=counts,
        min_images_per_class=params["gate_min_images_per_class"],
        data_dates=(through["challenger"], through.get("champion")),
        max_false_alarm_rate=settings().max_false_alarm_rate,
        references=references,
    )
    for who, report in reports.items():
        if report.get("broken"):
            continue  # said above
        log.info(
            "%s v%s on the same %d rows: AUROC %.4f (95%% CI %s) F1 %.4f recall %.4f at its threshold %.4f; "
            "its served decision calls %.1f%% of the normal images abnormal",
            who,
            report["version"],
            len(rows),
            report["auroc"],
            format_interval(report["auroc_ci"]),
            report["f1"],
            report["recall"],
            report["threshold"],
            100.0 * report["decision_false_alarm_rate"],
        )
    log.info("gate (%s): passed=%s promote=%s reasons=%s", decision.mode, decision.passed, decision.promote, decision.reasons or "none")
    # the same decision at the deployment's thresholds: a pass that lowered Params alone allowed is an override
    defaults = promotion_thresholds() | {k: t for k, t in thresholds.items() if k == "unseen_auroc"}  # unseen: no default
    strict = decide(
        challenger,
        champion,
        GateMode.ENABLED,
        thresholds=defaults,
        class_counts=counts,
        min_images_per_class=settings().gate_min_images_per_class,
        data_dates=(through["challenger"], through.get("champion")),
        max_false_alarm_rate=settings().max_false_alarm_rate,
        references=references,
    )
    # whom this challenger's own challengers answer to, per metric, once it is champion: itself, or the better one it was let near
    line = next_references(version, challenger, champion, references)
    record = {
        **base,
        "mode": decision.mode,
        "passed": decision.passed,
        "promote": decision.promote,
        "reasons": decision.reasons,
        "measurable": decision.measurable,
        "reports": reports,
        "thresholds": {k: t.minimum for k, t in thresholds.items()} | {"images_per_class": params["gate_min_images_per_class"]},
        "passed_at_defaults": strict.passed,
        "reasons_at_defaults": strict.reasons,
        "references": {m: r["version"] for m, r in references.items()},  # the champion's line, per metric, judged against
        "references_unavailable": unavailable,
        "broken": broken,  # who scored NaN or infinity: a broken challenger is refused, a broken champion or reference bars nothing
        "line_references": line,  # this version's gate_reference tag: takes effect once it is champion
    }
    _log_to_mlflow(client, registered["mlflow_run_id"], reports, record)
    tag_version(
        client,
        name,
        version,
        {
            "gate_passed": decision.passed,
            "gate_reasons": "; ".join(decision.reasons) or "none",
            "gate_passed_at_defaults": strict.passed,  # differs from gate_passed only when the Params lowered a threshold
        }
        # a champion gated again (gate_model cleared after its promotion) keeps its line: it was not judged against it
        | ({GATE_REFERENCE_TAG: json.dumps(line, sort_keys=True)} if version != champion_version else {}),
    )
    return record


def _log_to_mlflow(client, mlflow_run_id: str, reports: dict, record: dict) -> None:
    """Both models' same-row metrics and the decision on the challenger's training run."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = []
    for who, report in reports.items():
        if report.get("broken"):  # nothing measured (the record says why)
            continue
        metrics += [Metric(f"{who}_val_{k}", float(report[k]), now, 0) for k in LOGGED_METRICS if report.get(k) is not None]
        if report["auroc_ci"] is not None:
            metrics += [Metric(f"{who}_val_auroc_ci_{end}", float(v), now, 0) for end, v in zip(("low", "high"), report["auroc_ci"])]
    tags = [RunTag("gate_passed", str(record["passed"])), RunTag("gate_champion_version", str(record["champion_version"]))]
    client.log_batch(mlflow_run_id, metrics=metrics, tags=tags)
    client.log_dict(mlflow_run_id, record, "gate/decision.json")


def promote_model(ctx: RunContext, registered: dict) -> dict:
    """Move alias ``champion`` to the challenger (idempotent); a forced promotion is tagged with its reason.

    A version promoted unjudged (no ``gate_reference`` tag: the gate was disabled, or its split too
    small) inherits the line of the champion it replaces (:func:`swan_anomaly.gate.next_references`).

    Raises:
        AirflowFailException: the champion changed since the gate compared against it (a
            promotion outside this DAG); clear ``gate_model`` to compare with the new one.
    """
    from swan_airflow.runtime import lake, registry_client
    from swan_anomaly.gate import LINE_METRICS
    from swan_anomaly.registry import CHAMPION, GATE_REFERENCE_TAG, gate_references, get_alias, promote, tag_version

    require_turn(ctx)
    client = registry_client()
    name, version = registered["name"], registered["version"]
    if failed := failed_validation(client, name, version):
        raise AirflowFailException(f"{name} v{version} failed its endpoint validation ({failed}); it is never promoted again")
    gate = lake().read_result(ctx.run_id, "gate")
    if why := _not_promotable(gate, version):  # a promote_model cleared or run by hand past what the gate decided
        raise AirflowFailException(f"{name} v{version} is not promoted: {why}")
    current = get_alias(client, name, CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version not in (gate["champion_version"], version):
        msg = (
            f"the champion of {name} is v{current_version}, not v{gate['champion_version']} that the gate "
            f"compared v{version} with; clear gate_model to compare again"
        )
        raise AirflowFailException(msg)
    if gate.get("forced"):
        tag_version(client, name, version, {"force_promoted": f"{ctx.run_id}: {gate['forced']}"})
    if current_version not in (None, version) and GATE_REFERENCE_TAG not in client.get_model_version(name, version).tags:
        # promoted unjudged (gate_mode=disabled, or a split too small to measure, forced): nothing says it is better, so it
        # inherits the line of the champion it replaces, that champion itself where the line had no other best
        inherited = gate_references(client, name, current_version)
        tag_version(client, name, version, {GATE_REFERENCE_TAG: json.dumps({m: inherited.get(m, current_version) for m in LINE_METRICS})})
    changed = promote(client, name, version)
    return {"promoted": changed, "version": version, "forced": bool(gate.get("forced"))}


def _not_promotable(gate: dict, version: str) -> str | None:
    """Why ``gate.json`` does not let ``promote_model`` promote ``version``, or None.

    The branch runs ``promote_model`` only when the gate said so; a task cleared or run by hand
    does not ask. So it reads the record again: the gate must have judged this very version and
    promoted it, and a promotion past a refusal must carry its override (``forced``). A record of
    a dry run or a disabled gate that promoted without one was written before such promotions
    needed leave and a reason.
    """
    if str(gate.get("challenger")) != str(version):
        return f"the gate of this run judged v{gate.get('challenger')}; clear gate_model to judge v{version}"
    if not gate.get("promote"):
        reasons = "; ".join(gate.get("reasons") or []) or "no reason recorded"
        return f"the gate kept the champion ({reasons}); a new run with force_promote (and its reason) overrides it"
    if gate.get("passed") is not True and not gate.get("forced"):
        return "the gate promoted it without passing it and without an override on record; clear gate_model to judge it again"
    return None


def keep_champion(registered: dict) -> dict:
    """The challenger failed the gate: the current champion keeps serving."""
    log.info("challenger v%s not promoted; the champion is unchanged", registered["version"])
    return {"promoted": False, "version": registered["version"]}


def force_promote_reason(params, env=None, *, what: str = "force_promote") -> str:
    """The reason of a forced promotion, after checking that this deployment allows one.

    Args:
        params: the run's Params (``force_promote_reason``).
        env: the environment to read the settings from (default: the process's).
        what: the override that promotes (see :func:`gate_override`), named in the errors.

    Raises:
        AirflowFailException: ``SWAN_ALLOW_FORCE_PROMOTE`` is false, or the reason is missing or
            shorter than :data:`~swan_airflow.params.MIN_FORCE_REASON_CHARS` (no retry: only a new trigger can fix either).
    """
    from swan_airflow.params import MIN_FORCE_REASON_CHARS
    from swan_airflow.runtime import settings

    if not settings(env).allow_force_promote:
        msg = (
            f"{what} would promote a challenger the gate did not pass, and overriding the gate is disabled in this "
            "deployment (SWAN_ALLOW_FORCE_PROMOTE=false); the gate decides"
        )
        raise AirflowFailException(msg)
    reason = (params.get("force_promote_reason") or "").strip()
    if len(reason) < MIN_FORCE_REASON_CHARS:
        msg = (
            f"{what} overrides the gate: it needs a force_promote_reason of at least {MIN_FORCE_REASON_CHARS} characters (recorded on the "
            f"model version), got {reason!r}"
        )
        raise AirflowFailException(msg)
    return reason
