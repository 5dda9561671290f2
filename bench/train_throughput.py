"""bench/train_throughput.py: training images/s of the pipeline's step against a plain Hugging Face loop.

Parameters: --model {offline,vit-b16} (default offline), --batch-size (default 32, the pipeline's),
--steps (default 20), --warmup (default 3), --device {auto,cuda,cpu}, --compile,
--training-precision {auto,float8,float8-emulated} (the pipeline loop's SWAN_TRAINING_PRECISION), --json PATH.

pipeline: ``swan_anomaly.modeling.load_classifier`` -> ``trainer.place_for_training`` ->
``trainer.make_optimizer`` -> ``trainer.train_step`` on batches gathered from a shuffled
order, as ``train_classifier`` runs them (bfloat16 autocast, fused AdamW, TF32 on CUDA; with
``--training-precision float8`` also torchao's FP8 GEMMs, ``trainer.use_float8_training``).
baseline: ``ViTForImageClassification.from_pretrained(attn_implementation="sdpa")``, the loss
from ``labels=``, ``torch.optim.AdamW`` (fused on CUDA), bfloat16 autocast on CUDA.
Both start from the same random weights and see the same random data, already on the device.

Example:
    $ python3 bench/train_throughput.py --model offline --steps 5
    $ python3 bench/train_throughput.py --model vit-b16 --device cuda --batch-size 256 --compile --json out/train.json
    $ python3 bench/train_throughput.py --model vit-b16 --device cuda --batch-size 256 --compile --training-precision float8
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402

from swan_anomaly.trainer import TrainConfig  # noqa: E402

DEFAULTS = TrainConfig()


def pipeline_loop(model_dir: str, x: torch.Tensor, y: torch.Tensor, args) -> dict:
    """Time ``swan_anomaly.trainer.train_step`` with the pipeline's model, optimizer, scheduler and batching."""
    loop = _harness.PipelineTraining(
        model_dir, x, y, device=args.device, total_steps=args.warmup + args.steps, compile=args.compile, precision=args.training_precision
    )
    return _harness.time_loop(loop.step, steps=args.steps, warmup=args.warmup, device=loop.device)


def baseline_loop(model_dir: str, x: torch.Tensor, y: torch.Tensor, args, device) -> dict:
    """Time a plain Hugging Face training loop on the same weights and data."""
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(model_dir, attn_implementation="sdpa").to(device)
    on_cuda = device.type == "cuda"
    fused = True if on_cuda else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=DEFAULTS.learning_rate, weight_decay=DEFAULTS.weight_decay, fused=fused)
    step_model = torch.compile(model) if args.compile else model
    model.train()

    def step(j: int) -> None:
        i = (j % _harness.DATA_BATCHES) * args.batch_size
        with torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext():
            loss = step_model(pixel_values=x[i : i + args.batch_size], labels=y[i : i + args.batch_size]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _harness.time_loop(step, steps=args.steps, warmup=args.warmup, device=device)


def main(argv: list[str] | None = None) -> dict:
    return _harness.run_benchmark(
        "train",
        __doc__,
        argv,
        batch_size=DEFAULTS.batch_size,
        flop_factor=3,
        loops=lambda model_dir, x, y, args, device: {
            "baseline": lambda: baseline_loop(model_dir, x, y, args, device),
            "pipeline": lambda: pipeline_loop(model_dir, x, y, args),
        },
    )


if __name__ == "__main__":
    main()
