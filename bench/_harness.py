"""Shared parts of the throughput benchmarks: arguments, models, random data, timing, FLOPs, report.

The scripts put the repository's ``include/`` folder on ``sys.path`` before importing this, so
``swan_anomaly`` comes from the working tree; only torch, transformers, numpy, pandas,
scikit-learn and OpenCV are needed (no MLflow, Airflow or Spark).

Example:
    >>> forward_gflop(vit_config("vit-b16"))  # doctest: +SKIP
    35.13
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from transformers import ViTConfig

from swan_anomaly import trainer
from swan_anomaly.modeling import ID2LABEL, LABEL2ID, PRESETS, resolve_device

transformers.utils.logging.disable_progress_bar()  # no save/load bars between the result lines

#: ``google/vit-base-patch16-224`` shapes (random weights here; nothing is downloaded).
VIT_B16 = dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
MODELS = {"vit-b16": VIT_B16, "offline": PRESETS["vit-tiny-offline"]}
#: How many distinct batches of random data the loops cycle through.
DATA_BATCHES = 2


def build_parser(description: str, *, batch_size: int) -> argparse.ArgumentParser:
    """The options both benchmarks share; ``batch_size`` is the pipeline's default for that path."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="offline",
        help="vit-b16: ViT-B/16 at 224px (random weights); offline: the vit-tiny-offline preset",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps per loop first; with --compile, step 1 compiles and the baseline's training "
        "loop recompiles once on step 2 (Hugging Face sets config.problem_type on its first loss)",
    )
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model in both loops: the pipeline through swan_anomaly.modeling.compile_model "
        "(attention as an eager SDPA island), the baseline with plain torch.compile",
    )
    parser.add_argument(
        "--cpu-precision",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="inference on CPU: the served model's SWAN_SERVING_CPU_PRECISION for the pipeline loop (the baseline stays float32 "
        "eager); int8 is compiled before the warmup steps, as the served pyfunc compiles it when it loads, and that time reported",
    )
    parser.add_argument(
        "--training-precision",
        choices=["auto", "float8", "float8-emulated"],
        default="auto",
        help="training: the pipeline loop's SWAN_TRAINING_PRECISION (float8: torchao's FP8 GEMMs, on a GPU of compute capability "
        "8.9+; float8-emulated: their emulation, on a CPU too); the baseline stays bfloat16 autocast",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject counts below 1 with a usage error."""
    for name in ("batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")


def vit_config(model: str) -> ViTConfig:
    """The ``ViTConfig`` of ``model`` (a key of :data:`MODELS`) with the pipeline's 2-class head."""
    return ViTConfig(**MODELS[model], num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)


def forward_gflop(cfg: ViTConfig) -> float:
    """GFLOP of one image's forward pass (2 FLOP per multiply-add; norms, GELU, softmax left out).

    With ``P`` patches of ``p x p`` pixels, ``T = P + 1`` tokens, width ``D``, MLP width ``I``, ``L`` layers::

        MACs = P * 3 * p^2 * D                   patch embedding
             + L * (T * (4 D^2 + 2 D I) + 2 T^2 D)  q, k, v, output projections, MLP; scores and mixing
             + D * num_labels                     head (on the CLS token)

    ViT-B/16 at 224 px gives 35.13 GFLOP, the usual 35.1 (17.6 GMACs); a training step counts 3x.
    """
    p, d, i = cfg.patch_size, cfg.hidden_size, cfg.intermediate_size
    patches = (cfg.image_size // p) ** 2
    tokens = patches + 1
    per_layer = tokens * (4 * d * d + 2 * d * i) + 2 * tokens * tokens * d
    macs = patches * 3 * p * p * d + cfg.num_hidden_layers * per_layer + d * cfg.num_labels
    return 2 * macs / 1e9


def save_random_model(model: str, target: Path, *, seed: int = 0) -> str:
    """Save a randomly initialised classifier of ``model`` under ``target``; returns the directory.

    Both loops load this directory, so they start from the same weights: the pipeline through
    ``swan_anomaly.modeling.load_classifier``, the baseline through plain ``from_pretrained``.
    """
    from transformers import ViTForImageClassification

    torch.manual_seed(seed)
    ViTForImageClassification(vit_config(model)).save_pretrained(target)
    return str(target)


def random_batches(cfg: ViTConfig, batch_size: int, device, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``DATA_BATCHES * batch_size`` random images ``[N, 3, S, S]`` (float32, N(0, 1)) and labels ``[N]``.

    Half the labels are 0, half 1, shuffled; both tensors on ``device``.
    """
    gen = torch.Generator().manual_seed(seed)
    n = DATA_BATCHES * batch_size
    x = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=gen)
    y = (torch.arange(n) % 2)[torch.randperm(n, generator=gen)]
    return x.to(device), y.to(device)


class PipelineTraining:
    """The pipeline's training steps on random batches already on the device, as ``train_classifier`` runs them.

    ``swan_anomaly.modeling.load_classifier`` -> ``trainer.place_for_training`` (with ``precision``) -> ``make_optimizer``
    (for ``total_steps``) -> :meth:`step` = ``trainer.train_step`` on the ``j``-th of
    :data:`DATA_BATCHES` batches gathered from a shuffled order of ``x``/``y`` (seeded as
    ``TrainConfig.seed``); ``compile`` goes through ``modeling.compile_model``.
    """

    def __init__(
        self,
        model_dir: str,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        device: str,
        total_steps: int,
        compile: bool = False,
        precision: str = "auto",
    ) -> None:
        from swan_anomaly.modeling import compile_model, load_classifier

        model = load_classifier(model_dir)
        self.device, self.autocast_dtype = trainer.place_for_training(model, device, precision)
        self.x, self.y, self.batch_size = x, y, len(x) // DATA_BATCHES
        self.optimizer, self.scheduler = trainer.make_optimizer(
            model, trainer.TrainConfig(batch_size=self.batch_size, device=device), total_steps=total_steps
        )
        self.weights = trainer.class_weights(y).to(self.device)
        self.order = torch.randperm(len(x), generator=torch.Generator().manual_seed(trainer.TrainConfig().seed)).to(x.device)
        self.model = compile_model(model) if compile else model  # the pipeline compiles with attention as an eager island
        model.train()

    def step(self, j: int) -> None:
        i = (j % DATA_BATCHES) * self.batch_size
        idx = self.order[i : i + self.batch_size]
        trainer.train_step(self.model, self.optimizer, self.scheduler, self.x[idx], self.y[idx], self.weights,
                           autocast_dtype=self.autocast_dtype)  # fmt: skip


def time_loop(step: Callable[[int], object], *, steps: int, warmup: int, device) -> dict:
    """Run ``step(j)`` ``warmup`` times untimed, then ``steps`` times timed; seconds and peak GPU memory.

    On CUDA the timed span is measured with CUDA events and ends when the GPU has finished.
    """
    for j in range(warmup):
        step(j)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for j in range(warmup, warmup + steps):
            step(j)
        end.record()
        end.synchronize()
        return {"seconds": start.elapsed_time(end) / 1000, "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    started = time.perf_counter()
    for j in range(warmup, warmup + steps):
        step(j)
    return {"seconds": time.perf_counter() - started}


def run_loops(runs: dict[str, Callable[[], dict]], device) -> dict[str, dict]:
    """Run each timed loop in turn, freeing the previous loop's memory before the next."""
    import gc

    loops = {}
    for name, run in runs.items():
        loops[name] = run()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return loops


def setup(args: argparse.Namespace):
    """Resolve the device and the config; returns ``(device, ViTConfig)``."""
    return resolve_device(args.device), vit_config(args.model)


def report(kind: str, args: argparse.Namespace, device, cfg: ViTConfig, loops: dict[str, dict], *, flop_factor: int) -> dict:
    """Print images/s, TFLOP/s and the pipeline/baseline ratio; write ``args.json`` when given.

    Args:
        kind: ``"train"`` or ``"infer"``.
        loops: ``{"pipeline": time_loop(...), "baseline": time_loop(...)}``.
        flop_factor: FLOP of one step per forward FLOP (3 for training, 1 for inference).
    """
    loops = {name: loops[name] for name in ("pipeline", "baseline")}  # report order, whatever order they ran in
    gflop = forward_gflop(cfg)
    threads = torch.get_num_threads()
    images = args.batch_size * args.steps
    rates = {name: images / loop["seconds"] for name, loop in loops.items()}
    for name, loop in loops.items():
        loop["images_per_s"] = round(rates[name], 3)
        loop["tflop_per_s"] = round(rates[name] * gflop * flop_factor / 1e3, 4)
        if device.type == "cpu":
            loop["images_per_s_per_core"] = round(rates[name] / threads, 3)
    result = {
        "benchmark": kind,
        "model": args.model,
        "model_shapes": MODELS[args.model],
        "forward_gflop_per_image": round(gflop, 3),
        "step_flop_factor": flop_factor,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile": args.compile,
        "cpu_precision": getattr(args, "cpu_precision", "float32"),
        "training_precision": getattr(args, "training_precision", "auto"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        **loops,
        "ratio_pipeline_to_baseline": round(rates["pipeline"] / rates["baseline"], 3),
    }
    where = result["device_name"] if device.type == "cuda" else f"cpu, {threads} threads"
    print(
        f"{kind} {args.model} ({gflop:.2f} GFLOP/img forward) on {where}; batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warmup, compile {'on' if args.compile else 'off'}"
    )
    for name, loop in loops.items():
        extra = f"  {loop['images_per_s_per_core']:>9.3f} img/s/core" if "images_per_s_per_core" in loop else ""
        mem = f"  peak {loop['peak_gpu_mem_gib']:.1f} GiB" if "peak_gpu_mem_gib" in loop else ""
        print(f"  {name:<9} {loop['images_per_s']:>10.2f} img/s  {loop['tflop_per_s']:>8.3f} TFLOP/s{extra}{mem}")
    print(f"  ratio pipeline/baseline {result['ratio_pipeline_to_baseline']:.3f}")
    if "max_score_difference" in loops["pipeline"]:
        print(
            "  anomaly_score, pipeline vs a float32 forward of the same batch: "
            f"max |difference| {loops['pipeline']['max_score_difference']:.2e}"
        )
    if "warm_up_compile_seconds" in loops["pipeline"]:
        seconds = loops["pipeline"]["warm_up_compile_seconds"]
        print(f"  compiling the pipeline's model at load (modeling.warm_up, batches of 2 and 1): {seconds:.1f} s")
    write_json(args.json, result)
    return result


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` (parents created); nothing when ``path`` is None."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")


def run_benchmark(kind: str, description: str, argv: list[str] | None, *, batch_size: int, loops, flop_factor: int) -> dict:
    """Parse the shared options, build random weights and data, time both loops, report.

    ``loops(model_dir, x, y, args, device)`` returns ``{"baseline": fn, "pipeline": fn}``, each
    ``fn()`` returning :func:`time_loop`'s result.
    """
    import tempfile

    parser = build_parser(description, batch_size=batch_size)
    args = parser.parse_args(argv)
    check_args(parser, args)
    device, cfg = setup(args)
    x, y = random_batches(cfg, args.batch_size, device)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_random_model(args.model, Path(tmp) / args.model)
        results = run_loops(loops(model_dir, x, y, args, device), device)
    return report(kind, args, device, cfg, results, flop_factor=flop_factor)
