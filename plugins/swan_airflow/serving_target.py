"""Which serving endpoint the DAG deploys to: the local model server or Databricks Model Serving.

``SWAN_SERVING_BACKEND=local`` (default) starts/uses the local model server at
``SWAN_ENDPOINT_URL`` with its bearer token (:func:`local_endpoint_token`); ``databricks`` uses the workspace of the Airflow connection
``SWAN_DATABRICKS_CONN_ID`` (default ``databricks_default``), authenticated as that connection
says: a personal access token, an OAuth service principal, or Azure AD
(:func:`swan_airflow.databricks_auth.workspace_auth`). Either way the DAG drives the endpoint with
databricks-sdk and scores it with the same client.

Example:
    >>> target = serving_target()             # doctest: +SKIP
    >>> target.invocations_url                # doctest: +SKIP
    'http://127.0.0.1:5055/serving-endpoints/swan-anomaly/invocations'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from swan_airflow.runtime import settings

if TYPE_CHECKING:
    from swan_anomaly.serving.deploy import WorkspaceAuth


def local_endpoint_token() -> str:
    """The local model server's bearer token: the password of the Airflow connection ``SWAN_ENDPOINT_CONN_ID``
    (default ``swan_endpoint``) when it exists, else ``SWAN_ENDPOINT_TOKEN``, else the token file under
    ``$SWAN_HOME/serving`` (:func:`swan_anomaly.serving.local.endpoint_token`). Airflow masks a
    connection's password in task logs; the token never goes to XCom.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from swan_anomaly.serving.local import endpoint_token

    s = settings()
    try:
        conn = BaseHook.get_connection(s.endpoint_conn_id)
    except AirflowNotFoundException:
        return endpoint_token(s)
    if not conn.password:
        msg = f"Airflow connection {s.endpoint_conn_id!r} has no password: set it to the local model server's bearer token"
        raise ValueError(msg)
    return conn.password


@dataclass(frozen=True)
class ServingTarget:
    """An endpoint and how to reach it; ``auth`` (a :class:`swan_anomaly.serving.deploy.WorkspaceAuth`) shows no secret."""

    backend: str
    base_url: str
    endpoint: str
    auth: WorkspaceAuth

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/serving-endpoints/{self.endpoint}/invocations"

    def workspace(self):
        from swan_anomaly.serving.deploy import workspace_client

        return workspace_client(auth=self.auth)

    def client(self):
        from swan_anomaly.serving.client import EndpointClient

        if self.backend == "databricks":  # the SDK's authentication (a token, OAuth or Azure AD) and retries; 16 MB requests
            return EndpointClient(self.base_url, self.endpoint, workspace=self.workspace())
        max_bytes = int(settings().endpoint_max_body_mb * 2**20)  # the local model server's limit
        return EndpointClient(self.base_url, self.endpoint, token=self.auth.token, max_request_bytes=max_bytes)


def serving_target(*, start: bool = True) -> ServingTarget:
    """The configured endpoint; starts the local model server when the backend is local (unless ``start=False``)."""
    s = settings()
    backend = s.serving_backend
    if backend == "local":
        from airflow.sdk.exceptions import AirflowFailException

        from swan_anomaly import ConfigError
        from swan_anomaly.serving.deploy import WorkspaceAuth
        from swan_anomaly.serving.local import ensure_local_server

        token = local_endpoint_token()
        try:
            url = ensure_local_server(s, token=token) if start else s.endpoint_url
        except ConfigError as exc:  # another deployment's server (or token) holds the port: only an operator can fix it
            raise AirflowFailException(str(exc)) from exc
        return ServingTarget("local", url, s.endpoint_name, WorkspaceAuth.pat(url, token))
    if backend == "databricks":
        from swan_airflow.databricks_auth import databricks_workspace

        auth = databricks_workspace()
        return ServingTarget("databricks", auth.host, s.endpoint_name, auth)
    msg = f"SWAN_SERVING_BACKEND must be 'local' or 'databricks', got {backend!r}"
    raise ValueError(msg)


def serving_config(client, version: str, target: ServingTarget):
    """The served entity's config for ``version``: ``SWAN_SERVING_*``, with int8 asked only of a version that can load in it.

    On Databricks a version's endpoint runs the code logged with it. A version logged before int8 serving
    existed carries code that refuses ``SWAN_SERVING_CPU_PRECISION=int8`` (its endpoint would not start: a
    rollback to it would fail), and one logged without torchao cannot quantize; both serve in float32
    instead, with a warning. Which precisions a version can serve in is its training run's
    :data:`swan_anomaly.tracking.CPU_PRECISIONS_TAG`. The local model server runs its own code and
    environment, so its config is the settings'.

    Raises:
        MlflowException: the registry did not answer (a retry may); a version or run that is gone, or out of
            reach (another workspace's run), counts as one that cannot.
    """
    import logging
    from dataclasses import replace

    from mlflow.exceptions import MlflowException

    from swan_anomaly.serving.deploy import ServingConfig
    from swan_anomaly.tracking import CPU_PRECISIONS_TAG

    config = ServingConfig.from_env()
    if config.cpu_precision != "int8" or target.backend != "databricks":
        return config
    name, run_id, supported = settings().model_name, None, []
    try:
        run_id = client.get_model_version(name, version).run_id
        if run_id:
            supported = client.get_run(run_id).data.tags.get(CPU_PRECISIONS_TAG, "").split(",")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED"):
            raise
        run_id = f"{run_id or '?'} ({exc.error_code})"
    if "int8" in supported:
        return config
    logging.getLogger(__name__).warning(
        "%s v%s cannot serve in int8 (its training run %s names %s, not int8: logged before int8 serving, or without torchao); "
        "it serves in float32",
        name,
        version,
        run_id,
        ",".join(p for p in supported if p) or "no precisions",
    )
    return replace(config, cpu_precision="float32")


def restore_endpoint(target: ServingTarget, version: str) -> None:
    """Give ``version`` the ``champion`` alias again and serve it (after a failed validation).

    The alias moves first: if serving it fails, the registry already names the version that
    should serve, and the next ``update_endpoint`` serves it. Both steps are idempotent.

    Raises:
        AirflowFailException: the endpoint refused ``version`` (it could not load it, or had no capacity for
            it). Whatever it served is what the rollback takes off it, so the endpoint is deleted: nothing
            serves until ``update_endpoint`` serves the champion again.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.runtime import registry_client
    from swan_anomaly import EndpointError
    from swan_anomaly.registry import move_champion_back
    from swan_anomaly.serving.deploy import delete_endpoint, deploy_version

    s = settings()
    client = registry_client()
    move_champion_back(client, s.model_name, version)
    try:
        deploy_version(target.workspace(), target.endpoint, s.model_name, version, serving_config(client, version, target))
    except EndpointError as exc:
        delete_endpoint(target.workspace(), target.endpoint)
        msg = (
            f"the rollback could not serve v{version} again ({exc}), so it deleted endpoint {target.endpoint}: the version it "
            f"served must not go on serving. v{version} holds the champion alias; update_endpoint serves it once the endpoint can"
        )
        raise AirflowFailException(msg) from exc


def withdraw_endpoint(target: ServingTarget, version: str) -> None:
    """Take the ``champion`` alias off ``version`` and delete the endpoint: a version that must not serve, and no
    validated one to serve instead (a first version that failed). Both steps are idempotent."""
    from swan_airflow.runtime import registry_client
    from swan_anomaly.registry import drop_champion_alias
    from swan_anomaly.serving.deploy import delete_endpoint

    drop_champion_alias(registry_client(), settings().model_name, version)
    delete_endpoint(target.workspace(), target.endpoint)
