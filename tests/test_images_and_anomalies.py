"""Image operations and the salt-and-pepper polygon family: shapes, determinism, masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_checked
from swan_anomaly import ImageDecodeError
from swan_anomaly.anomalies import plan_anomalies, salt_pepper_polygons, stable_seed
from swan_anomaly.images import (
    center_biased_crop,
    crop_window,
    decode_image,
    encode_jpeg,
    encode_png,
    normalize_into,
    preprocess,
    resize_area,
)


@given(h=st.integers(8, 300), w=st.integers(8, 300), bx=st.floats(0, 1), by=st.floats(0, 1))
def test_crop_is_the_largest_square_inside_the_image(h, w, bx, by):
    img = np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3)
    x0, y0, side = crop_window(h, w, bias_x=bx, bias_y=by)
    out = center_biased_crop(img, bias_x=bx, bias_y=by)
    assert out.shape == (min(h, w), min(h, w), 3) and side == min(h, w)
    assert 0 <= x0 <= w - side and 0 <= y0 <= h - side
    np.testing.assert_array_equal(out, img[y0 : y0 + side, x0 : x0 + side])


def test_crop_bias_moves_the_window_left():
    img = np.zeros((100, 300, 3), np.uint8)
    assert crop_window(100, 300, bias_x=0.4)[0] == 70  # 0.4 * 300 - 50
    assert crop_window(100, 300, bias_x=0.5)[0] == 100
    with pytest.raises(ValueError, match="crop bias"):
        center_biased_crop(img, bias_x=1.5)


@given(size=st.integers(4, 96), side=st.integers(4, 200))
@settings(max_examples=30, deadline=None)
def test_resize_area_gives_the_requested_square(size, side):
    img = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = resize_area(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_decode_handles_gray_alpha_and_16_bit_and_names_bad_input():
    import cv2

    gray = cv2.imencode(".png", np.full((10, 12), 200, np.uint8))[1].tobytes()
    rgba = cv2.imencode(".png", np.full((10, 12, 4), 100, np.uint8))[1].tobytes()
    deep = cv2.imencode(".png", np.full((10, 12, 3), 65535, np.uint16))[1].tobytes()
    assert decode_image(gray).shape == (10, 12, 3)
    assert decode_image(rgba).shape == (10, 12, 3)
    assert decode_image(deep).max() == 255
    with pytest.raises(ImageDecodeError, match="bad.jpg: not a decodable image"):
        decode_image(b"this is text", name="bad.jpg")
    with pytest.raises(ImageDecodeError, match="empty.jpg: empty image"):
        decode_image(b"", name="empty.jpg")
    jpeg = encode_jpeg(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        decode_image(jpeg[:20], name="cut.jpg")


def test_a_complete_jpeg_with_data_after_its_end_marker_decodes_and_a_cut_one_is_refused():
    """Phones append data after a JPEG's end-of-image marker (a motion photo's MP4, a maker's trailer). The check for a cut-off
    JPEG compared the last FFD9 in the file with the last FFDA, so a trailer holding those bytes in the other order had
    about half of such photos refused as truncated: in the jobs and at the endpoint, which decodes with the same code."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpeg = encode_jpeg(image)
    progressive = _progressive_jpeg(image)
    trailer = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xd9 moov " + b"\xff\xda\x00\x08 mdat" + rng.bytes(4096)
    for data in (jpeg, progressive):
        np.testing.assert_array_equal(decode_image(data + trailer, name="motion.jpg"), decode_image(data))
    for data in (jpeg, progressive):
        for cut in (len(data) // 2, len(data) - 2):  # in the scan data, and just before the end marker
            with pytest.raises(ImageDecodeError, match="cut.jpg: truncated JPEG"):
                decode_image(data[:cut], name="cut.jpg")
            with pytest.raises(ImageDecodeError, match="cut.jpg: truncated JPEG"):  # an upload cut short, then padded
                decode_image(data[:cut] + bytes(64), name="cut.jpg")


def _progressive_jpeg(image: np.ndarray) -> bytes:
    """``image`` as a progressive JPEG: several scans, with tables between them."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and buf.tobytes().count(b"\xff\xda") > 1
    return buf.tobytes()


def test_a_16_bit_rgba_image_costs_its_8_bit_rgb_pixels_to_decode():
    """A 16-bit RGBA PNG was decoded unchanged and scaled in float64: 40 bytes a pixel, 2.1 GB for a 382 KB file of 7000x7000."""
    import tracemalloc

    import cv2

    side = 1500
    data = cv2.imencode(".png", np.full((side, side, 4), 40000, np.uint16))[1].tobytes()
    tracemalloc.start()
    try:
        image = decode_image(data, name="deep.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (side, side, 3) and image.dtype == np.uint8 and set(np.unique(image)) <= {40000 // 257, 40000 >> 8}
    assert peak < 2 * side * side * 3, f"{peak / 2**20:.0f} MiB traced to decode a {side}x{side} image"


@pytest.mark.parametrize("ext", [".pam", ".hdr", ".pfm"])
def test_a_format_whose_size_cannot_be_read_before_decoding_is_refused_not_decoded(ext):
    """OpenCV decodes these, Pillow reads none of their headers: their pixels were allocated unchecked
    (a PAM header can declare 30000x30000 pixels, under OpenCV's own limit, in a few bytes)."""
    import cv2

    image = np.zeros((8, 8, 3), np.float32 if ext in (".hdr", ".pfm") else np.uint8)
    data = cv2.imencode(ext, image)[1].tobytes()
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is not None  # OpenCV alone decodes it
    with pytest.raises(ImageDecodeError, match=f"frame{ext}: not a decodable image .*no image header of a known format"):
        decode_image(data, name=f"frame{ext}")


def test_a_crop_already_at_the_model_size_is_a_copy_not_a_view_of_the_decoded_frame():
    from swan_anomaly.images import crop_and_resize

    frame = np.zeros((4000, 224, 3), np.uint8)  # a tall frame whose square crop is already 224 wide
    crop = crop_and_resize(frame, size=224)
    assert crop.shape == (224, 224, 3) and crop.base is None and not np.shares_memory(crop, frame)


def test_preprocess_normalises_to_model_input():
    png = encode_png(np.full((120, 160, 3), 255, np.uint8))
    x = preprocess([png, png], size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0)
    out = np.empty((1, 3, 2, 2), np.float32)
    normalize_into(out, np.zeros((1, 2, 2, 3), np.uint8), mean=(0.5,) * 3, std=(0.5,) * 3)
    np.testing.assert_allclose(out, -1.0)


@given(seed=st.integers(0, 2**32 - 1), h=st.integers(40, 160), w=st.integers(40, 160))
@settings(max_examples=25, deadline=None)
def test_salt_pepper_changes_pixels_only_inside_its_mask_and_is_seeded(seed, h, w):
    frame = np.full((h, w, 3), 120, np.uint8)
    out, mask, params = salt_pepper_polygons(frame, np.random.default_rng(seed))
    again, mask2, params2 = salt_pepper_polygons(frame, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)
    assert params == params2 and out.shape == frame.shape and out.dtype == np.uint8
    changed = (out != frame).any(axis=2)
    assert changed.any()
    assert not (changed & ~mask).any()
    assert set(np.unique(out[mask])) <= {0, 255}
    assert 5 <= min(params["vertices"]) and max(params["vertices"]) <= 10
    assert 1 <= params["n_salt"] <= 9 and 1 <= params["n_pepper"] <= 9


def test_anomalies_stay_inside_the_etl_crop():
    frame = np.full((120, 320, 3), 120, np.uint8)
    x0, _, side = crop_window(120, 320, bias_x=0.4)
    for seed in range(20):
        _, mask, _ = salt_pepper_polygons(frame, np.random.default_rng(seed), bias_x=0.4)
        cols = np.where(mask.any(axis=0))[0]
        assert cols.min() >= x0 and cols.max() < x0 + side


@pytest.mark.parametrize(("n", "ratio", "expected"), [(10, 0.5, 10), (10, 0.2, 2), (10, 0.75, 30)])
def test_plan_anomalies_hits_the_ratio(n, ratio, expected):
    plan = plan_anomalies(n, ratio, seed=1)
    assert len(plan) == expected
    assert len(set(plan)) == len(plan)
    assert plan == plan_anomalies(n, ratio, seed=1)
    with pytest.raises(ValueError, match="anomaly_ratio"):
        plan_anomalies(n, 1.0, seed=1)


def test_stable_seed_is_stable_across_processes():
    import sys

    code = "from swan_anomaly.anomalies import stable_seed; print(stable_seed(42, 'video', 3))"
    other = int(run_checked([sys.executable, "-c", code], env={"PYTHONHASHSEED": "123"}).stdout)
    assert other == stable_seed(42, "video", 3) != stable_seed(42, "video", 4)
