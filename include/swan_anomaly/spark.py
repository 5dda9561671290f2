"""The Spark session for job entrypoints: local Spark here, the cluster's session on Databricks.

Example:
    >>> spark = build_spark("swan-etl")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

#: Environment of the Python workers that run the jobs' pandas UDFs (glibc ``malloc`` tuning, see mallopt(3)).
#:
#: A worker decodes one camera frame after another: a 1280x720 frame is a few MB of encoded
#: bytes, a 2.7 MB decoded array and its colour-converted copy. With glibc's defaults a
#: freshly forked worker hands that memory back to the kernel after most frames (heap trimming
#: and mmap'd blocks) and page-faults it in again for the next one: about 1,050 page faults and
#: 1.7 ms of kernel time per frame, 11 % of the ETL's CPU time (``bench/etl_throughput.py``,
#: docs/BENCHMARKS.md). With these settings blocks up to 32 MiB (a decoded 4K frame is
#: 25 MB) come from the heap, and up to 64 MiB of free heap is kept for the next frame instead
#: of being trimmed. Glibc only; other allocators ignore the variables. Applied to local
#: sessions by :func:`build_spark`; the Databricks CPU cluster spec
#: (``swan_airflow/clusters/cpu.json``) sets the same ``spark.executorEnv`` entries.
PYTHON_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024 * 1024)}


def python_worker_conf() -> dict[str, str]:
    """:data:`PYTHON_WORKER_ENV` as ``spark.executorEnv.*`` settings (what reaches the Python workers)."""
    return {f"spark.executorEnv.{name}": value for name, value in PYTHON_WORKER_ENV.items()}


def build_spark(app_name: str) -> SparkSession:
    """Get the active session (Databricks) or start a local one (``SWAN_SPARK_MASTER``, ``local[*]``).

    Dynamic partition overwrite is always on, so a rerun rewrites only its own
    ``dataset_id`` partition instead of appending duplicates or wiping other partitions.
    A local session hands :data:`PYTHON_WORKER_ENV` to its Python workers.
    """
    from pyspark.sql import SparkSession

    from swan_anomaly.config import Settings

    s = Settings.from_env()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(s.spark_master)
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.shuffle.partitions", str(s.spark_shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", s.spark_driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # rows carry whole images: small Arrow batches let the JVM and the Python workers overlap
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(s.spark_arrow_batch))
        .config(map=python_worker_conf())
    )
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    spark.sparkContext.setLogLevel(s.spark_log_level)
    return spark


def _result_stage(tracker) -> tuple[int, int] | None:
    """``(completed, total)`` tasks of the newest active stage (the one producing the action's result), or None."""
    stages = [info for info in map(tracker.getStageInfo, sorted(tracker.getActiveStageIds())) if info is not None]
    return (stages[-1].numCompletedTasks, stages[-1].numTasks) if stages else None


@contextlib.contextmanager
def progress(spark: SparkSession, what: str, items: int, unit: str = "images", every: float | None = None) -> Iterator[None]:
    """Log the progress of the Spark actions inside the block: tasks done, an estimate of ``items`` done, the rate.

    Every ``every`` seconds (``SWAN_SPARK_PROGRESS_SECONDS``) a line such as
    ``ETL 20261130 decode: stage 6/16 tasks (38 %), ~150 of 400 images, 31 images/s, 4.8 s``; at the end
    ``ETL 20261130 decode: 400 images in 9.1 s (44 images/s)``. The tasks are those of the newest
    active stage (the one computing the action's result; a sort's sampling stage shows first), and
    the estimate assumes even tasks (the jobs partition by ranges of similar images). Where the
    driver has no ``SparkContext`` (Spark Connect), only the final line is logged; a status
    tracker that fails only stops the progress lines.
    """
    from swan_anomaly.config import Settings

    every = Settings.from_env().spark_progress_seconds if every is None else every
    try:
        tracker = spark.sparkContext.statusTracker()
    except Exception:  # Spark Connect: no status tracker on the client
        tracker = None
    start, stop = time.monotonic(), threading.Event()

    def report() -> None:
        while not stop.wait(every):
            try:
                counts = _result_stage(tracker)
            except Exception as exc:  # noqa: BLE001 - progress lines never stop the job
                log.debug("%s: no progress from Spark's status tracker (%s)", what, exc)
                continue
            if counts and counts[1]:
                done, total = counts
                elapsed = time.monotonic() - start
                estimate = items * done / total
                log.info(
                    "%s: stage %d/%d tasks (%.0f %%), ~%d of %d %s, %.0f %s/s, %.1f s",
                    what,
                    done,
                    total,
                    100 * done / total,
                    estimate,
                    items,
                    unit,
                    estimate / elapsed,
                    unit,
                    elapsed,
                )

    reporter = threading.Thread(target=report, name=f"progress {what}", daemon=True) if tracker is not None else None
    if reporter is not None:
        reporter.start()
    try:
        yield
    finally:
        stop.set()
        if reporter is not None:
            reporter.join(timeout=5)
    elapsed = time.monotonic() - start
    log.info("%s: %d %s in %.1f s (%.0f %s/s)", what, items, unit, elapsed, items / max(elapsed, 1e-9), unit)
