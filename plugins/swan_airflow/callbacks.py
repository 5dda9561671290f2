"""Failure callbacks: one clear summary line per failed task in the log.

Example:
    >>> default_args = {"on_failure_callback": log_failure}   # doctest: +SKIP
"""

from __future__ import annotations

import logging

log = logging.getLogger("swan_airflow.failures")


def log_failure(context) -> None:
    """Log dag, task, try and the exception of a failed task in one line."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    log.error(
        "swan-anomaly task failed: dag=%s task=%s run=%s try=%s error=%s: %s",
        getattr(ti, "dag_id", "?"), getattr(ti, "task_id", "?"), getattr(ti, "run_id", "?"),
        getattr(ti, "try_number", "?"), type(exc).__name__ if exc else None, exc,
    )
