"""MLflow model registry: register a challenger once per Airflow run, promote by alias.

Aliases: a new version gets ``challenger``; promotion moves ``champion`` to it and records
the previous champion in the ``previous_champion`` alias for rollback. Every function is
idempotent: rerunning a task finds the version registered by the same Airflow run (tag
``airflow_run_id``) instead of creating a duplicate.

Example:
    >>> client = MlflowClient(tracking_uri)                                           # doctest: +SKIP
    >>> v = register_challenger(client, "swan_anomaly_vit", "models:/m-1", "run-1", "manual__x")  # doctest: +SKIP
    >>> promote(client, "swan_anomaly_vit", v.version)                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous_champion"


def mlflow_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """A client for the tracking server and registry; also sets them process-wide.

    MLflow 3 resolves ``models:/m-...`` (logged model) URIs through the global tracking URI
    while registering, so the client and the process must agree.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    return MlflowClient(tracking_uri, registry_uri or tracking_uri)


def find_version_for_run(client: MlflowClient, name: str, airflow_run_id: str, mlflow_run_id: str | None = None) -> ModelVersion | None:
    """The version registered by an Airflow run, if any.

    Looked up by the training's MLflow run id first (the one filter that Unity Catalog's search
    supports, which returns versions without their tags), then by the ``airflow_run_id`` tag.
    """
    try:
        if mlflow_run_id:
            same_run = [v for v in client.search_model_versions(f"run_id = '{mlflow_run_id}'") if v.name == name]
            if same_run:
                return min(same_run, key=lambda v: int(v.version))
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in sorted(versions, key=lambda v: int(v.version)):
        if v.tags.get("airflow_run_id") == airflow_run_id:
            return v
    return None


def register_challenger(client: MlflowClient, name: str, model_uri: str, mlflow_run_id: str, airflow_run_id: str, tags: dict | None = None) -> ModelVersion:
    """Register ``model_uri`` as a new version with alias ``challenger`` (once per Airflow run)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Swan scene anomaly scorer (ViT). 0 = abnormal, 1 = normal; anomaly_score = softmax(logits)[0].")
    existing = find_version_for_run(client, name, airflow_run_id, mlflow_run_id)
    if existing is not None:
        log.info("reusing version %s of %s registered by %s", existing.version, name, airflow_run_id)
        version = existing
    else:
        version = client.create_model_version(name, model_uri, run_id=mlflow_run_id, tags={"airflow_run_id": airflow_run_id, **(tags or {})})
        log.info("registered %s version %s from %s", name, version.version, model_uri)
    client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    return client.get_model_version(name, str(version.version))


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(client: MlflowClient, name: str, version: str) -> bool:
    """Move ``champion`` to ``version``; keep the old champion as ``previous_champion``.

    Returns:
        False when ``version`` already is the champion (a rerun), True otherwise.
    """
    current = get_alias(client, name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        log.info("%s version %s already is the champion", name, version)
        return False
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if (ch := get_alias(client, name, CHALLENGER)) is not None and str(ch.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    log.info("promoted %s version %s to champion (previous: %s)", name, version, current.version if current else None)
    return True


def rollback(client: MlflowClient, name: str, version: str) -> None:
    """Make ``version`` the champion again (after a failed endpoint validation)."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    log.warning("rolled %s champion back to version %s", name, version)


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    """The aliases currently held by a version."""
    return sorted(client.get_model_version(name, str(version)).aliases)
