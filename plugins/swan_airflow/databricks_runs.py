"""Databricks job runs of the pipeline's Spark and training jobs (apache-airflow-providers-databricks).

Why ``DatabricksSubmitRunOperator`` (one-time runs) rather than ``RunNow`` or the workflow task
group: each run must execute exactly the DAG's code version (the wheel and ``jobs/*.py`` that
``deploy_code`` uploaded to ``code/{version}/``) with run-specific parameters, and must be
retried and re-attached per Airflow try (see ``submit_run.py`` for the rerun-safe
idempotency token). A one-time run carries all of that in its payload;
RunNow would need a job definition kept in sync with every code version outside Airflow.

The cluster specs live in ``clusters/*.json`` beside this module (CPU for ETL and augmentation,
a single-node GPU cluster for training), both on the Databricks Runtime that ``clusters/runtime.txt``
names; every run installs the pinned ``clusters/run-libraries.txt`` and the project wheel on top
(:func:`run_libraries`). :func:`submit_run_json` builds the ``runs/submit`` payload. In the DAG,
what ``deploy_code`` and ``upload_to_lake`` return goes into it as XComArgs,
which the operator resolves when it renders its fields; plain values work the same.

Example:
    >>> code = {"lake_root": "/lake", "wheel_uri": "/lake/code/v1/swan.whl", "job_etl": "/lake/code/v1/jobs/etl.py"}
    >>> payload = submit_run_json("etl", ["--image-size", "224"], code=code, dataset_id="20261126")
    >>> payload["tasks"][0]["spark_python_task"]["python_file"]
    '/lake/code/v1/jobs/etl.py'
"""

from __future__ import annotations

import json
from pathlib import Path

CLUSTERS_DIR = Path(__file__).with_name("clusters")

#: Which cluster spec each job runs on.
JOB_CLUSTERS = {"etl": "cpu", "augment": "cpu", "train": "gpu"}

#: PyPI libraries each run installs beside the wheel (pinned; ``clusters/run-libraries.txt``).
RUN_LIBRARIES = CLUSTERS_DIR / "run-libraries.txt"


def job_file_key(job: str) -> str:
    """The key under which ``deploy_code`` returns the URI of ``jobs/{job}.py`` (one XCom per key)."""
    return f"job_{job}"


def cluster_spec(name: str) -> dict:
    """A cluster spec from ``clusters/{name}.json`` (``SWAN_DATABRICKS_CLUSTERS_DIR`` overrides the folder)."""
    from swan_anomaly.config import Settings

    folder = Settings.from_env().databricks_clusters_dir or CLUSTERS_DIR
    return json.loads((folder / f"{name}.json").read_text())


def run_libraries(path: Path | None = None) -> list[dict]:
    """The run's PyPI libraries as ``runs/submit`` library specs, from ``run-libraries.txt``.

    The file beside the cluster specs: a ``SWAN_DATABRICKS_CLUSTERS_DIR`` that has its own (its
    specs may name another runtime) wins over ``clusters/run-libraries.txt``. Each library must be
    pinned (``name==version``): an unpinned one would install whatever is newest on the day the
    cluster starts.

    Example:
        >>> run_libraries()[0]
        {'pypi': {'package': 'opencv-python-headless==4.14.0.94'}}
    """
    if path is None:
        from swan_anomaly.config import Settings

        own = Settings.from_env().databricks_clusters_dir
        path = own / RUN_LIBRARIES.name if own and (own / RUN_LIBRARIES.name).is_file() else RUN_LIBRARIES
    specs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "==" not in line:
            msg = f"{path}: {line!r} is not pinned (name==version)"
            raise ValueError(msg)
        specs.append({"pypi": {"package": line}})
    return specs


def cluster_env_vars() -> dict[str, str]:
    """Settings the jobs must share with Airflow, as the cluster's ``spark_env_vars``.

    The MLflow tracking and registry URIs, experiment and registered-model name: with
    ``MLFLOW_TRACKING_URI=databricks`` a job logs to the workspace it runs in, and Airflow's
    ``register_model`` finds the run there. No secrets: clusters authenticate themselves.
    """
    from swan_anomaly.config import Settings
    from swan_anomaly.redact import redact_uri

    s = Settings.from_env()
    return {  # a URI with credentials is masked here (the payload is a rendered template); check_cluster_env refuses it
        "MLFLOW_TRACKING_URI": redact_uri(s.tracking_uri),
        "MLFLOW_REGISTRY_URI": redact_uri(s.registry_uri),
        "SWAN_EXPERIMENT": s.experiment,
        "SWAN_MODEL_NAME": s.model_name,
    }


def check_cluster_env() -> None:
    """Refuse to submit a Databricks run that could not work (called when the run is submitted); local runs are unaffected.

    - MLflow URIs with credentials would travel in the run's payload and show in Airflow's
      rendered templates (:func:`cluster_env_vars` masks them).
    - An MLflow tracking store on this worker's disk (``sqlite:``, ``file:``, a path) is out of a
      cluster's reach: the job's runs and models would go to the cluster's own disk, and
      ``register_model`` would never find them (the registry is used by Airflow's tasks only).
    - A local lake with no ``SWAN_JOB_LAKE_ROOT``: the payload would name files on this worker,
      which a cluster cannot open.

    Raises:
        AirflowFailException: any of these, with what to do instead (no retry fixes it).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_anomaly.config import Settings
    from swan_anomaly.redact import has_credentials, redact_uri

    s = Settings.from_env()
    for name, uri in (("MLFLOW_TRACKING_URI", s.tracking_uri), ("MLFLOW_REGISTRY_URI", s.registry_uri)):
        if has_credentials(uri):
            msg = (
                f"{name} ({redact_uri(uri)}) carries credentials, which would show in the Databricks run's payload and in "
                "Airflow's rendered templates; let the jobs use the workspace's MLflow (databricks, databricks-uc) or set "
                "MLFLOW_TRACKING_USERNAME/PASSWORD in the cluster spec's spark_env_vars as secret references ({{secrets/scope/key}})"
            )
            raise AirflowFailException(msg)
    if local_store(s.tracking_uri):  # the jobs log runs; only Airflow's tasks use the registry
        msg = (
            f"MLFLOW_TRACKING_URI ({redact_uri(s.tracking_uri)}) is an MLflow store on this worker's disk, which a Databricks "
            "cluster cannot reach: the training job's runs and model would be lost with the cluster and register_model would "
            "not find them. Use the workspace's MLflow (MLFLOW_TRACKING_URI=databricks, MLFLOW_REGISTRY_URI=databricks-uc) or "
            "an MLflow tracking server (http(s)://...), or choose backend 'local'"
        )
        raise AirflowFailException(msg)
    if s.lake_backend == "local" and not s.job_lake_root:
        msg = (
            f"backend 'databricks' runs the jobs on a Databricks cluster, which cannot open this worker's lake folder "
            f"({s.lake_root}); use the Azure lake (SWAN_LAKE_BACKEND=azure and SWAN_JOB_LAKE_ROOT, docs/databricks.md), "
            "or choose backend 'local'"
        )
        raise AirflowFailException(msg)


def local_store(uri: str) -> bool:
    """Whether an MLflow URI names a store on this machine's disk (``sqlite:``, ``file:`` or a plain path).

    Example:
        >>> [local_store(u) for u in ("sqlite:////srv/mlflow.db", "file:///srv/mlruns", "/srv/mlruns", "databricks", "http://mlflow:5000")]
        [True, True, True, False, False]
    """
    scheme = uri.split(":", 1)[0].lower() if "://" in uri or uri.lower().startswith(("sqlite:", "file:")) else ""
    return scheme in ("", "sqlite", "file") and not uri.lower().startswith("databricks")


def submit_run_json(job: str, args: list, *, code, dataset_id, timeout_seconds: int = 4 * 3600) -> dict:
    """The ``runs/submit`` payload of one job entrypoint (rendered by the operator).

    Args:
        job: ``etl``, ``augment`` or ``train``.
        args: the job's own arguments (templates allowed).
        code: what ``deploy_code`` returned (``lake_root``, ``wheel_uri``, ``job_{job}``), e.g. its XComArg.
        dataset_id: the run's dataset id, e.g. ``upload_to_lake``'s XComArg ``["dataset_id"]``.
        timeout_seconds: the Databricks run's own timeout.
    """
    cluster = cluster_spec(JOB_CLUSTERS[job])
    cluster["spark_env_vars"] = {**cluster.get("spark_env_vars", {}), **cluster_env_vars()}
    return {
        "run_name": f"swan-anomaly {job} {{{{ run_id }}}}",
        "timeout_seconds": timeout_seconds,
        "tasks": [
            {
                "task_key": job,
                "new_cluster": cluster,
                "libraries": [*run_libraries(), {"whl": code["wheel_uri"]}],
                "spark_python_task": {
                    "python_file": code[job_file_key(job)],
                    "parameters": ["--lake-root", code["lake_root"], "--dataset-id", dataset_id, "--run-id", "{{ run_id }}", *args],
                },
            }
        ],
    }
