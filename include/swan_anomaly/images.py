"""Image operations shared by the ETL job, training and the served model.

This is the one preprocessing path of the project: the Spark ETL job, the training
data loader and the MLflow pyfunc all call these functions, so training and serving
cannot drift apart (the earlier pipeline this project was modelled on fed its endpoint un-normalised
raw frames: docs/architecture.md, "Where this design comes from").

Example:
    >>> import numpy as np
    >>> img = np.zeros((240, 320, 3), dtype=np.uint8)
    >>> center_biased_crop(img, bias_x=0.4).shape
    (240, 240, 3)
    >>> resize_area(img, 64).shape
    (64, 64, 3)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from swan_anomaly._errors import ImageDecodeError
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y

#: Images declaring more pixels than this are refused before decoding (decompression-bomb guard).
MAX_PIXELS = 50_000_000
#: Images :func:`preprocess` decodes and normalises together: one task of its worker threads, and
#: the bound on its temporary arrays (the output is allocated once, whatever the number of images).
PREPROCESS_CHUNK = 64
#: The most threads :func:`preprocess` uses, whatever it is asked for: each holds one chunk's
#: temporaries (about 50 MB at 224 px), and decoding gains little beyond this many cores.
MAX_PREPROCESS_WORKERS = 16


#: JPEG quality of the silver (ETL) and gold (augmentation) images, unless a job is told otherwise.
JPEG_QUALITY = 95


def check_declared_size(data: bytes, *, name: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS` pixels, before decoding it.

    Pillow reads only the header here. An image whose header Pillow cannot read is refused too:
    every format decoded afterwards had its size checked first (OpenCV decodes formats, and
    variants, that Pillow does not identify, and it would allocate their pixels unchecked).

    Raises:
        ImageDecodeError: too many pixels declared, or no header Pillow can read.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    # No warnings.catch_warnings() around this: it is not thread-safe, and preprocess decodes on
    # threads. Pillow's DecompressionBombWarning (over 89 M pixels) is then shown, and the image
    # is refused below anyway (MAX_PIXELS is lower).
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:
        msg = f"{name}: {exc}; not decoded"
        raise ImageDecodeError(msg) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        msg = f"{name}: not a decodable image ({len(data)} bytes; no image header of a known format: {exc})"
        raise ImageDecodeError(msg) from exc
    if width * height > MAX_PIXELS:
        msg = f"{name}: image declares {width}x{height} pixels, over the {MAX_PIXELS:,}-pixel limit (decompression bomb?); not decoded"
        raise ImageDecodeError(msg)


#: In a JPEG's entropy-coded data, the next marker: FF followed by anything but a stuffed zero, a restart marker or fill.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_cut_short(data: bytes) -> bool:
    """Whether a JPEG's bytes end before its end-of-image marker (FFD9), walking its segments and scans from the start.

    Whatever follows that marker (a phone's motion-photo video, a maker's trailer) is not the image's, so it
    is not searched. Bytes that are not a sequence of JPEG segments are OpenCV's to judge: False.
    """
    pos, size = 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return False
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker == 0xDA:  # the scan's entropy-coded data runs to the next marker
                found = _NEXT_MARKER.search(data, pos)
                if found is None:
                    return True
                pos = found.start()
    return True


def decode_image(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode JPEG/PNG/... bytes into an RGB image.

    Args:
        data: encoded image bytes.
        name: what to call the image in error messages (a path or an id).

    Returns:
        ``[H, W, 3]`` uint8 RGB array. Grayscale is expanded, alpha is dropped,
        16-bit images keep their high byte.

    Raises:
        ImageDecodeError: the bytes are empty, not an image, or declare more than
            :data:`MAX_PIXELS` pixels (checked from the header, before any pixel is decoded).
    """
    if not data:
        msg = f"{name}: empty image (0 bytes)"
        raise ImageDecodeError(msg)
    check_declared_size(data, name=name)
    if data[:3] == b"\xff\xd8\xff" and _jpeg_cut_short(data):
        # OpenCV decodes a cut-off JPEG "successfully", greying out the missing rows
        msg = f"{name}: truncated JPEG ({len(data)} bytes): no end-of-image marker after the last scan"
        raise ImageDecodeError(msg)
    buf = np.frombuffer(data, dtype=np.uint8)
    # Decoded straight to 8-bit, 3 channels: the codec drops alpha and keeps the high byte of 16-bit
    # samples as it reads, so an image costs 3 bytes a pixel whatever it declares (a 16-bit RGBA
    # one decoded unchanged, then scaled in float64, cost 40). EXIF orientation is not applied:
    # frames are used as their pixels are stored.
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        msg = f"{name}: not a decodable image ({len(data)} bytes; OpenCV could not decode it)"
        raise ImageDecodeError(msg)
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        msg = f"{name}: image of {img.shape[1]}x{img.shape[0]} pixels exceeds the {MAX_PIXELS:,}-pixel limit"
        raise ImageDecodeError(msg)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


def encode_jpeg(image: np.ndarray, *, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an RGB ``[H, W, 3]`` uint8 image as JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        msg = f"JPEG encoding failed for an image of shape {image.shape}"
        raise ImageDecodeError(msg)
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """Encode an RGB ``[H, W, 3]`` uint8 image as lossless PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        msg = f"PNG encoding failed for an image of shape {image.shape}"
        raise ImageDecodeError(msg)
    return buf.tobytes()


def center_biased_crop(image: np.ndarray, *, bias_x: float = CROP_BIAS_X, bias_y: float = CROP_BIAS_Y) -> np.ndarray:
    """Cut the largest square from an image, centred at a biased point.

    Args:
        image: ``[H, W, C]`` array.
        bias_x: horizontal centre of the crop as a fraction of the width (0.5 = centre;
            the default 0.40 suits the swan scene, where the swans sit left of centre).
        bias_y: vertical centre as a fraction of the height.

    Returns:
        ``[S, S, C]`` view with ``S = min(H, W)``; the window is clamped inside the image.
    """
    x0, y0, side = crop_window(image.shape[0], image.shape[1], bias_x=bias_x, bias_y=bias_y)
    return image[y0 : y0 + side, x0 : x0 + side]


def crop_window(height: int, width: int, *, bias_x: float = CROP_BIAS_X, bias_y: float = CROP_BIAS_Y) -> tuple[int, int, int]:
    """The square kept by :func:`center_biased_crop`: ``(x0, y0, side)`` in pixels.

    Anomaly synthesis uses it to place defects where the crop keeps them, so a frame
    labelled abnormal still shows its anomaly after the ETL crop.
    """
    if not (0.0 <= bias_x <= 1.0 and 0.0 <= bias_y <= 1.0):
        msg = f"crop bias must lie in [0, 1], got bias_x={bias_x}, bias_y={bias_y}"
        raise ValueError(msg)
    side = min(height, width)
    x0 = min(max(int(round(bias_x * width - side / 2)), 0), width - side)
    y0 = min(max(int(round(bias_y * height - side / 2)), 0), height - side)
    return x0, y0, side


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size x size`` with area interpolation (no aliasing when shrinking)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def crop_and_resize(image: np.ndarray, *, size: int, bias_x: float = CROP_BIAS_X, bias_y: float = CROP_BIAS_Y) -> np.ndarray:
    """Center-biased square crop followed by an area resize to ``size``: ``[size, size, 3]`` uint8.

    Always a new array, never a view of ``image``: when the crop is already ``size`` wide, a view
    would keep the whole decoded image alive until the batch is stacked (a large frame each).

    Example:
        >>> frame = np.zeros((300, 200, 3), dtype=np.uint8)
        >>> out = crop_and_resize(frame, size=200)
        >>> out.shape, np.shares_memory(out, frame)
        ((200, 200, 3), False)
    """
    out = resize_area(center_biased_crop(image, bias_x=bias_x, bias_y=bias_y), size)
    return out.copy() if np.shares_memory(out, image) else out


def normalize_into(out: np.ndarray, images: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> None:
    """Turn ``[B, H, W, 3]`` uint8 RGB ``images`` into ``out`` (``[B, 3, H, W]`` float32), scaled to [0, 1] then standardised.

    The same values as ``(x / 255 - mean) / std`` in float32; what :func:`preprocess` and so the
    served pyfunc feed the model.

    The pixels are converted into ``out`` itself and worked on there: no float32 temporary per
    chunk of images, and no second copy. Such a temporary (38 MB for 64 images at 224 px) is
    above glibc's mmap threshold, so each chunk mapped fresh pages and faulted them in: in place
    is 4.8x faster on one core (``bench/normalize_throughput.py``, docs/BENCHMARKS.md).

    Example:
        >>> out = np.empty((1, 3, 1, 2), dtype=np.float32)
        >>> normalize_into(out, np.array([[[[0, 255, 51], [255, 0, 51]]]], dtype=np.uint8), mean=(0.5,) * 3, std=(0.5,) * 3)
        >>> out[0, :, 0, 0].tolist(), out[0, :, 0, 1].tolist()
        ([-1.0, 1.0, -0.6000000238418579], [1.0, -1.0, -0.6000000238418579])
    """
    np.copyto(out, images.transpose(0, 3, 1, 2), casting="unsafe")  # uint8 to float32 is exact
    out /= np.float32(255.0)
    out -= np.asarray(mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(std, dtype=np.float32)[:, None, None]


def preprocess_threads(images: int, workers: int) -> int:
    """How many threads :func:`preprocess` runs for ``images`` images when asked for ``workers``: one per chunk, at most
    :data:`MAX_PREPROCESS_WORKERS`.

    Example:
        >>> preprocess_threads(100, 8), preprocess_threads(10_000, 64), preprocess_threads(10, 8)
        (2, 16, 1)
    """
    return max(1, min(workers, MAX_PREPROCESS_WORKERS, -(-images // PREPROCESS_CHUNK)))


def _in_chunks(count: int, fill, workers: int) -> None:
    """Call ``fill(start)`` for each :data:`PREPROCESS_CHUNK` of ``count`` images, on :func:`preprocess_threads` threads.

    The chunks run in input order on one thread, or all at once on a pool; either way the first
    failing chunk's error (in input order) is raised.
    """
    starts = range(0, count, PREPROCESS_CHUNK)
    workers = preprocess_threads(count, workers)
    if workers <= 1:
        for start in starts:
            fill(start)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="swan-preprocess") as pool:
        for _ in pool.map(fill, starts):  # in input order: the first failing chunk's error is raised
            pass


def _decode_chunk(images: Sequence[bytes], start: int, *, size: int, bias_x: float, bias_y: float, names: Sequence[str]) -> np.ndarray:
    """``[b, size, size, 3]`` uint8: the chunk of ``images`` from ``start``, decoded, cropped and resized."""
    stop = min(start + PREPROCESS_CHUNK, len(images))
    return np.stack(
        [crop_and_resize(decode_image(images[i], name=names[i]), size=size, bias_x=bias_x, bias_y=bias_y) for i in range(start, stop)]
    )


def decode_pixels(
    images: Sequence[bytes],
    *,
    size: int,
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
    names: Sequence[str] | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Decode, crop and resize encoded images into ``[B, 3, size, size]`` uint8: the model's input before normalising.

    What training keeps in memory: a quarter of the bytes of :func:`preprocess`'s float32, so a
    quarter to allocate and fault in, to copy to a GPU and to hold there. It is normalised a batch
    at a time where the model runs (:func:`swan_anomaly.modeling.normalize_pixels`, the same values as
    :func:`normalize_into` bit for bit). Chunks, threads and errors as for :func:`preprocess`.

    Example:
        >>> png = encode_png(np.full((40, 60, 3), 255, dtype=np.uint8))
        >>> x = decode_pixels([png] * 3, size=16, workers=2)
        >>> x.shape, x.dtype.name, int(x.min())
        ((3, 3, 16, 16), 'uint8', 255)
    """
    names = names or [f"image[{i}]" for i in range(len(images))]
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)

    def fill(start: int) -> None:
        batch = _decode_chunk(images, start, size=size, bias_x=bias_x, bias_y=bias_y, names=names)
        out[start : start + len(batch)] = batch.transpose(0, 3, 1, 2)

    _in_chunks(len(images), fill, workers)
    return out


def preprocess(
    images: Sequence[bytes],
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    bias_x: float = CROP_BIAS_X,
    bias_y: float = CROP_BIAS_Y,
    names: Sequence[str] | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Decode, crop, resize and normalise encoded images: the model's input, as the served pyfunc computes it.

    Images already cropped and resized by the ETL job pass through the crop and resize unchanged
    (square, right size). Training decodes with :func:`decode_pixels` instead and normalises each
    batch where the model runs, to the same values.

    The images are handled :data:`PREPROCESS_CHUNK` at a time, each chunk written into one
    output array, so the temporaries stay small however many images there are. With
    ``workers`` above 1 the chunks run on that many threads (at most
    :data:`MAX_PREPROCESS_WORKERS`, one per chunk): OpenCV's decoding and resizing and
    numpy's arithmetic release the GIL, so the threads use that many cores, and the result is
    the same array bit for bit. An image that cannot be decoded raises
    :class:`~swan_anomaly._errors.ImageDecodeError` naming it (the first such image in input
    order).

    Returns:
        ``[B, 3, size, size]`` float32 array (``B`` may be 0).

    Example:
        >>> import numpy as np
        >>> png = encode_png(np.full((40, 60, 3), 255, dtype=np.uint8))
        >>> x = preprocess([png] * 3, size=16, mean=(0.5,) * 3, std=(0.5,) * 3, workers=2)
        >>> x.shape, float(x.min()), float(x.max())
        ((3, 3, 16, 16), 1.0, 1.0)
    """
    names = names or [f"image[{i}]" for i in range(len(images))]
    out = np.empty((len(images), 3, size, size), dtype=np.float32)

    def fill(start: int) -> None:
        batch = _decode_chunk(images, start, size=size, bias_x=bias_x, bias_y=bias_y, names=names)
        normalize_into(out[start : start + len(batch)], batch, mean=mean, std=std)

    _in_chunks(len(images), fill, workers)
    return out
