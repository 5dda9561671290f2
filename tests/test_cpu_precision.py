"""The served model in bfloat16 or int8 on CPU (SWAN_SERVING_CPU_PRECISION): opt-in, near the float32 scores, handed to Model Serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swan_anomaly.config import ConfigError, Settings
from swan_anomaly.metrics import anomaly_scores
from swan_anomaly.modeling import forward_logits, load_classifier, prepare_for_inference, resolve_base_model
from swan_anomaly.serving.deploy import ServingConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return resolve_base_model("vit-micro-offline", tmp_path_factory.mktemp("models"), seed=3)


def test_float32_stays_the_default_and_bfloat16_casts_the_cpu_model(model_dir):
    assert Settings.from_env({}).serving_cpu_precision == "float32"
    exact = prepare_for_inference(load_classifier(model_dir), "cpu")
    fast = prepare_for_inference(load_classifier(model_dir), "cpu", cpu_precision="bfloat16")
    assert {p.dtype for p in exact.parameters()} == {torch.float32}
    assert {p.dtype for p in fast.parameters()} == {torch.bfloat16}
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (16, 3, 32, 32)).astype(np.float32))
    exact_scores, fast_scores = anomaly_scores(forward_logits(exact, x)), anomaly_scores(forward_logits(fast, x))
    difference = np.abs(exact_scores - fast_scores)
    assert 0 < difference.max() < 2e-2  # bfloat16 moves scores in about the third digit, no more
    assert fast_scores.dtype == exact_scores.dtype and fast_scores.shape == (16,)  # the same output whatever the precision


def test_an_unknown_precision_is_refused_naming_the_choices(model_dir):
    with pytest.raises(ConfigError, match="SWAN_SERVING_CPU_PRECISION"):
        Settings.from_env({"SWAN_SERVING_CPU_PRECISION": "int4"})
    with pytest.raises(ValueError, match="float32, bfloat16, int8; got 'float16'"):
        prepare_for_inference(load_classifier(model_dir), "cpu", cpu_precision="float16")


def test_model_serving_gets_the_precision_as_an_environment_variable_of_the_served_entity():
    """On Databricks the served pyfunc reads it from the entity's environment_vars; the default sends none."""
    assert ServingConfig.from_env({}).environment_vars() is None
    assert ServingConfig.from_env({"SWAN_SERVING_CPU_PRECISION": "bfloat16"}).environment_vars() == {
        "SWAN_SERVING_CPU_PRECISION": "bfloat16"
    }


def test_the_served_pyfunc_loads_in_the_precision_its_environment_names(model_dir, tmp_path, monkeypatch):
    import shutil
    import types

    from swan_anomaly.modeling import preprocess_spec
    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE, SwanAnomalyModel

    served = tmp_path / "model_dir"
    shutil.copytree(model_dir, served)
    (served / PREPROCESS_FILE).write_text(preprocess_spec(model_dir).to_json())
    context = types.SimpleNamespace(artifacts={"model_dir": str(served)})
    if torch.cuda.is_available():
        pytest.skip("the served model takes the GPU (bfloat16) when there is one")
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", precision)
        model = SwanAnomalyModel()
        model.load_context(context)
        assert next(model.model.parameters()).dtype == dtype


def _served_dir(model_dir: str, target) -> str:
    import shutil

    from swan_anomaly.modeling import preprocess_spec
    from swan_anomaly.novelty import NoveltyBank, default_layers
    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE

    shutil.copytree(model_dir, target)
    (target / PREPROCESS_FILE).write_text(preprocess_spec(model_dir).to_json())
    from swan_anomaly.modeling import patch_features_of

    model = load_classifier(model_dir).eval()
    layers = default_layers(model.config.num_hidden_layers)
    pixels = torch.randint(0, 256, (4, 3, model.config.image_size, model.config.image_size), dtype=torch.uint8)
    patches = patch_features_of(model, pixels, preprocess_spec(model_dir), layers)
    NoveltyBank(patches.reshape(-1, patches.shape[-1]), scale=1.0, layers=layers).save(target)
    return str(target)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the served model takes the GPU (bfloat16) when there is one")
def test_int8_serving_quantizes_the_linear_layers_compiles_at_load_and_scores_near_float32(model_dir, tmp_path, monkeypatch):
    import types

    import pandas as pd
    from torch._dynamo.utils import counters

    from swan_anomaly.images import encode_png
    from swan_anomaly.serving.pyfunc import SwanAnomalyModel

    context = types.SimpleNamespace(artifacts={"model_dir": _served_dir(model_dir, tmp_path / "served")})
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "float32")
    exact = SwanAnomalyModel()
    exact.load_context(context)
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "int8")
    torch._dynamo.reset()
    counters.clear()
    fast = SwanAnomalyModel()
    fast.load_context(context)
    compiled_at_load = counters["stats"]["unique_graphs"]
    assert compiled_at_load >= 2  # a batch of any size, and single images
    # every linear layer but the 2-class head holds int8 weights (torchao's quantized tensor), the head float32
    layers = {n: type(m.weight).__name__ for n, m in fast.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(layers) == 2 * 6 + 1 and layers.pop("_orig_mod.classifier") == "Parameter"
    assert all(kind != "Parameter" for kind in layers.values()), layers
    rng = np.random.default_rng(5)
    images = [encode_png(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(5)]
    batch = fast.predict(None, pd.DataFrame({"image": images}))
    alone = fast.predict(None, pd.DataFrame({"image": images[:1]}))
    assert counters["stats"]["unique_graphs"] == compiled_at_load  # no request compiles, whatever its size
    reference = exact.predict(None, pd.DataFrame({"image": images}))
    difference = np.abs(batch.anomaly_score.to_numpy() - reference.anomaly_score.to_numpy())
    assert 0 < difference.max() < 2e-2  # int8 moves scores a little; they stay the model's
    assert np.abs(batch.novelty_score.to_numpy() - reference.novelty_score.to_numpy()).max() < 0.1 * reference.novelty_score.abs().max()
    # activations are quantized per token: an image scores the same alone as in a batch
    assert abs(alone.anomaly_score[0] - batch.anomaly_score[0]) < 1e-6


@pytest.mark.skipif(torch.cuda.is_available(), reason="the served model takes the GPU (bfloat16) when there is one")
def test_int8_serving_without_a_cpp_compiler_fails_at_load_saying_what_it_needs(model_dir, tmp_path, monkeypatch):
    import types

    import torch._inductor.config as inductor

    from swan_anomaly.serving.pyfunc import SwanAnomalyModel

    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "int8")
    other = resolve_base_model("vit-micro-offline", tmp_path, seed=9)
    context = types.SimpleNamespace(artifacts={"model_dir": _served_dir(other, tmp_path / "served")})
    torch._dynamo.reset()
    before = (inductor.fx_graph_cache, inductor.cpp.cxx)
    # no compiler, and no graph compiled before that could hide it (torch's own config patching, undone on exit)
    with inductor.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        needs = r"InvalidCxxCompiler.*needs a working C\+\+ compiler \(g\+\+, with Python's headers\) on the serving machine"
        with pytest.raises(ConfigError, match=needs):
            SwanAnomalyModel().load_context(context)
    torch._dynamo.reset()
    assert (inductor.fx_graph_cache, inductor.cpp.cxx) == before


def test_a_compiled_model_failing_to_warm_up_for_another_reason_raises_that_error_not_the_compiler_advice(monkeypatch):
    from swan_anomaly import modeling

    def fail(*_args, **_kwargs):
        raise MemoryError("out of memory while compiling")

    monkeypatch.setattr(modeling, "forward_outputs", fail)
    spec = modeling.PreprocessSpec(size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(MemoryError, match="out of memory"):
        modeling.warm_up(torch.compile(torch.nn.Linear(2, 2)), spec)


def test_int8_serving_without_torchao_is_refused_naming_the_setting(model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # as if torchao were not installed
    with pytest.raises(ConfigError, match="SWAN_SERVING_CPU_PRECISION=int8.*needs torchao"):
        prepare_for_inference(load_classifier(model_dir), "cpu", cpu_precision="int8")


def test_served_models_require_torchao_at_the_version_installed_and_only_where_it_is(monkeypatch):
    from importlib import metadata

    from swan_anomaly import tracking

    assert f"torchao=={metadata.version('torchao').split('+')[0]}" in tracking.pinned_requirements()  # requirements.txt installs it
    real = metadata.version

    def version(name: str) -> str:
        if name == "torchao":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(tracking.metadata, "version", version)
    assert not [r for r in tracking.pinned_requirements() if r.startswith("torchao")]


def test_the_inference_benchmark_runs_int8_serving_and_says_how_far_it_moves_scores(tmp_path):
    """The figures in docs/BENCHMARKS.md come from this run: the served int8 path against float32 eager, scores compared."""
    import json
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "int8.json"
    command = [sys.executable, str(root / "bench" / "infer_throughput.py"), "--model", "offline", "--device", "cpu", "--steps", "1"]
    command += ["--warmup", "1", "--batch-size", "4", "--cpu-precision", "int8", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["cpu_precision"] == "int8" and result["pipeline"]["images_per_s"] > 0
    assert 0 < result["pipeline"]["max_score_difference"] < 1  # int8 moves scores, and by less than the whole range
    assert "max |difference|" in done.stdout


def _log_served(model_dir: str):
    """Log the micro model as the served pyfunc in the active MLflow run (one blank PNG as its input example)."""
    from swan_anomaly.images import encode_png
    from swan_anomaly.modeling import preprocess_spec
    from swan_anomaly.tracking import log_served_model

    example = [encode_png(np.zeros((40, 40, 3), dtype=np.uint8))]
    spec = preprocess_spec(model_dir)
    return log_served_model(load_classifier(model_dir), spec, threshold=0.5, threshold_method="max_f1", example=example)


def test_logging_a_model_checks_its_input_example_in_float32_whatever_the_endpoint_serves_in(model_dir, monkeypatch):
    """SWAN_SERVING_CPU_PRECISION is the endpoint's; set for it, it reaches the training job too, where MLflow loads the
    pyfunc to check the input example: that load must not quantize and compile an int8 copy (a minute at ViT-B/16)."""
    import mlflow

    from swan_anomaly import modeling
    from swan_anomaly.tracking import ensure_experiment

    quantized = []

    def refuse(model):
        quantized.append(model)
        raise AssertionError("the pyfunc was loaded in int8 while the model was logged")

    monkeypatch.setattr(modeling, "quantize_int8", refuse)
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "int8")
    with mlflow.start_run(experiment_id=ensure_experiment(Settings.from_env()), run_name="log-in-float32"):
        info = _log_served(model_dir)
    assert info.model_uri and not quantized
    assert Settings.from_env().serving_cpu_precision == "int8"  # the block put the endpoint's setting back


def test_int8_is_asked_only_of_versions_that_can_load_in_it(model_dir, monkeypatch, caplog):
    """A version logged before int8 serving carries code that refuses the value: a rollback to it must not send it
    (its endpoint would not start). Its training run has no precisions tag; a version logged now names int8."""
    import logging

    import mlflow

    from swan_airflow.runtime import registry_client
    from swan_airflow.serving_target import ServingTarget, restore_endpoint, serving_config
    from swan_anomaly.tracking import CPU_PRECISIONS_TAG, ensure_experiment

    monkeypatch.setenv("SWAN_MODEL_NAME", "int8_capable")
    client = registry_client()
    experiment = ensure_experiment(Settings.from_env())
    with mlflow.start_run(experiment_id=experiment, run_name="int8-capable") as run:
        info = _log_served(model_dir)
    assert client.get_run(run.info.run_id).data.tags[CPU_PRECISIONS_TAG] == "float32,bfloat16,int8"  # torchao is installed here
    older = client.create_run(experiment).info.run_id  # what a run of an earlier version of this code left: no tag
    client.set_terminated(older)
    client.create_registered_model("int8_capable")
    new = client.create_model_version("int8_capable", info.model_uri, run.info.run_id).version
    old = client.create_model_version("int8_capable", info.model_uri, older).version
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "int8")
    databricks = ServingTarget("databricks", "https://adb.example", "swan-anomaly", None)
    assert serving_config(client, new, databricks).environment_vars() == {"SWAN_SERVING_CPU_PRECISION": "int8"}
    with caplog.at_level(logging.WARNING, logger="swan_airflow.serving_target"):
        assert serving_config(client, old, databricks).environment_vars() is None  # float32: nothing sent
    assert f"int8_capable v{old} cannot serve in int8" in caplog.text and "no precisions" in caplog.text
    # a rollback deploys what serving_config says (the wiring: restore_endpoint, as update_endpoint, asks it)
    deployed = []
    monkeypatch.setattr("swan_anomaly.serving.deploy.deploy_version", lambda _w, _e, _n, v, config: deployed.append((v, config)))
    monkeypatch.setattr("swan_anomaly.registry.move_champion_back", lambda *_args: None)
    monkeypatch.setattr(ServingTarget, "workspace", lambda self: None)
    restore_endpoint(databricks, old)
    restore_endpoint(databricks, new)
    assert [(v, c.cpu_precision) for v, c in deployed] == [(old, "float32"), (new, "int8")]
    # the local model server runs its own code and environment: what it serves in is the setting
    local = ServingTarget("local", "http://127.0.0.1:5055", "swan-anomaly", None)
    assert serving_config(client, old, local).cpu_precision == "int8"
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "bfloat16")  # every version since bfloat16 existed takes it; older ones ignore it
    assert serving_config(client, old, databricks).environment_vars() == {"SWAN_SERVING_CPU_PRECISION": "bfloat16"}


def test_a_registry_that_does_not_answer_fails_the_deployment_instead_of_serving_float32(monkeypatch):
    """Only a version or run that is gone counts as one that cannot serve int8: an outage must raise (the task retries),
    not deploy float32 for good under a warning that blames the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from swan_airflow.serving_target import ServingTarget, serving_config

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("SWAN_SERVING_CPU_PRECISION", "int8")
    down = MlflowClient("http://127.0.0.1:9", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(MlflowException):
        serving_config(down, "3", ServingTarget("databricks", "https://adb.example", "swan-anomaly", None))
