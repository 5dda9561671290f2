"""Frame extraction with OpenCV: one upright frame every ``every_seconds`` of a video, as PNG files.

A frame's identity is the video's content hash plus the frame index (see
:func:`swan_anomaly.video.probe.video_id`). Frames are chosen by presentation time, turned
upright from the container's rotation metadata, and optionally thinned of near-duplicates (a
still camera) with a 64-bit perceptual hash.

A video that cannot be read, or that stops decoding before the frame count its container
declares (a truncated upload), raises :class:`VideoError` naming the file and the reason,
and leaves no frames behind: a partial upload has another content hash than the complete
file, so keeping its frames would duplicate them once the complete file lands.

Example:
    >>> frames = extract_frames(Path("/tmp/swans.mp4"), Path("/tmp/frames"), every_seconds=1.0)  # doctest: +SKIP
    >>> [f.frame_index for f in frames]                                                         # doctest: +SKIP
    [0, 10, 20, 30]
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly._errors import VideoError
from swan_anomaly.images import encode_png
from swan_anomaly.video.probe import _check_frame_size, _declared, _no_frames_message, _open, _upright, video_id

log = logging.getLogger(__name__)


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
            (an MP4 whose media box runs past the end of the file, or decoding stops short of the
            frames its container declares), yields no decodable frames, has frames smaller than
            :data:`MIN_FRAME_SIDE` or over ``images.MAX_PIXELS``, or ``start_s``/``end_s`` lie
            outside it. No frame files remain after this error.

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
