"""Videos: identity, frame extraction with OpenCV, and the procedural demo video.

A frame's identity is the video's content hash plus the frame index, so renaming a video
or dropping it in again never creates new frames.

Example:
    >>> from pathlib import Path
    >>> video = render_demo_video(Path("/tmp/swans.mp4"), seconds=4)       # doctest: +SKIP
    >>> frames = extract_frames(video, Path("/tmp/frames"), every_seconds=1.0)  # doctest: +SKIP
    >>> [f.frame_index for f in frames]                                      # doctest: +SKIP
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
from swan_anomaly.lake import sha256_file

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


@dataclass(frozen=True)
class FrameRecord:
    """One extracted frame, written losslessly (PNG) to ``path``."""

    video_id: str
    video_name: str
    frame_index: int
    timestamp_s: float
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


def video_id(path: Path) -> str:
    """Content hash of a video file (first 16 hex digits of its sha256)."""
    return sha256_file(path)[:16]


def extract_frames(video_path: Path, out_dir: Path, *, every_seconds: float = 0.5, max_frames: int | None = None) -> list[FrameRecord]:
    """Write one frame every ``every_seconds`` of a video as PNG files.

    Frames are chosen by their presentation time (``CAP_PROP_POS_MSEC``), so variable
    frame rates sample evenly in time.

    Args:
        video_path: a video OpenCV can read (.mp4/.avi/.mov/...).
        out_dir: where ``{video_id}/frame_{index:05d}.png`` files go.
        every_seconds: sampling interval in seconds (> 0).
        max_frames: stop after this many frames (None: whole video).

    Returns:
        The frames written, in time order.

    Raises:
        VideoError: the file is missing, empty, not a video, or has no frames.
    """
    if every_seconds <= 0:
        msg = f"every_seconds must be > 0, got {every_seconds}"
        raise ValueError(msg)
    if not video_path.is_file():
        msg = f"{video_path}: no such video file"
        raise VideoError(msg)
    if video_path.stat().st_size == 0:
        msg = f"{video_path}: empty file (0 bytes), not a video"
        raise VideoError(msg)
    vid = video_id(video_path)
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        msg = f"{video_path}: OpenCV cannot open it as a video (corrupt or unsupported container/codec)"
        raise VideoError(msg)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    target_dir = out_dir / vid
    target_dir.mkdir(parents=True, exist_ok=True)
    records: list[FrameRecord] = []
    next_t = 0.0
    index = -1
    try:
        while max_frames is None or len(records) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            index += 1
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if t <= 0 and index > 0 and fps > 0:  # some containers report no timestamps
                t = index / fps
            if t + 1e-6 < next_t:
                continue
            path = target_dir / f"frame_{index:05d}.png"
            path.write_bytes(encode_png(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            records.append(FrameRecord(vid, video_path.name, index, round(t, 3), str(path)))
            next_t += every_seconds * max(1, int((t - next_t) // every_seconds) + 1)
    finally:
        cap.release()
    if not records:
        msg = f"{video_path}: no decodable frames (0 frames read; truncated or not a video)"
        raise VideoError(msg)
    log.info("%s: %d frames (every %.2fs, %.1f fps) -> %s", video_path.name, len(records), every_seconds, fps, target_dir)
    return records


def render_demo_video(
    path: Path, *, seconds: float = 48.0, fps: float = 10.0, width: int = 320, height: int = 240, seed: int = 7
) -> Path:
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
