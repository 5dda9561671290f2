"""The Spark session for job entrypoints: local Spark here, the cluster's session on Databricks.

Example:
    >>> spark = build_spark("swan-etl")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def build_spark(app_name: str) -> SparkSession:
    """Get the active session (Databricks) or start a local one (``SWAN_SPARK_MASTER``, ``local[*]``).

    Dynamic partition overwrite is always on, so a rerun rewrites only its own
    ``dataset_id`` partition instead of appending duplicates or wiping other partitions.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .master(os.environ.get("SWAN_SPARK_MASTER", "local[*]"))
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.shuffle.partitions", os.environ.get("SWAN_SPARK_SHUFFLE_PARTITIONS", "4"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("SWAN_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # rows carry whole images: small Arrow batches let the JVM and the Python workers overlap
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", os.environ.get("SWAN_SPARK_ARROW_BATCH", "64"))
    )
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    spark.sparkContext.setLogLevel(os.environ.get("SWAN_SPARK_LOG_LEVEL", "WARN"))
    return spark
