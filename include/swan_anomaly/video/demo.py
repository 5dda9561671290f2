"""The procedural demo video: a white swan gliding over rippling water, written with OpenCV.

Example:
    >>> render_demo_video(Path("/tmp/swans.mp4"), seconds=4)  # doctest: +SKIP
    PosixPath('/tmp/swans.mp4')
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly._errors import VideoError

log = logging.getLogger(__name__)


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
