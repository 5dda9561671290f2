"""The trigger form of swan_anomaly_pipeline: what Airflow 3.3's UI draws from the Params, and what a conf means.

The fast tests read the Params as the UI and the REST API get them, from the serialized DAG; the
slow one opens the real form in headless Chromium, with the machinery of
``scripts/screenshot_trigger_form.py``, fills it in and triggers a run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

from conftest import PIPELINE_DAG_ID, ROOT

DAG_ID = PIPELINE_DAG_ID
#: The label check's choices, by value, and the values the Param had before (a nullable boolean).
CHOICES = ("default", "on", "off")
LEGACY = (None, True, False)


@pytest.fixture(scope="module")
def serialized(dagbag):
    """The DAG as the API server holds it (serialized to JSON and back): what the form shows, what a conf is validated against."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dagbag.dags[DAG_ID]))))


@pytest.fixture(scope="module")
def form(serialized):
    """Each Param's spec as the REST API hands it to the UI (``GET /ui/dags/.../details``: value, schema, description)."""
    return {name: param.dump() for name, param in serialized.params.items()}


def drawn_required(spec: dict) -> bool:
    """Whether Airflow 3.3's trigger form marks a field required (a red * and an error when empty).

    Its rule, pinned to the installed UI by :func:`test_the_required_rule_is_the_installed_uis`: the
    schema has a ``type`` and that type does not admit ``"null"``.
    """
    kind = spec["schema"].get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def conf_accepted(serialized, conf: dict) -> dict:
    """The run's Params for ``conf``, validated as the API server does before it creates a run (400 on a ParamValidationError)."""
    return serialized.params.deep_merge(conf).validate()


def test_the_required_rule_is_the_installed_uis():
    import airflow

    bundle = "".join(p.read_text(errors="replace") for p in (Path(airflow.__file__).parent / "ui" / "dist" / "assets").glob("index-*.js"))
    rule = r"(\w+)=>!!\1\.schema\.type&&\(!Array\.isArray\(\1\.schema\.type\)\|\|!\1\.schema\.type\.includes\(`null`\)\)"
    assert re.search(rule, bundle), "Airflow's UI decides 'required' differently now: update drawn_required"


def test_videos_is_optional_in_the_form(form):
    assert not drawn_required(form["videos"])
    # and so is every Param whose default is empty; the ones with a value are drawn required
    empty = {name for name, spec in form.items() if spec["value"] in (None, [], "")}
    assert "videos" in empty and {name for name in empty if drawn_required(form[name])} == set()
    assert drawn_required(form["seed"]) and drawn_required(form["anomaly_ratio"])


@pytest.mark.parametrize("conf", [{}, {"videos": []}, {"videos": None}], ids=["omitted", "empty", "null"])
def test_a_run_without_videos_looks_in_the_landing_zone(serialized, monkeypatch, conf):
    """The form sends ``null`` for a Videos box that was typed in and cleared: a run like one that omits it."""
    from airflow.sdk.exceptions import AirflowSkipException

    import swan_airflow.runtime
    from swan_airflow.context import RunContext
    from swan_airflow.steps.data import find_videos

    params = conf_accepted(serialized, conf)
    looked = []
    monkeypatch.setattr(swan_airflow.runtime, "find_landed_videos", lambda *args: looked.append(args[1:]) or [])
    ctx = RunContext(dag_id=DAG_ID, run_id="manual__x", dataset_id="20261126", params=params, landing_date="2026-11-26")
    with pytest.raises(AirflowSkipException, match="no new videos"):
        find_videos(ctx)
    assert [str(d) for d in looked[0]] == ["2026-11-26", "2026-11-27"]


def test_explicit_videos_still_override_the_landing_zone(serialized, monkeypatch, tmp_path):
    import swan_airflow.runtime
    from swan_airflow.context import RunContext
    from swan_airflow.steps.data import find_videos

    missing = tmp_path / "cam.mp4"
    params = conf_accepted(serialized, {"videos": [str(missing)]})
    monkeypatch.setattr(swan_airflow.runtime, "find_landed_videos", lambda *args: pytest.fail("looked in the landing zone"))
    ctx = RunContext(dag_id=DAG_ID, run_id="manual__x", dataset_id="20261126", params=params, landing_date="2026-11-26")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=re.escape(str(missing))):
        find_videos(ctx)


def test_label_check_is_drawn_as_three_named_choices(form):
    spec = form["label_check"]
    schema = spec["schema"]
    # a select of the enum (a boolean type is drawn as an on/off switch), not required, on "default"
    assert "boolean" not in json.dumps(schema.get("type")) and schema["enum"] == list(CHOICES)
    assert not drawn_required(spec) and spec["value"] == "default"
    labels = [schema["values_display"][v] for v in CHOICES]
    assert len(set(labels)) == 3 and "SWAN_LABEL_CHECK" in labels[0] and "On" in labels[1] and "Off" in labels[2]


@pytest.mark.parametrize("value", [*CHOICES, *LEGACY])
def test_label_check_accepts_its_choices_and_the_values_it_had_before(serialized, value):
    assert conf_accepted(serialized, {"label_check": value})["label_check"] == value


def test_videos_must_be_absolute_paths(serialized):
    """A relative path made the run's partition id depend on each task's working directory: two workers of one run could
    derive two partitions (and two staging folders) from the same Param."""
    from airflow.exceptions import ParamValidationError

    assert conf_accepted(serialized, {"videos": ["/srv/extra/cam9.mp4"]})["videos"] == ["/srv/extra/cam9.mp4"]
    for relative in (["cam9.mp4"], ["extra/cam9.mp4"], ["/srv/a.mp4", "./b.mp4"], ["/"]):
        with pytest.raises(ParamValidationError, match="videos"):
            conf_accepted(serialized, {"videos": relative})


@pytest.mark.parametrize("value", ["maybe", "true", 1, 0, ""])
def test_label_check_refuses_anything_else_naming_the_param(serialized, value):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="label_check"):
        conf_accepted(serialized, {"label_check": value})


@pytest.mark.parametrize("env", [None, "true", "0"])
def test_label_check_means_the_same_in_its_new_and_old_values(monkeypatch, env):
    from swan_airflow.label_check import label_check_enabled

    if env is None:
        monkeypatch.delenv("SWAN_LABEL_CHECK", raising=False)
    else:
        monkeypatch.setenv("SWAN_LABEL_CHECK", env)
    deployment = env == "true"
    meaning = {"default": deployment, None: deployment, "on": True, True: True, "off": False, False: False}
    assert {value: label_check_enabled({"label_check": value}) for value in meaning} == meaning
    assert label_check_enabled({}) is deployment and label_check_enabled(None) is deployment


def test_every_value_the_param_accepts_has_a_meaning_and_others_fail_the_task(serialized):
    """The reader and the schema agree: what validation lets through, label_check_enabled understands."""
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.label_check import label_check_enabled

    accepted = serialized.params.get_param("label_check").schema["definitions"]["accepted"]["enum"]
    assert sorted(map(repr, accepted)) == sorted(map(repr, [*CHOICES, *LEGACY]))
    for value in accepted:
        assert label_check_enabled({"label_check": value}) in (True, False)
    for value in ("maybe", 1):  # 1 == True in Python: it must not pass for "on"
        with pytest.raises(
            AirflowFailException,
            match=r'label_check Param must be one of "default", "on", "off", null, true, false; got ' + re.escape(repr(value)),
        ):
            label_check_enabled({"label_check": value})


def test_off_skips_the_check_in_a_deployment_that_turns_it_on(monkeypatch, tmp_path):
    from swan_airflow.context import RunContext
    from swan_airflow.steps import data

    monkeypatch.setenv("SWAN_LABEL_CHECK", "true")
    ctx = RunContext(dag_id=DAG_ID, run_id="manual__x", dataset_id="20261126", params={"label_check": "off", "seed": 1})
    assert data.check_labels(ctx) == {"enabled": False}


@pytest.mark.parametrize(("param", "choices"), [("backend", ("local", "databricks")), ("gate_mode", ("enabled", "dry_run", "disabled"))])
def test_the_selects_offer_their_choices_and_accept_what_the_clear_button_sends(serialized, form, param, choices):
    """A select's clear button (x) sends ``null``: the run starts, with the deployment's default, instead of a 400."""
    spec = form[param]
    assert spec["schema"]["enum"] == list(choices) and set(spec["schema"]["values_display"]) == set(choices)
    assert spec["value"] == choices[0] and not drawn_required(spec)
    assert conf_accepted(serialized, {param: None})[param] is None
    for value in choices:
        assert conf_accepted(serialized, {param: value})[param] == value


@pytest.mark.parametrize(("value", "runs_on"), [(None, "local"), ("local", "local"), ("databricks", "databricks")])
def test_an_empty_backend_runs_the_jobs_on_the_deployments_default(dagbag, value, runs_on):
    """The DAG was parsed with ``SWAN_COMPUTE_BACKEND`` unset: its default is ``local``."""
    for task_id in ("run_etl", "run_augmentation", "run_training"):
        task = dagbag.dags[DAG_ID].get_task(task_id)
        assert task.render_template(task.backend, {"params": {"backend": value}}) == runs_on


def test_the_gate_mode_of_an_empty_param_enforces():
    from swan_anomaly.gate import GateMode, gate_mode

    assert [gate_mode(v) for v in (None, "enabled", "dry_run", "disabled")] == [
        GateMode.ENABLED,
        GateMode.ENABLED,
        GateMode.DRY_RUN,
        GateMode.DISABLED,
    ]
    with pytest.raises(ValueError, match="'sometimes'"):
        gate_mode("sometimes")


# --- the real form, in headless Chromium ------------------------------------------------------


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_trigger_form", ROOT / "scripts" / "screenshot_trigger_form.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Facts of one field of the open form, found by its title: whether it is marked required, its error, its widget.
JS_FIELD = """
((title) => {
  const dialog = [...document.querySelectorAll('[role=dialog]')].filter(d => d.getClientRects().length).pop();
  const root = [...dialog.querySelectorAll('[data-scope=field][data-part=root]')]
    .find(r => r.querySelector('[data-part=label]')?.firstChild?.textContent.trim() === title);
  if (!root) return null;
  return {
    required: !!root.querySelector('.chakra-field__requiredIndicator'),
    invalid: root.hasAttribute('data-invalid'),
    error: root.querySelector('[data-part=error-text]')?.innerText || null,
    switch: !!root.querySelector('[data-scope=switch]'),
    select: !!root.querySelector('[role=combobox]'),
    shown: root.querySelector('[role=combobox]')?.closest('[id^=element_]')?.innerText.trim() || null,
    sent: root.querySelector('input[type=hidden]')?.value ?? null,
  };
})
"""


def _press(cdp, element_js: str) -> None:
    """Mouse down and up at an element's centre, keeping the focus (a react-select menu stays open)."""
    x, y = cdp.js(
        f"(() => {{ const el = {element_js}; el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect(); "
        "return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        cdp.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def _wait_for_runs(shots, base: str, timeout: float = 60) -> list[dict]:
    """The DAG's runs, once there is one (the api-server, one worker on a busy machine, may answer slowly)."""
    deadline, runs = time.monotonic() + timeout, []
    while not runs and time.monotonic() < deadline:
        try:
            token = shots.http_json(f"{base}/auth/token", timeout=30)["access_token"]
            runs = shots.http_json(f"{base}/api/v2/dags/{DAG_ID}/dagRuns", token, timeout=30)["dag_runs"]
        except OSError:  # a timeout: ask again
            pass
        time.sleep(0.5)
    return runs


@pytest.mark.slow
def test_the_real_form_draws_videos_optional_three_label_check_choices_and_a_clearable_gate_mode():
    """Airflow's api-server and dag-processor on a throw-away home, the form in Chromium: what a user sees and sends."""
    shots = _screenshot_module()
    try:
        shots.find_chromium(None)
    except shots.StepError as exc:
        pytest.skip(str(exc))
    with shots.trigger_form(timeout=300) as (cdp, base):
        shots.open_section(cdp, "Data", "Landing date")
        field = lambda title: cdp.js(f"{JS_FIELD}({json.dumps(title)})")  # noqa: E731
        assert field("Seed")["required"] and field("Anomaly ratio")["required"]  # the check sees a required mark
        assert field("Videos")["required"] is False

        # Videos typed in and cleared: the form holds null, which is neither an error nor a blocked trigger
        cdp.js("document.getElementById('element_videos').focus()")
        cdp.call("Input.insertText", text="/tmp/x.mp4")
        cdp.js("document.getElementById('element_videos').select()")
        for kind in ("rawKeyDown", "keyUp"):
            cdp.call("Input.dispatchKeyEvent", type=kind, key="Backspace", code="Backspace", windowsVirtualKeyCode=8)
        cdp.js("document.getElementById('element_videos').blur()")
        time.sleep(0.5)
        videos = field("Videos")
        assert (videos["invalid"], videos["error"]) == (False, None)

        label = field("Label check")
        assert (label["switch"], label["select"], label["required"]) == (False, True, False)
        assert label["shown"] == "Default: as SWAN_LABEL_CHECK says" and label["sent"] == "default"
        _press(cdp, "document.querySelector('#element_label_check [role=combobox]')")
        listbox = "document.getElementById(document.querySelector('#element_label_check [role=combobox]').getAttribute('aria-controls'))"
        cdp.wait_js(f"!!{listbox}", "the Label check menu", timeout=10)
        options = cdp.js(f"[...{listbox}.querySelectorAll('[role=option]')].map(o => o.innerText.trim())")
        assert options == ["Default: as SWAN_LABEL_CHECK says", "On for this run", "Off for this run"]
        _press(cdp, f"[...{listbox}.querySelectorAll('[role=option]')].find(o => o.innerText.trim() === 'Off for this run')")
        cdp.wait_js(f"{JS_FIELD}('Label check').sent === 'off'", "the choice Off to be taken", timeout=10)

        # Gate mode cleared with the select's x: the form sends null, which the run takes as "enforce" (it was a 400)
        shots.open_section(cdp, "Promotion", "Gate mode")
        gate = field("Gate mode")
        assert (gate["select"], gate["required"], gate["sent"]) == (True, False, "enabled")
        _press(cdp, "document.querySelector(\"#element_gate_mode button[aria-label='Clear selected options']\")")
        cdp.wait_js(f"{JS_FIELD}('Gate mode').sent === ''", "the Gate mode select to be cleared", timeout=10)
        gate = field("Gate mode")
        assert (gate["invalid"], gate["error"]) == (False, None)

        # Trigger: the API server validates the conf against the Params (a 400 would keep the dialog open) and creates the run
        trigger = "[...document.querySelectorAll('[role=dialog] button')].find(b => b.innerText.trim() === 'Trigger')"
        assert cdp.js(f"!{trigger}.disabled")
        shots.click(cdp, trigger, "the dialog's Trigger button")
        runs = _wait_for_runs(shots, base)
        assert len(runs) == 1, cdp.js("document.body.innerText.slice(0, 2000)")
        conf = runs[0]["conf"]
        assert (conf["videos"], conf["label_check"], conf["gate_mode"]) == (None, "off", None)
