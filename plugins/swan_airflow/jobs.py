"""Run a job entrypoint of ``jobs/`` and hand its result JSON back to Airflow.

Locally, a job is a subprocess running ``python jobs/{job}.py --lake-root ... --dataset-id ...
--run-id ...`` with this interpreter; its output streams into the task log line by line. The
same files run unchanged as Databricks ``spark_python_task``s.

Example:
    >>> result = run_job("etl", dataset_id="20261126", run_id="manual__x", args=["--image-size", "64"])  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys

from swan_airflow.runtime import job_lake_root, jobs_dir, lake, settings
from swan_anomaly.entrypoint import PERMANENT_EXIT_CODES
from swan_anomaly.redact import without_secrets

log = logging.getLogger(__name__)


#: The secrets each local job needs; a job not named here gets none. The training job logs to MLflow,
#: which may ask for a login (or hold one in a database store's URI), and may download a base model from
#: the Hugging Face hub (a private or gated one needs HF_TOKEN); the ETL job reads the model's config for
#: its input size, from the hub too. The augmentation job reads and writes the lake only.
JOB_SECRETS: dict[str, frozenset[str]] = {
    "train": frozenset(
        {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_REGISTRY_URI",
            "HF_TOKEN",
        }
    ),
    "etl": frozenset({"HF_TOKEN"}),
}


def local_job_env(job: str, environ=None) -> dict[str, str]:
    """The environment of a local job: the task's, without the secrets that job does not need.

    Dropped: Databricks tokens, Airflow connections and variables, cloud keys, anything named
    like a secret (:func:`swan_anomaly.redact.without_secrets`). Kept: the job's own
    :data:`JOB_SECRETS`, and for the training job the ``DATABRICKS_*`` and ``ARM_*`` (Azure AD)
    variables when MLflow itself is the workspace's (``databricks``, ``databricks-uc``): it logs there.
    """
    environ = os.environ if environ is None else environ
    keep = set(JOB_SECRETS.get(job, ()))
    if job == "train" and any(uri.startswith("databricks") for uri in settings().mlflow_uris):  # the workspace login, Azure AD's too
        keep |= {k for k in environ if k.startswith(("DATABRICKS_", "ARM_"))}
    return without_secrets(environ, keep=frozenset(keep))


class JobCrashed(RuntimeError):
    """A job entrypoint exited non-zero with a status a retry may fix (a crash, the kernel's OOM killer); retried.

    Not :class:`swan_anomaly.JobError`, which a job raises for a cause a retry cannot fix (bad input,
    arguments or settings): it exits with a permanent status and the task fails at once.
    """


def run_job(job: str, *, dataset_id: str, run_id: str, args: list[str] | None = None) -> dict:
    """Run ``jobs/{job}.py`` for a dataset and run; return what it wrote to ``runs/{run_id}/{job}.json``."""
    script = jobs_dir() / f"{job}.py"
    if not script.is_file():
        msg = f"job entrypoint {script} not found; set SWAN_JOBS_DIR to the project's jobs/ folder"
        raise FileNotFoundError(msg)
    if settings().lake_backend != "local":
        from airflow.sdk.exceptions import AirflowFailException

        msg = (
            "backend 'local' runs the jobs on this worker, which needs the local lake; with "
            "SWAN_LAKE_BACKEND=azure choose backend 'databricks'"
        )
        raise AirflowFailException(msg)
    cmd = [sys.executable, str(script), "--lake-root", job_lake_root(), "--dataset-id", dataset_id, "--run-id", run_id, *(args or [])]
    log.info("running job %s: %s", job, " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=local_job_env(job)) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                log.info("[%s] %s", job, line)
            code = proc.wait()
        except BaseException:
            # The task's execution_timeout, a SIGTERM (marked failed, worker shutdown) or any error
            # here ends the job with the task: no orphan keeps training or holding the lake.
            log.warning("stopping job %s (pid %d) with its task", job, proc.pid)
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        msg = f"job {job} exited with code {code} for dataset {dataset_id}; last output:\n" + "\n".join(tail)
        if code in PERMANENT_EXIT_CODES:  # bad arguments, input data or configuration: a retry fails the same way
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(msg)
        raise JobCrashed(msg)
    return lake().read_result(run_id, job)
