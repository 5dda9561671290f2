"""The served model in bfloat16 on CPU (SWAN_SERVING_CPU_PRECISION): opt-in, near the float32 scores, handed to Model Serving."""

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
    with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
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


def test_the_int8_probe_of_the_inference_benchmark_runs_and_says_how_far_it_moves_scores(tmp_path):
    """The figures in docs/BENCHMARKS.md come from this probe: it quantizes the Linear layers and compares scores with float32."""
    import json
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "int8.json"
    command = [sys.executable, str(root / "bench" / "infer_throughput.py"), "--model", "offline", "--device", "cpu", "--steps", "1"]
    command += ["--warmup", "1", "--batch-size", "4", "--cpu-precision", "int8-dynamic", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["cpu_precision"] == "int8-dynamic" and result["pipeline"]["images_per_s"] > 0
    assert 0 < result["pipeline"]["max_score_difference"] < 1  # int8 moves scores, and by less than the whole range
    assert "max |difference|" in done.stdout
