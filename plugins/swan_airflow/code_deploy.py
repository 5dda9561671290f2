"""Code deployment: the ``swan_anomaly`` wheel and ``jobs/*.py`` in the lake under ``code/{version}/``.

Databricks runs install that wheel and run those files, so every job run executes exactly
the code of the DAG that submitted it. The version is a content hash of the package sources,
the job entrypoints and ``pyproject.toml``: unchanged code is not rebuilt or re-uploaded.

Example:
    >>> deploy_code(LocalLake(Path(".swan/lake")), "/Volumes/main/swan/lake")    # doctest: +SKIP
    {'version': '0.1.0-3f2a9c1b7d4e', 'uri': '/.../code/0.1.0-3f2a9c1b7d4e', 'wheel_uri': '...whl', ...}
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException

from swan_airflow.runtime import PROJECT_ROOT
from swan_anomaly.redact import without_secrets

if TYPE_CHECKING:
    from swan_anomaly.lake import Lake

log = logging.getLogger(__name__)


class WheelBuildError(AirflowFailException):
    """The wheel could not be built from the sources: the same sources fail again, so the task fails at once."""


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
    """Build the ``swan_anomaly`` wheel with pip into ``out_dir``.

    pip runs without the task's secrets (it builds from the source tree, with no index), and a
    failed build says why: the end of pip's output.

    Raises:
        WheelBuildError: pip failed, or made no wheel; the same code fails again, so no retry.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        # Build from a clean copy so the checkout gets no build/ or *.egg-info litter.
        shutil.copytree(
            root,
            src,
            ignore=shutil.ignore_patterns(
                ".venv", ".swan", ".airflow", "node_modules", ".git", "tests", "*.egg-info", "build", "__pycache__"
            ),
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out_dir), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=without_secrets(os.environ))
        if done.returncode:
            said = (done.stderr or done.stdout).strip()[-2000:]
            msg = f"pip wheel of {root} failed (exit {done.returncode}): {said}"
            raise WheelBuildError(msg)
    wheels = sorted(out_dir.glob("swan_anomaly-*.whl"))
    if not wheels:
        msg = f"pip wheel produced no swan_anomaly wheel in {out_dir}"
        raise WheelBuildError(msg)
    return wheels[-1]


def deploy_code(lake: Lake, job_lake_root: str, root: Path = PROJECT_ROOT) -> dict:
    """Put the wheel and job entrypoints under ``code/{version}/`` of the lake (once per version).

    Args:
        lake: a ``LocalLake`` or ``WasbLake``.
        job_lake_root: where the jobs see the lake; the returned URIs are under it.
    """
    version = code_version(root)
    if lake.has_code(version):
        log.info("code version %s already deployed", version)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = build_wheel(Path(tmp), root)
            files = {wheel.name: wheel, **{f"jobs/{job.name}": job for job in sorted((root / "jobs").glob("*.py"))}}
            lake.put_code(version, files)
        log.info("deployed code version %s (%s and %d job files)", version, wheel.name, len(files) - 1)
    uri = f"{job_lake_root.rstrip('/')}/code/{version}"
    wheel_name = f"swan_anomaly-{version.split('-')[0]}-py3-none-any.whl"
    from swan_airflow.databricks_runs import job_file_key

    jobs = {job_file_key(job.stem): f"{uri}/jobs/{job.name}" for job in sorted((root / "jobs").glob("*.py"))}
    return {"version": version, "uri": uri, "wheel_uri": f"{uri}/{wheel_name}", "lake_root": job_lake_root, **jobs}
