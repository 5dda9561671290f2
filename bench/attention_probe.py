"""bench/attention_probe.py: which attention path and compile mode ViT-B/16 runs fastest on one GPU.

Times bf16 ViT-B/16 (random weights, batch 1024 inference / 256 training, 15 timed steps after 3
warmup steps) eagerly with PyTorch's SDPA choice, with SDPA forced to flash and to cuDNN
attention, and under ``torch.compile`` (default and ``max-autotune-no-cudagraphs``): the probe
behind the "Why torch.compile was slower" table of docs/BENCHMARKS.md. Needs a CUDA GPU; the
max-autotune compile alone takes about 100 s on an H200.

Parameters: --json PATH (also write the results there).

Example:
    $ python3 bench/attention_probe.py --json out/probe_compile_attention.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import ViTForImageClassification  # noqa: E402


def timed(results: dict, name: str, step, batch: int, *, steps: int = 15, warmup: int = 3) -> None:
    """Record ms per step and images/s of ``step`` under ``name`` (a failure is reported, not raised)."""
    try:
        started = time.time()
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        warm_s = time.time() - started
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize()
        ms = begin.elapsed_time(end) / steps
        results[name] = {"ms_per_step": round(ms, 2), "images_per_s": round(batch / ms * 1000, 1), "warm_s": round(warm_s, 1)}
        print(name, results[name], flush=True)
    except Exception as exc:  # noqa: BLE001 - one failing variant must not hide the others
        print(name, "FAILED", type(exc).__name__, str(exc)[:300], flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("this probe needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    device, cfg = torch.device("cuda"), _harness.vit_config("vit-b16")
    results: dict[str, dict] = {}

    batch = 1024
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.bfloat16)
    model = ViTForImageClassification(cfg).to(device).eval().to(torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    with torch.inference_mode():
        timed(results, "infer_eager_bf16", lambda: model(pixel_values=x).logits, batch)
        for backend, name in (
            (SDPBackend.FLASH_ATTENTION, "infer_eager_flash_forced"),
            (SDPBackend.CUDNN_ATTENTION, "infer_eager_cudnn_attn"),
        ):
            with sdpa_kernel([backend]):
                timed(results, name, lambda: model(pixel_values=x).logits, batch)
        compiled = torch.compile(model)
        timed(results, "infer_compile_default", lambda: compiled(pixel_values=x).logits, batch)
        autotuned = torch.compile(model, mode="max-autotune-no-cudagraphs")
        timed(results, "infer_compile_maxautotune", lambda: autotuned(pixel_values=x).logits, batch)

    batch = 256
    xt, yt = torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 2, (batch,), device=device)
    trained = ViTForImageClassification(cfg).to(device).train()
    trained.config._attn_implementation = "sdpa"
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-4, fused=True)

    def step(m) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(pixel_values=xt).logits.float(), yt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timed(results, "train_eager_autocast", lambda: step(trained), batch)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        timed(results, "train_eager_cudnn_attn", lambda: step(trained), batch)
    compiled_train = torch.compile(trained)
    timed(results, "train_compile_default", lambda: step(compiled_train), batch)
    _harness.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
