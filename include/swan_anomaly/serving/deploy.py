"""Point a serving endpoint at a registered model version with databricks-sdk.

The same calls drive Databricks Model Serving and the embedded default's local model server
(which answers the serving-endpoints API with Databricks' shapes and state transitions):
create the endpoint if it is missing, else ``update_config_and_wait``; a no-op when the
version is already served. Served entity = the model version; workload size, workload type and
scale-to-zero come from :class:`ServingConfig`.

Example:
    >>> w = workspace_client("http://127.0.0.1:5055", token="local")                    # doctest: +SKIP
    >>> deploy_version(w, "swan-anomaly", "swan_anomaly_vit", "3", ServingConfig())      # doctest: +SKIP
    DeployResult(endpoint='swan-anomaly', version='3', previous_version='2', changed=True)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import NotFound, OperationFailed
from databricks.sdk.service.serving import EndpointCoreConfigInput, ServedEntityInput, ServingModelWorkloadType

from swan_anomaly._errors import EndpointError
from swan_anomaly.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    """Capacity of the served entity (Databricks: ``workload_size`` Small/Medium/Large, ``workload_type`` CPU/GPU_*)."""

    workload_size: str = "Small"
    workload_type: str = "CPU"
    scale_to_zero: bool = True
    timeout: dt.timedelta = dt.timedelta(minutes=20)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingConfig:
        """``SWAN_SERVING_WORKLOAD_SIZE``, ``SWAN_SERVING_WORKLOAD_TYPE``, ``SWAN_SERVING_SCALE_TO_ZERO`` (see ``Settings``)."""
        s = Settings.from_env(env)
        return cls(workload_size=s.serving_workload_size, workload_type=s.serving_workload_type, scale_to_zero=s.serving_scale_to_zero)


@dataclass(frozen=True)
class DeployResult:
    endpoint: str
    version: str
    previous_version: str | None
    changed: bool


def workspace_client(host: str, *, token: str) -> WorkspaceClient:
    """A databricks-sdk client for a workspace (or the local endpoint) with a personal access token."""
    return WorkspaceClient(host=host, token=token, auth_type="pat")


def _served(detail) -> str | None:
    entities = (detail.config.served_entities if detail.config else None) or []
    return str(entities[0].entity_version) if entities else None


def served_version(w: WorkspaceClient, endpoint: str) -> str | None:
    """The model version the endpoint serves, or None when it does not exist or serves nothing."""
    try:
        return _served(w.serving_endpoints.get(endpoint))
    except NotFound:
        return None


def delete_endpoint(w: WorkspaceClient, endpoint: str) -> bool:
    """Delete ``endpoint`` so that it serves nothing; False when it did not exist."""
    try:
        w.serving_endpoints.delete(endpoint)
    except NotFound:
        return False
    log.warning("deleted serving endpoint %s", endpoint)
    return True


def deploy_version(w: WorkspaceClient, endpoint: str, model_name: str, version: str, config: ServingConfig) -> DeployResult:
    """Serve ``model_name`` version ``version`` on ``endpoint``; wait until the config is live.

    Raises:
        EndpointError: the endpoint reported ``UPDATE_FAILED`` (it keeps serving the old config).
    """
    entity = ServedEntityInput(
        entity_name=model_name,
        entity_version=str(version),
        workload_size=config.workload_size,
        workload_type=ServingModelWorkloadType(config.workload_type),
        scale_to_zero_enabled=config.scale_to_zero,
    )
    try:
        detail = w.serving_endpoints.get(endpoint)
        if detail.state and detail.state.config_update and detail.state.config_update.value == "IN_PROGRESS":
            # another update is live (a restarted local server loading its champion, a deployment from elsewhere):
            # a second one now would be refused with RESOURCE_CONFLICT, so wait for it first
            log.info("endpoint %s is updating its config; waiting for that update before serving v%s", endpoint, version)
            try:
                detail = w.serving_endpoints.wait_get_serving_endpoint_not_updating(endpoint, timeout=config.timeout)
            except OperationFailed as exc:  # that update failed and the endpoint kept its config: ours goes on
                log.warning("the endpoint's pending update failed (%s); serving v%s now", exc, version)
                detail = w.serving_endpoints.get(endpoint)
        previous = _served(detail)
    except NotFound:
        log.info("creating serving endpoint %s for %s v%s", endpoint, model_name, version)
        try:
            w.serving_endpoints.create_and_wait(
                endpoint, config=EndpointCoreConfigInput(name=endpoint, served_entities=[entity]), timeout=config.timeout
            )
        except OperationFailed as exc:
            msg = f"serving endpoint {endpoint} could not be created with {model_name} v{version}: {exc}"
            raise EndpointError(msg) from exc
        return DeployResult(endpoint, str(version), None, True)
    if previous == str(version):
        log.info("endpoint %s already serves %s v%s", endpoint, model_name, version)
        return DeployResult(endpoint, str(version), previous, False)
    log.info("endpoint %s: %s v%s -> v%s", endpoint, model_name, previous, version)
    try:
        w.serving_endpoints.update_config_and_wait(endpoint, served_entities=[entity], timeout=config.timeout)
    except OperationFailed as exc:
        msg = f"endpoint {endpoint} failed to serve {model_name} v{version} and keeps serving v{previous}: {exc}"
        raise EndpointError(msg) from exc
    return DeployResult(endpoint, str(version), previous, True)
