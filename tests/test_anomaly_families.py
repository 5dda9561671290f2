"""Anomaly families: purity, determinism, masks, placement, visibility; multi-family datasets."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swan_anomaly.anomalies import (
    DEFAULT_FAMILIES,
    FAMILIES,
    ZONES,
    family_grid,
    family_knobs,
    salt_pepper_polygons,
    synthesize_dataset,
)
from swan_anomaly.contract import DEFAULT_FAMILIES as CONTRACT_DEFAULT_FAMILIES
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y, FAMILY_NAMES
from swan_anomaly.images import crop_and_resize, crop_window, decode_image, encode_jpeg, encode_png

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(FAMILIES)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour blobs plus fine noise: content that every family visibly changes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


@st.composite
def frames(draw) -> tuple[np.ndarray, bool]:
    """``(image, is_flat)``: a flat or a textured RGB frame of 40-160 px per side."""
    h, w, seed = draw(st.integers(40, 160)), draw(st.integers(40, 160)), draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        return np.full((h, w, 3), np.random.default_rng(seed).integers(0, 256, 3), np.uint8), True
    return textured(h, w, seed), False


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory) -> list[np.ndarray]:
    """Four frames of the procedural demo video, extracted the way the pipeline does."""
    from swan_anomaly.video import extract_frames, render_demo_video

    tmp = tmp_path_factory.mktemp("demo")
    video = render_demo_video(tmp / "swans.mp4", seconds=4.0, fps=1.0)
    return [decode_image(Path(f.path).read_bytes()) for f in extract_frames(video, tmp / "frames", every_seconds=1.0)]


def test_the_registry_holds_exactly_the_contract_families_in_order():
    """The light contract module names the families for the DAG and reports; the registry must agree."""
    assert tuple(FAMILIES) == FAMILY_NAMES
    assert DEFAULT_FAMILIES is CONTRACT_DEFAULT_FAMILIES and set(DEFAULT_FAMILIES) <= set(FAMILIES)
    assert all((family_knobs(n)["bias_x"], family_knobs(n)["bias_y"]) == (CROP_BIAS_X, CROP_BIAS_Y) for n in FAMILIES)


@pytest.mark.parametrize("name", NAMES)
@given(frame=frames(), seed=st.integers(0, 2**32 - 1), bias_x=st.floats(0, 1), bias_y=st.floats(0, 1))
@settings(max_examples=25, deadline=None)
def test_family_is_pure_seeded_masked_and_inside_the_crop(name, frame, seed, bias_x, bias_y):
    image, flat = frame
    before = image.copy()
    fn = FAMILIES[name]
    out, mask, params = fn(image, np.random.default_rng(seed), bias_x=bias_x, bias_y=bias_y)
    np.testing.assert_array_equal(image, before)  # input untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    changed = (out != image).any(axis=2)
    assert not (changed & ~mask).any(), "pixels changed outside the mask"
    if not (flat and name == "local_blur"):  # blurring flat content is the one documented no-op
        assert changed.any()
    x0, y0, side = crop_window(*image.shape[:2], bias_x=bias_x, bias_y=bias_y)
    rows, cols = np.nonzero(mask)
    assert rows.min() >= y0 and rows.max() < y0 + side and cols.min() >= x0 and cols.max() < x0 + side
    assert json.loads(json.dumps(params)) == params  # JSON-native values only
    again, mask2, params2 = fn(image, np.random.default_rng(seed), bias_x=bias_x, bias_y=bias_y)
    assert again.tobytes() == out.tobytes() and (mask2 == mask).all() and params2 == params


@pytest.mark.parametrize("name", NAMES)
def test_different_seeds_give_different_anomalies(name):
    image = textured(120, 160, 0)
    digests = {hashlib.sha256(FAMILIES[name](image, np.random.default_rng(s))[0].tobytes()).hexdigest() for s in range(10)}
    assert len(digests) >= 9


@pytest.mark.parametrize("name", NAMES)
def test_every_family_survives_crop_downscale_and_jpeg(name, demo_frames):
    """The ETL's crop, INTER_AREA resize to 64 px and JPEG encode leave a visible defect."""
    shares = []
    for seed in range(12):
        frame = demo_frames[seed % len(demo_frames)]
        out, _, params = FAMILIES[name](frame, np.random.default_rng(seed))
        a, b = (decode_image(encode_jpeg(crop_and_resize(x, size=64))).astype(int) for x in (frame, out))
        shares.append(float((np.abs(a - b).max(axis=2) > 10).mean()))
        assert 0.0 < params["covered_fraction"] <= 0.2
    assert min(shares) >= 0.005 and np.mean(shares) >= 0.02, shares


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=25, deadline=None)
def test_salt_pepper_patches_follow_the_spec(seed):
    frame = textured(240, 320, 1)
    out, mask, p = salt_pepper_polygons(frame, np.random.default_rng(seed))
    assert 1 <= p["n_salt"] <= 9 and 1 <= p["n_pepper"] <= 9 and p["n_regions"] == p["n_salt"] + p["n_pepper"]
    assert all(5 <= v <= 10 for v in p["vertices"]) and len(p["vertices"]) == p["n_regions"]
    assert {q["zone"] for q in p["patches"]} <= set(ZONES)
    assert 0.03 <= p["area_fraction"] <= 0.08
    assert 0.5 * p["area_fraction"] <= p["covered_fraction"] <= 1.8 * p["area_fraction"]  # overlaps, rasterisation
    assert set(np.unique(out[mask]).tolist()) <= {0, 255}
    assert p["grain"] == round(240 / 72)


def test_salt_pepper_knobs_steer_colours_counts_and_zones():
    frame = np.full((240, 320, 3), 128, np.uint8)
    x0, y0, side = crop_window(240, 320)
    out, mask, p = salt_pepper_polygons(frame, np.random.default_rng(0), salt_share=1.0, patches_per_color=(9, 9), center_weight=1.0)
    assert (p["n_salt"], p["n_pepper"]) == (9, 0) and set(np.unique(out[mask]).tolist()) == {255}
    for q in p["patches"]:
        assert q["zone"] == "center"
        assert x0 + 0.25 * side <= q["center"][0] <= x0 + 0.75 * side and y0 + 0.25 * side <= q["center"][1] <= y0 + 0.75 * side
    _, _, p = salt_pepper_polygons(frame, np.random.default_rng(1), center_weight=0.0)
    assert "center" not in {q["zone"] for q in p["patches"]}
    with pytest.raises(ValueError, match="salt_pepper_polygons: patches_per_color"):
        salt_pepper_polygons(frame, np.random.default_rng(0), patches_per_color=(0, 12))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_and_knobs_are_named(name):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=rf"{name}: expected an RGB \[H, W, 3\] uint8 image"):
        FAMILIES[name](np.zeros((64, 64), np.uint8), rng)
    with pytest.raises(ValueError, match=rf"{name}: a 12x64 image is too small"):
        FAMILIES[name](np.zeros((12, 64, 3), np.uint8), rng)
    with pytest.raises(ValueError, match=rf"{name}: area_fraction"):
        FAMILIES[name](np.zeros((64, 64, 3), np.uint8), rng, area_fraction=(0.2, 0.1))


def write_frames(root: Path, n: int) -> list[dict]:
    """``n`` textured PNG frames of one video, as frame-extraction records."""
    out = []
    for i in range(n):
        path = root / "frames" / "vid" / f"frame_{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(textured(48, 64, i)))
        out.append({"video_id": "vid", "frame_index": i, "timestamp_s": i * 0.5, "path": str(path)})
    return out


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "anomalies").rglob("*.png"))}


@given(
    n_frames=st.integers(1, 12),
    ratio=st.sampled_from([0.2, 0.5, 0.75]),
    families=st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True),
    seed=st.integers(0, 1000),
)
@settings(max_examples=10, deadline=None)
def test_synthesize_dataset_balances_families(n_frames, ratio, families, seed):
    with tempfile.TemporaryDirectory() as tmp:
        records = synthesize_dataset(write_frames(Path(tmp), n_frames), Path(tmp), anomaly_ratio=ratio, seed=seed, families=families)
    counts = Counter(r.family for r in records)
    n, k = len(records), len(families)
    assert set(counts) <= set(families) and sum(counts.values()) == n
    assert all(n // k <= counts[f] <= -(-n // k) for f in families)


def test_synthesize_dataset_records_params_and_is_deterministic(tmp_path):
    frames = write_frames(tmp_path / "src", 12)
    families = ["cutpaste", "local_blur", "color_shift"]
    kwargs = {"local_blur": {"candidates": 1}}
    runs = []
    for run in ("a", "b"):
        records = synthesize_dataset(frames, tmp_path / run, anomaly_ratio=0.5, seed=3, families=families, family_kwargs=kwargs)
        runs.append((records, digests(tmp_path / run)))
    (records, files), (records_b, files_b) = runs
    assert records == records_b and files == files_b and len(files) == 12
    assert Counter(r.family for r in records) == {"cutpaste": 4, "local_blur": 4, "color_shift": 4}
    for r in records:
        params = json.loads(r.family_params)
        assert params["knobs"] == json.loads(json.dumps(family_knobs(r.family, kwargs.get(r.family))))
        assert r.family in r.path and (tmp_path / "a" / r.path).is_file()
        if r.family == "local_blur":
            assert params["candidates"] == params["knobs"]["candidates"] == 1


def test_synthesize_dataset_defaults_to_every_family_and_names_bad_families(tmp_path):
    frames = write_frames(tmp_path / "src", 6)
    records = synthesize_dataset(frames, tmp_path / "ds", anomaly_ratio=0.5, seed=1)
    assert DEFAULT_FAMILIES == tuple(FAMILIES) and sorted(r.family for r in records) == sorted(FAMILIES)  # one copy each
    with pytest.raises(ValueError, match=r"unknown anomaly family 'nope'; known: \['color_shift', 'cutpaste'"):
        synthesize_dataset(frames, tmp_path / "x", anomaly_ratio=0.5, seed=1, families=["cutpaste", "nope"])
    with pytest.raises(ValueError, match="distinct names"):
        synthesize_dataset(frames, tmp_path / "x", anomaly_ratio=0.5, seed=1, families=["cutpaste", "cutpaste"])
    with pytest.raises(ValueError, match=r"family_kwargs given for \['occlusion'\]"):
        synthesize_dataset(frames, tmp_path / "x", anomaly_ratio=0.5, seed=1, families=["cutpaste"], family_kwargs={"occlusion": {}})
    with pytest.raises(ValueError, match=r"unknown knob\(s\) \['sigma'\] for anomaly family 'local_blur'; known: \['area_fraction'"):
        synthesize_dataset(
            frames, tmp_path / "x", anomaly_ratio=0.5, seed=1, families=["local_blur"], family_kwargs={"local_blur": {"sigma": 3}}
        )
    assert not (tmp_path / "x").exists()  # validated before anything is written


def test_family_grid_has_a_labelled_tile_per_family():
    image = textured(120, 160, 2)
    before = image.copy()
    grid = family_grid(image, tile=64)
    np.testing.assert_array_equal(image, before)
    assert grid.shape == (2 * 64, 4 * 64, 3) and grid.dtype == np.uint8  # original + 6 families in rows of 4
    np.testing.assert_array_equal(grid[32:64, :64], crop_and_resize(image, size=64)[32:])  # the label sits on top
    assert not np.array_equal(grid[:, 64:128], crop_and_resize(image, size=64))
    np.testing.assert_array_equal(family_grid(image, tile=64), grid)
    assert family_grid(image, families=["cutpaste"], tile=48).shape == (48, 96, 3)
    with pytest.raises(ValueError, match="unknown anomaly family 'blur'"):
        family_grid(image, families=["blur"])


def test_render_family_grid_script_writes_a_small_png(tmp_path):
    spec = importlib.util.spec_from_file_location("render_family_grid", ROOT / "scripts" / "render_family_grid.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--out", str(tmp_path / "grid.png"), "--tile", "96"])
    grid = decode_image(out.read_bytes())
    assert grid.shape == (2 * 96, 4 * 96, 3) and out.stat().st_size < 400_000
