"""Run-scoped facts for tasks: settings, dataset id, landing-zone videos, the lake, job results, the registry client.

The Databricks workspace's authentication is in :mod:`swan_airflow.databricks_auth`.

The dataset id and the landing window of a run are :func:`swan_anomaly.lake.dataset_id_for` and
:func:`swan_anomaly.lake.landing_window` (pure date rules, beside the lake layout they name).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swan_anomaly.lake import Lake

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def settings(env=None):
    """Every setting (:class:`swan_anomaly.config.Settings`, read from the environment or ``env``).

    Raises:
        AirflowFailException: a setting is malformed (no retry: only a fixed deployment helps).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_anomaly.config import ConfigError, Settings

    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc


def arrival_date(path: Path, landing_dir: Path) -> dt.date:
    """A video's arrival date: its ``landing/YYYY-MM-DD/`` folder, else its modification day (UTC)."""
    for part in path.relative_to(landing_dir).parts[:-1]:
        try:
            return dt.date.fromisoformat(part.removeprefix("date="))
        except ValueError:
            continue
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC).date()


def find_landed_videos(landing_dir: Path, start: dt.date, end: dt.date) -> list[Path]:
    """Videos under ``landing_dir`` whose arrival date lies in ``[start, end)``, sorted."""
    from swan_anomaly.video import VIDEO_SUFFIXES

    if not landing_dir.is_dir():
        return []
    found = [
        p
        for p in sorted(landing_dir.rglob("*"))
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and start <= arrival_date(p, landing_dir) < end
    ]
    log.info("landing zone %s: %d videos arrived in [%s, %s)", landing_dir, len(found), start, end)
    return found


def jobs_dir() -> Path:
    """Where the job entrypoints live (``SWAN_JOBS_DIR``, default ``<project>/jobs``)."""
    return settings().jobs_dir or PROJECT_ROOT / "jobs"


def lake():
    """The lake the DAG writes to: ``SWAN_LAKE_BACKEND`` ``local`` (default, ``SWAN_LAKE_ROOT``) or ``azure``.

    ``azure`` uses the Airflow ``wasb`` connection ``SWAN_LAKE_CONN_ID`` (default ``swan_lake``),
    container ``SWAN_LAKE_CONTAINER`` (default ``swan``) and folder ``SWAN_LAKE_PREFIX``. Both
    are a :class:`swan_anomaly.lake.Lake`; only the local one has ``result_path`` (local jobs).
    """
    s = settings()
    if s.lake_backend == "local":
        from swan_anomaly.lake import LocalLake

        return LocalLake(s.lake_root)
    from swan_airflow.azure_lake import WasbLake

    return WasbLake(conn_id=s.lake_conn_id, container=s.lake_container, prefix=s.lake_prefix)


def optional_result(store: Lake, run_id: str, job: str) -> dict | None:
    """``runs/{run_id}/{job}.json`` of either lake, or None when that step wrote none (it failed or did not run)."""
    from swan_anomaly import LakeError

    try:
        return store.read_result(run_id, job)
    except LakeError:
        return None


def read_held_out_rows(store: Lake, run_id: str, split: str) -> list[list]:
    """The training job's ``held_out`` rows of ``split`` (``val`` or ``test``) for run ``run_id``.

    Raises:
        AirflowFailException: the training result lists none (it was written by an older job).
    """
    rows = store.read_result(run_id, "train").get("held_out", {}).get(split)
    if rows is None:
        from airflow.sdk.exceptions import AirflowFailException

        msg = f"the training result of run {run_id} lists no held-out {split} rows (a job of an older version wrote it); clear run_training"
        raise AirflowFailException(msg)
    return rows


def job_lake_root() -> str:
    """Where the jobs see the lake (their ``--lake-root``).

    Locally the lake directory itself. With the Azure lake, ``SWAN_JOB_LAKE_ROOT``: the path at
    which Databricks clusters see the container, typically a Unity Catalog external volume on it
    (``/Volumes/<catalog>/<schema>/<volume>``), which Spark and plain file I/O both read.
    """
    s = settings()
    if s.job_lake_root:
        return s.job_lake_root
    if s.lake_backend == "local":
        return str(s.lake_root)
    msg = (
        "SWAN_JOB_LAKE_ROOT is not set: with SWAN_LAKE_BACKEND=azure it must say where the jobs see the lake, "
        "e.g. /Volumes/main/swan/lake for a Unity Catalog external volume on the container"
    )
    raise ValueError(msg)


def registry_client():
    """An MLflow client for ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``.

    When either is a Databricks URI (``databricks``, ``databricks-uc``) and the process has no
    ``DATABRICKS_HOST`` of its own, the workspace and credentials of the Airflow connection
    (:func:`swan_airflow.databricks_auth.databricks_environ`) are handed to MLflow through this task process's environment
    (never logged, never in XCom); credentials of another method left there are removed.
    """
    from swan_anomaly.registry import mlflow_client

    s = settings()
    if any(uri.startswith("databricks") for uri in s.mlflow_uris) and not os.environ.get("DATABRICKS_HOST"):
        from swan_airflow.databricks_auth import SDK_CREDENTIAL_VARIABLES, databricks_environ, databricks_workspace

        environ = databricks_environ(databricks_workspace())
        for name in SDK_CREDENTIAL_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(environ)
    return mlflow_client(*s.mlflow_uris)
