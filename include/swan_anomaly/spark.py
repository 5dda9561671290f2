"""The Spark session for job entrypoints: local Spark here, the cluster's session on Databricks.

Example:
    >>> spark = build_spark("swan-etl")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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
