"""The novelty score: how far an image's patches lie from every normal training patch (PatchCore-style).

The classifier's ``anomaly_score`` learns the synthetic families it was shown. The novelty score
covers what no family covers: at training time the ViT's patch tokens of the *normal* training
frames are kept as a memory bank (a greedy k-centre coreset of them when there are more than
``max_bank``); an image's score is the distance of its least normal patch to its nearest bank
patch, divided by the scale chosen on normal frames the bank has not seen: the validation
split's and each training block's, scored without that block's own patches. Patch features are
the tokens of a middle and the last encoder layer, each averaged over its 3x3 patch
neighbourhood (PatchCore's locally aware features), concatenated. So:

* ``novelty_score >= 1``: some patch lies farther from every normal training patch than the
  held-out normals' patches do (at the ``1 - target_fpr`` quantile of their image scores);
* the served decision is ``anomaly_score >= threshold or novelty_score >= 1``, i.e.
  :func:`swan_anomaly.metrics.decision_score` ``>= 1``.

References: Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (PatchCore, 2022);
Defard et al., "PaDiM" (2020).

Example:
    >>> import torch
    >>> bank = NoveltyBank(torch.zeros(4, 2), scale=2.0, layers=(1,))
    >>> bank.scores(torch.tensor([[[0.0, 0.0], [3.0, 4.0]]])).tolist()   # worst patch 5 from the bank, scale 2
    [2.5]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Files of the bank inside the served model's directory.
BANK_FILE = "swan_novelty.safetensors"
META_FILE = "swan_novelty.json"
#: Most patches kept in the bank (a greedy coreset above it): the serving cost grows with it.
MAX_BANK = 4096
#: Dimensions of the random projection the coreset selection measures distances in.
CORESET_PROJECTION = 128
#: Most normal training images whose patches the bank is chosen from (an even, seeded sample
#: above it): bounds the features held in memory (ViT-B: 1.2 MB an image) and the coreset's time.
MAX_BANK_IMAGES = 1000
#: Patch rows compared with the bank at once (bounds the distance matrix's memory).
QUERY_CHUNK = 4096


def default_layers(num_hidden_layers: int) -> tuple[int, ...]:
    """Hidden-state indices whose tokens make the patch features: a middle layer and the last.

    Example:
        >>> default_layers(4), default_layers(12), default_layers(1)
        ((2, 4), (6, 12), (1,))
    """
    middle = max(1, num_hidden_layers // 2)
    return (middle, num_hidden_layers) if middle != num_hidden_layers else (num_hidden_layers,)


def patch_features(hidden_states, layers: tuple[int, ...]):
    """``[B, P, D]`` float32 patch features from a ViT's ``hidden_states`` (embeddings first, CLS token first).

    Each chosen layer's patch tokens are laid out on their grid, averaged over each patch's 3x3
    neighbourhood, and the layers are concatenated along the feature axis.
    """
    import torch

    out = []
    for layer in layers:
        tokens = hidden_states[layer][:, 1:, :].float()
        b, p, d = tokens.shape
        side = int(round(p**0.5))
        grid = tokens.transpose(1, 2).reshape(b, d, side, side)
        pooled = torch.nn.functional.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=False)
        out.append(pooled.reshape(b, d, p).transpose(1, 2))
    return torch.cat(out, dim=-1)


def _nearest_distance(queries, bank):
    """``[N]`` Euclidean distance of each query row to its nearest bank row, in chunks."""
    import torch

    return torch.cat([torch.cdist(queries[i : i + QUERY_CHUNK], bank).min(dim=1).values for i in range(0, len(queries), QUERY_CHUNK)])


def coreset(features, size: int, *, seed: int = 0):
    """Indices of a greedy k-centre coreset of ``features`` ``[N, D]`` (PatchCore's subsampling).

    Each step adds the row farthest from those chosen so far, measured in a seeded random
    projection to :data:`CORESET_PROJECTION` dimensions; the first row is drawn with ``seed``.

    Example:
        >>> import torch
        >>> points = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
        >>> sorted(points[coreset(points, 2)].round().flatten().tolist())   # one row of each cluster
        [0.0, 10.0]
    """
    import torch

    n = len(features)
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if features.shape[1] > CORESET_PROJECTION:
        projection = torch.randn(features.shape[1], CORESET_PROJECTION, generator=gen) / CORESET_PROJECTION**0.5
        features = features @ projection
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    distance = torch.cdist(features, features[chosen[0] : chosen[0] + 1]).squeeze(1)
    for _ in range(size - 1):
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = torch.minimum(distance, torch.cdist(features, features[nxt : nxt + 1]).squeeze(1))
    return torch.tensor(chosen)


@dataclass
class NoveltyBank:
    """The normal patches of the training set and the scale that makes 1 the decision boundary."""

    bank: object  # torch.Tensor [M, D] float32
    scale: float
    layers: tuple[int, ...]
    quantile: float = 0.99
    patches_seen: int = 0
    #: Held-out normal images whose raw scores set :attr:`scale` (0 when unknown: a bank saved before it was recorded).
    calibration_images: int = 0

    def raw_scores(self, features) -> np.ndarray:
        """``[B]`` distance of each image's least normal patch to the bank (features ``[B, P, D]``).

        Computed where the bank lives (:meth:`to` moves it next to a GPU model); only the ``[B]``
        scores come back to the host.
        """
        import torch

        b, p, d = features.shape
        if b == 0:
            return np.zeros(0)
        nearest = _nearest_distance(features.reshape(b * p, d).to(device=self.bank.device, dtype=torch.float32), self.bank)
        return nearest.reshape(b, p).max(dim=1).values.double().cpu().numpy()

    def to(self, device) -> NoveltyBank:
        """Keep the bank on ``device`` (float32), e.g. the served model's GPU; returns itself."""
        import torch

        self.bank = self.bank.to(device=device, dtype=torch.float32)
        return self

    def scores(self, features) -> np.ndarray:
        """``[B]`` novelty scores: :meth:`raw_scores` divided by the scale (1 = the decision boundary)."""
        return self.raw_scores(features) / self.scale

    def save(self, model_dir: Path) -> None:
        """Write :data:`BANK_FILE` and :data:`META_FILE` into ``model_dir``."""
        from safetensors.torch import save_file

        save_file({"bank": self.bank.detach().cpu().contiguous()}, str(Path(model_dir) / BANK_FILE))
        meta = {
            "scale": self.scale,
            "layers": list(self.layers),
            "quantile": self.quantile,
            "patches_seen": self.patches_seen,
            "calibration_images": self.calibration_images,
        }
        meta["bank_size"], meta["feature_dim"] = list(self.bank.shape)
        (Path(model_dir) / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, model_dir: Path) -> NoveltyBank | None:
        """The bank saved in ``model_dir``, or None when the model has none (a version logged before it existed)."""
        from safetensors.torch import load_file

        meta_path = Path(model_dir) / META_FILE
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        bank = load_file(str(Path(model_dir) / BANK_FILE))["bank"]
        return cls(
            bank,
            float(meta["scale"]),
            tuple(meta["layers"]),
            float(meta["quantile"]),
            int(meta.get("patches_seen", 0)),
            int(meta.get("calibration_images", 0)),
        )


def held_out_group_scores(train_features, bank, bank_rows, groups) -> np.ndarray | None:
    """``[N]`` raw score of each normal training image against the bank *without its own group's patches*.

    A split group is a block of footage (:mod:`swan_anomaly.labels`): scored without its own
    patches, a training image stands for a stretch of footage the bank has not seen, as the
    validation and test blocks are. None when there are fewer than two groups.

    Args:
        train_features: ``[N, P, D]`` patch features the bank was chosen from.
        bank: ``[M, D]`` bank rows.
        bank_rows: ``[M]`` indices of the bank rows among the ``N * P`` training patches.
        groups: ``[N]`` split group of each training image.

    Example:
        >>> import torch
        >>> features = torch.tensor([[[0.0]], [[1.0]], [[3.0]]])   # three images of one patch, three groups
        >>> held_out_group_scores(features, features.reshape(3, 1), torch.arange(3), ["a", "b", "c"]).tolist()
        [1.0, 1.0, 2.0]
    """
    import torch

    groups = np.asarray(groups)
    if len(np.unique(groups)) < 2:
        return None
    n, p, d = train_features.shape
    bank_group = np.repeat(groups, p)[np.asarray(bank_rows)]
    out = np.full(n, np.nan)
    for group in np.unique(groups):
        others = torch.from_numpy(bank_group != group)
        if not bool(others.any()):  # the coreset kept patches of this group alone: nothing to measure against
            continue
        rows = np.flatnonzero(groups == group)
        out[rows] = NoveltyBank(bank[others], 1.0, ()).raw_scores(train_features[torch.from_numpy(rows)])
    return out[np.isfinite(out)]


def fit_novelty(
    train_features,
    val_features,
    *,
    layers: tuple[int, ...],
    train_groups=None,
    target_fpr: float = 0.01,
    max_bank: int = MAX_BANK,
    seed: int = 0,
) -> NoveltyBank:
    """Fit the bank on normal training images' patch features and its scale on held-out normals.

    The scale is the ``1 - target_fpr`` quantile of the raw scores of normal images the bank has
    not seen: the validation normals and, when ``train_groups`` is given, every normal training
    image scored against the bank without its own group's patches
    (:func:`held_out_group_scores`). A few validation blocks alone set a boundary that flags far
    more than ``target_fpr`` of the normals in other stretches of footage (docs/BENCHMARKS.md,
    quality); the training blocks, each held out in turn, show many more such stretches.

    Args:
        train_features: ``[N, P, D]`` patch features (:func:`patch_features`) of normal training
            images (the originals: their augmented copies add little but time).
        val_features: ``[M, P, D]`` patch features of normal validation images, never in the bank.
        layers: the hidden-state indices the features were taken from (recorded with the bank).
        train_groups: ``[N]`` split group of each training image (a block of footage), or None to
            scale on the validation normals alone.
        target_fpr: about this share of the held-out normals reach ``novelty_score >= 1``.
        max_bank: most patches kept (a greedy coreset of them above it).
        seed: seed of the coreset.

    Raises:
        ValueError: no normal training or validation image, or ``train_groups`` of another length.

    Example:
        >>> import torch
        >>> fitted = fit_novelty(torch.zeros(3, 4, 2), torch.ones(2, 4, 2), layers=(1,))
        >>> len(fitted.bank), round(fitted.scale, 4), fitted.scores(torch.ones(1, 4, 2)).tolist(), fitted.calibration_images
        (12, 1.4142, [1.0], 2)
    """
    if len(train_features) == 0 or len(val_features) == 0:
        msg = f"the novelty bank needs normal training and validation images, got {len(train_features)} and {len(val_features)}"
        raise ValueError(msg)
    if train_groups is not None and len(train_groups) != len(train_features):
        msg = f"train_groups has {len(train_groups)} entries for {len(train_features)} training images"
        raise ValueError(msg)
    patches = train_features.reshape(-1, train_features.shape[-1]).float()
    rows = coreset(patches, max_bank, seed=seed)
    bank = patches[rows].clone()
    fitted = NoveltyBank(bank, 1.0, tuple(layers), 1.0 - target_fpr, len(patches))
    raw = fitted.raw_scores(val_features)
    held = held_out_group_scores(train_features.float(), bank, rows, train_groups) if train_groups is not None else None
    calibration = raw if held is None else np.concatenate([raw, held])
    fitted.scale = float(max(np.quantile(calibration, 1.0 - target_fpr), 1e-6))
    fitted.calibration_images = len(calibration)
    log.info(
        "novelty bank: %d of %d normal training patches (layers %s, %d dims); scale %.4f = the %.3f quantile of %d held-out normals "
        "(%d validation, %d training images scored without their own block); validation normals at or above it: %.1f %%",
        len(bank),
        len(patches),
        layers,
        bank.shape[1],
        fitted.scale,
        1.0 - target_fpr,
        len(calibration),
        len(raw),
        0 if held is None else len(held),
        100.0 * float((raw >= fitted.scale).mean()),
    )
    return fitted
