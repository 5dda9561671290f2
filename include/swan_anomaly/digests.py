"""The sha256 of a file's bytes, read in chunks: the digest every content identity builds on.

A video's id is a prefix of it (:func:`swan_anomaly.video.probe.video_id`), the lake manifest lists
it per file, and :func:`swan_anomaly.lake.gold_files_digest` combines those of a training window.

Example:
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b"swan"); f.flush()
    ...     sha256_file(Path(f.name))[:12]
    '6856daebb011'
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks (:func:`hashlib.file_digest`)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
