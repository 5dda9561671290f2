"""Videos: identity and probing, frame extraction with OpenCV, and the procedural demo video.

Modules:

* ``probe``: a video's identity (content hash), distinct videos, probing and the checks that a
  file is a readable video (still images, truncated MP4s, tiny frames)
* ``frames``: frame extraction at an interval (upright, by presentation time, near-duplicates
  thinned with a perceptual hash)
* ``demo``: the procedural demo video of a swan on water

Every name other code uses is re-exported here, so ``from swan_anomaly.video import ...`` is
the way in.

Example:
    >>> from pathlib import Path
    >>> video = render_demo_video(Path("/tmp/swans.mp4"), seconds=4)       # doctest: +SKIP
    >>> probe_video(video)                                                  # doctest: +SKIP
    {'fps': 10.0, 'frame_count': 40, 'duration_s': 4.0, 'width': 320, 'height': 240, 'rotation': 0}
    >>> frames = extract_frames(video, Path("/tmp/frames"), every_seconds=1.0)  # doctest: +SKIP
    >>> [f.frame_index for f in frames]                                      # doctest: +SKIP
    [0, 10, 20, 30]
"""

from swan_anomaly.video.demo import render_demo_video
from swan_anomaly.video.frames import FrameRecord, extract_frames, hamming_distance, perceptual_hash
from swan_anomaly.video.probe import IMAGE_SIGNATURES, MIN_FRAME_SIDE, VIDEO_SUFFIXES, distinct_videos, probe_video, video_id

__all__ = [
    "IMAGE_SIGNATURES",
    "MIN_FRAME_SIDE",
    "VIDEO_SUFFIXES",
    "FrameRecord",
    "distinct_videos",
    "extract_frames",
    "hamming_distance",
    "perceptual_hash",
    "probe_video",
    "render_demo_video",
    "video_id",
]
