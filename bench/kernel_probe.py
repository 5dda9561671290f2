"""bench/kernel_probe.py: what the remaining GPU gap costs, one candidate fix at a time (issue 17).

The profile in docs/BENCHMARKS.md names three costs beyond ViT-B/16's GEMMs: GELU as its own
memory-bound kernel, the patch embedding as a cuDNN convolution, and bf16 GEMMs at their ceiling.
This probe measures the first two, each against the compiled path as the pipeline ran it before them, in the same
process (``modeling.compile_model``: Inductor around an eager SDPA island), on the same random
weights and batches, already on the device:

inference (``--infer-batch``, bfloat16 weights as ``prepare_for_inference`` gives them):

* ``compiled``: the compiled path with the patch embedding as cuDNN's convolution, as the
  pipeline ran before ``modeling.patch_embedding_as_matmul``; the baseline of the ratios;
* ``compiled+patch_matmul``: the patch embedding as one GEMM (the same multiply-adds), as
  ``place_for_training`` gives it on CUDA (and ``prepare_for_inference``, before the GELU epilogue);
* ``compiled+patch_matmul+gelu_epilogue``: also the MLP's first linear layer and its GELU as one
  cuBLASLt call with the GELU epilogue (``modeling.gelu_in_gemm_epilogue``, left eager like
  attention), as ``prepare_for_inference`` now gives it on CUDA. cuBLASLt's epilogue is GELU's
  tanh approximation, so the scores move: the probe prints how far;
* ``compiled+patch_matmul+triton_gemm``: Inductor's max-autotune with Triton GEMM templates only,
  which fuse the exact GELU into the GEMM's epilogue (long to compile; last, so a time limit cuts
  it alone);
* ``eager``, ``eager+patch_matmul`` and ``eager+patch_matmul+gelu_epilogue``: eager forwards, for
  scale; the last is the served pyfunc's forward on CUDA;

training (``--train-batch``): ``compiled`` against ``compiled+patch_matmul``, as
``train_classifier`` runs its steps (``bench/_harness.PipelineTraining``). They run before
``triton_gemm``, the slowest to compile, which comes last.

FP8 (``*+float8``, when ``torchao`` is importable; requirements.txt pins it): training as the
pipeline's ``SWAN_TRAINING_PRECISION=float8`` does it (``swan_anomaly.trainer.use_float8_training``:
``torchao.float8.convert_to_float8_training``, tensorwise scaling, every linear layer whose sides
are multiples of 16, so not the 2-class head), inference with ``torchao.quantization``'s
``Float8DynamicActivationFloat8WeightConfig``; both on top of the patch GEMM and compiled. The
lent GPU's image has no torchao: carry its wheel (``bench/README.md``).

Each variant prints images/s, its ratio to ``compiled`` and the largest ``anomaly_score``
difference from a float32 forward of the same weights on one batch; the JSON is rewritten after
every variant, so a run cut short keeps what it measured.

Example:
    $ python3 bench/kernel_probe.py --model vit-b16 --device cuda --json out/kernel_probe.json   # GPU, about 4 minutes
    $ python3 bench/kernel_probe.py --model offline --device cpu --steps 2 --infer-batch 8 --only eager eager+patch_matmul
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402

from swan_anomaly.metrics import anomaly_scores  # noqa: E402
from swan_anomaly.modeling import (  # noqa: E402
    compile_model,
    forward_logits,
    gelu_in_gemm_epilogue,
    load_classifier,
    patch_embedding_as_matmul,
    prepare_for_inference,
)

INFER = (
    "compiled",
    "compiled+patch_matmul",
    "compiled+patch_matmul+gelu_epilogue",
    "eager",
    "eager+patch_matmul",
    "eager+patch_matmul+gelu_epilogue",
)
TRAIN = ("train:compiled", "train:compiled+patch_matmul")
#: FP8 GEMMs through torchao, where it is installed (issue 17: the bf16 GEMMs are at the chip's ceiling).
FLOAT8 = ("compiled+patch_matmul+float8", "train:compiled+patch_matmul+float8")
#: Last: the slowest to compile, so a time limit cuts it alone.
SLOW = ("compiled+patch_matmul+triton_gemm",)


def with_gelu(model, variant: str):
    """``model`` with each MLP's GELU in its GEMM's epilogue when ``variant`` names ``gelu_epilogue``, else as a kernel of its own.

    ``prepare_for_inference`` fuses them on CUDA (``modeling.gelu_in_gemm_epilogue``); the variants without
    ``gelu_epilogue`` put the plain ``Linear`` and exact GELU back (the same parameters), as the pipeline ran before.
    """
    from transformers.activations import GELUActivation

    from swan_anomaly.gemm_epilogue import LinearGelu

    if "gelu_epilogue" in variant:
        gelu_in_gemm_epilogue(model)
        return model
    for mlp in [m for m in model.modules() if isinstance(getattr(m, "fc1", None), LinearGelu)]:
        old = mlp.fc1
        plain = torch.nn.Linear(old.in_features, old.out_features, device="meta")
        plain.weight, plain.bias = old.weight, old.bias
        mlp.fc1, mlp.activation_fn = plain.train(old.training), GELUActivation().train(old.training)
    return model


def with_patch_embedding(model, variant: str):
    """``model`` with its patch embedding as one GEMM when ``variant`` names ``patch_matmul``, else as cuDNN's convolution.

    ``prepare_for_inference`` and ``place_for_training`` make it a GEMM on CUDA; the variants without
    ``patch_matmul`` put a plain ``Conv2d`` back (the same parameters), as the pipeline ran before.
    """
    if "patch_matmul" in variant:
        return patch_embedding_as_matmul(model)
    patches = model.vit.embeddings.patch_embeddings
    old = patches.projection
    conv = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, device="meta")
    conv.weight, conv.bias = old.weight, old.bias
    patches.projection = conv
    torch.backends.cudnn.benchmark = True  # as the pipeline had it for its convolution
    return model


def to_float8(model, *, training: bool, device: torch.device | None = None):
    """``model``'s linear layers as torchao's FP8 GEMMs (those of ``swan_anomaly.trainer.float8_linears``: not the 2-class head).

    Training: the pipeline's ``SWAN_TRAINING_PRECISION=float8`` (``trainer.use_float8_training``: dynamic tensorwise
    scaling); inference: FP8 weights and activations (torchao's ``Float8DynamicActivationFloat8WeightConfig``).
    """
    from swan_anomaly.trainer import float8_linears, use_float8_training

    if training:  # on the resolved device: FP8 GEMMs there, or a clear error
        use_float8_training(model, device)
        return model
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(), filter_fn=float8_linears)
    return model


def build(model_dir: str, variant: str, device: str):
    model = with_gelu(with_patch_embedding(prepare_for_inference(load_classifier(model_dir), device), variant), variant)
    if "float8" in variant:
        to_float8(model, training=False)
    return compile_model(model) if variant.startswith("compiled") else model


def infer_variant(model_dir: str, variant: str, x: torch.Tensor, reference: torch.Tensor, args, device) -> dict:
    import contextlib

    patch = contextlib.nullcontext()
    if "triton_gemm" in variant:
        import torch._inductor.config as inductor_config

        patch = inductor_config.patch(max_autotune=True, max_autotune_gemm_backends="TRITON")
    with patch:
        model = build(model_dir, variant, args.device)
        started = time.perf_counter()
        scores = anomaly_scores(forward_logits(model, x[: args.infer_batch]))  # compiles, when compiled
        first_s = time.perf_counter() - started

        def step(j: int) -> None:
            i = (j % _harness.DATA_BATCHES) * args.infer_batch
            anomaly_scores(forward_logits(model, x[i : i + args.infer_batch]))

        timed = _harness.time_loop(step, steps=args.steps, warmup=args.warmup, device=device)
    timed["images_per_s"] = round(args.infer_batch * args.steps / timed["seconds"], 1)
    timed["first_call_s"] = round(first_s, 1)
    timed["max_score_diff_vs_float32"] = float(abs(scores - reference).max())
    return timed


def train_variant(model_dir: str, variant: str, x: torch.Tensor, y: torch.Tensor, args, device) -> dict:
    run = _harness.PipelineTraining(model_dir, x, y, device=args.device, total_steps=args.warmup + args.steps + 1, compile=False)
    raw = with_patch_embedding(run.model, variant)
    if "float8" in variant:
        to_float8(raw, training=True, device=device)
    run.model = compile_model(raw)
    raw.train()
    started = time.perf_counter()
    run.step(0)  # compiles
    first_s = time.perf_counter() - started
    timed = _harness.time_loop(run.step, steps=args.steps, warmup=args.warmup, device=device)
    timed["images_per_s"] = round(args.train_batch * args.steps / timed["seconds"], 1)
    timed["first_call_s"] = round(first_s, 1)
    return timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(_harness.MODELS), default="vit-b16")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--infer-batch", type=int, default=1024)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--only", nargs="+", choices=INFER + TRAIN + FLOAT8 + SLOW, help="run these variants (default: all, in the order above)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device, cfg = _harness.resolve_device(args.device), _harness.vit_config(args.model)
    wanted = args.only or list(INFER + TRAIN + (FLOAT8 if importlib.util.find_spec("torchao") else ()) + SLOW)
    result = {"benchmark": "kernel_probe", "model": args.model, "device": str(device), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "infer_batch": args.infer_batch, "train_batch": args.train_batch, "steps": args.steps, "warmup": args.warmup,
              "variants": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _harness.save_random_model(args.model, Path(tmp) / "model")
        x, _ = _harness.random_batches(cfg, args.infer_batch, device)
        float32 = load_classifier(model_dir).eval().to(device)
        with torch.inference_mode():
            reference = anomaly_scores(float32(pixel_values=x[: args.infer_batch]).logits.float().cpu().numpy())
        del float32
        for variant in wanted:
            try:
                if variant.startswith("train:"):
                    xt, yt = _harness.random_batches(cfg, args.train_batch, device)
                    measured = train_variant(model_dir, variant, xt, yt, args, device)
                else:
                    measured = infer_variant(model_dir, variant, x, reference, args, device)
            except Exception as exc:  # noqa: BLE001 - reported; the other variants go on
                measured = {"error": f"{type(exc).__name__}: {exc}"[:800]}
            result["variants"][variant] = measured
            torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            for kind, base in (("infer", "compiled"), ("train", "train:compiled")):
                if variant.startswith("train:") == (kind == "train") and "images_per_s" in measured:
                    ref = result["variants"].get(base, {}).get("images_per_s")
                    if ref:
                        measured[f"ratio_to_{base}"] = round(measured["images_per_s"] / ref, 3)
            print(f"{variant:<38} {measured}", flush=True)
            _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
