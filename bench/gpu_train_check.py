"""bench/gpu_train_check.py: the pipeline's train_classifier on a CUDA GPU, compiled and eager, on the same random data.

Checks what CPU tests cannot: the CUDA training path (bfloat16 autocast, fused AdamW, torch.compile
with attention as an eager SDPA island, a last batch of another size) runs, learns, restores its
best epoch and leaves a model that asks for plain SDPA; prints both runs' losses and time.

Example:
    $ python3 bench/gpu_train_check.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import torch  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

from swan_anomaly.modeling import PRESETS, PreprocessSpec  # noqa: E402
from swan_anomaly.trainer import TrainConfig, evaluate, train_classifier  # noqa: E402


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    size = PRESETS["vit-tiny-offline"]["image_size"]
    x = torch.randint(0, 200, (600, 3, size, size), dtype=torch.uint8, generator=gen)  # uint8 pixels, as frame_tensors gives them
    spec = PreprocessSpec(size, (0.5,) * 3, (0.5,) * 3)
    y = (torch.arange(600) % 3 == 0).long()
    x[y == 0, :, 8:24, 8:24] = 255  # a learnable anomaly
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = ViTForImageClassification(ViTConfig(**PRESETS["vit-tiny-offline"], num_labels=2, attn_implementation="sdpa"))
        cfg = TrainConfig(epochs=6, patience=3, batch_size=64, learning_rate=1e-3, compile=mode, device="cuda")
        started = time.perf_counter()
        model, history, best = train_classifier(model, (x[:450], y[:450]), (x[450:], y[450:]), spec, cfg)
        seconds = time.perf_counter() - started
        loss, _ = evaluate(model, x[450:], y[450:], spec, 64)
        print(
            f"compile={mode}: {seconds:.1f}s, train losses {[round(h.train_loss, 4) for h in history]}, "
            f"val auroc {[round(h.val_auroc, 3) for h in history]}, best epoch {best}, restored val loss {loss:.4f} "
            f"(= {history[best - 1].val_loss:.4f}), attn {model.config._attn_implementation}",
            flush=True,
        )
        assert model.config._attn_implementation == "sdpa" and abs(loss - history[best - 1].val_loss) < 2e-2
        assert history[-1].train_loss < history[0].train_loss


if __name__ == "__main__":
    main()
