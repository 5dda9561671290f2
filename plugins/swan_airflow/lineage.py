"""What Airflow sees of the pipeline's outputs: asset events for the lake partitions and the model, and task links.

Assets (group ``swan-anomaly``), each event's ``extra`` naming the partition or version it is about:

- ``swan_lake_raw`` by ``upload_to_lake``: ``dataset_id``, ``uri``, ``digest`` (the manifest's), ``written``
  (files this upload wrote: 0 when a rerun found them identical);
- ``swan_lake_silver`` by ``run_etl`` and ``swan_lake_gold`` by ``run_augmentation``: ``dataset_id``, ``uri``
  (where the jobs see the partition), ``rows``;
- ``swan_model_version`` by ``register_model``: ``name``, ``version``, ``uri`` (``models:/name/version``), ``mlflow_run_id``;
- ``swan_model_champion`` by ``validate_endpoint`` when the endpoint passed (or only drifted): ``name``,
  ``version`` (the champion the endpoint serves and that was just validated), ``uri``, ``outcome``,
  ``new`` (this run put it there). A version that is rolled back fails that task, so no event names it.

What the tasks report here is best effort: a lineage step that fails is logged as a warning and
never fails a task whose work succeeded.

A downstream DAG scheduled on one of them reads the partition from
``triggering_asset_events``, e.g. a report that runs whenever a gold partition lands.

Links (buttons on the task in the Airflow UI): ``run_training`` links its MLflow run,
``register_model`` and ``promote_model`` the model version, ``update_endpoint`` and
``validate_endpoint`` the serving endpoint; the Databricks runs keep the provider's run link.
A task pushes the URL as an XCom (``LINK_KEYS``) and the worker turns it into the link when the
task ends.

Example:
    >>> [a.name for a in (RAW, SILVER, GOLD, MODEL_VERSION, CHAMPION)]
    ['swan_lake_raw', 'swan_lake_silver', 'swan_lake_gold', 'swan_model_version', 'swan_model_champion']
    >>> mlflow_run_url("http://127.0.0.1:5000", "1", "abc", databricks=False)
    'http://127.0.0.1:5000/#/experiments/1/runs/abc'
    >>> model_version_url("https://adb-1.2.azuredatabricks.net", "main.swan.vit", "3", databricks=True)
    'https://adb-1.2.azuredatabricks.net/explore/data/models/main/swan/vit/version/3'
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import Asset, BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

GROUP = "swan-anomaly"
RAW = Asset(name="swan_lake_raw", group=GROUP)
SILVER = Asset(name="swan_lake_silver", group=GROUP)
GOLD = Asset(name="swan_lake_gold", group=GROUP)
MODEL_VERSION = Asset(name="swan_model_version", group=GROUP)
CHAMPION = Asset(name="swan_model_champion", group=GROUP)

#: The asset a job's task emits, and the lake layer and row count of its result it reports.
JOB_OUTLETS = {"etl": (SILVER, "silver", "silver_rows"), "augment": (GOLD, "gold", "gold_rows")}


def best_effort(step):
    """Run a lineage step; log a failure as a warning instead of failing the task (its work is done)."""

    @functools.wraps(step)
    def run(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - lineage never fails the pipeline's work
            log.warning("lineage: %s failed (%s: %s); the task's own work is unaffected", step.__name__, type(exc).__name__, exc)
            return None

    return run


def record(context, asset: Asset, **extra: Any) -> None:
    """Put ``extra`` on the event that ``asset`` (an outlet of the running task) gets when the task succeeds."""
    context["outlet_events"][asset].extra = extra


def partition_uri(lake_root: str, layer: str, dataset_id: str) -> str:
    """Where a job's partition lives, as the jobs see the lake (:class:`swan_anomaly.lake.LocalLake`'s layout)."""
    from swan_anomaly.lake import LocalLake

    lake = LocalLake(Path(lake_root))
    return str(lake.silver_partition(dataset_id) if layer == "silver" else lake.gold_partition(dataset_id))


# ---- links -------------------------------------------------------------------------------------

#: The XCom keys the tasks push their URLs under.
LINK_KEYS = {"mlflow_run": "mlflow_run_url", "model_version": "model_version_url", "endpoint": "endpoint_url"}


class _XComURL(BaseOperatorLink):
    key = ""

    def get_link(self, operator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.key, ti_key=ti_key) or ""


class MlflowRunLink(_XComURL):
    name = "MLflow run"
    key = LINK_KEYS["mlflow_run"]


class ModelVersionLink(_XComURL):
    name = "Model version"
    key = LINK_KEYS["model_version"]


class EndpointLink(_XComURL):
    name = "Serving endpoint"
    key = LINK_KEYS["endpoint"]


def with_links(task_output, *links: BaseOperatorLink):
    """Give the task behind a ``@task`` call's output these links (the decorator takes none); returns the output."""
    task_output.operator.operator_extra_links = (*task_output.operator.operator_extra_links, *links)
    return task_output


def mlflow_ui() -> tuple[str, bool]:
    """``(base URL, is Databricks)`` of the MLflow UI: ``SWAN_MLFLOW_UI_URL``, else the workspace of the Databricks connection."""
    from swan_airflow.runtime import settings

    s = settings()
    databricks = s.tracking_uri.startswith("databricks")
    return (s.mlflow_ui_url or (workspace_url() if databricks else "")), databricks


def workspace_url() -> str:
    """The workspace URL of the Databricks connection (:func:`swan_airflow.databricks_auth.workspace_host`)."""
    from airflow.sdk import BaseHook

    from swan_airflow.databricks_auth import workspace_host
    from swan_airflow.runtime import settings

    return workspace_host(BaseHook.get_connection(settings().databricks_conn_id))


def mlflow_run_url(base: str, experiment_id: str, run_id: str, *, databricks: bool) -> str:
    if databricks:
        return f"{base}/ml/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def model_version_url(base: str, name: str, version: str, *, databricks: bool) -> str:
    if databricks and name.count(".") == 2:  # Unity Catalog
        return f"{base}/explore/data/models/{'/'.join(name.split('.'))}/version/{version}"
    if databricks:
        return f"{base}/ml/models/{quote(name)}/versions/{version}"
    return f"{base}/#/models/{quote(name)}/versions/{version}"


def push_model_version_link(context, name: str, version: str) -> None:
    base, databricks = mlflow_ui()
    if base:
        context["ti"].xcom_push(key=LINK_KEYS["model_version"], value=model_version_url(base, name, version, databricks=databricks))


def push_mlflow_run_link(context, experiment_id: str | None, run_id: str) -> None:
    base, databricks = mlflow_ui()
    if base and experiment_id:
        context["ti"].xcom_push(key=LINK_KEYS["mlflow_run"], value=mlflow_run_url(base, experiment_id, run_id, databricks=databricks))


# ---- what each task reports ----------------------------------------------------------------------


@best_effort
def raw_uploaded(context, uploaded: dict) -> None:
    """``upload_to_lake``: the raw partition's event."""
    record(context, RAW, dataset_id=uploaded["dataset_id"], uri=uploaded["uri"], digest=uploaded["digest"], written=uploaded["written"])


@best_effort
def model_registered(context, registered: dict) -> None:
    """``register_model``: the new version's event and link."""
    name, version = registered["name"], registered["version"]
    record(context, MODEL_VERSION, name=name, version=version, uri=f"models:/{name}/{version}", mlflow_run_id=registered["mlflow_run_id"])
    push_model_version_link(context, name, version)


@best_effort
def version_linked(context, registered: dict) -> None:
    """``promote_model``: the link to the version it made the champion."""
    push_model_version_link(context, registered["name"], registered["version"])


@best_effort
def champion_validated(context, name: str, summary: dict) -> None:
    """``validate_endpoint`` (passed or drifted): the champion's event, naming the version the endpoint serves."""
    version, new = summary["validated_version"], bool(summary.get("new_version"))
    record(context, CHAMPION, name=name, version=version, uri=f"models:/{name}/{version}", outcome=summary["outcome"], new=new)


@best_effort
def endpoint_linked(context) -> None:
    """``update_endpoint`` / ``validate_endpoint``: the endpoint's page, from the settings alone (no token, no server).

    Databricks' serving page of the endpoint, or the local server's ``/health`` at ``SWAN_ENDPOINT_UI_URL``.
    """
    from swan_airflow.runtime import settings

    s = settings()
    url = f"{workspace_url()}/ml/endpoints/{s.endpoint_name}" if s.serving_backend == "databricks" else f"{s.endpoint_ui_url}/health"
    context["ti"].xcom_push(key=LINK_KEYS["endpoint"], value=url)
