"""Videos: identity, probing, frame extraction with OpenCV, and the procedural demo video.

A frame's identity is the video's content hash plus the frame index, so renaming a video
or dropping it in again never creates new frames. Frames are chosen by presentation time,
turned upright from the container's rotation metadata, and optionally thinned of
near-duplicates (a still camera) with a 64-bit perceptual hash.

A video that cannot be read, or that stops decoding before the frame count its container
declares (a truncated upload), raises :class:`VideoError` naming the file and the reason,
and leaves no frames behind: a partial upload has another content hash than the complete
file, so keeping its frames would duplicate them once the complete file lands.

Example:
    >>> from pathlib import Path
    >>> video = render_demo_video(Path("/tmp/swans.mp4"), seconds=4)       # doctest: +SKIP
    >>> probe_video(video)                                                  # doctest: +SKIP
    {'fps': 10.0, 'frame_count': 40, 'duration_s': 4.0, 'width': 320, 'height': 240, 'rotation': 0}
    >>> frames = extract_frames(video, Path("/tmp/frames"), every_seconds=1.0)  # doctest: +SKIP
    >>> [f.frame_index for f in frames]                                      # doctest: +SKIP
    [0, 10, 20, 30]
"""

from __future__ import annotations

import logging
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly._errors import VideoError
from swan_anomaly.images import encode_png
from swan_anomaly.lake import sha256_file

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")

#: Frames whose shorter side is below this many pixels are refused: the anomaly families and
#: the model's crop need room (a 14x24 clip once failed anomaly synthesis for a whole day).
MIN_FRAME_SIDE = 32

#: Leading bytes of still-image formats. FFmpeg opens such a file as a one-frame "video" whatever
#: its name says, so a photo renamed ``.mp4`` is refused by its bytes.
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}

#: Clockwise rotation (degrees, as OpenCV's ``CAP_PROP_ORIENTATION_META`` reports it) -> ``cv2.rotate`` code.
_ROTATE_CODES = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


@dataclass(frozen=True)
class FrameRecord:
    """One extracted frame, written losslessly (PNG) to ``path``.

    Attributes:
        video_id: content hash of the video (see :func:`video_id`).
        video_name: the video's file name.
        frame_index: position of the frame in decode order, counting every frame from 0.
        timestamp_s: the frame's presentation time in seconds (microsecond precision).
        path: where the upright RGB frame was written.
        rotation: clockwise degrees (0/90/180/270) applied to turn the stored frame upright.
        phash: 64-bit perceptual hash of the written frame, 16 hex digits (see :func:`perceptual_hash`).
    """

    video_id: str
    video_name: str
    frame_index: int
    timestamp_s: float
    path: str
    rotation: int
    phash: str

    def to_dict(self) -> dict:
        return asdict(self)


def video_id(path: Path) -> str:
    """Content hash of a video file (first 16 hex digits of its sha256)."""
    return sha256_file(path)[:16]


def distinct_videos(paths: list[Path]) -> tuple[list[Path], list[dict]]:
    """The videos to process among ``paths``: each content once, unreadable files set aside.

    The same bytes under two names would give the same frames (a frame's identity is the
    video's content hash and its index) twice: the first name (sorted) is kept and the others
    are set aside as duplicates. A file that cannot be read (permissions, gone) is set aside too.

    Returns:
        ``(kept, rejected)``: the kept paths in sorted order, and ``{"video", "reason"}`` per
        file set aside.

    Example:
        >>> distinct_videos([Path("b.mp4"), Path("a.mp4")])  # doctest: +SKIP
        ([PosixPath('a.mp4')], [{'video': 'b.mp4', 'reason': 'b.mp4: the same video as a.mp4 (same content); processed once'}])
    """
    kept: list[Path] = []
    rejected: list[dict] = []
    first_of: dict[str, Path] = {}
    for path in sorted(paths):
        try:
            vid = video_id(path)
        except OSError as exc:
            rejected.append({"video": str(path), "reason": f"{path}: cannot read it ({exc.strerror or exc})"})
            continue
        if vid in first_of:
            rejected.append({"video": str(path), "reason": f"{path}: the same video as {first_of[vid]} (same content); processed once"})
            continue
        first_of[vid] = path
        kept.append(path)
    return kept, rejected


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of an image.

    The image is shrunk to 32x32 grey, transformed with a 2-D DCT, and each of the 8x8
    lowest frequencies becomes one bit: set when above their median. Small changes
    (noise, compression, ripples) flip few bits; a different scene flips about half.

    Args:
        image: ``[H, W, 3]`` uint8 RGB image.

    Returns:
        The hash as an int in ``[0, 2**64)``; compare two with :func:`hamming_distance`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        >>> noisy = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        >>> hamming_distance(perceptual_hash(img), perceptual_hash(noisy))  # a noisy copy: few bits
        6
        >>> hamming_distance(perceptual_hash(img), perceptual_hash(img[::-1]))  # upside down: about half
        32
    """
    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(grey.astype(np.float32))[:8, :8]
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def hamming_distance(a: int, b: int) -> int:
    """Number of differing bits between two hashes, e.g. ``hamming_distance(0b1010, 0b0110) == 2``."""
    return (a ^ b).bit_count()


def probe_video(path: Path) -> dict:
    """Check that a video opens and decodes, and describe it, without extracting anything.

    Reads the container's properties and decodes the first frame only, so a file that is
    cut short after a readable start passes here and fails in :func:`extract_frames`.

    Args:
        path: a video file.

    Returns:
        ``{"fps", "frame_count", "duration_s", "width", "height", "rotation"}``: frame rate
        and frame count as the container declares them, ``duration_s = frame_count / fps``
        (0.0 when either is unknown), the upright frame size in pixels, and the clockwise
        rotation in degrees that turns stored frames upright.

    Raises:
        VideoError: the file is missing, empty, a still image or not a video, truncated
            before its index, has unsupported rotation metadata, yields no decodable frame, or
            its frames are smaller than :data:`MIN_FRAME_SIDE`.

    Example:
        >>> probe_video(Path("/tmp/swans.mp4"))["rotation"]  # doctest: +SKIP
        0
    """
    cap, rotation = _open(path)
    try:
        fps, declared = _declared(cap)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise VideoError(_no_frames_message(path, declared))
    height, width = _upright(frame, rotation).shape[:2]
    _check_frame_size(path, width, height)
    duration = declared / fps if fps > 0 and declared > 0 else 0.0
    return {"fps": fps, "frame_count": declared, "duration_s": round(duration, 6), "width": width, "height": height, "rotation": rotation}


def extract_frames(
    video_path: Path,
    out_dir: Path,
    *,
    every_seconds: float = 0.5,
    start_s: float | None = None,
    end_s: float | None = None,
    max_frames: int | None = None,
    dedupe_distance: int | None = None,
) -> list[FrameRecord]:
    """Write one upright frame every ``every_seconds`` of a video as PNG files.

    Frames are chosen by their presentation time (``CAP_PROP_POS_MSEC``): the first frame
    at or after each point ``start_s, start_s + every_seconds, ...`` is kept, so variable
    frame rates sample evenly in time. The video is decoded sequentially from its start, so
    frame indices are exact even when ``start_s`` is late. Rotation metadata is applied
    here (OpenCV's auto-rotation is turned off), so ``FrameRecord.rotation`` is exactly the
    rotation applied.

    Args:
        video_path: a video OpenCV's FFmpeg backend can read (.mp4/.avi/.mov/...).
        out_dir: where ``{video_id}/frame_{index:05d}.png`` files go.
        every_seconds: sampling interval in seconds (> 0).
        start_s: first sampling point in seconds (None: 0). Must lie inside the video.
        end_s: last moment to sample, inclusive (None: the end). Must not lie past the end.
        max_frames: stop after keeping this many frames (None: no limit).
        dedupe_distance: drop a sampled frame whose perceptual hash lies within this many
            bits (0-64) of the last kept frame, so a still camera does not flood the set
            (None: keep all). 4-8 drops only near-identical frames.

    Returns:
        The frames kept, in time order.

    Raises:
        ValueError: an argument is out of range.
        VideoError: the file is missing, empty, a still image or not a video, truncated
            (decoding stops short of the frames its container declares), yields no decodable
            frames, has frames smaller than :data:`MIN_FRAME_SIDE`, or ``start_s``/``end_s``
            lie outside it. No frame files remain after this error.

    Example:
        >>> frames = extract_frames(Path("/tmp/swans.mp4"), Path("/tmp/frames"), start_s=1.0, max_frames=2)  # doctest: +SKIP
        >>> [f.timestamp_s for f in frames]                                                                 # doctest: +SKIP
        [1.0, 1.5]
    """
    _check_extract_args(every_seconds, start_s, end_s, max_frames, dedupe_distance)
    cap, rotation = _open(video_path)
    records: list[FrameRecord] = []
    first_t = 0.0 if start_s is None else start_s
    try:
        vid = video_id(video_path)
        target_dir = out_dir / vid
        fps, declared = _declared(cap)
        next_t = first_t
        index = -1
        t = 0.0
        last_hash: int | None = None
        dropped = 0
        stopped_early = False
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            index += 1
            if index == 0:
                _check_frame_size(video_path, frame.shape[1], frame.shape[0])
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t <= 0 and index > 0 and fps > 0:  # some containers report no timestamps
                t = index / fps
            t = round(t, 6)  # drop float noise such as 2800.0000000000005 ms
            if end_s is not None and t > end_s + 1e-6:
                stopped_early = True
                break
            if t + 1e-6 < next_t:
                continue
            next_t += every_seconds * max(1, int((t - next_t) // every_seconds) + 1)
            rgb = cv2.cvtColor(_upright(frame, rotation), cv2.COLOR_BGR2RGB)
            phash = perceptual_hash(rgb)
            if dedupe_distance is not None and last_hash is not None and hamming_distance(phash, last_hash) <= dedupe_distance:
                dropped += 1
                continue
            last_hash = phash
            target_dir.mkdir(parents=True, exist_ok=True)
            path = target_dir / f"frame_{index:05d}.png"
            path.write_bytes(encode_png(rgb))
            records.append(FrameRecord(vid, video_path.name, index, t, str(path), rotation, f"{phash:016x}"))
            if max_frames is not None and len(records) >= max_frames:
                stopped_early = True
                break
        if not stopped_early:
            _check_complete(video_path, index + 1, t, fps, declared, first_t, end_s, records)
    except BaseException:
        for r in records:
            Path(r.path).unlink(missing_ok=True)
        raise
    finally:
        cap.release()
    if dedupe_distance is not None:
        log.info(
            "%s: dropped %d near-duplicate frames (pHash within %d bits of the last kept frame)", video_path.name, dropped, dedupe_distance
        )
    log.info(
        "%s: %d frames (every %.2fs from %.2fs, %.1f fps, rotated %d°) -> %s",
        video_path.name,
        len(records),
        every_seconds,
        first_t,
        fps,
        rotation,
        target_dir,
    )
    return records


def _check_extract_args(
    every_seconds: float, start_s: float | None, end_s: float | None, max_frames: int | None, dedupe_distance: int | None
) -> None:
    """Raise ``ValueError`` for an argument of :func:`extract_frames` out of range."""
    problems = []
    if every_seconds <= 0:
        problems.append(f"every_seconds must be > 0, got {every_seconds}")
    if start_s is not None and start_s < 0:
        problems.append(f"start_s must be >= 0, got {start_s}")
    if end_s is not None and end_s < (start_s or 0.0):
        problems.append(f"end_s must be >= start_s (or 0), got end_s={end_s}, start_s={start_s}")
    if max_frames is not None and max_frames < 1:
        problems.append(f"max_frames must be >= 1, got {max_frames}")
    if dedupe_distance is not None and not 0 <= dedupe_distance <= 64:
        problems.append(f"dedupe_distance must be in [0, 64] bits, got {dedupe_distance}")
    if problems:
        msg = "; ".join(problems)
        raise ValueError(msg)


def _check_complete(
    video_path: Path,
    decoded: int,
    last_t: float,
    fps: float,
    declared: int,
    first_t: float,
    end_s: float | None,
    records: list[FrameRecord],
) -> None:
    """After decoding to the end: raise ``VideoError`` if nothing decoded, the video is cut short, or the window lies outside it."""
    if decoded == 0:
        raise VideoError(_no_frames_message(video_path, declared))
    # Frame counts are exact in MP4/MOV/AVI sample tables and estimated from the duration elsewhere (e.g. MKV): allow 2 %.
    if declared > 0 and declared - decoded > max(2, 0.02 * declared):
        msg = (
            f"{video_path}: truncated or damaged: decoding stopped after {decoded} of the {declared} frames "
            f"its container declares (last frame at {last_t:.3f} s); no frames kept. Re-upload the complete file."
        )
        raise VideoError(msg)
    video_end = max(last_t + (1.0 / fps if fps > 0 else 0.0), declared / fps if fps > 0 and declared > 0 else 0.0)
    if not records:
        msg = (
            f"{video_path}: start_s={first_t} lies past the last frame (at {last_t:.3f} s of a {video_end:.3f} s video); "
            "no frames to extract"
        )
        raise VideoError(msg)
    if end_s is not None and end_s > video_end + 1e-6:
        msg = f"{video_path}: end_s={end_s} lies past the end of the video ({video_end:.3f} s); pass end_s <= {video_end:.3f} or None"
        raise VideoError(msg)


def _no_frames_message(video_path: Path, declared: int) -> str:
    """The error message for a video that opens but decodes no frame."""
    if declared == 0:
        return f"{video_path}: no decodable frames (the container declares 0 frames: an empty recording)"
    return f"{video_path}: no decodable frames (the container declares {declared} frames, none decoded: unsupported codec or damaged data)"


def _open(video_path: Path) -> tuple[cv2.VideoCapture, int]:
    """Open a video with OpenCV's FFmpeg backend, auto-rotation off.

    Returns:
        The open capture and the clockwise rotation (0/90/180/270) that turns its frames upright.
    """
    if not video_path.is_file():
        msg = f"{video_path}: no such video file"
        raise VideoError(msg)
    if video_path.stat().st_size == 0:
        msg = f"{video_path}: empty file (0 bytes), not a video"
        raise VideoError(msg)
    if image := _still_image_format(video_path):
        msg = f"{video_path}: a {image} image, not a video (only its name says {video_path.suffix}); upload the camera's video file"
        raise VideoError(msg)
    cap = cv2.VideoCapture(str(video_path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        msg = f"{video_path}: OpenCV cannot open it as a video: {_unopenable_reason(video_path)}"
        raise VideoError(msg)
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # rotated in _upright, so the recorded rotation is the applied one
    rotation = round(cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
    if rotation and rotation not in _ROTATE_CODES:
        cap.release()
        msg = f"{video_path}: rotation metadata of {rotation} degrees is not a multiple of 90; re-encode the video upright"
        raise VideoError(msg)
    return cap, rotation


def _still_image_format(path: Path) -> str | None:
    """The still-image format whose signature the file starts with, or None."""
    with path.open("rb") as fh:
        head = fh.read(16)
    return next((kind for magic, kind in IMAGE_SIGNATURES.items() if head.startswith(magic)), None)


def _check_frame_size(video_path: Path, width: int, height: int) -> None:
    """Raise ``VideoError`` when frames are smaller than :data:`MIN_FRAME_SIDE` on either side."""
    if min(width, height) < MIN_FRAME_SIDE:
        msg = (
            f"{video_path}: frames of {width}x{height} pixels are too small: anomaly synthesis and the model need at least "
            f"{MIN_FRAME_SIDE} pixels on each side (a thumbnail or a corrupt header?)"
        )
        raise VideoError(msg)


def _declared(cap: cv2.VideoCapture) -> tuple[float, int]:
    """Frame rate and frame count as the container declares them (0 when unknown)."""
    return max(cap.get(cv2.CAP_PROP_FPS) or 0.0, 0.0), max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def _upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate a decoded frame clockwise by ``rotation`` degrees (0/90/180/270)."""
    return cv2.rotate(frame, _ROTATE_CODES[rotation]) if rotation else frame


def _unopenable_reason(path: Path) -> str:
    """Best guess, from the file's bytes, why FFmpeg could not open it (for error messages)."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if head[4:8] == b"ftyp":
        return _mp4_layout_problem(path) or "an MP4/MOV whose index or codec FFmpeg cannot read (damaged data or unsupported codec)"
    if head[:4] in (b"RIFF", b"\x1a\x45\xdf\xa3"):
        return "an AVI/Matroska file whose header FFmpeg cannot read (truncated or damaged)"
    return f"not a video container (the file starts with {head!r})"


def _mp4_layout_problem(path: Path) -> str | None:
    """What is wrong with an MP4/MOV's top-level boxes (``ftyp``, ``mdat``, ``moov``), or None."""
    size = path.stat().st_size
    seen: dict[bytes, tuple[int, int]] = {}
    pos = 0
    with path.open("rb") as fh:
        while pos + 8 <= size:
            fh.seek(pos)
            header = fh.read(16)
            length, kind = struct.unpack(">I4s", header[:8])
            if length == 1 and len(header) == 16:  # 64-bit size follows the type
                length = struct.unpack(">Q", header[8:])[0]
            elif length == 0:  # box runs to the end of the file
                length = size - pos
            if length < 8:
                return f"damaged MP4: the box at byte {pos} has an invalid size {length}"
            if pos + length > size:
                name = kind.decode("latin-1")
                return (
                    f"truncated MP4: its '{name}' box at byte {pos} needs {length} bytes but the file ends {size - pos} bytes later "
                    "(incomplete upload?); re-upload the complete file"
                )
            seen[kind] = (pos, length)
            pos += length
        if b"moov" not in seen:
            return "MP4 without its 'moov' index box (truncated or incomplete upload); re-upload the complete file"
        moov_pos, moov_len = seen[b"moov"]
        fh.seek(moov_pos)
        moov = fh.read(moov_len)
    if not _has_child(moov, b"trak"):
        return "MP4 with no tracks: a container with zero frames (was the writer closed before any frame?)"
    return None


def _has_child(box: bytes, kind: bytes) -> bool:
    """Whether a box (header included) has a direct child box of type ``kind``."""
    pos = 8
    while pos + 8 <= len(box):
        length, child = struct.unpack(">I4s", box[pos : pos + 8])
        if child == kind:
            return True
        if length < 8:
            return False
        pos += length
    return False


def render_demo_video(path: Path, *, seconds: float = 48.0, fps: float = 10.0, width: int = 320, height: int = 240, seed: int = 7) -> Path:
    """Render a short procedural video of a white swan gliding over rippling water.

    No video of swans ships with any package, so the offline demo renders its own.

    Args:
        path: output ``.mp4`` path (written with OpenCV's ``VideoWriter``, mp4v codec).
        seconds: duration.
        fps: frame rate.
        width: frame width in pixels.
        height: frame height in pixels.
        seed: seeds the ripple pattern and the swan's path.

    Returns:
        ``path``.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():  # pragma: no cover - depends on the OpenCV build
        msg = f"{path}: OpenCV VideoWriter cannot write mp4v video"
        raise VideoError(msg)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    freqs = rng.uniform(0.04, 0.12, size=3)
    n = int(seconds * fps)
    for i in range(n):
        t = i / fps
        ripple = sum(np.sin(freqs[k] * (xx * (0.6 + 0.2 * k) + yy * 1.3) + phases[k] + t * (1.5 + k)) for k in range(3))
        shade = 0.5 + 0.08 * ripple + 0.25 * (yy / height)
        frame = np.stack([110 + 90 * shade, 70 + 80 * shade, 20 + 40 * shade], axis=-1)  # BGR water
        # the swan: glides left to right and back, bobbing gently
        cx = int(width * (0.25 + 0.35 * (0.5 - 0.5 * np.cos(2 * np.pi * t / seconds))))
        cy = int(height * 0.55 + 3 * np.sin(t * 2.0))
        facing = 1 if np.sin(2 * np.pi * t / seconds) >= 0 else -1
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        cv2.ellipse(frame, (cx, cy + 14), (34, 7), 0, 0, 360, (60, 40, 20), -1)  # reflection
        cv2.ellipse(frame, (cx, cy), (32, 14), 0, 0, 360, (245, 245, 245), -1)  # body
        cv2.ellipse(frame, (cx - facing * 18, cy - 6), (14, 8), -20 * facing, 0, 360, (235, 235, 235), -1)  # tail
        neck = np.array([[cx + facing * 20, cy - 4], [cx + facing * 26, cy - 30], [cx + facing * 30, cy - 30], [cx + facing * 26, cy - 4]])
        cv2.fillPoly(frame, [neck], (240, 240, 240))
        cv2.circle(frame, (cx + facing * 29, cy - 32), 6, (250, 250, 250), -1)  # head
        beak = np.array([[cx + facing * 34, cy - 34], [cx + facing * 43, cy - 31], [cx + facing * 34, cy - 29]])
        cv2.fillPoly(frame, [beak], (0, 120, 240))
        writer.write(frame)
    writer.release()
    log.info("rendered demo video %s (%.0fs at %.0f fps, %dx%d)", path, seconds, fps, width, height)
    return path
