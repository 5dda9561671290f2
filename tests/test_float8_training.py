"""FP8 training (issue 17): torchao's FP8 GEMMs in the training job.

Emulated here on the CPU: the operands rounded as an FP8 GEMM rounds them, the products in float32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from swan_anomaly import ConfigError
from swan_anomaly.modeling import PreprocessSpec, load_classifier, resolve_base_model
from swan_anomaly.trainer import TrainConfig, evaluate, place_for_training, train_classifier, use_float8_training, without_float8

ROOT = Path(__file__).resolve().parents[1]
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value: tensorwise scaling maps each tensor's amax there


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return resolve_base_model("vit-micro-offline", tmp_path_factory.mktemp("models"), seed=5)


def _e4m3(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded as an FP8 GEMM input: scaled so its largest magnitude is e4m3's, cast to e4m3, scaled back."""
    scale = E4M3_MAX / t.abs().max().clamp(min=1e-12)
    return (t * scale).to(torch.float8_e4m3fn).to(torch.float32) / scale


def test_float8_makes_every_projection_and_mlp_layer_an_fp8_gemm_but_not_the_two_class_head(model_dir):
    from torchao.float8.float8_linear import Float8Linear

    model = load_classifier(model_dir)
    assert use_float8_training(model, "cpu", emulate=True) == 12  # 2 layers x (query, key, value, attention output, MLP in, MLP out)
    fp8 = [name for name, m in model.named_modules() if isinstance(m, Float8Linear)]
    assert len(fp8) == 12 and not any(name.startswith("classifier") for name in fp8)
    assert type(model.classifier) is torch.nn.Linear  # 2 outputs: not a multiple of 16, as FP8 GEMMs need
    from swan_anomaly.gemm_epilogue import LinearGelu
    from swan_anomaly.trainer import float8_linears

    assert not float8_linears(LinearGelu(64, 128))  # FP8's plain Linear would drop the GELU it computes


def test_an_fp8_layer_multiplies_e4m3_rounded_inputs_and_weights(model_dir):
    """The GEMM's operands are rounded to e4m3 with one dynamic scale per tensor; the product is taken in float32."""
    model = load_classifier(model_dir)
    layer = model.vit.layers[0].mlp.fc1  # 32 -> 64
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(8, 17, 32, generator=torch.Generator().manual_seed(3)) * 3
    plain = torch.nn.functional.linear(x, weight, bias)
    use_float8_training(model, "cpu", emulate=True)
    with torch.no_grad():
        got = model.vit.layers[0].mlp.fc1(x)
    expected = torch.nn.functional.linear(_e4m3(x), _e4m3(weight), bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the rounding is real: e4m3 keeps 3 mantissa bits


def test_training_in_float8_trains_and_gives_back_a_plain_model_that_saves_a_plain_checkpoint(model_dir, tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 200, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    spec = PreprocessSpec(32, (0.5,) * 3, (0.25,) * 3)
    y = (torch.arange(40) % 2 == 0).long()
    x[y == 0, :, 8:16, 8:16] = 255  # a learnable "anomaly"
    cfg = dict(epochs=3, patience=5, batch_size=12, learning_rate=1e-3, device="cpu")
    start = load_classifier(model_dir).state_dict()
    results = {}
    for precision in ("auto", "float8-emulated"):
        trained, history, best_epoch = train_classifier(
            load_classifier(model_dir), (x[:24], y[:24]), (x[24:], y[24:]), spec, TrainConfig(precision=precision, **cfg)
        )
        linears = [m for m in trained.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is torch.nn.Linear for m in linears), "the trained model must come back with plain layers"
        assert list(trained.state_dict()) == list(start)
        val_loss, val_logits = evaluate(trained, x[24:], y[24:], spec, 12)  # in the training's validation batches
        # early stopping judged each epoch as it will be served: the best epoch's validation loss is the returned model's
        assert history[best_epoch - 1].val_loss == pytest.approx(val_loss, rel=1e-6, abs=1e-7)
        results[precision] = (trained, val_logits, [h.train_loss for h in history])
    fp8_model, fp8_logits, fp8_losses = results["float8-emulated"]
    assert all(np.isfinite(fp8_losses)) and np.isfinite(fp8_logits).all()
    changed = [k for k, v in fp8_model.state_dict().items() if not torch.equal(v, start[k])]
    assert "vit.layers.0.mlp.fc1.weight" in changed and "classifier.weight" in changed  # it trained
    # the FP8 GEMMs took part: the same seed, data and steps end elsewhere than in float32, though not far
    assert 1e-4 < np.abs(fp8_logits - results["auto"][1]).max() < 1.0

    fp8_model.save_pretrained(tmp_path / "saved")
    reloaded = load_classifier(str(tmp_path / "saved"))
    np.testing.assert_array_equal(evaluate(reloaded, x[24:], y[24:], spec, 16)[1], fp8_logits)  # what serves is what was scored


def test_without_float8_leaves_a_model_without_fp8_layers_alone(model_dir):
    model = load_classifier(model_dir)
    layers = list(model.modules())
    assert without_float8(model) is model
    assert list(model.modules()) == layers


@pytest.mark.parametrize(("capability", "name"), [((7, 5), "Tesla T4"), ((8, 0), "NVIDIA A100"), ((8, 6), "NVIDIA A10")])
def test_float8_is_refused_at_once_on_a_gpu_without_fp8_gemms(model_dir, monkeypatch, capability, name):
    """A T4 (the GPU cluster spec's node), an A100 or an A10 has no FP8 GEMMs: say so before training."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    with pytest.raises(ConfigError, match=rf"compute capability 8\.9 or later .*{name} has {capability[0]}\.{capability[1]}"):
        use_float8_training(load_classifier(model_dir), torch.device("cuda"))


def test_float8_is_refused_off_a_gpu_and_emulated_only_when_asked(model_dir):
    with pytest.raises(ConfigError, match="this job runs on cpu.*'float8-emulated' runs torchao's emulation"):
        place_for_training(load_classifier(model_dir), "cpu", "float8")
    model = load_classifier(model_dir)
    place_for_training(model, "cpu", "float8-emulated")
    assert type(model.vit.layers[0].mlp.fc1).__name__ == "Float8Linear"


@pytest.mark.parametrize("batch", [7, 16])
def test_fp8_gemms_on_a_gpu_take_a_batch_whose_tokens_are_not_a_multiple_of_16(monkeypatch, batch):
    """The weight gradient's inner dimension is batch x tokens (197 for ViT-B/16), which torch._scaled_mm needs in 16s.

    Shapes only, on the meta device with the GPU path (no emulation): torch's own shape checks of
    the FP8 GEMM run there. A last batch of 7 failed each epoch before the inner dimension was padded.
    """
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    layer = torch.nn.Sequential(torch.nn.Linear(64, 128, device="meta"))
    assert use_float8_training(layer, torch.device("cuda")) == 1
    x = torch.randn(batch, 197, 64, device="meta", requires_grad=True)
    layer(x).sum().backward()
    assert layer[0].weight.grad.shape == (128, 64) and x.grad.shape == x.shape


def test_an_unknown_precision_is_refused(model_dir):
    with pytest.raises(ConfigError, match="precision must be one of"):
        place_for_training(load_classifier(model_dir), "cpu", "fp8")


def test_the_training_job_refuses_a_precision_it_cannot_run_before_it_reads_any_data(tmp_path, monkeypatch):
    """A configuration error a retry cannot fix is found before the lake is read (an empty lake here would be a LakeError)."""
    from swan_anomaly.config import Settings
    from swan_anomaly.training import run_training

    monkeypatch.setenv("SWAN_HOME", str(tmp_path))
    job = dict(lake_root=tmp_path / "lake", dataset_id="20260101", run_id="r", settings=Settings.from_env())
    with pytest.raises(ConfigError, match="precision must be one of"):
        run_training(config=TrainConfig(precision="fp16"), **job)
    with pytest.raises(ConfigError, match="this job runs on cpu"):
        run_training(config=TrainConfig(precision="float8", device="cpu"), **job)
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as on a machine where torchao does not import
    with pytest.raises(ConfigError, match=r"needs torchao's float8 training .*torchao==0\.18\.0.*import of torchao.float8 halted"):
        run_training(config=TrainConfig(precision="float8-emulated", device="cpu"), **job)


def test_the_training_job_takes_its_precision_from_the_command_line_or_the_setting(monkeypatch, tmp_path):
    from jobs import train

    seen = []
    monkeypatch.setattr(train, "run_training", lambda **kwargs: seen.append(kwargs["config"].precision))
    monkeypatch.setattr(train, "run_entrypoint", lambda job, args, work: work())
    base = ["--lake-root", str(tmp_path), "--dataset-id", "20260101", "--run-id", "r"]
    monkeypatch.setenv("SWAN_TRAINING_PRECISION", "float8-emulated")
    train.main(base)
    train.main([*base, "--precision", "auto"])
    assert seen == ["float8-emulated", "auto"]


def test_the_deployment_setting_reaches_the_training_job(tmp_path):
    """SWAN_TRAINING_PRECISION is passed to the job as --precision: a Databricks run does not see the Airflow worker's environment."""
    script = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(json.dumps(list(bag.dags['swan_anomaly_pipeline'].get_task('run_training').job_args)))\n"
    )
    env = {**os.environ, "SWAN_TRAINING_PRECISION": "float8", "SWAN_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=240)
    args = json.loads(out.stdout.strip().splitlines()[-1])
    assert args[args.index("--precision") + 1] == "float8"


def test_loading_a_model_logs_nothing_of_torchao_s_optional_kernels():
    """transformers imports torchao wherever it is installed: every job and task log said "Failed to load ..._C_mxfp8...so"."""
    code = "import swan_anomaly\nfrom transformers import ViTForImageClassification\nimport torchao.float8\nprint('imported')\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "include"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=240)
    assert out.stdout.strip() == "imported"
    assert "Failed to load" not in out.stderr and "register_constant" not in out.stderr, out.stderr[-2000:]


def test_a_training_that_diverges_fails_for_good_with_its_epoch_and_precision(model_dir):
    """NaN logits failed in sklearn's roc_auc_score with a plain ValueError, which Airflow retries: the same seed diverges again."""
    from swan_anomaly import JobError

    x = torch.randint(0, 200, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = (torch.arange(24) % 2 == 0).long()
    model = load_classifier(model_dir)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))  # as weights gone to NaN in the first step would leave them
    cfg = TrainConfig(epochs=2, batch_size=12, learning_rate=1e-3, device="cpu", precision="float8-emulated")
    with pytest.raises(JobError, match=r"training diverged in epoch 1: train loss nan, 12 of 12 validation images .*'float8-emulated'"):
        train_classifier(model, (x[:12], y[:12]), (x[12:], y[12:]), PreprocessSpec(32, (0.5,) * 3, (0.25,) * 3), cfg)
