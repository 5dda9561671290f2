"""bench/compile_probe.py: does ViT-B/16 get faster under torch.compile when attention stays eager SDPA?

The first probe (bench/attention_probe.py) found compiled graphs slower than eager because
attention was lowered to float32 batched matmuls. This one times, on the same random bf16
ViT-B/16 (inference batch 1024, training batch 256 under bf16 autocast with fused AdamW):

* eager (the pipeline's inference path; training compiles, see below);
* ``torch.compile`` of the whole model under ``torch.no_grad`` (not ``inference_mode``);
* ``torch.compile`` with attention as an eager island: Hugging Face's SDPA attention function
  wrapped in ``torch.compiler.disable`` and registered through ``transformers.AttentionInterface``,
  so Inductor fuses norms, GELU, residuals and biases while attention keeps the fused kernel.

and prints the five GPU kernels that take the most time in one step of each inference variant
(``torch.profiler``), which shows whether attention ran as a fused kernel or as matmuls.

Parameters: --json PATH, --steps (15), --warmup (3), --device (cuda; cpu runs the `offline`
preset for a smoke test of the code paths).

Example:
    $ python3 bench/compile_probe.py --json out/compile_probe.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402
from transformers import ViTForImageClassification  # noqa: E402

from swan_anomaly.modeling import ATTENTION_ISLAND as ISLAND  # noqa: E402
from swan_anomaly.modeling import register_attention_island  # noqa: E402

register_attention_island()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(results: dict, name: str, step, batch: int, device: torch.device, *, steps: int, warmup: int) -> None:
    """Record ms per step and images/s of ``step`` under ``name`` (a failure is reported, not raised)."""
    try:
        started = time.time()
        for _ in range(warmup):
            step()
        sync(device)
        warm_s = time.time() - started
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        ms = (time.perf_counter() - begin) * 1000 / steps
        results[name] = {"ms_per_step": round(ms, 2), "images_per_s": round(batch / ms * 1000, 1), "warm_s": round(warm_s, 1)}
        print(name, results[name], flush=True)
    except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
        print(name, "FAILED", type(exc).__name__, str(exc)[:400], flush=True)


def top_kernels(results: dict, name: str, step, device: torch.device, n: int = 5) -> None:
    """The ``n`` device kernels with the most total time in one profiled step."""
    if device.type != "cuda":
        return
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            sync(device)
        rows = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:n]
        results[name + "_kernels"] = [{"kernel": e.key[:120], "ms": round(e.device_time_total / 1000, 2), "calls": e.count} for e in rows]
        for r in results[name + "_kernels"]:
            print(f"  {r['ms']:>8.2f} ms  x{r['calls']:<4} {r['kernel']}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(name, "profile FAILED", type(exc).__name__, str(exc)[:300], flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--mode",
        action="append",
        default=None,
        help="torch.compile mode(s) for the attention-island inference variant (repeatable; default: default)",
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the whole-model compile variant")
    parser.add_argument("--skip-train", action="store_true", help="skip the training variants")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here (use --device cpu for a smoke test)")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    cfg = _harness.vit_config("vit-b16" if cuda else "offline")
    size = cfg.image_size
    infer_batch, train_batch = (1024, 256) if cuda else (32, 16)
    dtype = torch.bfloat16 if cuda else torch.float32
    kw = dict(steps=args.steps, warmup=args.warmup)
    results: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    print(results, flush=True)

    x = torch.randn(infer_batch, 3, size, size, device=device, dtype=dtype)
    model = ViTForImageClassification(cfg).to(device).eval().to(dtype)
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        eager = lambda: model(pixel_values=x).logits  # noqa: E731
        timed(results, "infer_eager", eager, infer_batch, device, **kw)
        top_kernels(results, "infer_eager", eager, device)
        if not args.skip_full:
            full = torch.compile(model)
            compiled_full = lambda: full(pixel_values=x).logits  # noqa: E731
            timed(results, "infer_compile_full_nograd", compiled_full, infer_batch, device, **kw)
            top_kernels(results, "infer_compile_full_nograd", compiled_full, device)
            full = None
        for mode in args.mode or ["default"]:
            torch._dynamo.reset()
            name = "infer_compile_attn_island" + ("" if mode == "default" else "_" + mode.replace("-", "_"))
            island_model = ViTForImageClassification(cfg).to(device).eval().to(dtype)
            island_model.load_state_dict(model.state_dict())
            island_model.config._attn_implementation = ISLAND
            island = torch.compile(island_model, mode=mode)
            compiled_island = lambda: island(pixel_values=x).logits  # noqa: E731
            timed(results, name, compiled_island, infer_batch, device, **kw)
            top_kernels(results, name, compiled_island, device)
            diff = (compiled_island().float() - eager().float()).abs().max().item()
            results[name + "_max_abs_logit_diff"] = diff
            print(name, "vs eager max |logit diff|", diff, flush=True)
    model = island_model = island = None  # free the inference models before training
    if args.skip_train:
        _harness.write_json(args.json, results)
        return results
    torch._dynamo.reset()

    xt = torch.randn(train_batch, 3, size, size, device=device)
    yt = torch.randint(0, 2, (train_batch,), device=device)
    for name, impl, compile_it in (("train_eager", "sdpa", False), ("train_compile_attn_island", ISLAND, True)):
        trained = ViTForImageClassification(cfg).to(device).train()
        trained.config._attn_implementation = impl
        optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-4, fused=cuda)
        m = torch.compile(trained) if compile_it else trained

        def step(m=m, optimizer=optimizer) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = torch.nn.functional.cross_entropy(m(pixel_values=xt).logits.float(), yt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        timed(results, name, step, train_batch, device, **kw)
        del trained, optimizer, m
    _harness.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
