"""Video identity and probing: which files are readable videos, what they hold, which are the same.

A video's identity is its content hash (:func:`video_id`), so renaming a video or dropping it
in again never creates new frames; :func:`distinct_videos` keeps each content once.
:func:`probe_video` checks that a file opens and decodes and describes it without extracting
anything.

A file that is not a readable video raises :class:`VideoError` naming the file and the reason:
missing or empty, a still image under a video name (:data:`IMAGE_SIGNATURES`), a container
FFmpeg cannot open (for an MP4/MOV, what is wrong with its top-level boxes, e.g. an upload cut
short before its ``moov`` index), an MP4/MOV whose media box runs past the end of the file (a
"fast start" upload cut short), unsupported rotation metadata, no decodable frame, or frames
smaller than :data:`MIN_FRAME_SIDE` or over :data:`swan_anomaly.images.MAX_PIXELS`.

The private helpers that open a capture (``_open``), read its declared rate and count
(``_declared``), turn frames upright (``_upright``) and check them (``_check_frame_size``,
``_no_frames_message``) are shared with :mod:`swan_anomaly.video.frames`.

Example:
    >>> probe_video(Path("/tmp/swans.mp4"))  # doctest: +SKIP
    {'fps': 10.0, 'frame_count': 40, 'duration_s': 4.0, 'width': 320, 'height': 240, 'rotation': 0}
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from swan_anomaly._errors import VideoError
from swan_anomaly.digests import sha256_file
from swan_anomaly.images import MAX_PIXELS

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
        file set aside (with its ``video_id`` for a duplicate: the content is processed under the
        first name).

    Example:
        >>> distinct_videos([Path("b.mp4"), Path("a.mp4")])  # doctest: +SKIP
        ([PosixPath('a.mp4')], [{'video': 'b.mp4', 'reason': 'b.mp4: the same video as a.mp4 (same content); processed once',
                                'video_id': '3f2a9c0d1b2e4f5a'}])
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
            reason = f"{path}: the same video as {first_of[vid]} (same content); processed once"
            rejected.append({"video": str(path), "reason": reason, "video_id": vid})
            continue
        first_of[vid] = path
        kept.append(path)
    return kept, rejected


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
            its frames are smaller than :data:`MIN_FRAME_SIDE` or over ``images.MAX_PIXELS``.

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
    if cut := _mp4_cut_short(video_path):  # a "fast start" MP4 opens with its index in front: only its boxes tell
        cap.release()
        raise VideoError(f"{video_path}: {cut}")
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
    """Raise ``VideoError`` when frames are smaller than :data:`MIN_FRAME_SIDE` on either side, or larger than
    :data:`swan_anomaly.images.MAX_PIXELS` in all: every later step decodes the frames, and refuses an image that large."""
    if min(width, height) < MIN_FRAME_SIDE:
        msg = (
            f"{video_path}: frames of {width}x{height} pixels are too small: anomaly synthesis and the model need at least "
            f"{MIN_FRAME_SIDE} pixels on each side (a thumbnail or a corrupt header?)"
        )
        raise VideoError(msg)
    if width * height > MAX_PIXELS:  # else its frames would land, and anomaly synthesis would fail the whole day on them
        msg = (
            f"{video_path}: frames of {width}x{height} pixels are over the {MAX_PIXELS:,}-pixel limit of every image this "
            "pipeline decodes (a decompression-bomb guard); re-encode the video at a smaller size"
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


def _top_level_boxes(path: Path):
    """Yield ``(position, size, type)`` of an MP4/MOV's top-level boxes, from the start.

    A box of size 0 runs to the end of the file. The walk ends after a box whose size is invalid
    (under 8 bytes) or runs past the end of the file: there is nothing after it to read.
    """
    size, pos = path.stat().st_size, 0
    with path.open("rb") as fh:
        while pos + 8 <= size:
            fh.seek(pos)
            header = fh.read(16)
            length, kind = struct.unpack(">I4s", header[:8])
            if length == 1 and len(header) == 16:  # 64-bit size follows the type
                length = struct.unpack(">Q", header[8:])[0]
            elif length == 0:
                length = size - pos
            yield pos, length, kind
            if length < 8 or pos + length > size:
                return
            pos += length


def _cut_box(path: Path, pos: int, length: int, kind: bytes) -> str:
    """What to say of the box at ``pos`` that runs past the end of ``path``."""
    return (
        f"truncated MP4: its '{kind.decode('latin-1')}' box at byte {pos} needs {length} bytes but the file ends "
        f"{path.stat().st_size - pos} bytes later (incomplete upload?); re-upload the complete file"
    )


def _mp4_cut_short(path: Path) -> str | None:
    """Why an MP4/MOV that FFmpeg opened is cut short, from its top-level boxes: a media or index box (``mdat``,
    ``moov``, ``moof``) that declares more bytes than the file has; else None.

    An upload cut short after the index of a "fast start" MP4 opens and decodes up to the cut, and a cut
    of a frame or two is within what frame counts alone can tell. Boxes that do not parse as boxes (a
    maker's trailer) end the walk: they are FFmpeg's to judge.
    """
    with path.open("rb") as fh:
        if fh.read(8)[4:8] != b"ftyp":
            return None
    size = path.stat().st_size
    for pos, length, kind in _top_level_boxes(path):
        if length >= 8 and pos + length > size and kind in (b"mdat", b"moov", b"moof"):
            return _cut_box(path, pos, length, kind)
    return None


def _mp4_layout_problem(path: Path) -> str | None:
    """What is wrong with an MP4/MOV's top-level boxes (``ftyp``, ``mdat``, ``moov``), or None."""
    size = path.stat().st_size
    seen: dict[bytes, tuple[int, int]] = {}
    for pos, length, kind in _top_level_boxes(path):
        if length < 8:
            return f"damaged MP4: the box at byte {pos} has an invalid size {length}"
        if pos + length > size:
            return _cut_box(path, pos, length, kind)
        seen[kind] = (pos, length)
    if b"moov" not in seen:
        return "MP4 without its 'moov' index box (truncated or incomplete upload); re-upload the complete file"
    moov_pos, moov_len = seen[b"moov"]
    with path.open("rb") as fh:
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
