"""The ViT classifier: offline presets, base-model resolution and the preprocessing spec.

``model`` is a hub id (production: ``google/vit-base-patch16-224``), a local directory, or a
named offline preset. A preset is built from ``ViTConfig`` and saved to a local directory
once, then loaded through the very same ``from_pretrained`` path as a hub model.

Example:
    >>> base = resolve_base_model("vit-tiny-offline", Path("/tmp/models"))  # doctest: +SKIP
    >>> model = load_classifier(base)                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ID2LABEL = {0: "abnormal", 1: "normal"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}

#: Offline presets: small ViTs built from ``ViTConfig`` (random weights, no download).
PRESETS: dict[str, dict] = {
    "vit-tiny-offline": dict(
        image_size=64, patch_size=8, hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192
    ),
    "vit-micro-offline": dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ),
}

PRODUCTION_MODEL = "google/vit-base-patch16-224"


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects: square ``size`` pixels, normalised with ``mean``/``std``, cropped with ``bias``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bias_x: float = 0.4
    bias_y: float = 0.5

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        d = json.loads(text)
        return cls(d["size"], tuple(d["mean"]), tuple(d["std"]), d.get("bias_x", 0.4), d.get("bias_y", 0.5))


def resolve_base_model(model: str, models_dir: Path, *, seed: int = 0) -> str:
    """A path or hub id that ``from_pretrained`` can load.

    Presets are materialised under ``models_dir/{preset}`` (once; reused afterwards).
    """
    if model not in PRESETS:
        return model
    target = models_dir / model
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        return str(target)
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    cfg = ViTConfig(**PRESETS[model], num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)
    target.mkdir(parents=True, exist_ok=True)
    ViTForImageClassification(cfg).save_pretrained(target)
    size = cfg.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(target)
    log.info("built offline preset %s at %s", model, target)
    return str(target)


def load_classifier(name_or_path: str):
    """``ViTForImageClassification`` with a 2-class head (0 = abnormal, 1 = normal), SDPA attention."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(
        name_or_path,
        num_labels=2,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        ignore_mismatched_sizes=True,
        attn_implementation="sdpa",
    )


def preprocess_spec(name_or_path: str, *, bias_x: float = 0.4, bias_y: float = 0.5) -> PreprocessSpec:
    """Input size and normalisation from the model's image processor config."""
    from transformers.image_processing_base import ImageProcessingMixin

    # Read the processor's config only: the crop, resize and normalisation are ours (one path
    # for training and serving), so no image-processor backend needs to be instantiated.
    config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    size = config.get("size", {})
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    return PreprocessSpec(int(side), tuple(config["image_mean"]), tuple(config["image_std"]), bias_x, bias_y)


def predict_logits(model, spec: PreprocessSpec, images: list[bytes], *, batch_size: int = 64, names: list[str] | None = None):
    """Logits ``[N, 2]`` (float32 numpy) for encoded images, through :func:`swan_anomaly.images.preprocess`.

    The training evaluation and the served pyfunc both call this, so their scores agree.
    """
    import numpy as np
    import torch

    from swan_anomaly.images import preprocess

    names = names or [f"image[{i}]" for i in range(len(images))]
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i : i + batch_size], size=spec.size, mean=spec.mean, std=spec.std, bias_x=spec.bias_x, bias_y=spec.bias_y, names=names[i : i + batch_size])
            out.append(model(pixel_values=torch.from_numpy(x)).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)
