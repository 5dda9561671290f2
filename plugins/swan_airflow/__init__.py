"""swan_airflow: the Airflow-facing layer of swan-anomaly.

* ``runtime``: settings, dataset ids from the run's data interval, the landing zone lookup
* ``jobs``: runs the ``jobs/*.py`` entrypoints (locally as subprocesses) and reads their results
* ``callbacks``: task failure summaries

The DAG imports these; they import ``swan_anomaly`` lazily, inside functions.
"""
