"""Promotion and endpoint validation steps against a real registry (MLflow on SQLite), a real local
endpoint and a local lake, with models whose behaviour is known:

* ``good``: a micro ViT trained here to tell frames with a black-and-white square from plain ones;
* ``constant``: the same ViT with its classification head zeroed, so every image scores 0.5.

Every test registers under a model name of its own, so aliases never leak between tests; they
share the session's local endpoint, as consecutive DAG runs do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import water_frame
from swan_airflow.context import RunContext

DATASET = "20261115"
RUN_ID = "manual__promotion"
PARAMS = {
    "seed": 42,
    "gate_mode": "enabled",
    "gate_min_val_auroc": 0.9,
    "gate_min_val_f1": 0.8,
    "gate_min_images_per_class": 10,
    "gate_min_unseen_auroc": None,
    "force_promote": False,
    "force_promote_reason": None,
}


def _frame(seed: int, abnormal: bool) -> bytes:
    """A 96x64 PNG of smooth water; an abnormal one has a black-and-white square in its centre."""
    import cv2

    return cv2.imencode(".png", water_frame(seed, abnormal=abnormal))[1].tobytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A lake with raw frames and the training result's held-out rows, and the two models' pyfunc URIs."""
    import mlflow
    import torch

    from swan_anomaly.config import Settings
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.modeling import load_classifier, preprocess_spec, resolve_base_model
    from swan_anomaly.tracking import ensure_experiment, log_served_model
    from swan_anomaly.trainer import TrainConfig, frame_tensors, train_classifier

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("promotion")
    mp.setenv("SWAN_LAKE_ROOT", str(root / "lake"))
    mp.delenv("SWAN_DRIFT_ACTION", raising=False)
    lake = LocalLake(root / "lake")
    rows = {}
    for split, offset, n in (("train", 0, 40), ("val", 1000, 12), ("test", 2000, 12)):
        rows[split] = []
        for i in range(n):
            for label, folder in ((0, "anomalies"), (1, "frames")):
                rel = f"{folder}/v1/frame_{offset + i:05d}.png"
                (lake.raw(DATASET) / rel).parent.mkdir(parents=True, exist_ok=True)
                (lake.raw(DATASET) / rel).write_bytes(_frame(offset + i, abnormal=label == 0))
                rows[split].append([DATASET, rel, label, "square" if label == 0 else "none"])
    lake.write_result(RUN_ID, "train", {"held_out": {"val": rows["val"], "test": rows["test"]}})

    s = Settings.from_env()
    base = resolve_base_model("vit-micro-offline", s.models_dir)
    spec = preprocess_spec(base)
    import pandas as pd

    train = pd.DataFrame(
        {"content": [lake.read_raw(d, p) for d, p, _, _ in rows["train"]], "label": [lab for _, _, lab, _ in rows["train"]]}
    )
    x, y = frame_tensors(train.assign(sample_id=[p for _, p, _, _ in rows["train"]]), spec)
    torch.manual_seed(0)
    good, _, _ = train_classifier(
        load_classifier(base), (x, y), (x, y), spec, TrainConfig(epochs=8, batch_size=16, learning_rate=2e-3, patience=8)
    )
    constant = load_classifier(base)
    with torch.no_grad():
        constant.classifier.weight.zero_()
        constant.classifier.bias.zero_()
    # the good weights with a novelty bank whose scale puts every image past novelty_score 1: the served decision
    # (anomaly_score >= threshold or novelty_score >= 1) calls every normal frame abnormal; anomaly_score is the good one
    from swan_anomaly.modeling import patch_features_of
    from swan_anomaly.novelty import NoveltyBank, default_layers

    layers = default_layers(good.config.num_hidden_layers)
    patches = patch_features_of(good, x[y == 1][:4], spec, layers)
    broken = NoveltyBank(patches.reshape(-1, patches.shape[-1]), scale=1e-6, layers=layers)
    import copy

    nan = copy.deepcopy(good)  # broken weights: every anomaly_score NaN, which every client reads as "normal"
    with torch.no_grad():
        nan.classifier.bias.fill_(float("nan"))
    uris = {}
    experiment = ensure_experiment(s)
    for name, model, bank in (("good", good, None), ("constant", constant, None), ("noisy", good, broken), ("nan", nan, None)):
        with mlflow.start_run(experiment_id=experiment, run_name=f"promotion-test-{name}") as run:
            mlflow.log_metrics({"val_auroc": 1.0, "val_f1": 1.0})  # what the model claims of its own (other) data
            info = log_served_model(
                model,
                spec,
                threshold=0.5,
                threshold_method="max_f1",
                example=[lake.read_raw(DATASET, rows["val"][0][1])],
                novelty=bank,
            )
        uris[name] = (info.model_uri, run.info.run_id)
    yield {"lake": lake, "uris": uris, "rows": rows}
    mp.undo()


@pytest.fixture
def model_name(request, monkeypatch):
    """A registered model of the test's own, named after it."""
    name = "promo_" + request.node.name.removeprefix("test_")[:40]
    monkeypatch.setenv("SWAN_MODEL_NAME", name)
    return name


def _register(world, name: str, which: str, airflow_run: str) -> str:
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import register_challenger

    uri, run_id = world["uris"][which]
    # one MLflow run per model: a second registration of it needs a run of its own to be a new version
    client = registry_client()
    if any(v.run_id == run_id for v in client.search_model_versions(f"name = '{name}'")):
        copy = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
        client.set_terminated(copy)
        run_id = copy
    return str(register_challenger(client, name, uri, run_id, airflow_run, tags={"anomaly_threshold": "0.5"}).version)


def _registered(name: str, version: str, world, which: str) -> dict:
    return {"name": name, "version": version, "mlflow_run_id": world["uris"][which][1], "unseen_auroc": None}


def _ctx(**params) -> RunContext:
    return RunContext(dag_id="swan_anomaly_pipeline", run_id=RUN_ID, dataset_id=DATASET, params={**PARAMS, **params})


def _serve(name: str, version: str) -> dict:
    """Promote ``version`` to champion and serve it, as promote_model and update_endpoint do."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import update_endpoint
    from swan_anomaly.registry import promote

    promote(registry_client(), name, version)
    return update_endpoint(_ctx())


def _new_version_over_good(world, name: str, new: str) -> tuple[str, str, dict]:
    """A good champion serves; then this run's new version (a ``good`` or ``constant`` model) is promoted and served.

    Returns ``(good version, new version, update_endpoint's result)``.
    """
    good = _register(world, name, "good", "scheduled__1")
    _serve(name, good)
    _validated_before(name, good)  # as its own run's validate_endpoint tagged it: only a validated champion is rolled back to
    version = _register(world, name, new, "scheduled__2")
    return good, version, _serve(name, version)


def _decided_rollback(name: str, bad: str, good: str) -> dict:
    """The validation record of a try that decided to roll ``bad`` back to ``good`` and died before acting."""
    return {
        "outcome": "rolled_back",
        "state": "acting",
        "name": name,
        "version": bad,
        "challenger": bad,
        "previous": good,
        "reasons": ["AUROC 0.5000 < 0.9000"],
        "message": f"the new version {name} v{bad} failed endpoint validation",
    }


def _validated_before(name: str, version: str) -> None:
    """Mark ``version`` as one that passed an endpoint validation earlier (what the champion of a past run has)."""
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import ENDPOINT_VALIDATION, tag_version

    tag_version(registry_client(), name, version, {ENDPOINT_VALIDATION: "passed: run scheduled__earlier"})


def _served() -> str | None:
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.serving.deploy import served_version

    target = serving_target()
    return served_version(target.workspace(), target.endpoint)


def _champion(name: str) -> str | None:
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import CHAMPION, get_alias

    v = get_alias(registry_client(), name, CHAMPION)
    return str(v.version) if v is not None else None


@pytest.fixture(autouse=True)
def _fresh_results(world):
    """Each test starts without gate/validation records of the run."""
    for job in ("gate", "validation", "endpoint_restore"):
        world["lake"].result_path(RUN_ID, job).unlink(missing_ok=True)


@pytest.mark.slow
def test_the_registry_s_scores_are_float32_whatever_precision_the_endpoint_serves_in(world, monkeypatch):
    """The gate judges, and the endpoint is held to, the registry model's scores: SWAN_SERVING_CPU_PRECISION, set for the
    endpoint, reaches this worker too, and must not make the gate judge a bfloat16 (or int8) copy."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from swan_anomaly.scoring import registry_scorer

    if torch.cuda.is_available():
        pytest.skip("the pyfunc takes the GPU (bfloat16) when there is one")
    uri = world["uris"]["good"][0]
    images = [world["lake"].read_raw(d, p) for d, p, _, _ in world["rows"]["val"][:8]]
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "float32")
    exact = registry_scorer(uri)(images)
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "bfloat16")
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": images})).anomaly_score.to_numpy()
    assert not np.array_equal(served, exact)  # the endpoint's setting does change what a plain load serves
    np.testing.assert_array_equal(registry_scorer(uri)(images), exact)


@pytest.mark.slow
def test_the_gate_judges_champion_and_challenger_on_the_same_rows_at_their_own_thresholds(world, model_name):
    """The champion claims AUROC 1.0 of its own data; on the challenger's validation rows it scores 0.5."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model

    champion = _register(world, model_name, "constant", "scheduled__1")
    _serve(model_name, champion)
    challenger = _register(world, model_name, "good", "scheduled__2")
    assert gate_model(_ctx(), _registered(model_name, challenger, world, "good")) == "promote_model"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["passed"] and gate["champion_version"] == champion and gate["images"] == {"abnormal": 12, "normal": 12}
    assert gate["reports"]["champion"]["auroc"] == 0.5 and gate["reports"]["challenger"]["auroc"] >= 0.9
    logged = registry_client().get_run(world["uris"]["good"][1]).data
    assert logged.metrics["champion_val_auroc"] == 0.5 and logged.metrics["challenger_val_auroc"] == gate["reports"]["challenger"]["auroc"]
    low, high = gate["reports"]["challenger"]["auroc_ci"]
    assert (logged.metrics["challenger_val_auroc_ci_low"], logged.metrics["challenger_val_auroc_ci_high"]) == (low, high)
    assert logged.tags["gate_champion_version"] == champion

    # the other way round: the constant model cannot beat the good champion on the same rows
    _serve(model_name, challenger)
    worse = _register(world, model_name, "constant", "scheduled__3")
    assert gate_model(_ctx(), _registered(model_name, worse, world, "constant")) == "keep_champion"
    reasons = " ".join(world["lake"].read_result(RUN_ID, "gate")["reasons"])
    assert "auroc 0.5000 < 0.9000" in reasons and "regresses against the champion's" in reasons


@pytest.mark.slow
def test_the_gate_refuses_a_challenger_whose_served_decision_calls_the_normal_images_abnormal(world, model_name):
    """AUROC and F1 of anomaly_score passed a challenger whose novelty score called every normal frame abnormal.

    The served decision, what a client acts on, is ``anomaly_score >= threshold`` or ``novelty_score >= 1``.
    """
    from swan_airflow.steps.promotion import gate_model

    noisy = _register(world, model_name, "noisy", "scheduled__1")
    assert gate_model(_ctx(), _registered(model_name, noisy, world, "noisy")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    report = gate["reports"]["challenger"]
    assert report["auroc"] >= 0.9 and report["f1"] >= 0.8, "the classifier alone passes: the decision is what fails"
    assert report["decision_false_alarm_rate"] == 1.0 and not gate["passed"] and not gate["passed_at_defaults"]
    assert gate["reasons"] == [
        "the served decision (anomaly_score >= threshold or novelty_score >= 1) calls 100.0% of the normal images abnormal, "
        "more than 50.0% (SWAN_MAX_FALSE_ALARM_RATE)"
    ]
    # the bound is the deployment's: lowered Params change nothing (and are no override: nothing passed at them either)
    assert gate_model(_ctx(gate_min_val_auroc=0.5, gate_min_val_f1=0.5), _registered(model_name, noisy, world, "noisy")) == "keep_champion"
    lowered = world["lake"].read_result(RUN_ID, "gate")
    assert not lowered["passed"] and lowered["reasons"] == gate["reasons"] and "forced" not in lowered
    # force_promote gets it past the gate, recorded as forced (the endpoint validation's bound then judges it on test rows)
    forced = _ctx(force_promote=True, force_promote_reason="the novelty bank is being recalibrated")
    assert gate_model(forced, _registered(model_name, noisy, world, "noisy")) == "promote_model"
    record = world["lake"].read_result(RUN_ID, "gate")
    assert record["forced"] == "the novelty bank is being recalibrated" and not record["passed"]
    # the same weights without that bank pass
    good = _register(world, model_name, "good", "scheduled__2")
    assert gate_model(_ctx(), _registered(model_name, good, world, "good")) == "promote_model"
    assert world["lake"].read_result(RUN_ID, "gate")["reports"]["challenger"]["decision_false_alarm_rate"] <= 0.5


def test_a_challenger_that_scores_nan_is_refused_and_a_champion_that_does_bars_nothing(world, model_name):
    """NaN scores crashed the gate ("Input contains NaN", retried): a broken champion then blocked every challenger for good.

    A served NaN anomaly_score is read as "normal" by every client (NaN >= threshold is false).
    """
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model
    from swan_anomaly.registry import promote

    nan = _register(world, model_name, "nan", "scheduled__1")
    assert gate_model(_ctx(), _registered(model_name, nan, world, "nan")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert not gate["passed"] and not gate["promote"]
    why = "no finite anomaly_score for 24 of 24 validation images (first: 20261115/anomalies/v1/frame_01000.png)"
    assert gate["broken"] == {"challenger": why}
    assert gate["reasons"][0].startswith(f"the challenger is broken: {why}")
    assert gate["reports"]["challenger"]["broken"] == why
    from swan_airflow.steps.report import _gate

    summary = _gate(gate)  # the run summary says so, not "too small to measure"
    assert summary["broken"] == {"challenger": why} and summary["reports"]["challenger"]["auroc_text"] == f"not measured: {why}"

    # a broken champion (forced in, say) bars nothing: a sound challenger replaces it, judged on the thresholds alone
    promote(registry_client(), model_name, nan)
    good = _register(world, model_name, "good", "scheduled__2")
    assert gate_model(_ctx(), _registered(model_name, good, world, "good")) == "promote_model"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["passed"] and gate["champion_version"] == nan and gate["broken"] == {"champion": why}
    assert gate["reports"]["challenger"]["auroc"] >= 0.9
    assert gate["reports"]["champion"]["auroc"] is None  # JSON has no NaN: nothing measured, and "broken" says why


@pytest.mark.slow
def test_a_broken_champion_s_line_still_binds_and_a_broken_reference_bars_nothing(world, model_name):
    import json

    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model
    from swan_anomaly.registry import GATE_REFERENCE_TAG, promote, tag_version

    client = registry_client()
    why = "no finite anomaly_score for 24 of 24 validation images (first: 20261115/anomalies/v1/frame_01000.png)"
    good = _register(world, model_name, "good", "scheduled__1")
    nan = _register(world, model_name, "nan", "scheduled__2")
    # the broken champion's line: the good version, in both metrics
    promote(client, model_name, nan)
    tag_version(client, model_name, nan, {GATE_REFERENCE_TAG: json.dumps({"auroc": good, "f1": good})})
    constant = _register(world, model_name, "constant", "scheduled__3")
    assert gate_model(_ctx(), _registered(model_name, constant, world, "constant")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["broken"] == {"champion": why} and gate["references"] == {"auroc": good, "f1": good}
    assert any(f"regresses against v{good}'s" in r for r in gate["reasons"]), gate["reasons"]
    # a sound champion whose line names the broken version: that reference bars nothing, and is said to
    promote(client, model_name, good)
    tag_version(client, model_name, good, {GATE_REFERENCE_TAG: json.dumps({"auroc": nan, "f1": good})})
    again = _register(world, model_name, "good", "scheduled__4")
    assert gate_model(_ctx(), _registered(model_name, again, world, "good")) == "promote_model"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["references_unavailable"] == {nan: why} and gate["broken"] == {f"reference_v{nan}": why}
    assert gate["passed"] and gate["reports"]["champion"]["version"] == good  # the sound champion still judged it


@pytest.mark.slow
def test_the_gate_holds_a_challenger_to_the_best_of_the_champion_s_line_too(world, model_name):
    """The 0.02 tolerance against the champion alone let regressions chain: 0.99, 0.97, 0.95, ... each within it."""
    import json

    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model, promote_model
    from swan_anomaly.registry import ENDPOINT_VALIDATION, GATE_REFERENCE_TAG, tag_version

    client = registry_client()

    def line_of(version: str) -> dict:
        return json.loads(client.get_model_version(model_name, version).tags[GATE_REFERENCE_TAG])

    best = _register(world, model_name, "good", "scheduled__1")
    assert gate_model(_ctx(), _registered(model_name, best, world, "good")) == "promote_model"
    promote_model(_ctx(), _registered(model_name, best, world, "good"))
    assert line_of(best) == {"auroc": best, "f1": best}  # no champion: a line of its own
    # gated again after its promotion (gate_model cleared), the champion keeps its line
    tag_version(client, model_name, best, {GATE_REFERENCE_TAG: json.dumps({"auroc": "0", "f1": best})})
    gate_model(_ctx(), _registered(model_name, best, world, "good"))
    assert line_of(best) == {"auroc": "0", "f1": best}
    # a champion that was let within the tolerance of the good one (what its gate tagged), and a challenger like it
    weak = _register(world, model_name, "constant", "scheduled__2")
    _serve(model_name, weak)
    tag_version(client, model_name, weak, {GATE_REFERENCE_TAG: json.dumps({"auroc": best, "f1": best})})
    again = _register(world, model_name, "constant", "scheduled__3")
    assert gate_model(_ctx(), _registered(model_name, again, world, "constant")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["references"] == {"auroc": best, "f1": best} and gate["reports"][f"reference_v{best}"]["auroc"] >= 0.9
    assert gate["reports"]["champion"]["auroc"] == gate["reports"]["challenger"]["auroc"] == 0.5
    assert not any("regresses against the champion's" in r for r in gate["reasons"])  # level with the champion it replaces
    assert any(r.startswith(f"auroc 0.5000 regresses against v{best}'s") for r in gate["reasons"]), gate["reasons"]
    assert gate["line_references"] == {"auroc": best, "f1": best} == line_of(again)
    # a reference that cannot be loaded bars nothing, and the gate says so; neither does one that failed its validation
    hollow = str(client.create_model_version(model_name, source=str(world["lake"].root / "no_such_model"), run_id=None).version)
    tag_version(client, model_name, weak, {GATE_REFERENCE_TAG: json.dumps({"auroc": hollow, "f1": best})})
    tag_version(client, model_name, best, {ENDPOINT_VALIDATION: "failed: AUROC 0.5 < 0.9"})
    gate_model(_ctx(), _registered(model_name, again, world, "constant"))
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["references"] == {} and list(gate["references_unavailable"]) == [hollow]
    assert not any("regresses against v" in r for r in gate["reasons"])


@pytest.mark.slow
def test_a_version_promoted_unjudged_inherits_the_line_of_the_champion_it_replaces(world, model_name):
    """gate_mode=disabled wrote no line, so the next challenger answered only to a model nobody judged."""
    import json

    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model, promote_model
    from swan_anomaly.registry import GATE_REFERENCE_TAG

    client = registry_client()
    good = _register(world, model_name, "good", "scheduled__1")
    gate_model(_ctx(), _registered(model_name, good, world, "good"))
    promote_model(_ctx(), _registered(model_name, good, world, "good"))
    useless = _register(world, model_name, "constant", "scheduled__2")
    unjudged = _ctx(gate_mode="disabled", force_promote_reason="the gate is being replaced this week")
    assert gate_model(unjudged, _registered(model_name, useless, world, "constant")) == "promote_model"
    promote_model(unjudged, _registered(model_name, useless, world, "constant"))
    assert json.loads(client.get_model_version(model_name, useless).tags[GATE_REFERENCE_TAG]) == {"auroc": good, "f1": good}
    challenger = _register(world, model_name, "constant", "scheduled__3")
    assert gate_model(_ctx(), _registered(model_name, challenger, world, "constant")) == "keep_champion"
    assert any(r.startswith(f"auroc 0.5000 regresses against v{good}'s") for r in world["lake"].read_result(RUN_ID, "gate")["reasons"])


@pytest.mark.slow
def test_promote_model_run_by_hand_promotes_only_what_the_gate_promoted(world, model_name):
    """promote_model read gate.json for the champion it compared with, never for its verdict: cleared or run by hand past
    keep_champion, it promoted a refused challenger; a dry run's record from before overrides needed a reason promoted too."""
    from swan_airflow.steps.promotion import gate_model, promote_model

    good = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, good)
    useless = _register(world, model_name, "constant", "scheduled__2")
    assert gate_model(_ctx(), _registered(model_name, useless, world, "constant")) == "keep_champion"
    with pytest.raises(AirflowFailException, match=rf"v{useless} is not promoted: the gate kept the champion \(auroc 0.5000 < 0.9000"):
        promote_model(_ctx(), _registered(model_name, useless, world, "constant"))
    assert _champion(model_name) == good
    refused = world["lake"].read_result(RUN_ID, "gate")
    old_dry_run = {**refused, "mode": "dry_run", "promote": True}  # as gate_model wrote it before overrides needed leave
    old_dry_run.pop("forced", None)
    world["lake"].write_result(RUN_ID, "gate", old_dry_run)
    with pytest.raises(AirflowFailException, match="without passing it and without an override on record"):
        promote_model(_ctx(), _registered(model_name, useless, world, "constant"))
    world["lake"].write_result(RUN_ID, "gate", {**refused, "challenger": good, "promote": True, "passed": True})
    with pytest.raises(AirflowFailException, match=rf"the gate of this run judged v{good}; clear gate_model to judge v{useless}"):
        promote_model(_ctx(), _registered(model_name, useless, world, "constant"))
    assert _champion(model_name) == good


@pytest.mark.slow
def test_the_gate_refuses_a_validation_split_too_small_to_measure(world, model_name):
    from swan_airflow.steps.promotion import gate_model

    version = _register(world, model_name, "good", "scheduled__1")
    assert gate_model(_ctx(gate_min_images_per_class=25), _registered(model_name, version, world, "good")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert not gate["passed"] and not gate["measurable"]
    assert gate["reasons"][0].startswith("validation split too small to measure: 12 abnormal and 12 normal images, fewer than 25 per class")
    # a dry run reports the same; promoting anyway overrides the gate, which needs what force_promote needs
    assert (
        gate_model(_ctx(gate_min_images_per_class=25, gate_mode="dry_run"), _registered(model_name, version, world, "good"))
        == "keep_champion"
    )
    dry = world["lake"].read_result(RUN_ID, "gate")
    assert not dry["promote"] and "gate_mode=dry_run overrides the gate: it needs a force_promote_reason" in dry["reasons"][-1]
    shadow = _ctx(gate_min_images_per_class=25, gate_mode="dry_run", force_promote_reason="shadow run of the new camera")
    assert gate_model(shadow, _registered(model_name, version, world, "good")) == "promote_model"
    assert world["lake"].read_result(RUN_ID, "gate")["forced"] == "gate_mode=dry_run: shadow run of the new camera"
    # an empty gate mode (the trigger form's clear button sends null) enforces, as by default
    cleared = _ctx(gate_min_images_per_class=25, gate_mode=None)
    assert gate_model(cleared, _registered(model_name, version, world, "good")) == "keep_champion"
    assert world["lake"].read_result(RUN_ID, "gate")["mode"] == "enabled"


@pytest.mark.slow
def test_a_gate_disabled_or_lowered_in_the_trigger_form_is_an_override_that_is_allowed_explained_and_tagged(world, model_name, monkeypatch):
    """gate_mode=disabled, or thresholds lowered in the form, promoted anything with no permission, reason or tag."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model, promote_model

    useless = _register(world, model_name, "constant", "scheduled__1")  # AUROC 0.5: the gate at its defaults refuses it
    # every score is 0.5, its threshold: its decision flags every frame, which no Param may allow; this test is about the Params
    monkeypatch.setenv("SWAN_MAX_FALSE_ALARM_RATE", "1")

    def kept(ctx, match: str) -> None:  # without leave or reason the champion stays, and the gate record says why
        assert gate_model(ctx, _registered(model_name, useless, world, "constant")) == "keep_champion"
        record = world["lake"].read_result(RUN_ID, "gate")
        assert not record["promote"] and re.search(match, record["reasons"][-1]), record["reasons"]

    lowered = _ctx(gate_min_val_auroc=0.0, gate_min_val_f1=0.0)
    kept(lowered, r"gate thresholds below the deployment's defaults \(auroc 0\.5000 < 0\.9000")
    assert registry_client().get_model_version(model_name, useless).tags["gate_passed_at_defaults"] == "False"
    kept(_ctx(gate_mode="disabled"), "gate_mode=disabled overrides the gate")
    monkeypatch.setenv("SWAN_ALLOW_FORCE_PROMOTE", "false")
    explained = _ctx(gate_mode="disabled", force_promote_reason="the gate is being replaced this week")
    kept(explained, "gate_mode=disabled would promote .* disabled in this deployment")
    monkeypatch.delenv("SWAN_ALLOW_FORCE_PROMOTE")
    assert gate_model(explained, _registered(model_name, useless, world, "constant")) == "promote_model"
    promote_model(explained, _registered(model_name, useless, world, "constant"))
    tags = registry_client().get_model_version(model_name, useless).tags
    assert tags["force_promoted"] == f"{RUN_ID}: gate_mode=disabled: the gate is being replaced this week"
    # lowered thresholds that change nothing are no override: the good model passes at the defaults too
    good = _register(world, model_name, "good", "scheduled__2")
    assert gate_model(_ctx(gate_min_val_auroc=0.5), _registered(model_name, good, world, "good")) == "promote_model"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["passed"] and gate["passed_at_defaults"] and "forced" not in gate and gate["thresholds"]["auroc"] == 0.5


@pytest.mark.slow
def test_the_gate_fails_at_once_on_what_a_retry_cannot_change(world, model_name):
    """A missing training result (or a changed held-out image, a version without a threshold) was retried SWAN_RETRIES times."""
    from swan_airflow.steps.promotion import gate_model

    version = _register(world, model_name, "good", "scheduled__1")
    no_training = RunContext(dag_id="swan_anomaly_pipeline", run_id="manual__no_train_result", dataset_id=DATASET, params=PARAMS)
    with pytest.raises(AirflowFailException, match=rf"the gate cannot judge v{version}: .*manual__no_train_result"):
        gate_model(no_training, _registered(model_name, version, world, "good"))


@pytest.mark.slow
def test_a_failed_new_version_is_rolled_back_once_and_a_retry_never_ends_green(world, model_name):
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import validate_endpoint

    good, bad, endpoint = _new_version_over_good(world, model_name, "constant")  # this run's model, force-promoted and served
    assert endpoint["version"] == bad and endpoint["changed"]
    with pytest.raises(
        AirflowFailException,
        match=(
            rf"new version {model_name} v{bad} failed endpoint validation .*AUROC 0\.5000.*rolled "
            rf"the endpoint and the champion back to v{good}"
        ),
    ):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() == good and _champion(model_name) == good
    assert registry_client().get_model_version(model_name, bad).tags["endpoint_validation"].startswith("failed: AUROC 0.5000")
    record = world["lake"].read_result(RUN_ID, "validation")
    assert (record["outcome"], record["state"], record["version"], record["previous"]) == ("rolled_back", "done", bad, good)
    # the retry Airflow would run: it fails again without validating the rolled-back version
    with pytest.raises(AirflowFailException, match="decided by an earlier try of this run; not validated again"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() == good and _champion(model_name) == good
    # update_endpoint cleared after the rollback: it serves the previous champion, and the run still does not end green
    again = _serve(model_name, good)
    with pytest.raises(AirflowFailException, match="decided by an earlier try of this run"):
        validate_endpoint(_ctx(), again, _registered(model_name, bad, world, "constant"))
    # the failed version promoted and served again by hand: the validation rolls it back again, and the gate refuses it
    from swan_airflow.steps.promotion import gate_model, promote_model

    endpoint = _serve(model_name, bad)
    with pytest.raises(AirflowFailException, match="decided by an earlier try of this run"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() == good and _champion(model_name) == good
    assert (
        gate_model(
            _ctx(force_promote=True, force_promote_reason="promote it whatever the gate says"),
            _registered(model_name, bad, world, "constant"),
        )
        == "keep_champion"
    )
    assert "failed its endpoint validation" in world["lake"].read_result(RUN_ID, "gate")["reasons"][0]
    with pytest.raises(AirflowFailException, match="never promoted again"):
        promote_model(_ctx(), _registered(model_name, bad, world, "constant"))


def _refusing(refused: str, deploy_version):
    """``deploy_version`` as an endpoint that cannot load version ``refused`` (capacity, an environment that no longer
    builds) answers it: EndpointError; any other version deploys."""
    from swan_anomaly import EndpointError

    def deploy(w, endpoint, name, version, config):
        if version == refused:
            raise EndpointError(f"endpoint {endpoint} update failed: served entity {name}-{version} did not become ready")
        return deploy_version(w, endpoint, name, version, config)

    return deploy


@pytest.mark.slow
def test_a_rollback_whose_previous_version_cannot_serve_again_takes_the_failed_version_off_the_endpoint(world, model_name, monkeypatch):
    """The rollback moved the alias back, then the endpoint refused the previous version (capacity, an environment that no
    longer builds): the error was retried, ensure_validated_endpoint met it again, and the version that failed its
    validation went on serving while the registry named the previous one."""
    from swan_airflow.steps.serving import ensure_validated_endpoint, update_endpoint, validate_endpoint
    from swan_anomaly.serving import deploy

    good, bad, endpoint = _new_version_over_good(world, model_name, "constant")
    assert _served() == bad
    real = deploy.deploy_version
    monkeypatch.setattr(deploy, "deploy_version", _refusing(good, real))
    with pytest.raises(AirflowFailException, match=rf"the rollback could not serve v{good} again .*so it deleted endpoint"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() is None and _champion(model_name) == good  # nothing serves: not the version that failed
    record = world["lake"].read_result(RUN_ID, "validation")
    assert (record["state"], record["outcome"]) == ("done", "rolled_back") and "could not serve" in record["message"]
    with pytest.raises(AirflowFailException, match=rf"the rollback could not serve v{good} again"):  # a retry: the same, at once
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert ensure_validated_endpoint(_ctx())["acted"] is False  # nothing unvalidated is champion or serves
    monkeypatch.setattr(deploy, "deploy_version", real)  # the cause fixed: update_endpoint serves the champion again
    assert update_endpoint(_ctx())["version"] == good and _served() == good


@pytest.mark.slow
def test_a_restore_the_endpoint_refuses_is_recorded_and_leaves_nothing_unvalidated_serving(world, model_name, monkeypatch):
    """ensure_validated_endpoint's rollback failed half-way (the alias moved, the endpoint refused the version): it wrote no
    endpoint_restore record, so the run summary said nothing of what the task had changed."""
    from swan_airflow.steps.serving import ensure_validated_endpoint
    from swan_anomaly.serving import deploy

    good, newer, _ = _new_version_over_good(world, model_name, "good")  # promoted and served; its validation never ran
    real = deploy.deploy_version
    monkeypatch.setattr(deploy, "deploy_version", _refusing(good, real))
    with pytest.raises(AirflowFailException, match=rf"alias went back to v{good}, but the rollback could not serve v{good} again"):
        ensure_validated_endpoint(_ctx())
    assert _served() is None and _champion(model_name) == good  # v{newer}, never validated, does not serve
    record = world["lake"].read_result(RUN_ID, "endpoint_restore")
    assert record["restored"] == good and record["unvalidated"] == [newer] and "could not serve" in record["message"]


@pytest.mark.slow
def test_a_validation_that_cannot_complete_rolls_the_new_version_back(world, model_name):
    """A held-out image is missing from the lake: the new version cannot be validated, so it does not stay serving."""
    from swan_airflow.steps.serving import validate_endpoint

    good, newer, endpoint = _new_version_over_good(world, model_name, "good")
    lake = world["lake"]
    missing = lake.raw(DATASET) / world["rows"]["test"][3][1]
    kept = missing.read_bytes()
    missing.unlink()
    try:
        with pytest.raises(
            AirflowFailException,
            match=(
                rf"v{newer} failed endpoint validation \(the validation could not complete: "
                rf"LakeError: raw/{DATASET}/.* is gone: .*rolled .* back to v{good}"
            ),
        ):
            validate_endpoint(_ctx(), endpoint, _registered(model_name, newer, world, "good"))
    finally:
        missing.write_bytes(kept)
    assert _served() == good and _champion(model_name) == good


@pytest.mark.slow
def test_a_version_whose_validation_could_not_complete_is_not_barred_and_a_cleared_section_validates_it(world, model_name):
    """A lake or endpoint outage stopped the validation: it judged nothing, yet the version was tagged failed and barred
    for good from the gate and promote_model, so the trained model was lost to an outage. Once the cause is fixed,
    clearing the section promotes, serves and validates the same version again."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model, promote_model
    from swan_airflow.steps.serving import update_endpoint, validate_endpoint

    good, newer, endpoint = _new_version_over_good(world, model_name, "good")
    lake = world["lake"]
    missing = lake.raw(DATASET) / world["rows"]["test"][3][1]
    kept = missing.read_bytes()
    missing.unlink()  # the lake cannot serve the image this time
    try:
        with pytest.raises(AirflowFailException, match=rf"the validation could not complete: LakeError: .* is gone.*back to v{good}"):
            validate_endpoint(_ctx(), endpoint, _registered(model_name, newer, world, "good"))
    finally:
        missing.write_bytes(kept)
    assert _served() == good and _champion(model_name) == good
    assert registry_client().get_model_version(model_name, newer).tags["endpoint_validation"].startswith("incomplete: ")
    # wait_for_promotion_turn cleared with its downstream tasks: the same version is judged, promoted, served, validated
    registered = _registered(model_name, newer, world, "good")
    assert gate_model(_ctx(), registered) == "promote_model"
    promote_model(_ctx(), registered)
    assert validate_endpoint(_ctx(), update_endpoint(_ctx()), registered)["outcome"] == "passed"
    assert _served() == newer and _champion(model_name) == newer
    assert registry_client().get_model_version(model_name, newer).tags["endpoint_validation"].startswith("passed: ")


@pytest.mark.slow
def test_a_retry_after_a_rollback_interrupted_half_way_finishes_it(world, model_name):
    from swan_airflow.steps.serving import validate_endpoint

    good, bad, endpoint = _new_version_over_good(world, model_name, "constant")
    record = _decided_rollback(model_name, bad, good)
    world["lake"].write_result(RUN_ID, "validation", record)  # what a try that died before rolling back left
    with pytest.raises(AirflowFailException, match="decided by an earlier try"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() == good and _champion(model_name) == good
    assert world["lake"].read_result(RUN_ID, "validation")["state"] == "done"


@pytest.mark.slow
def test_a_new_version_validated_on_a_split_too_small_to_measure_is_not_marked_validated(world, model_name, monkeypatch):
    """Parity alone passed, and the version was tagged ``passed``: a model never measured became a rollback target."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import ensure_validated_endpoint, validate_endpoint
    from swan_anomaly.registry import PREVIOUS, get_alias, promote

    good, version, endpoint = _new_version_over_good(world, model_name, "good")
    # the deployment asks for 25 images per class; the run's Param (10) cannot ask for fewer
    with monkeypatch.context() as deployment:
        deployment.setenv("SWAN_GATE_MIN_IMAGES_PER_CLASS", "25")
        result = validate_endpoint(_ctx(gate_min_images_per_class=10), endpoint, _registered(model_name, version, world, "good"))
    assert result["outcome"] == "passed" and _served() == version  # it serves what the registry holds
    tag = registry_client().get_model_version(model_name, version).tags["endpoint_validation"]
    assert tag.startswith("unmeasured: run ") and "quality not judged" in tag
    # the section's last task keeps it: it serves what the registry holds (it rolled it back, and the run failed)
    assert ensure_validated_endpoint(_ctx()) == {"acted": False, "champion": version, "served": version}
    # the next promotion keeps the last measured version as the one to roll back to
    later = _register(world, model_name, "good", "scheduled__3")
    promote(registry_client(), model_name, later)
    assert str(get_alias(registry_client(), model_name, PREVIOUS).version) == good
    # a run whose split is large enough measures it: then it is validated
    promote(registry_client(), model_name, version)
    validate_endpoint(_ctx(), _serve(model_name, version), _registered(model_name, version, world, "good"))
    assert registry_client().get_model_version(model_name, version).tags["endpoint_validation"].startswith("passed: run ")


@pytest.mark.slow
def test_a_run_without_held_out_test_images_validates_nothing_and_bars_nothing(world, model_name, monkeypatch):
    """Parity over no image held vacuously: the new version 'passed' a validation that scored nothing."""
    import swan_airflow.runtime as runtime
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import validate_endpoint

    good, version, endpoint = _new_version_over_good(world, model_name, "good")
    real = runtime.read_held_out_rows
    monkeypatch.setattr(runtime, "read_held_out_rows", lambda store, run_id, split: [] if split == "test" else real(store, run_id, split))
    with pytest.raises(AirflowFailException):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, version, world, "good"))
    tag = registry_client().get_model_version(model_name, version).tags["endpoint_validation"]
    assert tag.startswith("incomplete: ") and "no held-out test images" in tag  # not failed: a later run may validate it
    assert _served() == good and _champion(model_name) == good


@pytest.mark.slow
def test_a_failed_first_version_is_withdrawn_and_nothing_serves(world, model_name):
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import validate_endpoint

    bad = _register(world, model_name, "constant", "scheduled__1")
    endpoint = _serve(model_name, bad)
    with pytest.raises(
        AirflowFailException,
        match=rf"first version {model_name} v{bad} failed .*the endpoint was deleted and v{bad} lost the champion alias",
    ):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() is None and _champion(model_name) is None
    assert "endpoint_validation" in registry_client().get_model_version(model_name, bad).tags


@pytest.mark.slow
def test_an_unchanged_champion_that_no_longer_separates_is_drift_reported_and_warn_or_fail_by_setting(
    world, model_name, monkeypatch, tmp_path
):
    """The gate kept the champion (this run's challenger is another version): a failure is drift, not a rollback."""
    from swan_airflow.steps.serving import validate_endpoint

    out = tmp_path / "notified.txt"
    monkeypatch.setenv("SWAN_FAILURE_NOTIFIER", "conftest:RecordingNotifier")
    monkeypatch.setenv("SWAN_FAILURE_NOTIFIER_KWARGS", json.dumps({"message": "{{ exception }}", "path": str(out)}))
    champion = _register(world, model_name, "constant", "scheduled__1")
    endpoint = _serve(model_name, champion)
    _validated_before(model_name, champion)  # it served and passed before: now it is the unchanged champion
    challenger = _register(world, model_name, "good", "scheduled__2")  # not promoted
    result = validate_endpoint(_ctx(), endpoint, _registered(model_name, challenger, world, "good"))
    assert result["outcome"] == "drift" and "DRIFT: the unchanged champion" in result["message"]
    assert out.read_text() == result["message"] and _served() == champion and _champion(model_name) == champion
    world["lake"].result_path(RUN_ID, "validation").unlink()
    monkeypatch.setenv("SWAN_DRIFT_ACTION", "fail")
    with pytest.raises(AirflowFailException, match=r"DRIFT: .*SWAN_DRIFT_ACTION=fail"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, challenger, world, "good"))
    assert _served() == champion and _champion(model_name) == champion  # nothing rolled back


@pytest.mark.slow
def test_an_endpoint_that_does_not_serve_the_registered_model_fails_parity(world, model_name, tmp_path):
    """The registry's copy of the served version changes after the endpoint loaded it: per-image parity catches it."""
    import mlflow

    from swan_airflow.steps.serving import validate_endpoint

    good = _register(world, model_name, "good", "scheduled__1")
    endpoint = _serve(model_name, good)
    _validated_before(model_name, good)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{good}"))
    [weights] = list(local.rglob("model.safetensors"))
    artifact = Path(mlflow.MlflowClient().get_model_version_download_uri(model_name, good).removeprefix("file://"))
    [stored] = list(artifact.rglob("model.safetensors"))
    original = stored.read_bytes()
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    tensors = {k: (v * 1.5 if k.startswith("classifier") else v) for k, v in tensors.items()}
    save_file(tensors, str(stored), metadata={"format": "pt"})
    try:
        with pytest.raises(
            AirflowFailException, match=r"does not serve the registered .* scores differ from the registry model's by more than 0\.0001"
        ):
            validate_endpoint(_ctx(), endpoint, _registered(model_name, "999", world, "constant"))  # the gate kept the champion
        assert world["lake"].read_result(RUN_ID, "validation")["outcome"] == "mismatch" and _served() == good
    finally:
        stored.write_bytes(original)


@pytest.mark.slow
def test_a_champion_the_endpoint_cannot_load_goes_back_and_a_validated_champion_is_judged_for_drift(world, model_name, tmp_path):
    """update_endpoint: a version the endpoint refuses (it cannot load it) must not stay champion without ever serving."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import update_endpoint
    from swan_anomaly.registry import promote, register_challenger

    good = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, good)
    _validated_before(model_name, good)
    broken_source = tmp_path / "broken"
    broken_source.mkdir()
    (broken_source / "MLmodel").write_text("flavors: {}\n")  # registrable, not loadable
    client = registry_client()
    run = client.create_run(client.get_experiment_by_name("swan-anomaly").experiment_id).info.run_id
    broken = str(
        register_challenger(client, model_name, broken_source.as_uri(), run, "scheduled__2", tags={"anomaly_threshold": "0.5"}).version
    )
    promote(client, model_name, broken)
    with pytest.raises(
        AirflowFailException,
        match=rf"failed to serve {model_name} v{broken} and keeps serving v{good}.*champion alias went back to v{good}",
    ):
        update_endpoint(_ctx())
    assert _served() == good and _champion(model_name) == good


def _unmeasured(name: str, version: str) -> None:
    """Mark ``version`` as served with parity on a test split too small to measure (the endpoint validation's ``unmeasured``)."""
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import ENDPOINT_VALIDATION, tag_version

    tag_version(registry_client(), name, version, {ENDPOINT_VALIDATION: "unmeasured: run scheduled__1, dataset 20261115: too small"})


@pytest.mark.slow
def test_a_failed_version_over_an_unmeasured_champion_goes_back_to_it(world, model_name):
    """promote kept previous_champion only on a version that passed, so a champion served with parity on a test split too
    small to measure was no rollback target: the next version's failed validation deleted the endpoint and left no
    champion, and the run after that had no champion to hold its challenger to."""
    from swan_airflow.steps.serving import ensure_validated_endpoint, validate_endpoint

    first = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, first)
    _unmeasured(model_name, first)
    failing = _register(world, model_name, "constant", "scheduled__2")
    endpoint = _serve(model_name, failing)
    with pytest.raises(AirflowFailException, match=f"rolled the endpoint and the champion back to v{first}"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, failing, world, "constant"))
    assert _served() == first and _champion(model_name) == first
    assert ensure_validated_endpoint(_ctx())["acted"] is False


@pytest.mark.slow
def test_a_version_the_endpoint_refuses_over_an_unmeasured_champion_leaves_registry_and_endpoint_agreeing(world, model_name, tmp_path):
    """The refused version lost the champion alias and, with no previous_champion, nobody got it: the endpoint went on
    serving the unmeasured champion, which the registry no longer named, and update_endpoint then skipped for good."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import ensure_validated_endpoint, update_endpoint
    from swan_anomaly.registry import promote, register_challenger

    first = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, first)
    _unmeasured(model_name, first)
    source = tmp_path / "broken"
    source.mkdir()
    (source / "MLmodel").write_text("flavors: {}\n")  # registrable, not loadable
    client = registry_client()
    run = client.create_run(client.get_experiment_by_name("swan-anomaly").experiment_id).info.run_id
    broken = str(register_challenger(client, model_name, source.as_uri(), run, "scheduled__2", tags={"anomaly_threshold": "0.5"}).version)
    promote(client, model_name, broken)
    with pytest.raises(AirflowFailException, match=f"champion alias went back to v{first}"):
        update_endpoint(_ctx())
    assert _served() == first and _champion(model_name) == first
    assert ensure_validated_endpoint(_ctx())["acted"] is False


@pytest.mark.slow
def test_validation_refuses_an_endpoint_that_changed_since_it_was_deployed(world, model_name):
    from swan_airflow.steps.serving import validate_endpoint

    first = _register(world, model_name, "good", "scheduled__1")
    endpoint = _serve(model_name, first)
    second = _register(world, model_name, "good", "scheduled__2")
    _serve(model_name, second)  # someone (an earlier try's rollback, another run) changed it meanwhile
    with pytest.raises(AirflowFailException, match=rf"serves v{second}, not v{first} that update_endpoint deployed"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, first, world, "good"))


def test_scoring_refuses_a_raw_image_that_is_no_longer_the_one_the_model_was_tested_with(tmp_path):
    """Another run of the same date uploaded the partition again: the held-out row's sha256 no longer matches."""
    import hashlib

    from swan_anomaly import LakeError
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.scoring import score_rows

    lake = LocalLake(tmp_path / "lake")
    (lake.raw(DATASET) / "frames").mkdir(parents=True)
    (lake.raw(DATASET) / "frames" / "a.png").write_bytes(_frame(1, abnormal=False))
    row = [DATASET, "frames/a.png", 1, "none", hashlib.sha256(_frame(1, abnormal=False)).hexdigest()]
    seen = []
    scores = score_rows(lake, [row], {"count": lambda images: seen.append(images) or np.full(len(images), 0.25)})
    assert scores["count"].tolist() == [0.25] and seen == [[_frame(1, abnormal=False)]]
    (lake.raw(DATASET) / "frames" / "a.png").write_bytes(_frame(2, abnormal=False))  # uploaded again with other bytes
    with pytest.raises(LakeError, match=rf"raw/{DATASET}/frames/a\.png is not the image the model was trained and tested with"):
        score_rows(lake, [row], {"count": lambda images: np.zeros(len(images))})
    # uploaded again without it (its video left the landing zone): a FileNotFoundError, which the gate retried with backoff,
    # rescoring every model each time, and then failed without saying what to do
    (lake.raw(DATASET) / "frames" / "a.png").unlink()
    with pytest.raises(LakeError, match=rf"raw/{DATASET}/frames/a\.png is gone: .*rerun the pipeline for that date"):
        score_rows(lake, [row], {"count": lambda images: np.zeros(len(images))})


class _FlakyEndpoint:
    """An invocations endpoint over HTTP that answers ``statuses`` first, then real predictions of 0.5
    (and, given ``health``, a model server's ``/health``)."""

    def __init__(self, statuses: list[int], *, health: dict | None = None) -> None:
        import http.server
        import threading

        outer = self
        self.statuses, self.calls = list(statuses), 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                data = json.dumps(health or {}).encode()
                self.send_response(200 if self.path.partition("?")[0] == "/health" and health else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers["Content-Length"])
                rows = json.loads(self.rfile.read(length))["dataframe_split"]["data"]
                outer.calls += 1
                status = outer.statuses.pop(0) if outer.statuses else 200
                body = (
                    {"predictions": [{"logits": [0.0, 0.0], "anomaly_score": 0.5} for _ in rows]}
                    if status == 200
                    else {"error_code": "TEMPORARILY_UNAVAILABLE"}
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def test_the_endpoint_client_retries_busy_answers_and_fails_on_others():
    from swan_anomaly import EndpointError
    from swan_anomaly._errors import EndpointBusy
    from swan_anomaly.serving.client import EndpointClient

    flaky = _FlakyEndpoint([503, 429, 408])  # 408: the server's deadline for a body that came slowly
    try:
        assert [p["anomaly_score"] for p in EndpointClient(flaky.url, "e", retry_seconds=30).score([b"x", b"y"])] == [0.5, 0.5]
        assert flaky.calls == 4
    finally:
        flaky.close()
    busy = _FlakyEndpoint([503] * 50)
    try:
        with pytest.raises(EndpointBusy, match="still failing after 2s of retries: .*503"):
            EndpointClient(busy.url, "e", retry_seconds=2).score([b"x"])
    finally:
        busy.close()
    broken = _FlakyEndpoint([500])
    try:
        with pytest.raises(EndpointError, match="answered 500") as raised:
            EndpointClient(broken.url, "e", retry_seconds=30).score([b"x"])
        assert not isinstance(raised.value, EndpointBusy) and broken.calls == 1  # a model error is not retried
    finally:
        broken.close()


def test_another_deployments_model_server_on_the_port_fails_at_once_and_is_not_reported_as_ours(monkeypatch):
    """A model server of another SWAN_HOME answers on the configured port: no retry can fix it, and it serves nothing of ours."""
    from swan_airflow.serving_target import serving_target
    from swan_airflow.steps.report import _serving

    other = _FlakyEndpoint([], health={"status": "ok", "registry_uri": "sqlite:////srv/other-deployment/mlflow.db"})
    try:
        monkeypatch.setenv("SWAN_ENDPOINT_URL", other.url)
        monkeypatch.setenv("SWAN_MODEL_NAME", "promo_nothing_registered")
        with pytest.raises(AirflowFailException, match=r"serves models from sqlite:////srv/other-deployment/mlflow\.db, not .*stop it"):
            serving_target()
        serving = _serving()
        assert serving["version"] is None and serving["champion"] is None and "other-deployment" in serving["note"]
    finally:
        other.close()


def test_the_databricks_path_retries_what_the_rest_path_retries_and_fails_on_the_rest():
    """Through databricks-sdk's serving_endpoints.query: a 504 was a failed check before (the SDK retries only 429/503)."""
    from swan_anomaly import EndpointError
    from swan_anomaly._errors import EndpointBusy
    from swan_anomaly.serving.client import EndpointClient
    from swan_anomaly.serving.deploy import workspace_client

    flaky = _FlakyEndpoint([504, 503, 504])
    try:
        client = EndpointClient(flaky.url, "e", retry_seconds=60, workspace=workspace_client(flaky.url, token="t"))
        assert [p["anomaly_score"] for p in client.score([b"x", b"y"])] == [0.5, 0.5]
        assert flaky.calls == 4
    finally:
        flaky.close()
    busy = _FlakyEndpoint([504] * 100)
    try:
        with pytest.raises(EndpointBusy, match="still failing after 2s of retries"):
            EndpointClient(busy.url, "e", retry_seconds=2, workspace=workspace_client(busy.url, token="t")).score([b"x"])
    finally:
        busy.close()
    broken = _FlakyEndpoint([400])
    try:
        with pytest.raises(EndpointError) as raised:
            EndpointClient(broken.url, "e", retry_seconds=30, workspace=workspace_client(broken.url, token="t")).score([b"x"])
        assert not isinstance(raised.value, EndpointBusy) and broken.calls == 1
    finally:
        broken.close()


@pytest.mark.slow
def test_a_backfill_of_an_older_date_does_not_replace_a_champion_trained_on_newer_data(world, model_name):
    """The champion was trained on 2026-11-20's data; a backfill of 2026-11-15 trains a model that is judged on that
    date's validation rows, beside which it was trained and which the champion never saw: it passed and replaced it."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.promotion import gate_model
    from swan_anomaly.registry import tag_version

    champion = _register(world, model_name, "good", "scheduled__20261120")
    tag_version(registry_client(), model_name, champion, {"dataset_id": "20261120"})  # as register_model tags it
    _serve(model_name, champion)
    older = _register(world, model_name, "good", "backfill__20261115")
    tag_version(registry_client(), model_name, older, {"dataset_id": DATASET})
    assert gate_model(_ctx(), _registered(model_name, older, world, "good")) == "keep_champion"
    gate = world["lake"].read_result(RUN_ID, "gate")
    assert gate["reasons"] == [
        "trained on data of 2026-11-15, older than the champion's (2026-11-20): a model of older data never replaces one of newer "
        "data (a backfill or a rerun of an old date); force_promote if it must"
    ]
    assert gate["data_through"] == {"challenger": "2026-11-15", "champion": "2026-11-20"}
    # the same model of the champion's own date, or of a later one, is judged on its metrics as before
    for day in ("20261120", "20261121"):
        tag_version(registry_client(), model_name, older, {"dataset_id": day})
        assert gate_model(_ctx(), _registered(model_name, older, world, "good")) == "promote_model", day
    # the day its data arrived wins over its partition's date: videos named today, in a partition of yesterday's interval
    tag_version(registry_client(), model_name, older, {"dataset_id": "20261119-videos-0a1b2c3d", "data_through": "2026-11-20"})
    assert gate_model(_ctx(), _registered(model_name, older, world, "good")) == "promote_model"


@pytest.mark.slow
def test_a_rollback_goes_to_the_last_validated_champion_never_to_one_that_never_served(world, model_name):
    """vF became champion but never served (its endpoint update failed for good); the next run promoted vC, which failed
    its validation: the rollback went to vF, never validated, instead of vG, the last version that passed."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import validate_endpoint
    from swan_anomaly.registry import PREVIOUS, get_alias, promote

    good = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, good)
    _validated_before(model_name, good)
    never_served = _register(world, model_name, "constant", "scheduled__2")
    promote(registry_client(), model_name, never_served)  # promote_model succeeded; update_endpoint then failed for good
    assert _served() == good and _champion(model_name) == never_served
    bad = _register(world, model_name, "constant", "scheduled__3")
    endpoint = _serve(model_name, bad)
    assert str(get_alias(registry_client(), model_name, PREVIOUS).version) == good
    with pytest.raises(AirflowFailException, match=rf"rolled the endpoint and the champion back to v{good}"):
        validate_endpoint(_ctx(), endpoint, _registered(model_name, bad, world, "constant"))
    assert _served() == good and _champion(model_name) == good


@pytest.mark.slow
def test_clearing_an_old_runs_interrupted_rollback_never_undoes_a_later_runs_promotion(world, model_name):
    """Run A decided to roll back its v2 and died before acting; run B then promoted and validated v3. Clearing run A's
    update_endpoint and validate_endpoint finished A's old rollback: v1 served again, over B's better v3."""
    from swan_airflow.steps.serving import update_endpoint, validate_endpoint

    good = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, good)
    _validated_before(model_name, good)
    bad = _register(world, model_name, "constant", "scheduled__A")
    _serve(model_name, bad)
    decided = _decided_rollback(model_name, bad, good)
    world["lake"].write_result(RUN_ID, "validation", decided)
    run_b = "scheduled__B"
    world["lake"].write_result(run_b, "train", world["lake"].read_result(RUN_ID, "train"))
    ctx_b = RunContext(dag_id="swan_anomaly_pipeline", run_id=run_b, dataset_id=DATASET, params=PARAMS)
    newer = _register(world, model_name, "good", run_b)
    assert validate_endpoint(ctx_b, _serve(model_name, newer), _registered(model_name, newer, world, "good"))["outcome"] == "passed"
    with pytest.raises(AirflowFailException, match="decided by an earlier try of this run"):
        validate_endpoint(_ctx(), update_endpoint(_ctx()), _registered(model_name, bad, world, "constant"))
    assert _champion(model_name) == newer and _served() == newer
    assert world["lake"].read_result(RUN_ID, "validation")["state"] == "done"


def test_update_endpoint_cleared_alone_fails_while_another_run_holds_the_promotion_section(monkeypatch):
    """Every other task of the section checked that its run holds it; update_endpoint did not, and a clear of it alone
    deployed the champion in the middle of another run's promotion, validation or rollback."""
    from types import SimpleNamespace

    from swan_airflow.steps.serving import update_endpoint

    monkeypatch.setenv("SWAN_MODEL_NAME", "promo_never_reached")
    states = {"scheduled__other": {"wait_for_promotion_turn": "success", "ensure_validated_endpoint": None}}
    ti = SimpleNamespace(
        get_task_states=lambda dag_id, task_ids: states,
        get_dagrun_state=lambda dag_id, run_id: "running",
        xcom_pull=lambda task_ids, dag_id, run_id, key="return_value": None,  # this run recorded no claim: it cannot hold it
    )
    ctx = RunContext(dag_id="swan_anomaly_pipeline", run_id=RUN_ID, dataset_id=DATASET, params=PARAMS, task={"ti": ti})
    with pytest.raises(AirflowFailException, match=r"run\(s\) scheduled__other are promoting, deploying or validating"):
        update_endpoint(ctx)


@pytest.mark.slow
def test_whatever_stopped_the_section_a_validated_version_is_left_champion_and_serving(world, model_name):
    """validate_endpoint acts on what it decides; a validation that timed out on every try (AirflowTaskTimeout is no
    Exception) or an update_endpoint that failed for good after promote_model left an unvalidated version serving or
    champion, and the section was released. ensure_validated_endpoint, the section's last task, puts the last validated
    version back."""
    from airflow.sdk.exceptions import AirflowSkipException

    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import ensure_validated_endpoint, update_endpoint, validate_endpoint
    from swan_anomaly.registry import promote

    good, newer, _ = _new_version_over_good(world, model_name, "good")  # promoted and served; its validation never finished
    restored = rf"v{newer} \(champion v{newer}, serving v{newer}\) never passed .*went back to v{good}"
    with pytest.raises(AirflowFailException, match=restored):
        ensure_validated_endpoint(_ctx())
    assert _served() == good and _champion(model_name) == good
    assert world["lake"].read_result(RUN_ID, "endpoint_restore")["restored"] == good
    # update_endpoint and validate_endpoint cleared without the sensor: they serve and validate the restored champion, which
    # must not end the run green as if its own model had been validated
    world["lake"].write_result(RUN_ID, "gate", {"challenger": newer, "promote": True, "champion_version": good})
    with pytest.raises(AirflowFailException, match=rf"this run promoted {model_name} v{newer}, but v{good} is the champion it serves"):
        validate_endpoint(_ctx(), update_endpoint(_ctx()), _registered(model_name, newer, world, "good"))
    assert ensure_validated_endpoint(_ctx()) == {"acted": False, "champion": good, "served": good}  # nothing left to do
    assert not world["lake"].result_path(RUN_ID, "endpoint_restore").exists()  # the summary shows no earlier pass's restore
    # the endpoint update failed for good after the alias moved: the endpoint still serves the validated version
    promote(registry_client(), model_name, newer)
    with pytest.raises(AirflowFailException, match=rf"champion v{newer}, serving v{good}.*went back to v{good}"):
        ensure_validated_endpoint(_ctx())
    assert _served() == good and _champion(model_name) == good
    # a run that never entered the section (its turn never came, or an earlier task failed) touches nothing
    from types import SimpleNamespace

    promote(registry_client(), model_name, newer)
    ti = SimpleNamespace(get_task_states=lambda dag_id, task_ids, run_ids: {RUN_ID: {"wait_for_promotion_turn": "failed"}})
    outside = RunContext(dag_id="swan_anomaly_pipeline", run_id=RUN_ID, dataset_id=DATASET, params=PARAMS, task={"ti": ti})
    with pytest.raises(AirflowSkipException, match="never entered the promotion section"):
        ensure_validated_endpoint(outside)
    assert _champion(model_name) == newer and _served() == good


@pytest.mark.slow
def test_a_first_version_that_never_finished_its_validation_is_withdrawn_by_the_section_s_last_task(world, model_name):
    from swan_airflow.steps.serving import ensure_validated_endpoint

    first = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, first)
    with pytest.raises(AirflowFailException, match="no version of .* ever passed, so endpoint .* was deleted"):
        ensure_validated_endpoint(_ctx())
    assert _served() is None and _champion(model_name) is None
    assert ensure_validated_endpoint(_ctx()) == {"acted": False, "champion": None, "served": None}


@pytest.mark.slow
def test_the_section_s_last_task_puts_back_a_validated_version_that_still_serves_when_no_alias_names_one(world, model_name):
    """previous_champion unset (an operator removed it, or the champion passed before the tag existed): the validated
    version the endpoint still serves is what goes back, instead of deleting the endpoint."""
    from swan_airflow.runtime import registry_client
    from swan_airflow.steps.serving import ensure_validated_endpoint
    from swan_anomaly.registry import PREVIOUS, promote

    good = _register(world, model_name, "good", "scheduled__1")
    _serve(model_name, good)
    _validated_before(model_name, good)
    newer = _register(world, model_name, "good", "scheduled__2")
    promote(registry_client(), model_name, newer)  # its endpoint update failed for good
    registry_client().delete_registered_model_alias(model_name, PREVIOUS)
    with pytest.raises(AirflowFailException, match=rf"went back to v{good}"):
        ensure_validated_endpoint(_ctx())
    assert _served() == good and _champion(model_name) == good
