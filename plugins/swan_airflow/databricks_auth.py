"""The Databricks workspace as the Airflow connection names it, for databricks-sdk and MLflow.

The provider's hook authenticates job runs itself; the serving client (databricks-sdk) and MLflow's
Databricks registry need the same workspace and credentials: :func:`databricks_workspace` reads the
connection ``SWAN_DATABRICKS_CONN_ID`` into a :class:`~swan_anomaly.serving.deploy.WorkspaceAuth`
(:func:`workspace_auth` lists the connection forms), and :func:`databricks_environ` turns it into
the variables MLflow reads (:func:`swan_airflow.runtime.registry_client`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from swan_airflow.runtime import settings

if TYPE_CHECKING:
    from swan_anomaly.serving.deploy import WorkspaceAuth

log = logging.getLogger(__name__)

#: The provider's federated logins (an OIDC token exchanged by its hook): nothing databricks-sdk or MLflow can do here.
_FEDERATED_FLAGS = ("federated_k8s", "federated_aws", "federated_token_provider")


def workspace_host(conn) -> str:
    """The workspace URL of a ``databricks`` connection, as the provider reads it: ``extra.host`` or the host
    field, with its scheme or the schema field's (``https`` by default) and the port field; empty without a host."""
    raw = (conn.extra_dejson.get("host") or conn.host or "").rstrip("/")
    if not raw or "://" in raw:
        return raw
    return f"{conn.schema or 'https'}://{raw}" + (f":{conn.port}" if conn.port else "")


def workspace_auth(conn, conn_id: str) -> WorkspaceAuth:
    """How databricks-sdk authenticates as the Airflow ``databricks`` connection ``conn`` does for the provider's hook.

    The connection forms of apache-airflow-providers-databricks, in the hook's order, except
    that a flag wins over a password without a login (the hook would send that password as a
    token; here a service principal without its client id is an error, not a 401):

    ========================================  =====================================================
    connection                                authentication (databricks-sdk ``auth_type``)
    ========================================  =====================================================
    ``extra.token``                           the token as a bearer token (``pat``)
    login + password + ``extra.azure_tenant_id``  Azure AD service principal: application (client)
                                              id and client secret (``azure-client-secret``);
                                              ``extra.azure_resource_id`` for one that is no
                                              workspace user
    ``extra.use_azure_managed_identity``      the Azure managed identity of the worker
                                              (``azure-msi``; ``extra.azure_managed_identity_client_id``
                                              picks a user-assigned one)
    ``extra.use_default_azure_credential``    azure-identity's DefaultAzureCredential (AKS workload identity)
    login + password + ``extra.service_principal_oauth``  OAuth machine-to-machine: a Databricks
                                              service principal's client id and secret (``oauth-m2m``)
    password, no flag                         the password as a bearer token (``pat``): a personal
                                              access token or a ready Azure AD token (with a
                                              login too, as before; the hook sends basic auth then)
    ========================================  =====================================================

    The host is ``extra.host`` or the host field, with its scheme or the schema field's (``https``
    by default) and the port field. Airflow masks the password and secret extras in task logs;
    the returned object shows no secret in its repr.

    Raises:
        AirflowFailException: the connection has no host, neither a token nor a complete
            service principal or managed identity, or a federated login of the provider (no
            retry: only a fixed connection helps).

    Example:
        >>> from airflow.sdk import Connection
        >>> conn = Connection(conn_id="dbx", conn_type="databricks", host="adb-1.2.azuredatabricks.net",
        ...                   login="7f1c-sp", password="s3cret", extra='{"service_principal_oauth": true}')
        >>> workspace_auth(conn, "dbx")  # doctest: +NORMALIZE_WHITESPACE
        WorkspaceAuth(host='https://adb-1.2.azuredatabricks.net', auth_type=<AuthType.OAUTH_M2M: 'oauth-m2m'>,
                      client_id='7f1c-sp', tenant_id=None)
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_anomaly.serving.deploy import AuthType, WorkspaceAuth

    extra = conn.extra_dejson
    where = f"Airflow connection {conn_id!r}"
    host = workspace_host(conn)
    if not host:
        msg = f"{where} has no host; set it to the workspace URL, e.g. https://adb-123.4.azuredatabricks.net"
        raise AirflowFailException(msg)
    login, password = conn.login or None, conn.password or None

    def service_principal(auth_type: AuthType, flag: str, **more) -> WorkspaceAuth:
        if not (login and password):
            msg = (
                f"{where} has {flag} but no complete service principal: set login to its application (client) id "
                f"and password to its client secret"
            )
            raise AirflowFailException(msg)
        return WorkspaceAuth(host, auth_type, client_id=login, client_secret=password, **more)

    if extra.get("token"):
        auth = WorkspaceAuth.pat(host, extra["token"])
    elif extra.get("azure_tenant_id"):
        more = {"tenant_id": extra["azure_tenant_id"], "azure_resource_id": extra.get("azure_resource_id")}
        auth = service_principal(AuthType.AZURE_CLIENT_SECRET, "extra.azure_tenant_id", **more)
    elif extra.get("use_azure_managed_identity"):
        client_id = extra.get("azure_managed_identity_client_id")
        auth = WorkspaceAuth(host, AuthType.AZURE_MSI, client_id=client_id, azure_resource_id=extra.get("azure_resource_id"))
    elif extra.get("use_default_azure_credential"):
        auth = WorkspaceAuth(host, AuthType.AZURE_DEFAULT, azure_resource_id=extra.get("azure_resource_id"))
    elif extra.get("service_principal_oauth"):
        auth = service_principal(AuthType.OAUTH_M2M, "extra.service_principal_oauth")
    elif federated := [flag for flag in _FEDERATED_FLAGS if extra.get(flag) or login == flag]:
        msg = (
            f"{where} uses the provider's {federated[0]} login, which serves job runs only: the serving client and MLflow "
            f"need a token, an OAuth or Azure AD service principal, or a managed identity (see docs/databricks.md#authentication)"
        )
        raise AirflowFailException(msg)
    elif password:  # with or without a login, no flag: the password is the token, as this project always read it
        auth = WorkspaceAuth.pat(host, password)
    else:
        msg = (
            f"{where} has neither a token nor a service principal. Set one of: the password to a personal access token "
            f'(login empty); login + password to an OAuth client id + secret with extra {{"service_principal_oauth": true}}; '
            f'login + password to an Azure AD application id + client secret with extra {{"azure_tenant_id": "<tenant>"}}; '
            f'or extra {{"use_azure_managed_identity": true}} (see docs/databricks.md#authentication)'
        )
        raise AirflowFailException(msg)
    return auth


def databricks_workspace() -> WorkspaceAuth:
    """The workspace of the Airflow connection ``SWAN_DATABRICKS_CONN_ID`` (default ``databricks_default``).

    See :func:`workspace_auth` for the connection forms (token, OAuth service principal, Azure AD).
    """
    from airflow.sdk import BaseHook

    conn_id = settings().databricks_conn_id
    auth = workspace_auth(BaseHook.get_connection(conn_id), conn_id)
    who = f" as {auth.client_id}" if auth.client_id else ""  # a client id is no secret; it names the principal
    log.info("Databricks connection %r: %s authentication to %s%s", conn_id, auth.auth_type.value, auth.host, who)
    return auth


#: databricks-sdk variables that carry Databricks credentials: what registry_client() hands MLflow replaces all of them.
SDK_CREDENTIAL_VARIABLES = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE")


def databricks_environ(auth: WorkspaceAuth) -> dict[str, str]:
    """The environment variables that make MLflow (through databricks-sdk) authenticate as ``auth``.

    A token or a service principal as databricks-sdk reads them (``DATABRICKS_TOKEN``;
    ``DATABRICKS_CLIENT_ID``/``_SECRET``; ``ARM_CLIENT_ID``/``_SECRET``/``ARM_TENANT_ID``). A
    managed identity has no variables there: its current Azure AD token is handed over as a
    ``DATABRICKS_TOKEN`` (masked in task logs), valid for this task's registry calls.
    """
    environ = auth.sdk_environ()
    if environ is None:
        from airflow.sdk.log import mask_secret

        token = auth.bearer_token()
        mask_secret(token)
        environ = {"DATABRICKS_HOST": auth.host, "DATABRICKS_TOKEN": token}
    return environ
