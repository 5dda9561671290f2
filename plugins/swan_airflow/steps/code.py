"""Code step: the code that the Spark and training jobs run, shipped to the lake once per version.

Every job of the run (ETL, augmentation, training) runs this code: on Databricks a
``spark_python_task`` installs the wheel and runs the entrypoint from ``code/{version}/``, so a
job run executes exactly the code of the DAG that submitted it (:mod:`swan_airflow.code_deploy`).

Example:
    >>> deploy_code()   # doctest: +SKIP
    {'version': '0.1.0-3f2a9c1b7d4e', 'uri': '/.../code/0.1.0-3f2a9c1b7d4e', 'wheel_uri': '...whl', ...}
"""

from __future__ import annotations


def deploy_code() -> dict:
    """The ``swan_anomaly`` wheel and ``jobs/*.py`` under ``code/{version}/`` in the lake (once per code version)."""
    from swan_airflow.code_deploy import deploy_code as deploy
    from swan_airflow.runtime import job_lake_root, lake

    return deploy(lake(), job_lake_root())
