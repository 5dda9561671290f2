"""Frame extraction: bad-video corpus, time window, timestamps (CFR and VFR), near-duplicates, rotation.

Every test video is written here with OpenCV's VideoWriter (a few KB, 64x48 to 96x64). What
VideoWriter cannot write (rotation metadata, variable frame rate, an MP4 with its index in
front) is made by editing the MP4 boxes of such a file: the ``tkhd`` transformation matrix,
the ``stts`` time-to-sample table, and the ``moov``/``mdat`` order with ``stco`` offsets.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from swan_anomaly import VideoError
from swan_anomaly.video import extract_frames, hamming_distance, perceptual_hash, probe_video, video_id

FPS = 10


def _moving(n: int, *, w: int = 96, h: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` BGR frames: a smooth random texture sliding 7 px a frame, with a red marker top-left."""
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w * 2, h), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(n):
        frame = np.roll(texture, -7 * i, axis=1)[:, :w].copy()
        frame[:10, :10] = (0, 0, 255)
        frames.append(frame)
    return frames


def _write(path: Path, frames: list[np.ndarray], *, fourcc: str = "mp4v", fps: float = FPS) -> Path:
    """Write BGR frames with OpenCV's VideoWriter (an empty list gives a zero-frame container)."""
    h, w = frames[0].shape[:2] if frames else (48, 64)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"VideoWriter cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


# -- MP4 box editing (ISO BMFF: 4-byte big-endian size, 4-byte type, payload) ------------------

_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def _boxes(data: bytes, start: int = 0, end: int | None = None, path: tuple = ()):
    """Yield ``(path_of_types, offset, size)`` for every box, depth first."""
    pos, end = start, len(data) if end is None else end
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield (*path, kind), pos, size
        if kind in _CONTAINER_BOXES:
            yield from _boxes(data, pos + 8, pos + size, (*path, kind))
        pos += size


def _box(data: bytes, kind: bytes) -> tuple[int, int]:
    """Offset and size of the only box of type ``kind``."""
    (found,) = [(pos, size) for path, pos, size in _boxes(data) if path[-1] == kind]
    return found


def _replace_box(data: bytes, kind: bytes, new_box: bytes) -> bytes:
    """Swap the box ``kind`` for ``new_box``, growing or shrinking every box that contains it."""
    pos, size = _box(data, kind)
    out = bytearray(data)
    for path, parent, parent_size in _boxes(data):
        if path[-1] in _CONTAINER_BOXES and parent < pos < parent + parent_size:
            out[parent : parent + 4] = struct.pack(">I", parent_size + len(new_box) - size)
    return bytes(out[:pos]) + new_box + bytes(out[pos + size :])


def _rotated(data: bytes, degrees: int) -> bytes:
    """Set the track's display matrix (``tkhd``) to a clockwise rotation, as phones do for portrait video."""
    one, minus = 1 << 16, -(1 << 16)
    a, b, c, d = {90: (0, one, minus, 0), 180: (minus, 0, 0, minus), 270: (0, minus, one, 0)}[degrees]
    pos, _ = _box(data, b"tkhd")
    assert data[pos + 8] == 0, "expected a version-0 tkhd"
    matrix_at = pos + 8 + 4 + 20 + 8 + 8  # header, version+flags, times/id/duration, reserved, layer..volume
    return data[:matrix_at] + struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30) + data[matrix_at + 36 :]


def _variable_rate(data: bytes, runs: list[tuple[int, int]]) -> bytes:
    """Replace the ``stts`` table by ``(frame_count, duration_in_media_ticks)`` runs."""
    table = b"".join(struct.pack(">II", count, ticks) for count, ticks in runs)
    return _replace_box(data, b"stts", struct.pack(">I4sII", 16 + len(table), b"stts", 0, len(runs)) + table)


def _index_first(data: bytes) -> bytes:
    """Move ``moov`` in front of ``mdat`` ("fast start"), shifting the ``stco`` chunk offsets."""
    moov_pos, moov_size = _box(data, b"moov")
    mdat_pos, _ = _box(data, b"mdat")
    moov = bytearray(data[moov_pos : moov_pos + moov_size])
    stco, _ = _box(bytes(moov), b"stco")
    (count,) = struct.unpack(">I", moov[stco + 12 : stco + 16])
    for k in range(stco + 16, stco + 16 + 4 * count, 4):
        moov[k : k + 4] = struct.pack(">I", struct.unpack(">I", moov[k : k + 4])[0] + moov_size)
    return data[:mdat_pos] + bytes(moov) + data[mdat_pos:moov_pos] + data[moov_pos + moov_size :]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """3 s of moving texture at 10 fps (30 frames, 96x64), mp4v in MP4."""
    return _write(tmp_path_factory.mktemp("clip") / "clip.mp4", _moving(30))


def _pngs(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.png"))


# -- bad videos -------------------------------------------------------------------------------


def _truncated_mp4(tmp: Path, clip: Path) -> Path:
    data = clip.read_bytes()
    return _put(tmp / "cut.mp4", data[: int(len(data) * 0.3)])


def _truncated_fast_start_mp4(tmp: Path, clip: Path, keep: float = 0.6) -> Path:
    data = _index_first(clip.read_bytes())
    return _put(tmp / "cut_faststart.mp4", data[: int(len(data) * keep)])


def _truncated_avi(tmp: Path, clip: Path) -> Path:
    data = _write(tmp / "full.avi", _moving(30), fourcc="MJPG").read_bytes()
    return _put(tmp / "cut.avi", data[: int(len(data) * 0.6)])


def _garbled_mp4(tmp: Path, clip: Path) -> Path:
    data = bytearray(clip.read_bytes())
    pos, size = _box(bytes(data), b"mdat")
    data[pos + 8 : pos + size] = bytes(size - 8)
    return _put(tmp / "garbled.mp4", bytes(data))


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


TRUNCATED = r"truncated or damaged: decoding stopped after \d+ of the 30 frames its container declares .*Re-upload the complete file"
CUT_MDAT = r"truncated MP4: its 'mdat' box at byte \d+ needs \d+ bytes but the file ends \d+ bytes later"
BAD_VIDEOS = {  # name: (make(tmp, clip) -> path, reason in the message, caught by probe_video)
    "missing": (lambda tmp, clip: tmp / "gone.mp4", r"no such video file", True),
    "zero-byte": (lambda tmp, clip: _put(tmp / "empty.mp4", b""), r"empty file \(0 bytes\)", True),
    "text named .mp4": (
        lambda tmp, clip: _put(tmp / "notes.mp4", b"this is not a video at all\n"),
        r"OpenCV cannot open it as a video: not a video container \(the file starts with b'this is not a vi'\)",
        True,
    ),
    "first 30% of an mp4": (_truncated_mp4, r"truncated MP4: its 'mdat' box at byte \d+ needs \d+ bytes", True),
    # its index comes first, so OpenCV opens it; its 'mdat' box says how many bytes it should have
    "first 60% of a fast-start mp4": (_truncated_fast_start_mp4, CUT_MDAT, True),
    # a frame or two short: within the 2 % a container of estimated frame counts is allowed, so it was taken as complete
    "first 99% of a fast-start mp4": (lambda tmp, clip: _truncated_fast_start_mp4(tmp, clip, 0.99), CUT_MDAT, True),
    "first 60% of an avi": (_truncated_avi, TRUNCATED, False),
    "zero-frame mp4": (lambda tmp, clip: _write(tmp / "none.mp4", []), r"MP4 with no tracks: a container with zero frames", True),
    "zero-frame avi": (
        lambda tmp, clip: _write(tmp / "none.avi", [], fourcc="MJPG"),
        r"no decodable frames \(the container declares 0 frames: an empty recording\)",
        True,
    ),
    "PNG image named .mp4": (
        lambda tmp, clip: _put(tmp / "photo.mp4", cv2.imencode(".png", _moving(1)[0])[1].tobytes()),
        r"a PNG image, not a video \(only its name says \.mp4\)",
        True,
    ),
    "JPEG image named .mov": (
        lambda tmp, clip: _put(tmp / "photo.mov", cv2.imencode(".jpg", _moving(1)[0])[1].tobytes()),
        r"a JPEG image, not a video",
        True,
    ),
    "14x24 clip": (
        lambda tmp, clip: _write(tmp / "tiny.mp4", _moving(30, w=24, h=14)),
        r"frames of 24x14 pixels are too small: .* at least 32 pixels on each side",
        True,
    ),
    "frames over the decoding's pixel limit": (  # they landed, and anomaly synthesis then failed the whole day on them
        lambda tmp, clip: _write(tmp / "huge.avi", [np.full((6200, 8200, 3), 90, np.uint8)] * 2, fourcc="MJPG"),
        r"frames of 8200x6200 pixels are over the 50,000,000-pixel limit of every image this pipeline decodes",
        True,
    ),
    "undecodable frame data": (
        _garbled_mp4,
        r"no decodable frames \(the container declares 30 frames, none decoded: unsupported codec or damaged data\)",
        True,
    ),
}


@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_bad_video_raises_a_clear_error_naming_the_file_and_leaves_no_frames(tmp_path, clip, case):
    make, reason, caught_by_probe = BAD_VIDEOS[case]
    bad = make(tmp_path, clip)
    pattern = f"{bad.name}: .*{reason}"
    with pytest.raises(VideoError, match=pattern):
        extract_frames(bad, tmp_path / "out", every_seconds=0.1)
    assert _pngs(tmp_path / "out") == []
    if caught_by_probe:
        with pytest.raises(VideoError, match=pattern):
            probe_video(bad)
    else:  # the start decodes; only decoding to the end finds the cut
        assert probe_video(bad)["frame_count"] == 30


def test_a_webm_video_is_read_like_the_others(tmp_path):
    video = _write(tmp_path / "cam.webm", _moving(20), fourcc="VP80")
    assert probe_video(video)["frame_count"] == 20
    assert len(extract_frames(video, tmp_path / "out", every_seconds=0.5)) == 4


def test_partial_decodes_really_happen_for_the_truncated_corpus(tmp_path, clip):
    """Guards the corpus itself: OpenCV decodes some, not all, frames of these cut files."""
    for video in (_truncated_fast_start_mp4(tmp_path, clip), _truncated_avi(tmp_path, clip)):
        cap = cv2.VideoCapture(str(video))
        decoded = 0
        while cap.read()[0]:
            decoded += 1
        cap.release()
        assert 0 < decoded < 30, (video.name, decoded)


def test_the_fast_start_rewrite_itself_keeps_a_good_video(tmp_path, clip):
    video = _put(tmp_path / "faststart.mp4", _index_first(clip.read_bytes()))
    assert len(extract_frames(video, tmp_path / "out", every_seconds=0.1)) == 30


def test_arguments_out_of_range_are_value_errors(tmp_path, clip):
    for kwargs, reason in [
        ({"every_seconds": 0}, "every_seconds must be > 0"),
        ({"start_s": -1.0}, "start_s must be >= 0"),
        ({"start_s": 2.0, "end_s": 1.0}, "end_s must be >= start_s"),
        ({"max_frames": 0}, "max_frames must be >= 1"),
        ({"dedupe_distance": 65}, r"dedupe_distance must be in \[0, 64\]"),
    ]:
        with pytest.raises(ValueError, match=reason):
            extract_frames(clip, tmp_path / "out", **kwargs)


# -- probing, window, timestamps -------------------------------------------------------------


def test_probe_describes_the_video(clip, demo_video):
    assert probe_video(clip) == {"fps": 10.0, "frame_count": 30, "duration_s": 3.0, "width": 96, "height": 64, "rotation": 0}
    assert probe_video(demo_video) == {"fps": 10.0, "frame_count": 200, "duration_s": 20.0, "width": 320, "height": 240, "rotation": 0}


def test_interval_picks_frames_by_timestamp(tmp_path, clip):
    frames = extract_frames(clip, tmp_path / "out", every_seconds=0.3)
    assert [f.timestamp_s for f in frames] == [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4, 2.7]
    assert [f.frame_index for f in frames] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    assert [Path(f.path).name for f in frames] == [f"frame_{i:05d}.png" for i in range(0, 30, 3)]


def test_start_end_and_max_frames(tmp_path, clip):
    window = extract_frames(clip, tmp_path / "a", every_seconds=0.5, start_s=1.0, end_s=2.0)
    assert [(f.frame_index, f.timestamp_s) for f in window] == [(10, 1.0), (15, 1.5), (20, 2.0)]
    capped = extract_frames(clip, tmp_path / "b", every_seconds=0.5, start_s=0.2, max_frames=2)
    assert [(f.frame_index, f.timestamp_s) for f in capped] == [(2, 0.2), (7, 0.7)]
    assert len(_pngs(tmp_path / "b")) == 2
    whole = extract_frames(clip, tmp_path / "c", every_seconds=1.0, end_s=3.0)  # the video's end is allowed
    assert [f.timestamp_s for f in whole] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ({"start_s": 2.95}, r"start_s=2.95 lies past the last frame \(at 2.900 s of a 3.000 s video\)"),
        ({"start_s": 10.0}, r"start_s=10.0 lies past the last frame"),
        ({"end_s": 4.0}, r"end_s=4.0 lies past the end of the video \(3.000 s\)"),
    ],
)
def test_window_outside_the_video_is_a_clear_error(tmp_path, clip, window, reason):
    with pytest.raises(VideoError, match=f"clip.mp4: {reason}"):
        extract_frames(clip, tmp_path / "out", every_seconds=0.5, **window)
    assert _pngs(tmp_path / "out") == []


def test_variable_frame_rate_samples_evenly_in_time(tmp_path, clip):
    # media timescale 10240 ticks/s: 10 frames of 0.05 s, 10 of 0.1 s, 10 of 0.15 s (3 s in all, as before)
    vfr = _put(tmp_path / "vfr.mp4", _variable_rate(clip.read_bytes(), [(10, 512), (10, 1024), (10, 1536)]))
    frames = extract_frames(vfr, tmp_path / "out", every_seconds=0.25)
    # the first frame at or after each multiple of 0.25 s; timestamps are the frames' own, not the grid's
    assert [f.timestamp_s for f in frames] == [0.0, 0.25, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8, 2.1, 2.25, 2.55, 2.85]
    assert [f.frame_index for f in frames] == [0, 5, 10, 13, 15, 18, 20, 22, 24, 25, 27, 29]


# -- near-duplicates and determinism ---------------------------------------------------------


def test_still_segment_collapses_to_one_frame(tmp_path, caplog):
    still = _moving(1, seed=1) * 30  # 3 s of one frame, then 2 s of motion
    video = _write(tmp_path / "still_then_moving.mp4", still + _moving(20, seed=2))
    every = extract_frames(video, tmp_path / "all", every_seconds=0.5)
    assert [f.timestamp_s for f in every] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    with caplog.at_level(logging.INFO, logger="swan_anomaly.video"):
        kept = extract_frames(video, tmp_path / "dedup", every_seconds=0.5, dedupe_distance=6)
    assert [f.timestamp_s for f in kept] == [0.0, 3.0, 3.5, 4.0, 4.5]
    assert "still_then_moving.mp4: dropped 5 near-duplicate frames (pHash within 6 bits" in caplog.text
    assert len(_pngs(tmp_path / "dedup")) == 5
    hashes = [int(f.phash, 16) for f in every]
    assert max(hamming_distance(hashes[0], h) for h in hashes[1:6]) <= 6  # the still part
    assert min(hamming_distance(a, b) for a, b in zip(hashes[5:], hashes[6:])) > 6  # the moving part


def test_perceptual_hash_is_robust_to_noise_and_not_to_content():
    frame = cv2.cvtColor(_moving(1)[0], cv2.COLOR_BGR2RGB)
    noisy = np.clip(frame + np.random.default_rng(3).integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)
    other = cv2.cvtColor(_moving(1, seed=9)[0], cv2.COLOR_BGR2RGB)
    assert hamming_distance(perceptual_hash(frame), perceptual_hash(noisy)) <= 4
    assert hamming_distance(perceptual_hash(frame), perceptual_hash(other)) > 16
    assert 0 <= perceptual_hash(frame) < 2**64


def test_extraction_is_deterministic_and_identified_by_content(tmp_path, demo_video):
    first = extract_frames(demo_video, tmp_path / "a", every_seconds=2.0)
    renamed = _put(tmp_path / "renamed.mp4", demo_video.read_bytes())
    second = extract_frames(renamed, tmp_path / "b", every_seconds=2.0)
    assert len(first) == 10
    assert {f.video_id for f in first} == {video_id(demo_video)} == {f.video_id for f in second}
    for a, b in zip(first, second, strict=True):
        assert (a.frame_index, a.timestamp_s, a.phash, a.rotation) == (b.frame_index, b.timestamp_s, b.phash, b.rotation)
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    assert set(first[0].to_dict()) == {"video_id", "video_name", "frame_index", "timestamp_s", "path", "rotation", "phash"}


# -- rotation ---------------------------------------------------------------------------------


def _red_corner(image_bgr: np.ndarray) -> tuple[str, str]:
    """Which corner the red marker sits in: (``top``|``bottom``, ``left``|``right``)."""
    ys, xs = np.nonzero((image_bgr[..., 2] > 150) & (image_bgr[..., 0] < 100) & (image_bgr[..., 1] < 100))
    h, w = image_bgr.shape[:2]
    return ("top" if ys.mean() < h / 2 else "bottom", "left" if xs.mean() < w / 2 else "right")


@pytest.mark.parametrize(("degrees", "corner"), [(90, ("top", "right")), (180, ("bottom", "right")), (270, ("bottom", "left"))])
def test_rotation_metadata_turns_frames_upright(tmp_path, clip, degrees, corner):
    video = _put(tmp_path / f"rot{degrees}.mp4", _rotated(clip.read_bytes(), degrees))
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    assert cap.get(cv2.CAP_PROP_ORIENTATION_META) == degrees  # OpenCV reads the patched tkhd matrix
    ok, opencv_upright = cap.read()  # OpenCV's own auto-rotation (on by default) as the reference
    cap.release()
    assert ok

    size = (64, 96) if degrees in (90, 270) else (96, 64)
    expected = {"fps": 10.0, "frame_count": 30, "duration_s": 3.0, "width": size[0], "height": size[1], "rotation": degrees}
    assert probe_video(video) == expected
    frames = extract_frames(video, tmp_path / "out", every_seconds=1.0)
    assert {f.rotation for f in frames} == {degrees}
    first = cv2.imread(frames[0].path)
    assert first.shape == (size[1], size[0], 3)
    assert _red_corner(first) == corner  # the marker was written top-left; it moves with the rotation
    np.testing.assert_array_equal(first, opencv_upright)
