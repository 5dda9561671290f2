"""The family registry: name -> function, and the knobs a chosen family runs with."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence

from swan_anomaly.anomalies.checks import FamilyResult
from swan_anomaly.anomalies.patches import cutpaste, occlusion, perlin_texture
from swan_anomaly.anomalies.pixels import color_shift, local_blur, salt_pepper_polygons

#: Family name -> ``fn(image, rng, *, bias_x, bias_y, **knobs) -> (image, mask, params)``.
FAMILIES: dict[str, Callable[..., FamilyResult]] = {
    "salt_pepper_polygons": salt_pepper_polygons,
    "cutpaste": cutpaste,
    "perlin_texture": perlin_texture,
    "occlusion": occlusion,
    "local_blur": local_blur,
    "color_shift": color_shift,
}


def family_knobs(family: str, overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The knobs a family runs with: its keyword defaults updated by ``overrides``.

    Args:
        family: a key of :data:`FAMILIES`.
        overrides: knob values to use instead of the defaults.

    Returns:
        ``{knob: value}``, JSON-serialisable (tuples become lists in JSON).

    Raises:
        ValueError: an unknown family, an unknown knob (the message lists the known ones), or a
            value that JSON cannot record.

    Example:
        >>> family_knobs("local_blur", {"candidates": 1})["candidates"]
        1
    """
    _check_families([family])
    accepted = {n: p.default for n, p in inspect.signature(FAMILIES[family]).parameters.items() if p.kind is p.KEYWORD_ONLY}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        msg = f"unknown knob(s) {unknown} for anomaly family {family!r}; known: {sorted(accepted)}"
        raise ValueError(msg)
    knobs = {**accepted, **overrides}
    try:
        json.dumps(knobs)
    except TypeError as exc:
        msg = f"knobs of anomaly family {family!r} must be JSON-serialisable to be recorded: {exc}"
        raise ValueError(msg) from None
    return knobs


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free selection of :data:`FAMILIES`."""
    names = (families,) if isinstance(families, str) else tuple(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown:
        msg = f"unknown anomaly family {unknown[0]!r}; known: {sorted(FAMILIES)}"
        raise ValueError(msg)
    if not names or len(set(names)) != len(names):
        msg = f"families must be a non-empty list of distinct names from {sorted(FAMILIES)}, got {list(names)}"
        raise ValueError(msg)
    return names


def _resolve(families: Sequence[str], family_kwargs: Mapping[str, Mapping[str, object]] | None) -> dict[str, dict]:
    """``{family: effective knobs}`` for the chosen families; knobs for other families are an error."""
    names = _check_families(families)
    stray = sorted(set(family_kwargs or {}) - set(names))
    if stray:
        msg = f"family_kwargs given for {stray}, which are not among the chosen families {list(names)}"
        raise ValueError(msg)
    return {name: family_knobs(name, (family_kwargs or {}).get(name)) for name in names}
