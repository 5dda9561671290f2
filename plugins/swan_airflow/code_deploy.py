"""Code deployment: the ``swan_anomaly`` wheel and ``jobs/*.py`` in the lake under ``code/{version}/``.

Databricks runs install that wheel and run those files, so every job run executes exactly
the code of the DAG that submitted it. The version is a content hash of the package sources,
the job entrypoints and ``pyproject.toml``: unchanged code is not rebuilt or re-uploaded.

Example:
    >>> deploy_code(Path(".swan/lake"))    # doctest: +SKIP
    {'version': '0.1.0-3f2a9c1b7d4e', 'uri': '/.../code/0.1.0-3f2a9c1b7d4e', 'wheel_uri': '...whl', ...}
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from swan_airflow.runtime import PROJECT_ROOT

log = logging.getLogger(__name__)


def code_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """The files whose content defines a code version."""
    files = [root / "pyproject.toml", *sorted((root / "include" / "swan_anomaly").rglob("*.py")), *sorted((root / "jobs").glob("*.py"))]
    return [f for f in files if f.is_file()]


def code_version(root: Path = PROJECT_ROOT) -> str:
    """``{package version}-{12 hex digits of the sources' sha256}``."""
    import tomllib

    digest = hashlib.sha256()
    for f in code_files(root):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    return f"{version}-{digest.hexdigest()[:12]}"


def build_wheel(out_dir: Path, root: Path = PROJECT_ROOT) -> Path:
    """Build the ``swan_anomaly`` wheel with pip into ``out_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        # Build from a clean copy so the checkout gets no build/ or *.egg-info litter.
        shutil.copytree(root, src, ignore=shutil.ignore_patterns(".venv", ".swan", ".airflow", "node_modules", ".git", "tests", "*.egg-info", "build", "__pycache__"))
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out_dir), str(src)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    wheels = sorted(out_dir.glob("swan_anomaly-*.whl"))
    if not wheels:
        msg = f"pip wheel produced no swan_anomaly wheel in {out_dir}"
        raise RuntimeError(msg)
    return wheels[-1]


def deploy_code(lake_root: Path, root: Path = PROJECT_ROOT) -> dict:
    """Upload the wheel and job entrypoints to ``code/{version}/`` of a local lake (once per version)."""
    version = code_version(root)
    target = lake_root / "code" / version
    if not (target / "_SUCCESS").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = build_wheel(Path(tmp), root)
            shutil.copy2(wheel, target / wheel.name)
        (target / "jobs").mkdir(exist_ok=True)
        for job in sorted((root / "jobs").glob("*.py")):
            shutil.copy2(job, target / "jobs" / job.name)
        (target / "_SUCCESS").write_text("")
        log.info("deployed code version %s to %s", version, target)
    else:
        log.info("code version %s already deployed at %s", version, target)
    wheel = next(target.glob("swan_anomaly-*.whl"))
    return {"version": version, "uri": str(target), "wheel_uri": str(wheel), "lake_root": str(lake_root)}
