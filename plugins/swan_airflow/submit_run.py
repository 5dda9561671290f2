"""``DatabricksSubmitRunOperator`` whose reruns never start a duplicate Databricks run.

Databricks answers ``runs/submit`` with the existing run when it already holds a run for the
request's ``idempotency_token``. The operator derives that token from what the run *does*
(DAG id, DAG run id, task id, map index, the rendered payload, the input dataset's manifest
digest as the lake holds it when the task starts and, for the training job, the files of its
window's gold partitions) plus a generation number, never from Airflow's try number:

- a retry after a lost worker, or a cleared task whose run is still going, re-attaches to it;
- a cleared task or DAG run whose run succeeded reuses that run (no new cluster, no new rows);
- a try after a run that ended FAILED, CANCELED or TIMEDOUT moves to the next generation and
  submits exactly one fresh run;
- new code (another ``code/{version}/``), new parameters or new input data give a new token,
  including a rebuilt older partition of a training window.

Everything else (deferral, polling, retries of 429/5xx answers, cancelling on kill) is the
provider's operator.

Example:
    >>> op = IdempotentSubmitRunOperator(task_id="run_etl", json=submit_run_json("etl", [], code=code, dataset_id=upload["dataset_id"]),
    ...                                  inputs=upload["digest"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import TYPE_CHECKING, Any

from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

from swan_airflow.databricks_runs import submit_run_json

if TYPE_CHECKING:
    from airflow.providers.databricks.hooks.databricks import DatabricksHook
    from airflow.sdk import Context

    from swan_anomaly.config import Settings

#: Fresh runs one DAG-run task may start after failed ones; beyond this something is wrong
#: with the job itself, and the task fails instead of burning clusters.
MAX_GENERATIONS = 20
#: The pipeline's jobs: they read the run's raw partition and run the code ``deploy_code`` shipped.
PIPELINE_JOBS = ("etl", "augment", "train")


def token_base(dag_id: str, run_id: str, task_id: str, map_index: int, payload: dict, inputs: str) -> str:
    """What a run does, as one string: equal bases mean an identical run."""
    body = {k: v for k, v in payload.items() if k != "idempotency_token"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return f"{dag_id}|{run_id}|{task_id}|{map_index}|{digest}|{inputs}"


def generation_token(base: str, generation: int) -> str:
    """The ``idempotency_token`` of one generation (64 hex characters, the API's maximum)."""
    return hashlib.sha256(f"{base}|{generation}".encode()).hexdigest()


def claim_token(hook: DatabricksHook, payload: dict, base: str, log) -> str:
    """The token of the first generation whose run is pending, running or succeeded.

    Submitting with a generation's token either returns that generation's run or starts it, so
    this starts at most one new run: the first generation that has none yet.
    """
    for generation in range(MAX_GENERATIONS):
        token = generation_token(base, generation)
        run_id = hook.submit_run({**payload, "idempotency_token": token})
        state = hook.get_run_state(run_id)
        if not state.is_terminal or state.is_successful:
            if generation or state.is_terminal:
                log.info(
                    "Databricks run %s (generation %d) is %s; using it", run_id, generation, state.result_state or state.life_cycle_state
                )
            return token
        log.info(
            "Databricks run %s (generation %d) ended %s: %s; the next generation submits a fresh run",
            run_id,
            generation,
            state.result_state,
            state.state_message,
        )
    from airflow.sdk.exceptions import AirflowFailException

    msg = f"{MAX_GENERATIONS} Databricks runs of this task all failed; fix the job, then clear the task (new code is a new run)"
    raise AirflowFailException(msg)


class IdempotentSubmitRunOperator(DatabricksSubmitRunOperator):
    """The provider's one-time-run operator with a rerun-safe ``idempotency_token``.

    Args:
        inputs: templated (e.g. ``upload_to_lake``'s XComArg ``["digest"]``); a digest of the run's input
            data (the raw partition's manifest), so that new data under the same dataset id gives a new run.
        **kwargs: as for ``DatabricksSubmitRunOperator`` (``idempotency_token`` is set here).
    """

    template_fields = (*DatabricksSubmitRunOperator.template_fields, "inputs")

    def __init__(self, *, inputs: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inputs = inputs

    def _prepare_submit_json(self, context: Context) -> dict[str, Any]:
        # Both provider paths (deferrable execute and the resumable submit_job) build the payload
        # here and then submit it; with the claimed token that submit returns the claimed run.
        payload = super()._prepare_submit_json(context)
        ti = context["ti"]
        base = token_base(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, payload, self.inputs)
        payload["idempotency_token"] = claim_token(self._hook, payload, base, self.log)
        return payload


class SwanJobOperator(IdempotentSubmitRunOperator):
    """One pipeline job, run where the DAG run's ``backend`` Param says.

    ``local``: ``jobs/{job}.py`` as a subprocess of the worker (:func:`swan_airflow.jobs.run_job`);
    ``databricks``: a one-time Databricks run of the same file through
    :class:`IdempotentSubmitRunOperator` (deferrable, rerun-safe). One task id and one DAG shape
    for both, so a run's backend is a per-run choice in the trigger form, with the deployment's
    ``SWAN_COMPUTE_BACKEND`` as the default.

    Args:
        job: the entrypoint name (``etl``, ``augment``, ``train``).
        job_args: templated; the job's own arguments (after ``--lake-root``, ``--dataset-id``, ``--run-id``).
        dataset_id: templated; the run's dataset id (``upload_to_lake``'s XComArg ``["dataset_id"]``).
        backend: templated; ``local`` or ``databricks``.
        window_days: templated; for a job that reads a training window of gold partitions (the
            training job): the window's length. On Databricks the idempotency token then also
            digests the window's gold files, so a rebuilt older partition gives a new run.
        **kwargs: as for :class:`IdempotentSubmitRunOperator` (the Databricks payload in ``json``).
    """

    template_fields = (*IdempotentSubmitRunOperator.template_fields, "job_args", "dataset_id", "backend", "window_days")

    def __init__(
        self,
        *,
        job: str,
        job_args: list[str],
        dataset_id: Any,
        backend: str = "{{ params.backend }}",
        window_days: str | int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.job_args = job_args
        self.dataset_id = dataset_id
        self.backend = backend
        self.window_days = window_days

    def window_inputs(self, dataset_id: str) -> str:
        """The digest of the gold files of the training window of ``dataset_id``, as the lake holds them now.

        Raises:
            AirflowFailException: the window cannot be formed (a window of several days of a
                dataset id that is not a date); a retry would not help.
        """
        from airflow.sdk.exceptions import AirflowFailException

        from swan_airflow.runtime import lake
        from swan_anomaly import ConfigError
        from swan_anomaly.lake import gold_files_digest, window_dataset_ids

        store = lake()
        try:
            ids = window_dataset_ids(store, dataset_id, int(self.window_days))
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        digest = gold_files_digest(store.gold_files(ids))
        self.log.info("training window %s: gold files digest %s", ids, digest[:16])
        return digest

    def raw_inputs(self, dataset_id: str) -> str:
        """The digest of the raw partition's ``manifest.json`` as the lake holds it now (what ``upload_to_lake`` reports)."""
        from swan_airflow.runtime import lake
        from swan_anomaly.lake import MANIFEST, sha256_text

        digest = sha256_text(lake().read_raw(dataset_id, MANIFEST).decode())
        if digest != self.inputs:
            self.log.info("raw partition %s changed since this run uploaded it (manifest %s)", dataset_id, digest[:16])
        return digest

    def use_current_code(self) -> None:
        """Point the payload at this DAG's code, deploying it first when ``deploy_code`` shipped an earlier version.

        ``deploy_code``'s result is an XCom of its own try: after a code change (a deployment while the run
        waited for the training pool, or a fix and a cleared task) the payload would run the old
        ``code/{version}/`` on Databricks, and reuse its runs, while a local job runs the code the worker
        has. Here both run the worker's code: the new version is deployed (once per version) and named in
        the payload, whose new digest gives a new run.
        """
        from swan_airflow.code_deploy import code_version, deploy_code
        from swan_airflow.databricks_runs import job_file_key
        from swan_airflow.runtime import job_lake_root, lake

        current = code_version()
        if f"/code/{current}/" in json.dumps(self.json):
            return
        code = deploy_code(lake(), job_lake_root())
        self.log.warning("the %s payload named code an earlier deploy_code shipped; it runs code/%s/ instead", self.job, current)
        for task in self.json.get("tasks", []):
            task["libraries"] = [{"whl": code["wheel_uri"]} if "/code/" in lib.get("whl", "") else lib for lib in task.get("libraries", [])]
            task["spark_python_task"]["python_file"] = code[job_file_key(self.job)]

    def execute(self, context: Context):
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from swan_airflow.runtime import lake

        ti, dataset_id = context["ti"], self.dataset_id
        if self.backend == "local":
            from swan_airflow.jobs import run_job

            result = run_job(self.job, dataset_id=dataset_id, run_id=context["run_id"], args=list(self.job_args))
            # The provider's extra link reads this key after the task; locally the "run page" is the job's result file.
            ti.xcom_push(key="run_page_url", value=lake().result_path(context["run_id"], self.job).as_uri())
            self.record_outputs(context, result)
            return {"job": self.job, "backend": "local", "seconds": result.get("seconds")}
        if self.backend != "databricks":
            msg = f"backend must be 'local' or 'databricks', got {self.backend!r}"
            raise AirflowFailException(msg)
        from swan_airflow.databricks_runs import check_cluster_env
        from swan_anomaly.entrypoint import failure_record

        check_cluster_env()
        if self.job in PIPELINE_JOBS:
            self.use_current_code()
            # the raw partition as the lake holds it now, not the digest of this run's upload (an XCom of an earlier try):
            # another run may have re-uploaded the date since, and this run's job must then run again on that data
            self.inputs = self.raw_inputs(dataset_id)
        if self.window_days is not None:
            self.inputs = f"{self.inputs}|gold:{self.window_inputs(dataset_id)}"
        # A failure record is an earlier, failed run's: the run submitted now writes its own if it fails for good.
        lake().delete_result(context["run_id"], failure_record(self.job))
        # A run that ended at once is completed inline by the provider through execute_complete; otherwise
        # the task defers and execute_complete follows the trigger. Either way that records the outputs once.
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as exc:  # the provider's non-deferrable path fails here, not in execute_complete
            self.fail_for_good_if_the_job_says_so(context, exc)
            raise

    def execute_complete(self, context, event):
        from airflow.sdk.exceptions import AirflowException

        try:
            super().execute_complete(context, event)  # raises when the run failed
        except AirflowException as exc:
            self.fail_for_good_if_the_job_says_so(context, exc)
            raise
        self.record_outputs(context)

    def fail_for_good_if_the_job_says_so(self, context: Context, exc: BaseException) -> None:
        """Raise :class:`AirflowFailException` when the failed run recorded a failure a retry cannot fix.

        The job exits with :data:`swan_anomaly.entrypoint.EXIT_PERMANENT` on bad input data or
        configuration, but Databricks reports only FAILED: without this each retry would start a
        fresh run on a new cluster, and fail the same way.
        """
        from airflow.sdk.exceptions import AirflowFailException

        from swan_airflow.runtime import lake, optional_result
        from swan_anomaly.entrypoint import failure_record

        failure = optional_result(lake(), context["run_id"], failure_record(self.job))
        if failure:
            msg = f"the {self.job} job failed on Databricks for a reason a retry cannot fix: {failure.get('error')}"
            raise AirflowFailException(msg) from exc

    def record_outputs(self, context: Context, result: dict | None = None) -> None:
        """What Airflow shows of the finished job: its lake partition as an asset event, its MLflow run as a link.

        Reads the job's result file (``runs/{run_id}/{job}.json``) when ``result`` is not given.
        Best effort: the job succeeded, so a failure here is a warning, never a failed task.
        """
        from swan_airflow import lineage

        lineage.best_effort(self._record_outputs)(context, result)

    def _record_outputs(self, context: Context, result: dict | None) -> None:
        from swan_airflow import lineage
        from swan_airflow.runtime import job_lake_root, lake

        if result is None:
            result = lake().read_result(context["run_id"], self.job)
        if self.job in lineage.JOB_OUTLETS:
            asset, layer, rows = lineage.JOB_OUTLETS[self.job]
            dataset_id = result.get("dataset_id", self.dataset_id)
            uri = lineage.partition_uri(job_lake_root(), layer, dataset_id)
            lineage.record(context, asset, dataset_id=dataset_id, uri=uri, rows=result.get(rows))
            self.log.info("%s partition %s: %s rows at %s", layer, dataset_id, result.get(rows), uri)
        if result.get("mlflow_run_id"):
            lineage.push_mlflow_run_link(context, result.get("mlflow_experiment_id"), result["mlflow_run_id"])

    def on_kill(self) -> None:
        if self.backend == "local":  # run_job stops its subprocess when the task is interrupted
            self.log.info("task %s killed; its local %s job stops with it", self.task_id, self.job)
            return
        super().on_kill()  # cancels the Databricks run


def job_task(task_id: str, job: str, args: list, code, upload, settings: Settings, **kwargs: Any) -> SwanJobOperator:
    """The pipeline's task for one job: a local subprocess or a Databricks one-time run, by the run's ``backend`` Param.

    Args:
        task_id: the task id (the same for both backends).
        job: ``etl``, ``augment`` or ``train``.
        args: the job's own arguments (templates allowed).
        code: ``deploy_code``'s XComArg (the deployed wheel and entrypoints).
        upload: ``upload_to_lake``'s XComArg (the run's ``dataset_id`` and the input ``digest``).
        settings: the deployment's settings (Databricks connection, polling, retry delay).
        **kwargs: operator arguments, e.g. ``execution_timeout`` (the Databricks run ends with it), ``pool``.
    """
    from swan_airflow import lineage

    timeout = kwargs.get("execution_timeout") or dt.timedelta(minutes=settings.task_timeout_minutes)
    if job in lineage.JOB_OUTLETS:
        kwargs.setdefault("outlets", [lineage.JOB_OUTLETS[job][0]])
    operator = SwanJobOperator(
        task_id=task_id,
        job=job,
        job_args=args,
        dataset_id=upload["dataset_id"],
        inputs=upload["digest"],
        databricks_conn_id=settings.databricks_conn_id,
        json=submit_run_json(job, args, code=code, dataset_id=upload["dataset_id"], timeout_seconds=int(timeout.total_seconds())),
        deferrable=True,
        polling_period_seconds=settings.databricks_poll_seconds,
        databricks_retry_limit=5,
        databricks_retry_delay=settings.databricks_retry_delay,
        # an empty Param (the trigger form's clear button sends null) means the deployment's default
        backend="{{ params.backend or '" + settings.compute_backend + "' }}",
        **kwargs,
    )
    if job == "train":
        operator.operator_extra_links = (*operator.operator_extra_links, lineage.MlflowRunLink())
    return operator
