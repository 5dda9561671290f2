"""The patch embedding as one matrix product (issue 17): the same model, the same scores and gradients, the same saved weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swan_anomaly.modeling import load_classifier, patch_embedding_as_matmul, resolve_base_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return resolve_base_model("vit-micro-offline", tmp_path_factory.mktemp("models"), seed=5)


def _pixels(n: int = 6, side: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_the_matmul_patch_embedding_scores_and_trains_like_the_convolution(model_dir):
    conv, matmul = load_classifier(model_dir), patch_embedding_as_matmul(load_classifier(model_dir))
    assert type(matmul.vit.embeddings.patch_embeddings.projection) is not torch.nn.Conv2d  # it was swapped
    x, labels = _pixels(), torch.tensor([0, 1, 0, 1, 1, 0])
    conv_out, matmul_out = conv(pixel_values=x, labels=labels), matmul(pixel_values=x, labels=labels)
    torch.testing.assert_close(matmul_out.logits, conv_out.logits, rtol=0, atol=1e-5)
    conv_out.loss.backward()
    matmul_out.loss.backward()
    conv_grad = conv.vit.embeddings.patch_embeddings.projection.weight.grad
    matmul_grad = matmul.vit.embeddings.patch_embeddings.projection.weight.grad
    assert conv_grad.abs().max() > 0
    torch.testing.assert_close(matmul_grad, conv_grad, rtol=0, atol=1e-5)


def test_the_swapped_model_saves_the_same_weights_under_the_same_names(model_dir, tmp_path):
    original = load_classifier(model_dir)
    swapped = patch_embedding_as_matmul(load_classifier(model_dir))
    assert patch_embedding_as_matmul(swapped) is swapped  # a second call changes nothing
    before, after = original.state_dict(), swapped.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    swapped.save_pretrained(tmp_path / "saved")
    reloaded = load_classifier(str(tmp_path / "saved"))
    assert type(reloaded.vit.embeddings.patch_embeddings.projection) is torch.nn.Conv2d  # a plain checkpoint
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=_pixels()).logits, original(pixel_values=_pixels()).logits, rtol=0, atol=0)


def test_the_swapped_model_pickles_and_keeps_its_mode(model_dir):
    """A class defined inside a function cannot be pickled: torch.save of the whole model failed with it."""
    import io
    import pickle

    model = load_classifier(model_dir).eval()
    patch_embedding_as_matmul(model)
    assert not model.vit.embeddings.patch_embeddings.projection.training  # an eval model stays in eval mode throughout
    buffer = io.BytesIO()
    torch.save(model, buffer)
    restored = pickle.loads(pickle.dumps(model))
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(restored(pixel_values=x).logits, model(pixel_values=x).logits, rtol=0, atol=0)


def test_a_convolution_that_is_not_a_patchify_is_refused(model_dir):
    model = load_classifier(model_dir)
    projection = model.vit.embeddings.patch_embeddings.projection
    model.vit.embeddings.patch_embeddings.projection = torch.nn.Conv2d(3, projection.out_channels, 8, stride=8, padding=1)
    with pytest.raises(ValueError, match="not a plain patchify convolution"):
        patch_embedding_as_matmul(model)


def test_the_kernel_probe_runs_and_reports_each_variant(tmp_path):
    """The GPU probe's own loop, at toy size on CPU: each variant's rate, ratio and score difference land in its JSON."""
    out = tmp_path / "probe.json"
    command = [sys.executable, str(ROOT / "bench" / "kernel_probe.py"), "--model", "offline", "--device", "cpu", "--steps", "1", "--warmup",
               "0", "--infer-batch", "4", "--train-batch", "4", "--only", "eager", "eager+patch_matmul", "--json", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"eager", "eager+patch_matmul"}
    for measured in variants.values():
        assert measured["images_per_s"] > 0
        assert measured["max_score_diff_vs_float32"] < 1e-5  # float32 on CPU: the same scores either way


def test_gelu_in_the_gemm_epilogue_keeps_the_parameters_names_and_on_the_cpu_the_scores(model_dir):
    """cuBLASLt's epilogue computes GELU's tanh approximation on CUDA; on the CPU the same call is the exact GELU."""
    from swan_anomaly.gemm_epilogue import LinearGelu
    from swan_anomaly.modeling import gelu_in_gemm_epilogue

    plain, fused = load_classifier(model_dir).eval(), load_classifier(model_dir).eval()
    fc1 = fused.vit.layers[0].mlp.fc1
    assert gelu_in_gemm_epilogue(fused) == 2 and gelu_in_gemm_epilogue(fused) == 0  # both MLPs, once
    mlp = fused.vit.layers[0].mlp
    assert type(mlp.fc1) is LinearGelu and mlp.fc1.weight is fc1.weight and type(mlp.activation_fn) is torch.nn.Identity
    assert list(fused.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fused(pixel_values=_pixels()).logits, plain(pixel_values=_pixels()).logits, rtol=0, atol=1e-6)
    other = load_classifier(model_dir)
    other.config.hidden_act = "relu"  # not the exact GELU: nothing to put in the epilogue
    assert gelu_in_gemm_epilogue(other) == 0 and type(other.vit.layers[0].mlp.fc1) is torch.nn.Linear
    no_bias = load_classifier(model_dir)
    no_bias.vit.layers[1].mlp.fc1.bias = None  # the epilogue's GEMM adds a bias: an MLP without one keeps its own GELU
    assert gelu_in_gemm_epilogue(no_bias) == 1 and type(no_bias.vit.layers[1].mlp.fc1) is torch.nn.Linear


def test_cpu_inference_keeps_the_separate_exact_gelu(model_dir):
    from swan_anomaly.modeling import prepare_for_inference

    model = prepare_for_inference(load_classifier(model_dir), "cpu")
    assert type(model.vit.layers[0].mlp.fc1) is torch.nn.Linear and type(model.vit.layers[0].mlp.activation_fn) is not torch.nn.Identity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLASLt's GELU epilogue runs on CUDA")
def test_on_cuda_the_fused_gemm_computes_the_mlp_s_linear_layer_and_gelu(model_dir):
    from swan_anomaly.gemm_epilogue import LinearGelu

    linear = torch.nn.Linear(64, 256).cuda().to(torch.bfloat16)
    fused = LinearGelu(64, 256, device="meta")
    fused.weight, fused.bias = linear.weight, linear.bias
    x = torch.randn(4, 17, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = torch.nn.functional.gelu(linear(x).float(), approximate="tanh")
        torch.testing.assert_close(fused(x).float(), expected, rtol=2e-2, atol=2e-2)
