"""The steps the pipeline DAG's tasks call, one module per stage of the diagram.

* ``data``: find the run's videos, extract frames, synthesize anomalies, build and check labels, upload
* ``code``: the wheel and job entrypoints that every job runs, in the lake once per code version
* ``registration``: register the trained model (the jobs before it, ETL, augmentation and training, are
  operators of :mod:`swan_airflow.submit_run`, not steps)
* ``promotion``: wait for the promotion turn, gate, promote or keep the champion
* ``serving``: update the endpoint, validate it over REST, leave a validated version serving whatever failed
* ``report``: the run summary, written whatever happened

Each step takes a :class:`swan_airflow.context.RunContext` and small handles (XCom values), and
imports what is heavy inside, so the DAG file parses fast.
"""
