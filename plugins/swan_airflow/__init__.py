"""swan_airflow: the Airflow-facing layer of swan-anomaly.

* ``steps``: what the tasks call, one module per stage: ``data``, ``code``, ``training``, ``promotion``, ``serving``, ``report``
* ``params``: the DAG's Params (the trigger form); ``context``: ``RunContext``, what a task knows about its run
* ``runtime``: settings, dataset ids, landing-zone lookup, lake selection (local or ADLS) and where jobs see it,
  job results, the registry client
* ``databricks_auth``: the Databricks connection as databricks-sdk and MLflow authenticate with it
* ``jobs``: runs the ``jobs/*.py`` entrypoints locally as subprocesses and reads their results
* ``submit_run``: ``SwanJobOperator`` and ``job_task`` (a job as a local subprocess or a Databricks one-time run,
  with the rerun-safe idempotency token)
* ``databricks_runs``: ``runs/submit`` payloads and cluster specs (``clusters/*.json``)
* ``code_deploy``: the wheel and job files under ``code/{version}/`` of the lake
* ``azure_lake``: the lake in an ADLS Gen2 / Blob container through the Azure provider's ``WasbHook``
* ``serving``: which endpoint to deploy to (local model server or Databricks Model Serving), rollback
* ``lineage``: asset events for the lake partitions and model versions, task links to MLflow and the endpoint
* ``ingest``: inbox -> landing zone, and the asset event that triggers the pipeline
* ``label_check``: the optional label check's connection and its call
* ``callbacks``: task failure summaries and the notifier

The DAG imports these; they import ``swan_anomaly`` and the providers lazily, inside functions.
``plugins/.airflowignore`` keeps Airflow's plugin loader from importing these files as top-level modules.
"""
