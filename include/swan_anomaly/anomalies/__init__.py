"""Synthetic anomaly families: pure, seeded functions on RGB frames.

Every family is a function ``fn(image, rng, *, bias_x=CROP_BIAS_X, bias_y=CROP_BIAS_Y, **knobs) -> (out, mask, params)``
(the crop bias of :mod:`swan_anomaly.contract`): ``image`` is an RGB ``[H, W, 3]`` uint8 frame (never modified),
``rng`` a ``numpy.random.Generator`` (the only source of randomness), ``out`` the anomalous copy, ``mask`` a
``[H, W]`` bool array of exactly the pixels the family may change, and ``params`` a JSON-serialisable dict of every
value drawn. Defects are placed inside the square the ETL crop keeps (:func:`~swan_anomaly.images.crop_window`)
and are sized to survive that crop's area downscale to the model input (128 px offline, 224 px ViT-B):
a few percent to about 15 % of the crop, with structures of at least ``crop side / 72`` pixels.

Families (:data:`FAMILIES`, in the order of :data:`swan_anomaly.contract.FAMILY_NAMES`):
    ``salt_pepper_polygons``: separate salt (255) and pepper (0) patches, irregular 5-10-gons in a
    central region and in bands along the crop's edges, filled with coarse impulse-noise grains.
    ``cutpaste``: a rectangle of the frame copied elsewhere, maybe rotated, with a brightness jitter
    (CutPaste, Li et al. 2021).
    ``perlin_texture``: a thresholded Perlin-noise mask blends in a procedural foreign texture (DRAEM).
    ``occlusion``: a solid or textured irregular polygon, rotated rectangle or ellipse.
    ``local_blur``: a strong Gaussian blur inside an irregular polygon.
    ``color_shift``: a hue, saturation and value shift inside an irregular polygon.

Where anomalies are injected relative to JPEG encoding: into the lossless PNG frame written by
frame extraction, before the single JPEG encode of the ETL job (crop, area resize to the model
size, JPEG). Normal and abnormal images, training and validation alike, then go through exactly
the same processing (and the augmentation job treats both classes alike), so a model cannot
separate the classes by compression artefacts. JPEG smooths impulse noise and the area resize
averages it, which is why noise grains and textures are sized in crop pixels to survive both.

Modules (each imports only those above it):
    ``checks``: the input-frame and knob checks every family starts with, and ``FamilyResult``.
    ``geometry``: irregular polygons, their placement inside the crop window, masks and coverage.
    ``textures``: :func:`perlin_noise` and :func:`procedural_texture`.
    ``pixels``: families that alter the frame's own pixels (``salt_pepper_polygons``, ``local_blur``, ``color_shift``).
    ``patches``: families that paste content (``cutpaste``, ``perlin_texture``, ``occlusion``).
    ``registry``: :data:`FAMILIES` and :func:`family_knobs`, the knobs a family runs with.
    ``planning``: :func:`plan_anomalies`, :func:`synthesize_dataset`, :class:`AnomalyRecord`, :func:`stable_seed`.
    ``preview``: :func:`family_grid`, one labelled tile per family.

Example:
    >>> import numpy as np
    >>> frame = np.full((240, 320, 3), 120, dtype=np.uint8)
    >>> out, mask, params = salt_pepper_polygons(frame, np.random.default_rng(0))
    >>> out.shape == frame.shape and bool(mask.any()) and 2 <= params["n_regions"] <= 18
    True
    >>> changed = (out != frame).any(axis=2)
    >>> bool((changed & ~mask).any())
    False
"""

from __future__ import annotations

from swan_anomaly.anomalies.checks import FamilyResult
from swan_anomaly.anomalies.patches import cutpaste, occlusion, perlin_texture
from swan_anomaly.anomalies.pixels import ZONES, color_shift, local_blur, salt_pepper_polygons
from swan_anomaly.anomalies.planning import AnomalyRecord, plan_anomalies, stable_seed, synthesize_dataset
from swan_anomaly.anomalies.preview import family_grid
from swan_anomaly.anomalies.registry import FAMILIES, family_knobs
from swan_anomaly.anomalies.textures import TEXTURE_KINDS, perlin_noise, procedural_texture
from swan_anomaly.contract import DEFAULT_FAMILIES, NORMAL_FAMILY

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "NORMAL_FAMILY",
    "TEXTURE_KINDS",
    "ZONES",
    "AnomalyRecord",
    "FamilyResult",
    "color_shift",
    "cutpaste",
    "family_grid",
    "family_knobs",
    "local_blur",
    "occlusion",
    "perlin_noise",
    "perlin_texture",
    "plan_anomalies",
    "procedural_texture",
    "salt_pepper_polygons",
    "stable_seed",
    "synthesize_dataset",
]
