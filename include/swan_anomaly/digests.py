"""Content digests: what makes a file, a video or a dataset the same one across runs.

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
