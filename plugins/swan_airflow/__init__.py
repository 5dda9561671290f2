"""swan_airflow: the Airflow-facing layer of swan-anomaly.

* ``runtime``: settings, dataset ids, landing-zone lookup, lake selection (local or ADLS) and where jobs see it
* ``jobs``: runs the ``jobs/*.py`` entrypoints locally as subprocesses and reads their results
* ``code_deploy``: the wheel and job files under ``code/{version}/`` of the lake
* ``databricks_runs``: ``runs/submit`` payloads, cluster specs (``clusters/*.json``), idempotency tokens
* ``azure_lake``: the lake in an ADLS Gen2 / Blob container through the Azure provider's ``WasbHook``
* ``serving``: which endpoint to deploy to (local model server or Databricks Model Serving), rollback
* ``lineage``: asset events for the lake partitions and model versions, task links to MLflow and the endpoint
* ``callbacks``: task failure summaries

The DAG imports these; they import ``swan_anomaly`` and the providers lazily, inside functions.
``plugins/.airflowignore`` keeps Airflow's plugin loader from importing these files as top-level modules.
"""
