"""bench/latency_b1.py: batch-1 scoring latency of the served model's forward (issue 17: <= 2 ms for ViT-B/16 on one GPU).

One call = one preprocessed image on the host (pinned on CUDA) copied to the device, the forward
pass, the two logits back on the host: what the served pyfunc pays per single-image request,
minus JPEG decoding and resizing. Every call waits for its result, and each call's wall time is
recorded. Loops, on the same random weights and the same image:

* ``eager``: ``swan_anomaly.modeling.forward_logits`` on ``prepare_for_inference``'s model (bfloat16
  weights on CUDA, float32 on CPU): the pipeline's path today; the baseline of the ratios;
* ``cuda_graph`` (CUDA only): the same model's forward captured once in a CUDA graph
  (``torch.cuda.CUDAGraph``) and replayed, the image copied into the graph's static input: no
  per-kernel launch cost from Python;
* ``compiled`` (CUDA only, ``--compile``): ``torch.compile(mode="reduce-overhead")``, Inductor's
  kernels replayed as CUDA graphs.

Prints p50, p99 and mean latency per loop in milliseconds and each loop's p50 against eager's.
``--model offline --device cpu --calls 20`` runs in seconds on a laptop (a smoke test, not a figure).

Example:
    $ python3 bench/latency_b1.py --model vit-b16 --device cuda --compile --json out/latency_b1.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402

from swan_anomaly.modeling import forward_logits, load_classifier, prepare_for_inference  # noqa: E402

#: The goal of issue 17 for ViT-B/16 at batch 1 on one H100/H200.
GOAL_MS = 2.0


def measure(call, x_host: torch.Tensor, *, calls: int, warmup: int) -> dict:
    """Wall time of each of ``calls`` calls of ``call(x_host)`` (each returns host logits), after ``warmup`` calls."""
    for _ in range(warmup):
        call(x_host)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call(x_host)
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return {
        "calls": calls,
        "p50_ms": round(times[len(times) // 2], 3),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 3),
        "mean_ms": round(statistics.fmean(times), 3),
        "min_ms": round(times[0], 3),
    }


def graph_call(model, device, dtype):
    """A call that replays the model's forward captured in a CUDA graph (static input and output buffers)."""
    static_x = torch.zeros(1, 3, model.config.image_size, model.config.image_size, device=device, dtype=dtype)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # warm up on a side stream before capture, as PyTorch's docs ask
            model(pixel_values=static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_logits = model(pixel_values=static_x).logits

    def call(x_host: torch.Tensor):
        static_x.copy_(x_host, non_blocking=True)
        graph.replay()
        return static_logits.float().cpu()

    return call


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(_harness.MODELS), default="vit-b16")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also torch.compile(mode='reduce-overhead') (CUDA)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    )
    cfg = _harness.vit_config(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _harness.save_random_model(args.model, Path(tmp) / "model")
        model = prepare_for_inference(load_classifier(model_dir), device.type)
    dtype = next(model.parameters()).dtype
    x_host = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        x_host = x_host.to(dtype).pin_memory()
    loops: dict[str, dict] = {}

    def eager(x):
        return forward_logits(model, x)

    loops["eager"] = measure(eager, x_host, calls=args.calls, warmup=args.warmup)
    print(f"eager       {loops['eager']}", flush=True)
    if device.type == "cuda":
        try:
            loops["cuda_graph"] = measure(graph_call(model, device, dtype), x_host, calls=args.calls, warmup=args.warmup)
            print(f"cuda_graph  {loops['cuda_graph']}", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported, the other loops go on
            loops["cuda_graph"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"cuda_graph  failed: {loops['cuda_graph']['error']}", flush=True)
        if args.compile:
            try:
                compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)

                def run_compiled(x):
                    with torch.no_grad():
                        return compiled(pixel_values=x.to(device, non_blocking=True)).logits.float().cpu()

                loops["compiled"] = measure(run_compiled, x_host, calls=args.calls, warmup=args.warmup)
                print(f"compiled    {loops['compiled']}", flush=True)
            except Exception as exc:  # noqa: BLE001
                loops["compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                print(f"compiled    failed: {loops['compiled']['error']}", flush=True)
    base = loops["eager"]["p50_ms"]
    for name, loop in loops.items():
        if "p50_ms" in loop:
            loop["p50_speedup_vs_eager"] = round(base / loop["p50_ms"], 2)
            verdict = "meets" if loop["p50_ms"] <= GOAL_MS else "misses"
            speed = f"{loop['p50_speedup_vs_eager']:.2f}x eager"
            print(f"{name:<11} p50 {loop['p50_ms']:.3f} ms  p99 {loop['p99_ms']:.3f} ms  {speed}  ({verdict} the {GOAL_MS} ms goal)")
    result = {
        "benchmark": "latency_b1",
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "dtype": str(dtype),
        "torch": torch.__version__,
        "loops": loops,
    }
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
