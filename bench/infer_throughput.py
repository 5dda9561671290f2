"""bench/infer_throughput.py: scoring images/s of the served model's forward against a plain Hugging Face loop.

Parameters: --model {offline,vit-b16} (default offline), --batch-size (default 64, the pyfunc's),
--steps (default 20), --warmup (default 3), --device {auto,cuda,cpu}, --compile,
--cpu-precision {float32,bfloat16,int8} (the pipeline's on CPU, as SWAN_SERVING_CPU_PRECISION; the
baseline stays float32 eager, so the ratio is against the float32 eager path; int8 is compiled by
``prepare_for_inference`` and warmed up as the pyfunc does at load, that time reported), --json PATH.

pipeline: what the served pyfunc does per batch, minus JPEG decoding and resizing:
``swan_anomaly.modeling.load_classifier`` -> ``prepare_for_inference`` (bfloat16 weights on
CUDA, float32 on CPU) -> ``forward_logits`` (inference mode, logits to host) ->
``swan_anomaly.metrics.anomaly_scores`` (softmax, abnormal column).
baseline: ``ViTForImageClassification.from_pretrained(attn_implementation="sdpa")`` in eval mode,
float32 weights under bfloat16 autocast on CUDA, inference mode, softmax on the device, scores to host.
Both start from the same random weights and see the same random float32 batches, already on the device.

Example:
    $ python3 bench/infer_throughput.py --model offline --steps 5
    $ python3 bench/infer_throughput.py --model vit-b16 --device cuda --batch-size 1024 --compile --json out/infer.json
    $ python3 bench/infer_throughput.py --model vit-b16 --device cpu --batch-size 8 --steps 5 --cpu-precision bfloat16
    $ python3 bench/infer_throughput.py --model vit-b16 --device cpu --batch-size 8 --steps 5 --cpu-precision int8
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402

from swan_anomaly.metrics import anomaly_scores  # noqa: E402
from swan_anomaly.modeling import (  # noqa: E402
    PreprocessSpec,
    compile_model,
    forward_logits,
    is_compiled,
    load_classifier,
    prepare_for_inference,
    warm_up,
)

#: ``swan_anomaly.modeling.predict_scores``' default batch size.
PYFUNC_BATCH = 64


def pipeline_loop(model_dir: str, x: torch.Tensor, args, device) -> dict:
    """Time ``forward_logits`` + ``anomaly_scores`` on the model as the pyfunc prepares it.

    With ``--cpu-precision bfloat16`` or ``int8`` on CPU it also reports the largest difference of its scores
    from a float32 forward of the same weights on the first batch (``max_score_difference``).
    """
    model = prepare_for_inference(load_classifier(model_dir), args.device, cpu_precision=args.cpu_precision)
    compiled = is_compiled(model)  # int8 on CPU comes compiled
    forward = compile_model(model) if args.compile and not compiled else model  # the pipeline compiles with attention as an eager island
    seconds_to_compile = None
    if compiled:  # as the served pyfunc does when it loads (without the novelty bank's hidden states): timed apart from the steps
        size = x.shape[-1]
        seconds_to_compile = warm_up(model, PreprocessSpec(size=size, mean=(0.5,) * 3, std=(0.5,) * 3))

    def step(j: int) -> None:
        i = (j % _harness.DATA_BATCHES) * args.batch_size
        anomaly_scores(forward_logits(forward, x[i : i + args.batch_size]))

    timed = _harness.time_loop(step, steps=args.steps, warmup=args.warmup, device=device)
    timed["compiled"] = compiled or args.compile  # int8 on CPU is compiled whatever --compile says
    if seconds_to_compile is not None:
        timed["warm_up_compile_seconds"] = round(seconds_to_compile, 1)
    if device.type == "cpu" and args.cpu_precision != "float32":
        reference = prepare_for_inference(load_classifier(model_dir), "cpu")
        first = x[: args.batch_size]
        fast, exact = anomaly_scores(forward_logits(forward, first)), anomaly_scores(forward_logits(reference, first))
        timed["max_score_difference"] = float(abs(fast - exact).max())
    return timed


def baseline_loop(model_dir: str, x: torch.Tensor, args, device) -> dict:
    """Time a plain Hugging Face scoring loop on the same weights and data."""
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(model_dir, attn_implementation="sdpa").to(device).eval()
    forward = torch.compile(model) if args.compile else model
    on_cuda = device.type == "cuda"

    def step(j: int) -> None:
        i = (j % _harness.DATA_BATCHES) * args.batch_size
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext():
            logits = forward(pixel_values=x[i : i + args.batch_size]).logits
        logits.float().softmax(dim=-1)[:, 0].cpu()

    return _harness.time_loop(step, steps=args.steps, warmup=args.warmup, device=device)


def main(argv: list[str] | None = None) -> dict:
    return _harness.run_benchmark(
        "infer",
        __doc__,
        argv,
        batch_size=PYFUNC_BATCH,
        flop_factor=1,
        loops=lambda model_dir, x, _y, args, device: {
            "baseline": lambda: baseline_loop(model_dir, x, args, device),
            "pipeline": lambda: pipeline_loop(model_dir, x, args, device),
        },
    )


if __name__ == "__main__":
    main()
