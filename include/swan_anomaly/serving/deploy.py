"""Point a serving endpoint at a registered model version with databricks-sdk.

The same calls drive Databricks Model Serving and the embedded default's local model server
(which answers the serving-endpoints API with Databricks' shapes and state transitions):
create the endpoint if it is missing, else ``update_config_and_wait``; a no-op when the
version is already served. Served entity = the model version; workload size, workload type and
scale-to-zero come from :class:`ServingConfig`.

How the client authenticates is a :class:`WorkspaceAuth`: a personal access token (the local
model server's bearer token too), OAuth machine-to-machine with a Databricks service principal,
an Azure AD service principal, or an Azure managed identity; its secrets never show in a repr.

Example:
    >>> w = workspace_client("http://127.0.0.1:5055", token="local")                    # doctest: +SKIP
    >>> deploy_version(w, "swan-anomaly", "swan_anomaly_vit", "3", ServingConfig())      # doctest: +SKIP
    DeployResult(endpoint='swan-anomaly', version='3', previous_version='2', changed=True)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from databricks.sdk import WorkspaceClient
from databricks.sdk.credentials_provider import CredentialsProvider, CredentialsStrategy
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
    cpu_precision: str = "float32"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingConfig:
        """``SWAN_SERVING_WORKLOAD_SIZE``, ``_WORKLOAD_TYPE``, ``_SCALE_TO_ZERO``, ``_CPU_PRECISION`` (see ``Settings``)."""
        s = Settings.from_env(env)
        return cls(
            workload_size=s.serving_workload_size,
            workload_type=s.serving_workload_type,
            scale_to_zero=s.serving_scale_to_zero,
            cpu_precision=s.serving_cpu_precision,
        )

    def environment_vars(self) -> dict[str, str] | None:
        """What the served model reads from its environment: the CPU precision, when it is not the default."""
        return {Settings.variable("serving_cpu_precision"): self.cpu_precision} if self.cpu_precision != "float32" else None


@dataclass(frozen=True)
class DeployResult:
    endpoint: str
    version: str
    previous_version: str | None
    changed: bool


#: Azure Databricks' application id in Azure AD: the resource of AAD tokens for any workspace.
AZURE_DATABRICKS_RESOURCE = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
#: The Azure management resource: a service principal that is no workspace user also sends a token for it.
AZURE_MANAGEMENT_RESOURCE = "https://management.core.windows.net/"


class AuthType(StrEnum):
    """How a client authenticates to a workspace; the values are databricks-sdk's ``auth_type`` names."""

    PAT = "pat"  # a personal access token, or any ready bearer token (an Azure AD token, the local server's token)
    OAUTH_M2M = "oauth-m2m"  # a Databricks service principal's OAuth client id and secret
    AZURE_CLIENT_SECRET = "azure-client-secret"  # an Azure AD service principal (application) and its client secret
    AZURE_MSI = "azure-msi"  # an Azure managed identity (databricks-sdk for Python has none: see _AzureIdentity)
    AZURE_DEFAULT = "azure-default-credential"  # azure-identity's DefaultAzureCredential (AKS workload identity, ...)


@dataclass(frozen=True)
class WorkspaceAuth:
    """Where a workspace is and how to authenticate to it; its secrets never show in a repr.

    Args:
        host: workspace URL with its scheme, ``https://adb-1.2.azuredatabricks.net``.
        auth_type: see :class:`AuthType`.
        token: the bearer token (``pat``).
        client_id: the OAuth or Azure AD application (client) id; a user-assigned managed identity's client id.
        client_secret: the client secret (``oauth-m2m``, ``azure-client-secret``).
        tenant_id: the Azure AD tenant (``azure-client-secret``).
        azure_resource_id: the workspace's Azure resource id, for a service principal that is no workspace user.

    Raises:
        ValueError: a field the auth type needs is missing (the message names it, never a secret).

    Example:
        >>> auth = WorkspaceAuth("https://adb-1.2.azuredatabricks.net", AuthType.OAUTH_M2M, client_id="sp-1", client_secret="s3cret")
        >>> auth  # doctest: +NORMALIZE_WHITESPACE
        WorkspaceAuth(host='https://adb-1.2.azuredatabricks.net', auth_type=<AuthType.OAUTH_M2M: 'oauth-m2m'>,
                      client_id='sp-1', tenant_id=None)
        >>> sorted(auth.config_kwargs())
        ['auth_type', 'client_id', 'client_secret', 'host']
    """

    host: str
    auth_type: AuthType
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    tenant_id: str | None = None
    azure_resource_id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "auth_type", AuthType(self.auth_type))
        needs = {
            AuthType.PAT: ("token",),
            AuthType.OAUTH_M2M: ("client_id", "client_secret"),
            AuthType.AZURE_CLIENT_SECRET: ("client_id", "client_secret", "tenant_id"),
        }.get(self.auth_type, ())
        missing = [name for name in ("host", *needs) if not getattr(self, name)]
        if missing:
            msg = f"{self.auth_type.value} authentication needs {' and '.join(missing)}"
            raise ValueError(msg)

    @classmethod
    def pat(cls, host: str, token: str) -> WorkspaceAuth:
        """A bearer token: a personal access token, an Azure AD token, the local model server's token."""
        return cls(host, AuthType.PAT, token=token)

    def config_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of databricks-sdk's ``Config`` (and ``WorkspaceClient``) for this workspace."""
        kwargs: dict[str, Any] = {"host": self.host}
        if self.auth_type == AuthType.PAT:
            return {**kwargs, "token": self.token, "auth_type": "pat"}
        if self.auth_type == AuthType.OAUTH_M2M:
            return {**kwargs, "client_id": self.client_id, "client_secret": self.client_secret, "auth_type": "oauth-m2m"}
        if self.auth_type == AuthType.AZURE_CLIENT_SECRET:
            kwargs |= {
                "azure_client_id": self.client_id,
                "azure_client_secret": self.client_secret,
                "azure_tenant_id": self.tenant_id,
                "auth_type": "azure-client-secret",
            }
            return kwargs | ({"azure_workspace_resource_id": self.azure_resource_id} if self.azure_resource_id else {})
        return {**kwargs, "credentials_strategy": _AzureIdentity(self.auth_type, self.client_id, self.azure_resource_id)}

    def sdk_environ(self) -> dict[str, str] | None:
        """The databricks-sdk environment variables for the same authentication (what MLflow's client reads).

        None for a managed identity or DefaultAzureCredential: databricks-sdk for Python reads no
        variable for them; hand such a process a token (:meth:`bearer_token`) instead.
        """
        if self.auth_type == AuthType.PAT:
            return {"DATABRICKS_HOST": self.host, "DATABRICKS_TOKEN": self.token}
        if self.auth_type == AuthType.OAUTH_M2M:
            return {
                "DATABRICKS_HOST": self.host,
                "DATABRICKS_CLIENT_ID": self.client_id,
                "DATABRICKS_CLIENT_SECRET": self.client_secret,
                "DATABRICKS_AUTH_TYPE": "oauth-m2m",
            }
        if self.auth_type == AuthType.AZURE_CLIENT_SECRET:
            environ = {
                "DATABRICKS_HOST": self.host,
                "ARM_CLIENT_ID": self.client_id,
                "ARM_CLIENT_SECRET": self.client_secret,
                "ARM_TENANT_ID": self.tenant_id,
                "DATABRICKS_AUTH_TYPE": "azure-client-secret",
            }
            return environ | ({"DATABRICKS_AZURE_RESOURCE_ID": self.azure_resource_id} if self.azure_resource_id else {})
        return None

    def bearer_token(self) -> str:
        """A bearer token for the workspace now (fetched for OAuth and Azure methods; valid about an hour or more)."""
        from databricks.sdk.config import Config

        authorization = Config(**self.config_kwargs()).authenticate().get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            msg = f"{self.auth_type.value} authentication to {self.host} gave no bearer token"
            raise ValueError(msg)
        return token


class _AzureIdentity(CredentialsStrategy):
    """databricks-sdk credentials from an azure-identity credential: a managed identity or DefaultAzureCredential.

    databricks-sdk for Python has no managed-identity authentication (its ``azure_use_msi`` setting
    is read by no credentials provider), so this asks azure-identity for the Azure Databricks token,
    as the Airflow provider's hook does for the same connection. azure-identity caches and refreshes it.
    """

    def __init__(self, auth_type: AuthType, client_id: str | None, azure_resource_id: str | None) -> None:
        self._auth_type, self._client_id, self._resource_id = auth_type, client_id, azure_resource_id

    def auth_type(self) -> str:
        return self._auth_type.value

    def __call__(self, cfg) -> CredentialsProvider:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        if self._auth_type == AuthType.AZURE_MSI:
            credential = ManagedIdentityCredential(client_id=self._client_id)
        else:
            credential = DefaultAzureCredential()

        def token_for(resource: str) -> str:
            return credential.get_token(f"{resource}/.default").token

        def headers() -> dict[str, str]:
            result = {"Authorization": f"Bearer {token_for(AZURE_DATABRICKS_RESOURCE)}"}
            if self._resource_id:  # an identity that is no workspace user: Azure checks its rights on the workspace
                result["X-Databricks-Azure-Workspace-Resource-Id"] = self._resource_id
                result["X-Databricks-Azure-SP-Management-Token"] = token_for(AZURE_MANAGEMENT_RESOURCE)
            return result

        return headers

    def __repr__(self) -> str:
        return f"_AzureIdentity({self._auth_type.value!r}, client_id={self._client_id!r})"


def workspace_client(host: str | None = None, *, token: str | None = None, auth: WorkspaceAuth | None = None) -> WorkspaceClient:
    """A databricks-sdk client for a workspace (or the local endpoint).

    Args:
        host: the workspace URL, with ``token`` (a personal access token or any bearer token).
        token: see ``host``.
        auth: any :class:`WorkspaceAuth` instead of ``host`` and ``token``.

    Raises:
        ValueError: neither ``auth`` nor both ``host`` and ``token`` given.
    """
    if auth is None:
        if not (host and token):
            msg = "workspace_client needs auth=WorkspaceAuth(...), or a host and a token"
            raise ValueError(msg)
        auth = WorkspaceAuth.pat(host, token)
    return WorkspaceClient(**auth.config_kwargs())


def _served(detail, model_name: str | None = None) -> str | None:
    """The version of the one entity ``detail`` serves, when it is a version of ``model_name`` (of any model when None).

    None when the endpoint serves nothing, more than one entity (a traffic split: not a version of
    ours alone), or another model: a model of another name with the same version number is not ours.
    Names compare without case: Unity Catalog keeps its names in lower case whatever case they were
    given in.
    """
    entities = (detail.config.served_entities if detail.config else None) or []
    foreign = model_name is not None and entities and (entities[0].entity_name or "").casefold() != model_name.casefold()
    if len(entities) != 1 or foreign:
        if entities:
            found = ", ".join(f"{e.entity_name} v{e.entity_version}" for e in entities)
            log.warning("endpoint %s serves %s, not one version of %s", detail.name, found, model_name or "one model")
        return None
    return str(entities[0].entity_version)


def served_version(w: WorkspaceClient, endpoint: str, model_name: str | None = None) -> str | None:
    """The version of ``model_name`` the endpoint serves alone; None when it does not exist, serves nothing, or serves anything else."""
    try:
        return _served(w.serving_endpoints.get(endpoint), model_name)
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


def _entity_changes(detail, wanted: ServedEntityInput) -> list[str]:
    """What the endpoint's one served entity has otherwise than ``wanted`` (its workload, scale to zero, environment).

    A field the endpoint does not report counts as unchanged, so an answer without it never
    updates the endpoint on every run; the environment compares as a whole (none and empty alike).

    Example:
        >>> from databricks.sdk.service.serving import EndpointCoreConfigOutput, ServedEntityOutput, ServingEndpointDetailed
        >>> served = ServedEntityOutput(entity_name="m", entity_version="3", workload_size="Small", scale_to_zero_enabled=True)
        >>> detail = ServingEndpointDetailed(config=EndpointCoreConfigOutput(served_entities=[served]))
        >>> _entity_changes(detail, ServedEntityInput(entity_name="m", entity_version="3", workload_size="Medium",
        ...                                           scale_to_zero_enabled=True, environment_vars={"SWAN_SERVING_CPU_PRECISION": "int8"}))
        ['workload_size Small -> Medium', 'environment_vars {} -> {SWAN_SERVING_CPU_PRECISION}']
    """
    [served] = detail.config.served_entities
    changes = []
    for setting in ("workload_size", "workload_type", "scale_to_zero_enabled"):
        have, want = (getattr(getattr(e, setting), "value", getattr(e, setting)) for e in (served, wanted))
        if have is not None and want is not None and str(have) != str(want):
            changes.append(f"{setting} {have} -> {want}")
    have_env, want_env = served.environment_vars or {}, wanted.environment_vars or {}
    if have_env != want_env:  # named, not shown: a value may be a secret reference
        changes.append(f"environment_vars {{{', '.join(sorted(have_env))}}} -> {{{', '.join(sorted(want_env))}}}")
    return changes


def deploy_version(w: WorkspaceClient, endpoint: str, model_name: str, version: str, config: ServingConfig) -> DeployResult:
    """Serve ``model_name`` version ``version`` on ``endpoint``; wait until the config is live.

    An endpoint that serves the version already is updated only when its served entity's settings
    differ from ``config`` (a changed ``SWAN_SERVING_*``), and the result then says it changed.

    Raises:
        EndpointError: the endpoint reported ``UPDATE_FAILED`` (it keeps serving the old config).
    """
    entity = ServedEntityInput(
        entity_name=model_name,
        entity_version=str(version),
        workload_size=config.workload_size,
        workload_type=ServingModelWorkloadType(config.workload_type),
        scale_to_zero_enabled=config.scale_to_zero,
        environment_vars=config.environment_vars(),  # Model Serving hands these to the served pyfunc
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
        previous = _served(detail, model_name)
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
    changes = _entity_changes(detail, entity) if previous == str(version) else []
    if previous == str(version) and not changes:
        log.info("endpoint %s already serves %s v%s", endpoint, model_name, version)
        return DeployResult(endpoint, str(version), previous, False)
    if changes:
        log.info("endpoint %s serves %s v%s with other settings: %s", endpoint, model_name, version, "; ".join(changes))
    else:
        log.info("endpoint %s: %s v%s -> v%s", endpoint, model_name, previous, version)
    try:
        w.serving_endpoints.update_config_and_wait(endpoint, served_entities=[entity], timeout=config.timeout)
    except OperationFailed as exc:
        msg = f"endpoint {endpoint} failed to serve {model_name} v{version} and keeps serving v{previous}: {exc}"
        raise EndpointError(msg) from exc
    return DeployResult(endpoint, str(version), previous, True)
