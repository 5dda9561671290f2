"""Serving steps: serve the champion, then validate the endpoint over REST on the held-out test split.

:func:`validate_endpoint` checks that the endpoint serves exactly the registered model (per-image
parity with the registry model) and that it detects anomalies (AUROC and recall at the stored
threshold), then acts on the outcome (:mod:`swan_anomaly.serving.validation`):

* ``passed``: nothing to do;
* ``rolled_back`` / ``withdrawn``: this run's new version failed; the previous champion serves
  again, or, for a first version, the endpoint is deleted and the version loses its alias.
  The task fails without retries;
* ``drift``: the unchanged champion no longer separates today's data. The notifier is called;
  ``SWAN_DRIFT_ACTION=warn`` (default) lets the run succeed, ``fail`` fails it;
* ``mismatch``: the unchanged champion's endpoint does not serve the registry's model: fail.

The outcome is written to ``runs/{run_id}/validation.json`` before anything is changed, so a
retry after a crash finishes an interrupted rollback instead of validating the rolled-back
version, and a decided failure is never validated again: a rollback happens once.

Example:
    >>> update_endpoint(RunContext.current())   # doctest: +SKIP
    {'url': 'http://127.0.0.1:5055/serving-endpoints/swan-anomaly/invocations', 'version': '4', 'previous': '3', 'changed': True, ...}
"""

from __future__ import annotations

import functools
import logging
import math

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from swan_airflow.context import RunContext

log = logging.getLogger(__name__)

#: Scored images of each class kept in the log and the run summary (all of them are in ``validation.json``).
SAMPLE_PER_CLASS = 8


def update_endpoint(ctx: RunContext) -> dict:
    """Serve the current champion (databricks-sdk: create the endpoint, or update its config and wait).

    Raises:
        AirflowSkipException: there is no champion yet (the first model did not pass the gate):
            nothing to serve, and nothing to validate.
        AirflowFailException: the endpoint refused the champion (it could not load it). A
            champion that never served goes back to the previous one (or loses the alias).
            Or another run holds the promotion section (this task was cleared without the sensor).
    """
    from swan_airflow.runtime import registry_client, settings
    from swan_airflow.serving_target import serving_config, serving_target
    from swan_airflow.steps.promotion import require_turn
    from swan_anomaly import EndpointError
    from swan_anomaly.registry import (
        CHAMPION,
        PREVIOUS,
        drop_champion_alias,
        endpoint_validation,
        get_alias,
        move_champion_back,
        restorable,
    )
    from swan_anomaly.serving.deploy import deploy_version

    require_turn(ctx)  # a clear of this task alone must not deploy while another run promotes, deploys or validates
    s = settings()
    client = registry_client()
    champion = get_alias(client, s.model_name, CHAMPION)
    if champion is None:
        raise AirflowSkipException(f"registered model {s.model_name} has no champion yet (no model has passed the gate): nothing to serve")
    version = str(champion.version)
    target = serving_target()
    try:
        result = deploy_version(target.workspace(), target.endpoint, s.model_name, version, serving_config(client, version, target))
    except EndpointError as exc:  # the endpoint refused the version (it could not load it): retrying changes nothing
        msg = str(exc)
        if not restorable(endpoint_validation(client, s.model_name, version)):
            # a champion that never served must not stay champion: the registry would name a model nobody serves
            previous = get_alias(client, s.model_name, PREVIOUS)
            if previous is not None and str(previous.version) != version:
                move_champion_back(client, s.model_name, str(previous.version))
                msg += f"; v{version} never served, so the champion alias went back to v{previous.version}"
            else:
                drop_champion_alias(client, s.model_name, version)
                msg += f"; v{version} never served and there is no earlier champion: it lost the champion alias"
        raise AirflowFailException(msg) from exc
    change = f" (was v{result.previous_version})" if result.changed else " (unchanged)"
    log.info("endpoint %s (%s) serves %s v%s%s", target.endpoint, target.backend, s.model_name, result.version, change)
    return {
        "url": target.invocations_url,
        "name": s.model_name,
        "version": result.version,
        "previous": result.previous_version,
        "changed": result.changed,
    }


def validate_endpoint(ctx: RunContext, endpoint: dict, registered: dict) -> dict:
    """Score the held-out test split through the endpoint and the registry model; act on the outcome.

    Whatever stops the validation (the endpoint answering errors or staying busy past its retry
    budget, a registry model that cannot load, a held-out image that changed) counts as a failed
    check: a new version that cannot be validated is rolled back, never left serving unvalidated.
    As nothing was judged, it is tagged ``incomplete``, not ``failed``: clearing the run's
    promotion section (from ``wait_for_promotion_turn``) promotes, serves and validates it again
    instead of barring a model for an outage. Only a crash of the worker itself leaves no
    record, and the retry validates again (``ensure_validated_endpoint`` covers a run that ends so).

    Raises:
        AirflowFailException: the new version was rolled back or withdrawn, the unchanged
            champion's endpoint failed, drift with ``SWAN_DRIFT_ACTION=fail``, an earlier try of
            this run already failed this challenger, or the endpoint serves another version than
            ``update_endpoint`` deployed. Never retried.
    """
    from dataclasses import replace

    from swan_airflow.runtime import lake, optional_result, read_held_out_rows, registry_client, settings
    from swan_airflow.serving_target import serving_target
    from swan_airflow.steps.promotion import require_turn
    from swan_anomaly import ConfigError
    from swan_anomaly.registry import (
        CHAMPION,
        ENDPOINT_VALIDATION,
        PASSED,
        PREVIOUS,
        endpoint_validation,
        get_alias,
        stored_threshold,
        tag_version,
        verdict,
    )
    from swan_anomaly.scoring import endpoint_scorer, groups_of, labels_of, registry_scorer, score_rows
    from swan_anomaly.serving.client import score_table
    from swan_anomaly.serving.deploy import served_version
    from swan_anomaly.serving.validation import FAILED_OUTCOMES, EndpointCheck, EndpointPolicy, Outcome, check_endpoint, outcome_for

    require_turn(ctx)
    store, client = lake(), registry_client()
    name, version, challenger = endpoint["name"], str(endpoint["version"]), str(registered["version"])
    try:
        # a run's Param may ask for more images per class, not for fewer than the deployment's: a split that small is
        # unmeasured, whatever the run says (lowering the gate's own is an override, steps/promotion.gate_override)
        least = max(ctx.params["gate_min_images_per_class"], settings().gate_min_images_per_class)
        policy = replace(EndpointPolicy.from_env(), min_images_per_class=least)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc
    target = serving_target()
    served = served_version(target.workspace(), target.endpoint, name)
    prior = optional_result(store, ctx.run_id, "validation")
    decided = prior is not None and prior.get("challenger") == challenger and prior["outcome"] in FAILED_OUTCOMES
    if decided and prior.get("completed") is False and prior.get("state") == "done" and served == version:
        # A validation that could not complete judged nothing (an outage, a lake hiccup): after its rollback the
        # run's promotion section was cleared, and the gate promoted the version and the endpoint serves it again.
        log.info("an earlier try could not complete the validation of v%s (%s): validating it again", version, "; ".join(prior["reasons"]))
        decided = False
    if decided:
        # This run's challenger already failed here: never validate again. Undo a rollback that a
        # clear of update_endpoint (or a crash half-way) left undone, then fail again; unless a later
        # run has promoted and served another version since: undoing that would undo its promotion.
        if prior.get("state") == "acting" or served == prior["version"]:
            champion = get_alias(client, name, CHAMPION)
            champion_version = str(champion.version) if champion is not None else None
            ours = {prior["version"], prior.get("previous"), None}
            if champion_version in ours and served in ours:
                _act(target, client, prior)
            else:
                log.warning(
                    "not finishing this run's rollback of v%s: since it was decided, v%s became champion and the endpoint serves v%s",
                    prior["version"],
                    champion_version,
                    served,
                )
            store.write_result(ctx.run_id, "validation", {**prior, "state": "done"})
        raise AirflowFailException(f"{prior['message']} (decided by an earlier try of this run; not validated again)")
    gate = optional_result(store, ctx.run_id, "gate")
    if gate is not None and gate.get("challenger") == challenger and gate.get("promote") and version != challenger:
        msg = (
            f"this run promoted {name} v{challenger}, but v{version} is the champion it serves: the promotion was undone since "
            "(ensure_validated_endpoint or a rollback put a validated version back), and validating that one would end this "
            f"run green without its model. Clear wait_for_promotion_turn with its downstream tasks to promote v{challenger} again"
        )
        raise AirflowFailException(msg)
    if served != version:
        msg = (
            f"endpoint {target.endpoint} serves v{served}, not v{version} that update_endpoint deployed: it "
            f"changed since. Clear update_endpoint to serve the champion again."
        )
        raise AirflowFailException(msg)
    # A version that never passed an endpoint validation is new here, whoever promoted it (this run, or an earlier
    # run whose endpoint update failed); one that passed before is the unchanged champion, judged for drift.
    new_version = verdict(endpoint_validation(client, name, version)) != PASSED
    rows, threshold, scores = [], None, None
    try:
        rows = read_held_out_rows(store, ctx.run_id, "test")
        if not rows:  # nothing judged: an incomplete validation (the version is not barred), not a failed one
            raise ValueError(f"run {ctx.run_id} has no held-out test images to validate the endpoint on")
        threshold = stored_threshold(client, name, version)
        log.info(
            "validating %s v%s at %s on %d held-out test images (threshold %.4f)",
            name,
            version,
            target.invocations_url,
            len(rows),
            threshold,
        )
        both = score_rows(
            store,
            rows,
            {
                "endpoint": endpoint_scorer(target.client(), novelty=True),
                "registry": registry_scorer(f"models:/{name}/{version}", novelty=True),
            },
        )  # [N, 2]: anomaly_score, novelty_score (NaN for a version without a novelty bank)
        scores = {who: s[:, 0] if s.ndim == 2 else s for who, s in both.items()}  # no rows: empty 1-D arrays
        check = check_endpoint(
            labels_of(rows),
            scores["endpoint"],
            scores["registry"],
            threshold=threshold,
            policy=policy,
            seed=ctx.params["seed"],
            endpoint_novelty=both["endpoint"][:, 1] if both["endpoint"].ndim == 2 else None,
            registry_novelty=both["registry"][:, 1] if both["registry"].ndim == 2 else None,
            groups=groups_of(rows),
        )
    except Exception as exc:  # noqa: BLE001 - a validation that cannot complete is a failed one, acted on once
        log.exception("the validation of %s v%s could not complete", name, version)
        scores = None
        check = EndpointCheck(
            parity=False,
            max_difference=None,
            measured=False,
            report=None,
            reasons=[f"the validation could not complete: {type(exc).__name__}: {exc}"],
        )
    previous = get_alias(client, name, PREVIOUS) if new_version else None
    previous = str(previous.version) if previous is not None and str(previous.version) != version else None
    outcome = outcome_for(check, new_version=new_version, previous=previous)
    record = {
        **_record(ctx, name, version, previous, threshold, rows, scores, check, outcome, target.invocations_url),
        "challenger": challenger,
        "new_version": new_version,
        "completed": scores is not None,  # False: nothing was judged, and the version is not barred (see _act)
    }
    log.info(
        "%s\n%s", record["message"], score_table([tuple(r) for r in score_sample(record["scores"])]) if record["scores"] else "(no scores)"
    )
    if outcome is Outcome.PASSED:
        if new_version and check.measured:
            tag_version(client, name, version, {ENDPOINT_VALIDATION: f"passed: run {ctx.run_id}, dataset {ctx.dataset_id}"})
        elif new_version:  # it serves what the registry holds, but nobody measured how well: a rollback target only while none passed
            unmeasured = f"unmeasured: run {ctx.run_id}, dataset {ctx.dataset_id}: {check.note}"
            tag_version(client, name, version, {ENDPOINT_VALIDATION: unmeasured})
            log.warning("%s v%s serves with parity, but %s: it is not marked validated, and the next run validates it again",
                        name, version, check.note)  # fmt: skip
        store.write_result(ctx.run_id, "validation", {**record, "state": "done"})
        return endpoint_summary(record)
    if outcome is Outcome.DRIFT:
        from swan_airflow.callbacks import notify

        store.write_result(ctx.run_id, "validation", {**record, "state": "done"})
        if policy.drift_action == "fail":  # the failure callbacks send it to the notifier
            raise AirflowFailException(f"{record['message']} (SWAN_DRIFT_ACTION=fail)")
        notify(ctx.task, record["message"])
        log.warning("%s; the run goes on (SWAN_DRIFT_ACTION=warn)", record["message"])
        return endpoint_summary(record)
    store.write_result(ctx.run_id, "validation", {**record, "state": "acting"})  # before acting: a crash mid-way is finished by the retry
    try:
        _act(target, client, record)
    except AirflowFailException as exc:  # the endpoint refused the previous version: the rollback deleted the endpoint
        record = {**record, "message": f"{record['message']}; but {exc}"}
        store.write_result(ctx.run_id, "validation", {**record, "state": "done"})
        raise AirflowFailException(record["message"]) from exc
    store.write_result(ctx.run_id, "validation", {**record, "state": "done"})
    raise AirflowFailException(record["message"])


def _record(ctx, name, version, previous, threshold, rows, scores, check, outcome, url) -> dict:
    """What the validation found and decided, as written to ``validation.json``."""
    from swan_anomaly.scoring import HeldOutRow
    from swan_anomaly.serving.validation import Outcome

    from swan_anomaly.metrics import format_interval

    what = "; ".join(check.reasons) or "the endpoint serves the registered model"
    quality = check.note or (
        f"AUROC {check.report['auroc']:.4f} (95% CI {format_interval(check.report['auroc_ci'])}), "
        f"recall {check.report['recall']:.4f} at {threshold:.4f}, "
        f"{check.report['decision_false_alarms']} of {check.report['normal']} normal images called abnormal by the served decision"
        if check.report
        else "quality not measured"
    )
    message = {
        Outcome.PASSED: f"endpoint validation passed for {name} v{version}: {what}; {quality}",
        Outcome.ROLLED_BACK: (
            f"the new version {name} v{version} failed endpoint validation ({what}); rolled the "
            f"endpoint and the champion back to v{previous}"
        ),
        Outcome.WITHDRAWN: (
            f"the first version {name} v{version} failed endpoint validation ({what}); with no earlier version to roll back to, "
            f"the endpoint was deleted and v{version} lost the champion alias: nothing serves until a model passes"
        ),
        Outcome.DRIFT: (
            f"DRIFT: the unchanged champion {name} v{version} no longer passes on today's "
            f"held-out data ({what}; dataset {ctx.dataset_id})"
        ),
        Outcome.MISMATCH: (
            f"the endpoint serving the unchanged champion {name} v{version} failed its validation "
            f"({what}); this run did not change it: check the endpoint"
        ),
    }[outcome]

    def number(x) -> float | None:  # JSON has no NaN or infinity: a broken score is recorded as null
        return float(x) if math.isfinite(float(x)) else None

    held = [HeldOutRow.of(r) for r in rows]
    scored = (
        []
        if scores is None
        else [[r.image_path, int(r.label), number(e), number(g)] for r, e, g in zip(held, scores["endpoint"], scores["registry"])]
    )
    return {
        "outcome": outcome.value,
        "message": message,
        "name": name,
        "version": version,
        "previous": previous,
        "url": url,
        "threshold": threshold,
        "parity": check.parity,
        "max_difference": None if check.max_difference is None else number(check.max_difference),
        "measured": check.measured,
        "note": check.note,
        "reasons": check.reasons,
        "report": check.report,
        "dataset_id": ctx.dataset_id,
        "scores": scored,  # [image_path, label, endpoint score, registry score]
    }


def _act(target, client, record: dict) -> None:
    """Roll back to the previous champion, or withdraw a failed first version (idempotent: a retry may repeat it)."""
    from swan_airflow.serving_target import restore_endpoint, withdraw_endpoint
    from swan_anomaly.registry import ENDPOINT_VALIDATION, FAILED, INCOMPLETE, tag_version
    from swan_anomaly.serving.validation import Outcome

    name, version = record["name"], record["version"]
    if record["outcome"] in (Outcome.ROLLED_BACK, Outcome.WITHDRAWN):
        # "failed" bars the version from the gate and promote_model for good: only for a version that was judged. One
        # whose validation could not complete (an outage, a changed held-out image) is "incomplete" and may be tried again.
        judged = FAILED if record.get("completed", True) else INCOMPLETE
        tag_version(client, name, version, {ENDPOINT_VALIDATION: f"{judged}: {'; '.join(record['reasons'])}"})
    if record["outcome"] == Outcome.ROLLED_BACK:
        restore_endpoint(target, record["previous"])
    elif record["outcome"] == Outcome.WITHDRAWN:
        withdraw_endpoint(target, version)


def ensure_validated_endpoint(ctx: RunContext) -> dict:
    """The promotion section's last task: a validated version is champion and serves, whatever failed before it.

    :func:`validate_endpoint` acts on every outcome it decides. What it cannot act on leaves a
    version that never passed an endpoint validation as champion, or on the endpoint: an
    ``update_endpoint`` that failed for good after ``promote_model`` moved the alias (the update
    may still complete later), a validation that hit its timeout or lost its worker on every try,
    an endpoint that served another version than was deployed. This task runs whatever the
    state of the tasks before it, and puts the champion alias and the endpoint back on the last
    validated version (the champion itself when it passed, else what the endpoint serves when it
    passed, else ``previous_champion``, which :func:`swan_anomaly.registry.promote` only ever sets
    to a :data:`~swan_anomaly.registry.RESTORABLE` version; one served with parity, unmeasured,
    only when none of them passed). With none,
    the unvalidated champion loses its alias and the endpoint is deleted, as for a first version
    that fails its validation.

    Returns:
        ``{"acted": False, "champion": ..., "served": ...}`` when nothing unvalidated is champion or serves.

    Raises:
        AirflowSkipException: this run never entered the promotion section (its turn never came,
            or an earlier task failed): it changed nothing there.
        AirflowFailException: it had to restore a validated version, saying what it did (the run
            failed before it anyway); or another run holds the promotion section.
    """
    from swan_airflow.runtime import lake, registry_client, settings
    from swan_airflow.serving_target import restore_endpoint, serving_target, withdraw_endpoint
    from swan_airflow.steps.promotion import entered_section, require_turn
    from swan_anomaly.registry import CHAMPION, PREVIOUS, RESTORABLE, UNMEASURED, endpoint_validation, get_alias, verdict
    from swan_anomaly.serving.deploy import served_version

    if not entered_section(ctx):
        raise AirflowSkipException("this run never entered the promotion section: it changed neither the champion nor the endpoint")
    require_turn(ctx)
    name, client, store = settings().model_name, registry_client(), lake()

    holder = get_alias(client, name, CHAMPION)
    champion = str(holder.version) if holder is not None else None
    if champion is None:  # nothing was promoted, or a failed first version was withdrawn: nothing to serve (no server started)
        store.delete_result(ctx.run_id, "endpoint_restore")
        return {"acted": False, "champion": None, "served": None}
    target = serving_target()
    served = served_version(target.workspace(), target.endpoint, name)

    @functools.cache
    def verdict_of(version: str) -> str | None:  # one registry read per version
        return verdict(endpoint_validation(client, name, version))

    unvalidated = [v for v in dict.fromkeys((champion, served)) if v is not None and verdict_of(v) not in RESTORABLE]
    if not unvalidated:
        log.info("champion v%s, endpoint %s serves v%s: nothing unvalidated", champion, target.endpoint, served)
        store.delete_result(ctx.run_id, "endpoint_restore")  # an earlier pass's restore, undone since by a cleared section
        return {"acted": False, "champion": champion, "served": served}
    previous = get_alias(client, name, PREVIOUS)
    candidates = [v for v in (champion, served, str(previous.version) if previous is not None else None) if v is not None]
    # the champion itself, what serves, or previous_champion: one that passed first, else one served with parity
    restore = next((v for want in RESTORABLE for v in candidates if verdict_of(v) == want), None)
    what = " and ".join(f"v{v}" for v in unvalidated)
    refused = None
    if restore is not None:
        try:
            restore_endpoint(target, restore)
            how = "served with parity, its quality unmeasured" if verdict_of(restore) == UNMEASURED else "passed"
            done = f"the champion alias and endpoint {target.endpoint} went back to v{restore}, the last version that {how}"
        except AirflowFailException as exc:  # the endpoint refused it: the rollback deleted the endpoint
            refused, done = exc, f"the champion alias went back to v{restore}, but {exc}"
    else:  # nothing validated to go back to: nothing serves
        withdraw_endpoint(target, champion)
        done = f"no version of {name} ever passed, so endpoint {target.endpoint} was deleted and nothing holds the champion alias"
    msg = (
        f"{name} {what} (champion v{champion}, serving v{served}) never passed an endpoint validation: this run's promotion, "
        f"endpoint update or validation did not finish; {done}"
    )
    record = {"unvalidated": unvalidated, "champion": champion, "served": served, "restored": restore, "message": msg}
    store.write_result(ctx.run_id, "endpoint_restore", record)
    log.warning(msg)
    raise AirflowFailException(msg) from refused


def endpoint_summary(record: dict) -> dict:
    """The figures of a validation record (``validation.json``): the task's XCom and the run summary's ``endpoint``."""
    report = record.get("report")
    return {
        "url": record["url"],
        "validated_version": record["version"],
        "previous_version": record.get("previous"),
        "outcome": record["outcome"],
        "new_version": record.get("new_version"),  # never validated before: this run's new champion
        "message": record["message"],
        "parity": record["parity"],
        "max_difference": record["max_difference"],
        "note": record.get("note"),
        # decision_false_alarm_rate: the held-out normals the served decision calls abnormal (absent from records before it)
        "test": {k: report.get(k) for k in ("auroc", "auroc_ci", "recall", "decision_false_alarm_rate", "abnormal", "normal", "groups")}
        if report
        else None,
    }


def score_sample(scores: list[list], per_class: int = SAMPLE_PER_CLASS) -> list[list]:
    """Up to ``per_class`` ``[image_path, label, endpoint score]`` rows of each class of a record's ``scores``."""
    return [row[:3] for label in (0, 1) for row in [r for r in scores if r[1] == label][:per_class]]
