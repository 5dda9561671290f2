"""Benchmark footage from real photographs: a virtual hand-held camera panning across a bundled photo.

The procedural demo video (:mod:`swan_anomaly.video.demo`) is flat and easy. This renders videos
from the photographs that scikit-image ships inside its wheel (``skimage/data``; nothing is
downloaded): a camera pans slowly across the photo, upscaled as needed, with smooth motion,
hand-held jitter (translation and a little roll), a slow zoom drift, a little brightness flicker
and per-frame Gaussian sensor noise; the mp4v codec adds its compression. Every draw comes from
the ``seed``, so the same arguments give the same frames.

scikit-image is a dev/bench dependency (``requirements-dev.txt``): it is imported inside
:func:`load_photo` only, so the product imports without it.

Example:
    >>> sorted(PHOTOS) == sorted(set(PHOTOS) & set(BUNDLED_PHOTOS))
    True
    >>> render_photo_footage(Path("/tmp/coffee.mp4"), "coffee", seconds=8, seed=1)  # doctest: +SKIP
    PosixPath('/tmp/coffee.mp4')
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly._errors import VideoError

log = logging.getLogger(__name__)

#: Photos bundled in the scikit-image wheel (name -> file in ``skimage/data``); only these are ever read.
BUNDLED_PHOTOS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}

#: The scenes of the quality benchmark: colour photos with detail everywhere, one video each. The photos that
#: :mod:`swan_anomaly.quality.unseen` cuts foreign objects from (astronaut, chelsea, camera, coins) are not among them.
PHOTOS: tuple[str, ...] = ("coffee", "rocket", "motorcycle_left")

#: Share of the (rescaled) photo's width and height one view covers at zoom 1: the rest is room to pan.
VIEW_SHARE = 0.6
#: Gaussian sensor noise per pixel and channel, in grey levels.
NOISE_SIGMA = 2.5


@functools.lru_cache(maxsize=16)
def load_photo(name: str) -> np.ndarray:
    """A photo bundled in the scikit-image wheel as a BGR ``[H, W, 3]`` uint8 array (read-only; copy to change it).

    Grey photos are expanded to three equal channels. Only files already inside the installed
    wheel's ``skimage/data`` folder are read (:data:`BUNDLED_PHOTOS`): nothing is ever fetched.

    Raises:
        ValueError: ``name`` is not a bundled photo.
        FileNotFoundError: the installed scikit-image lacks the file.
        ModuleNotFoundError: scikit-image is not installed (``pip install -r requirements-dev.txt``).

    Example:
        >>> load_photo("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown photo 'nope'; bundled photos: ['astronaut', 'brick', 'camera', 'chelsea', 'coffee', 'coins', \
'grass', 'gravel', 'hubble_deep_field', 'immunohistochemistry', 'moon', 'motorcycle_left', 'retina', 'rocket']
    """
    if name not in BUNDLED_PHOTOS:
        msg = f"unknown photo {name!r}; bundled photos: {sorted(BUNDLED_PHOTOS)}"
        raise ValueError(msg)
    import skimage.data

    path = Path(skimage.data.__file__).parent / BUNDLED_PHOTOS[name]
    if not path.is_file():
        msg = f"{path}: photo {name!r} is not in this scikit-image installation (only bundled photos are used, never downloaded)"
        raise FileNotFoundError(msg)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:  # pragma: no cover - a damaged installation
        msg = f"{path}: OpenCV cannot decode photo {name!r}"
        raise FileNotFoundError(msg)
    image.flags.writeable = False
    return image


def _fitted(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo rescaled so that one ``width x height`` view covers :data:`VIEW_SHARE` of it on the tighter axis."""
    h, w = photo.shape[:2]
    scale = max(height / (VIEW_SHARE * h), width / (VIEW_SHARE * w))
    size = (max(width + 2, round(w * scale)), max(height + 2, round(h * scale)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _wobble(rng: np.random.Generator, n: int, *, freqs: tuple[float, float], amplitude: float) -> tuple[np.ndarray, ...]:
    """``n`` sine components of random frequency (Hz) and phase; their amplitudes sum to ``amplitude``."""
    f = rng.uniform(*freqs, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    weight = rng.uniform(0.5, 1.5, size=n)
    return f, phase, amplitude * weight / weight.sum()


def _wave(t: float, wobble: tuple[np.ndarray, ...]) -> float:
    f, phase, amp = wobble
    return float(np.sum(amp * np.sin(2 * np.pi * f * t + phase)))


def render_photo_footage(
    path: Path, photo: str, *, seconds: float, fps: float = 10.0, width: int = 320, height: int = 240, seed: int
) -> Path:
    """Render a video of a virtual hand-held camera panning slowly across a bundled photograph.

    The camera's centre follows a slow Lissajous path (periods of 30-60 s per axis, so a short
    video pans as slowly as a long one) across the photo rescaled so that the view covers 60 % of
    it; on top come hand-held jitter (about 1.5 px of shake at 0.4-3 Hz and 0.4 degrees of roll),
    a zoom drift of up to 6 % (period 15-40 s), a brightness flicker of about 3 % and Gaussian
    sensor noise (sigma :data:`NOISE_SIGMA` levels) drawn anew for every frame. Borders are
    reflected, never black.

    Args:
        path: output ``.mp4`` path (OpenCV ``VideoWriter``, mp4v codec, as the demo video).
        photo: a key of :data:`BUNDLED_PHOTOS` (the benchmark uses :data:`PHOTOS`).
        seconds: duration.
        fps: frame rate.
        width: frame width in pixels.
        height: frame height in pixels.
        seed: seeds the path, the jitter, the flicker and the noise.

    Returns:
        ``path``.

    Raises:
        ValueError: a non-positive duration, rate or size, or an unknown photo.
        VideoError: OpenCV cannot write mp4v video.
    """
    if seconds <= 0 or fps <= 0 or width < 32 or height < 32:
        msg = f"need seconds > 0, fps > 0 and frames of at least 32x32 px, got {seconds}, {fps}, {width}x{height}"
        raise ValueError(msg)
    scene = _fitted(load_photo(photo), width, height).astype(np.float32)
    sh, sw = scene.shape[:2]
    rng = np.random.default_rng(seed)
    zoom_amp, roll_amp, shake_amp = 0.06, 0.4, 1.5
    # room for the centre: the view at its widest zoom, rolled, shaken, stays inside the scene
    half_w = 0.5 * (1 + zoom_amp) * (width * math.cos(math.radians(roll_amp)) + height * math.sin(math.radians(roll_amp)))
    half_h = 0.5 * (1 + zoom_amp) * (height * math.cos(math.radians(roll_amp)) + width * math.sin(math.radians(roll_amp)))
    reach_x, reach_y = max(0.0, sw / 2 - half_w - shake_amp - 2), max(0.0, sh / 2 - half_h - shake_amp - 2)
    period_x, period_y, period_zoom = rng.uniform(30, 60), rng.uniform(30, 60), rng.uniform(15, 40)
    phase_x, phase_y, phase_zoom = rng.uniform(0, 2 * np.pi, size=3)
    shake_x, shake_y = (_wobble(rng, 3, freqs=(0.4, 3.0), amplitude=shake_amp) for _ in range(2))
    roll = _wobble(rng, 2, freqs=(0.2, 1.5), amplitude=roll_amp)
    flicker = _wobble(rng, 2, freqs=(0.5, 4.0), amplitude=0.02)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():  # pragma: no cover - depends on the OpenCV build
        msg = f"{path}: OpenCV VideoWriter cannot write mp4v video"
        raise VideoError(msg)
    n = max(1, int(round(seconds * fps)))
    try:
        for i in range(n):
            t = i / fps
            cx = sw / 2 + reach_x * math.sin(2 * math.pi * t / period_x + phase_x) + _wave(t, shake_x)
            cy = sh / 2 + reach_y * math.sin(2 * math.pi * t / period_y + phase_y) + _wave(t, shake_y)
            zoom = 1 + zoom_amp * math.sin(2 * math.pi * t / period_zoom + phase_zoom)  # scene px per output px
            theta = math.radians(_wave(t, roll))
            cos, sin = zoom * math.cos(theta), zoom * math.sin(theta)
            # output (u, v) -> scene (x, y) = centre + zoom * R(theta) * ((u, v) - output centre)
            matrix = np.array(
                [[cos, -sin, cx - cos * width / 2 + sin * height / 2], [sin, cos, cy - sin * width / 2 - cos * height / 2]], np.float32
            )
            view = cv2.warpAffine(
                scene, matrix, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
            )
            gain = 1 + _wave(t, flicker) + rng.normal(0, 0.005)
            frame = view * gain + rng.normal(0, NOISE_SIGMA, size=view.shape).astype(np.float32)
            writer.write(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    finally:
        writer.release()
    log.info("rendered %s footage %s (%.0fs at %.0f fps, %dx%d, seed %d)", photo, path, seconds, fps, width, height, seed)
    return path
