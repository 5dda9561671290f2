"""Databricks unified authentication: one Airflow ``databricks`` connection, in any of the provider's
forms (a token, an OAuth service principal, Azure AD), authenticates the provider's hook, the
serving client (databricks-sdk) and MLflow's registry client alike, and no secret leaks.

OAuth machine-to-machine runs for real against the REST double (host metadata, OIDC discovery,
the token endpoint, then bearer tokens). Azure AD cannot: login.microsoftonline.com and the Azure
instance metadata service are unreachable offline, so those tests check the mapping to
databricks-sdk's ``Config`` and the headers built from a stand-in azure-identity credential.
"""

from __future__ import annotations

import json
import logging

import pytest

from databricks_double import DatabricksDouble

TOKEN = "dapi-auth-0123456789"
CONN_ID = "databricks_auth"
AZURE_HOST = "https://adb-123.4.azuredatabricks.net"
AZURE_RESOURCE_ID = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Databricks/workspaces/w"
#: What registry_client() may write; set to "" first so that monkeypatch restores (deletes) them afterwards.
SDK_VARIABLES = (
    "DATABRICKS_HOST",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_AUTH_TYPE",
    "DATABRICKS_AZURE_RESOURCE_ID",
    "ARM_CLIENT_ID",
    "ARM_CLIENT_SECRET",
    "ARM_TENANT_ID",
)


@pytest.fixture
def double(monkeypatch):
    d = DatabricksDouble(token=TOKEN).start()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", d.connection(service_principal=True))
    monkeypatch.setenv("SWAN_DATABRICKS_CONN_ID", CONN_ID)
    yield d
    d.stop()


@pytest.fixture
def provider_token_url(double, monkeypatch):
    """The provider's hook asks ``https://{host}/oidc/v1/token`` (scheme and port fixed): point it at the double's http port."""
    from airflow.providers.databricks.hooks.databricks_base import BaseDatabricksHook

    monkeypatch.setattr(BaseDatabricksHook, "_get_oidc_token_service_url", lambda self: double.token_url)


@pytest.fixture
def sdk_env(monkeypatch):
    for name in SDK_VARIABLES:
        monkeypatch.setenv(name, "")


@pytest.fixture
def mlflow_on_databricks(monkeypatch, sdk_env):
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "databricks")
    yield
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def _connection(**fields):
    from airflow.sdk import Connection

    extra = fields.pop("extra", None)
    return Connection(conn_id="dbx", conn_type="databricks", extra=json.dumps(extra) if extra else None, **fields)


def _payload(script):
    task = {"task_key": "job", "new_cluster": {"num_workers": 0}, "spark_python_task": {"python_file": str(script)}}
    return {"run_name": "oauth test", "tasks": [task]}


# ---- OAuth machine-to-machine against the double ----------------------------------------------


def test_the_provider_hook_submits_and_polls_runs_as_an_oauth_service_principal(double, provider_token_url, tmp_path):
    """The provider's own service_principal_oauth flow (basic auth, form body) and its bearer token, sync and async."""
    import asyncio

    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    script = tmp_path / "job.py"
    script.write_text("print('ok')\n")
    hook = DatabricksHook(databricks_conn_id=CONN_ID, retry_limit=1)
    run_id = hook.submit_run(_payload(script))
    assert hook.get_run_state(run_id).life_cycle_state in {"PENDING", "RUNNING", "TERMINATED"}

    async def poll():
        async with DatabricksHook(databricks_conn_id=CONN_ID, retry_limit=1) as deferred:
            return await deferred.a_get_run_state(run_id)

    assert asyncio.run(poll()).life_cycle_state in {"PENDING", "RUNNING", "TERMINATED"}
    assert {(r["grant_type"], r["scope"], r["auth_method"]) for r in double.token_requests} == {
        ("client_credentials", "all-apis", "client_secret_basic")
    }
    assert len(double.token_requests) == 2, "each hook fetches one token and reuses it"
    assert {kind for _, kind in double.authenticated} == {"oauth"}


def test_the_provider_hook_reports_a_wrong_client_secret(double, provider_token_url, monkeypatch):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook
    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_WRONG", double.connection(service_principal=True, client_secret="wrong-secret-42"))
    with pytest.raises(AirflowException, match="invalid_client") as err:
        DatabricksHook(databricks_conn_id="databricks_wrong", retry_limit=1).submit_run({"tasks": []})
    assert "401" in str(err.value) and "wrong-secret-42" not in str(err.value)
    assert double.submissions == []


def test_the_serving_target_authenticates_with_oauth(double, monkeypatch):
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.serving.deploy import AuthType, served_version

    monkeypatch.setenv("SWAN_SERVING_BACKEND", "databricks")
    target = serving_target()
    assert (target.backend, target.base_url, target.auth.auth_type) == ("databricks", f"http://127.0.0.1:{double.port}", AuthType.OAUTH_M2M)
    w = target.workspace()
    assert list(w.serving_endpoints.list()) == []
    assert served_version(w, target.endpoint) is None  # 404 RESOURCE_DOES_NOT_EXIST, not 401
    assert ("GET", f"/api/2.0/serving-endpoints/{target.endpoint}", 404) in double.requests
    assert [(r["grant_type"], r["scope"], r["client_id"]) for r in double.token_requests] == [
        ("client_credentials", "all-apis", double.client_id)
    ]
    assert {kind for _, kind in double.authenticated} == {"oauth"}
    assert target.client().workspace is not None  # scoring goes through the same authenticated client


def test_the_serving_target_refuses_a_wrong_client_secret(double, monkeypatch):
    from swan_airflow.serving_target import serving_target

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", double.connection(service_principal=True, client_secret="wrong-secret-42"))
    monkeypatch.setenv("SWAN_SERVING_BACKEND", "databricks")
    w = serving_target().workspace()  # the token is fetched on the first request
    with pytest.raises(ValueError, match="invalid_client") as err:
        list(w.serving_endpoints.list())
    assert "wrong-secret-42" not in str(err.value)
    assert not double.authenticated


def test_mlflow_authenticates_with_oauth_through_the_sdk_variables(double, mlflow_on_databricks):
    import os

    from swan_airflow.runtime import registry_client

    os.environ["DATABRICKS_TOKEN"] = "dapi-stale-left-by-someone"  # replaced: never two credentials at once
    assert list(registry_client().search_registered_models()) == []
    assert os.environ["DATABRICKS_HOST"] == f"http://127.0.0.1:{double.port}"
    assert (os.environ["DATABRICKS_CLIENT_ID"], os.environ["DATABRICKS_CLIENT_SECRET"]) == (double.client_id, double.client_secret)
    assert os.environ["DATABRICKS_AUTH_TYPE"] == "oauth-m2m"
    assert "DATABRICKS_TOKEN" not in os.environ
    assert ("/api/2.0/mlflow/registered-models/search", "oauth") in double.authenticated
    assert double.token_requests and all(r["grant_type"] == "client_credentials" for r in double.token_requests)


def test_a_token_still_authenticates_everything(double, mlflow_on_databricks, monkeypatch):
    """A personal access token (or a ready Azure AD token) in the password field, as before."""
    import os

    from swan_airflow.runtime import registry_client
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.serving.deploy import AuthType

    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", double.connection())
    monkeypatch.setenv("SWAN_SERVING_BACKEND", "databricks")
    target = serving_target()
    assert target.auth.auth_type == AuthType.PAT
    assert list(target.workspace().serving_endpoints.list()) == []
    assert list(registry_client().search_registered_models()) == []
    assert (os.environ["DATABRICKS_HOST"], os.environ["DATABRICKS_TOKEN"]) == (target.base_url, TOKEN)
    assert not os.environ.get("DATABRICKS_CLIENT_ID") and not os.environ.get("DATABRICKS_AUTH_TYPE")
    assert {kind for _, kind in double.authenticated} == {"pat"} and not double.token_requests


def test_the_local_backend_keeps_its_bearer_token(monkeypatch):
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.serving.deploy import AuthType

    monkeypatch.setenv("SWAN_SERVING_BACKEND", "local")
    monkeypatch.setenv("SWAN_ENDPOINT_TOKEN", "local-token-0123456789")
    target = serving_target(start=False)
    assert (target.auth.auth_type, target.auth.token, target.auth.host) == (AuthType.PAT, "local-token-0123456789", target.base_url)
    assert target.client()._http.headers["Authorization"] == "Bearer local-token-0123456789"
    # the same databricks-sdk arguments as before (no client here: with no server up, the sdk's first probe waits minutes)
    assert target.auth.config_kwargs() == {"host": target.base_url, "token": "local-token-0123456789", "auth_type": "pat"}
    assert "local-token-0123456789" not in repr(target)


# ---- Azure AD: the mapping (no token can be fetched offline) -----------------------------------


def test_an_azure_ad_service_principal_maps_to_the_sdk_azure_client_secret_config(monkeypatch):
    """login.microsoftonline.com is unreachable offline: this checks the Config databricks-sdk builds, not a token."""
    import databricks.sdk.config as sdk_config
    from databricks.sdk.config import Config

    from swan_airflow.databricks_auth import databricks_environ, workspace_auth
    from swan_anomaly.serving.deploy import AZURE_DATABRICKS_RESOURCE, AuthType

    conn = _connection(
        host="adb-123.4.azuredatabricks.net",
        login="app-id-1",
        password="aad-secret-42",
        extra={"azure_tenant_id": "tenant-9", "azure_resource_id": AZURE_RESOURCE_ID},
    )
    auth = workspace_auth(conn, "dbx")
    assert auth.auth_type == AuthType.AZURE_CLIENT_SECRET
    assert auth.config_kwargs() == {
        "host": AZURE_HOST,
        "azure_client_id": "app-id-1",
        "azure_client_secret": "aad-secret-42",
        "azure_tenant_id": "tenant-9",
        "azure_workspace_resource_id": AZURE_RESOURCE_ID,
        "auth_type": "azure-client-secret",
    }

    def offline(host, client=None):  # the host-metadata probe Config makes first; no network here
        raise ValueError("offline")

    monkeypatch.setattr(sdk_config, "get_host_metadata", offline)
    cfg = Config(**auth.config_kwargs())  # resolves the credentials provider; tokens are fetched on first use
    assert (cfg.auth_type, cfg.azure_client_id, cfg.azure_tenant_id) == ("azure-client-secret", "app-id-1", "tenant-9")
    assert cfg.is_azure and cfg.effective_azure_login_app_id == AZURE_DATABRICKS_RESOURCE
    assert cfg.arm_environment.active_directory_endpoint == "https://login.microsoftonline.com/"
    assert "aad-secret-42" not in repr(cfg) and "aad-secret-42" not in repr(auth)
    assert databricks_environ(auth) == {
        "DATABRICKS_HOST": AZURE_HOST,
        "ARM_CLIENT_ID": "app-id-1",
        "ARM_CLIENT_SECRET": "aad-secret-42",
        "ARM_TENANT_ID": "tenant-9",
        "DATABRICKS_AZURE_RESOURCE_ID": AZURE_RESOURCE_ID,
        "DATABRICKS_AUTH_TYPE": "azure-client-secret",
    }


class _StandInCredential:
    """An azure-identity credential (ManagedIdentityCredential's interface) that mints tokens without Azure."""

    made: list[dict] = []
    asked: list[str] = []

    def __init__(self, **kwargs) -> None:
        self.made.append(kwargs)

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.asked.extend(scopes)
        return AccessToken(f"aad-token-for-{scopes[0].split('/')[0]}", 4102444800)


def test_a_managed_identity_gets_azure_databricks_tokens_from_azure_identity(monkeypatch):
    """The Azure instance metadata service is unreachable offline: a stand-in credential mints the tokens."""
    import azure.identity
    from databricks.sdk.config import Config

    from airflow.sdk._shared.secrets_masker import redact
    from swan_airflow.databricks_auth import databricks_environ, workspace_auth
    from swan_anomaly.serving.deploy import AZURE_DATABRICKS_RESOURCE, AuthType

    monkeypatch.setattr(_StandInCredential, "made", [])
    monkeypatch.setattr(_StandInCredential, "asked", [])
    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", _StandInCredential)
    monkeypatch.setattr("databricks.sdk.config.get_host_metadata", lambda host, client=None: (_ for _ in ()).throw(ValueError("offline")))
    conn = _connection(
        host=AZURE_HOST,
        extra={
            "use_azure_managed_identity": True,
            "azure_managed_identity_client_id": "mi-client-1",
            "azure_resource_id": AZURE_RESOURCE_ID,
        },
    )
    auth = workspace_auth(conn, "dbx")
    assert (auth.auth_type, auth.client_id) == (AuthType.AZURE_MSI, "mi-client-1")
    cfg = Config(**auth.config_kwargs())
    assert cfg.auth_type == "azure-msi"
    headers = cfg.authenticate()
    assert headers["Authorization"] == f"Bearer aad-token-for-{AZURE_DATABRICKS_RESOURCE}"
    assert headers["X-Databricks-Azure-Workspace-Resource-Id"] == AZURE_RESOURCE_ID
    assert headers["X-Databricks-Azure-SP-Management-Token"] == "aad-token-for-https:"
    assert _StandInCredential.made == [{"client_id": "mi-client-1"}]
    assert _StandInCredential.asked == [f"{AZURE_DATABRICKS_RESOURCE}/.default", "https://management.core.windows.net//.default"]
    # MLflow's client reads no managed identity from the environment: it gets the current token, masked in logs
    environ = databricks_environ(auth)
    assert environ == {"DATABRICKS_HOST": AZURE_HOST, "DATABRICKS_TOKEN": f"aad-token-for-{AZURE_DATABRICKS_RESOURCE}"}
    assert redact(f"token {environ['DATABRICKS_TOKEN']}") == "token ***"


@pytest.mark.parametrize(
    ("fields", "auth_type"),
    [
        ({"password": "dapi-1"}, "pat"),
        ({"extra": {"token": "dapi-1"}}, "pat"),
        ({"password": "eyJ0eXAiOiJKV1Qi.aad.token"}, "pat"),  # a ready Azure AD token is a bearer token too
        ({"login": "token", "password": "dapi-1"}, "pat"),  # the password as the token, as before
        ({"login": "sp", "password": "s", "extra": {"service_principal_oauth": True}}, "oauth-m2m"),
        ({"login": "app", "password": "s", "extra": {"azure_tenant_id": "t"}}, "azure-client-secret"),
        ({"extra": {"use_azure_managed_identity": True}}, "azure-msi"),
        ({"extra": {"use_default_azure_credential": True}}, "azure-default-credential"),
    ],
)
def test_each_provider_connection_form_maps_to_one_auth_type(fields, auth_type):
    from swan_airflow.databricks_auth import workspace_auth

    auth = workspace_auth(_connection(host="adb-1.2.azuredatabricks.net", **fields), "dbx")
    assert (auth.auth_type.value, auth.host) == (auth_type, "https://adb-1.2.azuredatabricks.net")


# ---- clear errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"password": "dapi-secret-77"}, r"'dbx' has no host; set it to the workspace URL"),
        ({"host": AZURE_HOST}, r"'dbx' has neither a token nor a service principal\. Set one of: the password"),
        (
            {"host": AZURE_HOST, "password": "sp-secret-77", "extra": {"service_principal_oauth": True}},
            r"'dbx' has extra\.service_principal_oauth but no complete service principal: set login to",
        ),
        (
            {"host": AZURE_HOST, "password": "sp-secret-77", "extra": {"azure_tenant_id": "t"}},
            r"'dbx' has extra\.azure_tenant_id but no complete service principal: set login to",
        ),
        (
            {"host": AZURE_HOST, "login": "app", "extra": {"azure_tenant_id": "t"}},
            r"'dbx' has extra\.azure_tenant_id but no complete service principal",
        ),
        ({"host": AZURE_HOST, "login": "federated_k8s"}, r"'dbx' uses the provider's federated_k8s login, which serves job runs only"),
    ],
)
def test_an_incomplete_connection_fails_naming_it_and_what_to_set(fields, expected):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.databricks_auth import workspace_auth

    with pytest.raises(AirflowFailException, match=expected) as err:
        workspace_auth(_connection(**fields), "dbx")
    assert "secret-77" not in str(err.value)


def test_an_incomplete_connection_fails_the_serving_target(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.serving_target import serving_target

    monkeypatch.setenv("SWAN_SERVING_BACKEND", "databricks")
    monkeypatch.setenv("SWAN_DATABRICKS_CONN_ID", "databricks_half")
    monkeypatch.setenv("AIRFLOW_CONN_DATABRICKS_HALF", json.dumps({"conn_type": "databricks", "host": "adb-1.2.azuredatabricks.net"}))
    with pytest.raises(AirflowFailException, match="'databricks_half' has neither a token nor a service principal"):
        serving_target()


# ---- no secret in logs, reprs or messages -----------------------------------------------------


def test_no_secret_reaches_logs_reprs_or_errors(double, provider_token_url, mlflow_on_databricks, monkeypatch, caplog, capfd, tmp_path):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    from swan_airflow.databricks_auth import databricks_workspace
    from swan_airflow.runtime import registry_client
    from swan_airflow.serving_target import serving_target
    from swan_anomaly.serving.deploy import served_version

    caplog.set_level(logging.DEBUG)
    for name in ("databricks.sdk", "urllib3", "swan_airflow", "airflow.task.hooks"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    monkeypatch.setenv("SWAN_SERVING_BACKEND", "databricks")
    shown: list[str] = []

    auth = databricks_workspace()
    target = serving_target()
    w = target.workspace()
    served_version(w, target.endpoint)
    client = registry_client()
    list(client.search_registered_models())
    shown += [repr(auth), str(auth), repr(target), str(target), repr(target.client())]
    shown += [repr(w.config), str(w.config), w.config.debug_string()]
    script = tmp_path / "job.py"
    script.write_text("print('ok')\n")
    hook = DatabricksHook(databricks_conn_id=CONN_ID, retry_limit=1)
    hook.get_run_state(hook.submit_run(_payload(script)))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", double.connection(service_principal=True, client_secret="wrong-secret-42"))
    failing_calls = (
        lambda: list(serving_target().workspace().serving_endpoints.list()),
        lambda: DatabricksHook(databricks_conn_id=CONN_ID, retry_limit=1).submit_run({}),
    )
    for failing in failing_calls:
        with pytest.raises(Exception) as err:
            failing()
        shown += [str(err.value), repr(err.value)]

    secrets = [double.client_secret, "wrong-secret-42", *double.oauth_tokens]
    assert len(double.oauth_tokens) >= 3, "the serving client, MLflow and the hook each fetched a token"
    out, err_out = capfd.readouterr()
    for text in [*shown, caplog.text, out, err_out]:
        for secret in secrets:
            assert secret not in text, f"a secret appears in: {text[:300]}"
