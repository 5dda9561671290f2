"""Run-scoped facts for tasks: settings, dataset id, landing-zone videos.

Example:
    >>> dataset_id_for(landing_date="2026-11-26", interval_start=None)
    '20261126'
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from swan_anomaly.lake import Lake
    from swan_anomaly.serving.deploy import WorkspaceAuth

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def settings(env=None):
    """Every setting (:class:`swan_anomaly.config.Settings`, read from the environment or ``env``).

    Raises:
        AirflowFailException: a setting is malformed (no retry: only a fixed deployment helps).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_anomaly.config import ConfigError, Settings

    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc


def dataset_id_for(
    *,
    landing_date: str | None,
    interval_start: dt.datetime | None,
    run_after: dt.datetime | None = None,
    videos: Sequence[str] | None = None,
) -> str:
    """The dataset partition of a run: the landing date if given, else the data interval's start day.

    A rerun or a backfill of the same interval gets the same id, so it rewrites the same
    lake partition instead of adding one. A run that names its videos (the ``videos`` Param)
    writes a partition of its own beside its date's, ``YYYYMMDD-videos-<digest of the paths>``:
    rewriting the date's partition with just those videos would delete every video that landed
    on that date from raw, silver and gold. The same videos again rewrite the same partition.

    Example:
        >>> dataset_id_for(landing_date="2026-11-26", interval_start=None, videos=["/srv/extra/cam9.mp4"])
        '20261126-videos-32bcda3e'
    """
    from swan_anomaly.lake import picked_dataset_id

    start, _ = landing_window(landing_date=landing_date, interval_start=interval_start, interval_end=None, run_after=run_after)
    if videos:
        return picked_dataset_id(start, [str(Path(v).absolute()) for v in videos])
    return start.strftime("%Y%m%d")


def landing_window(
    *, landing_date: str | None, interval_start: dt.datetime | None, interval_end: dt.datetime | None, run_after: dt.datetime | None
) -> tuple[dt.date, dt.date]:
    """The arrival dates ``[start, end)`` a run processes, consistent with :func:`dataset_id_for`.

    The landing date if given (a Param or an asset event); else the data interval (at least one
    day); else, for a run without a data interval (a manual trigger without a logical date), the
    day of ``run_after``.

    Example:
        >>> start, end = dt.datetime(2026, 11, 25), dt.datetime(2026, 11, 26)
        >>> landing_window(landing_date=None, interval_start=start, interval_end=end, run_after=None)
        (datetime.date(2026, 11, 25), datetime.date(2026, 11, 26))
    """
    one_day = dt.timedelta(days=1)
    if landing_date:
        start = dt.date.fromisoformat(landing_date)
        return start, start + one_day
    if interval_start is not None:
        start = interval_start.date()
        end = interval_end.date() if interval_end is not None else start
        return start, max(end, start + one_day)
    if run_after is None:
        msg = "cannot tell which videos to process: the run has no landing date, data interval or run_after"
        raise ValueError(msg)
    return run_after.date(), run_after.date() + one_day


def arrival_date(path: Path, landing_dir: Path) -> dt.date:
    """A video's arrival date: its ``landing/YYYY-MM-DD/`` folder, else its modification day (UTC)."""
    for part in path.relative_to(landing_dir).parts[:-1]:
        try:
            return dt.date.fromisoformat(part.removeprefix("date="))
        except ValueError:
            continue
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC).date()


def find_landed_videos(landing_dir: Path, start: dt.date, end: dt.date) -> list[Path]:
    """Videos under ``landing_dir`` whose arrival date lies in ``[start, end)``, sorted."""
    from swan_anomaly.video import VIDEO_SUFFIXES

    if not landing_dir.is_dir():
        return []
    found = [
        p
        for p in sorted(landing_dir.rglob("*"))
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and start <= arrival_date(p, landing_dir) < end
    ]
    log.info("landing zone %s: %d videos arrived in [%s, %s)", landing_dir, len(found), start, end)
    return found


def jobs_dir() -> Path:
    """Where the job entrypoints live (``SWAN_JOBS_DIR``, default ``<project>/jobs``)."""
    return settings().jobs_dir or PROJECT_ROOT / "jobs"


def lake():
    """The lake the DAG writes to: ``SWAN_LAKE_BACKEND`` ``local`` (default, ``SWAN_LAKE_ROOT``) or ``azure``.

    ``azure`` uses the Airflow ``wasb`` connection ``SWAN_LAKE_CONN_ID`` (default ``swan_lake``),
    container ``SWAN_LAKE_CONTAINER`` (default ``swan``) and folder ``SWAN_LAKE_PREFIX``. Both
    are a :class:`swan_anomaly.lake.Lake`; only the local one has ``result_path`` (local jobs).
    """
    s = settings()
    if s.lake_backend == "local":
        from swan_anomaly.lake import LocalLake

        return LocalLake(s.lake_root)
    from swan_airflow.azure_lake import WasbLake

    return WasbLake(conn_id=s.lake_conn_id, container=s.lake_container, prefix=s.lake_prefix)


def optional_result(store: Lake, run_id: str, job: str) -> dict | None:
    """``runs/{run_id}/{job}.json`` of either lake, or None when that step wrote none (it failed or did not run)."""
    from swan_anomaly import LakeError

    try:
        return store.read_result(run_id, job)
    except LakeError:
        return None


def held_out_rows(store: Lake, run_id: str, split: str) -> list[list]:
    """The training job's ``held_out`` rows of ``split`` (``val`` or ``test``) for run ``run_id``.

    Raises:
        AirflowFailException: the training result lists none (it was written by an older job).
    """
    rows = store.read_result(run_id, "train").get("held_out", {}).get(split)
    if rows is None:
        from airflow.sdk.exceptions import AirflowFailException

        msg = f"the training result of run {run_id} lists no held-out {split} rows (a job of an older version wrote it); clear run_training"
        raise AirflowFailException(msg)
    return rows


def job_lake_root() -> str:
    """Where the jobs see the lake (their ``--lake-root``).

    Locally the lake directory itself. With the Azure lake, ``SWAN_JOB_LAKE_ROOT``: the path at
    which Databricks clusters see the container, typically a Unity Catalog external volume on it
    (``/Volumes/<catalog>/<schema>/<volume>``), which Spark and plain file I/O both read.
    """
    s = settings()
    if s.job_lake_root:
        return s.job_lake_root
    if s.lake_backend == "local":
        return str(s.lake_root)
    msg = (
        "SWAN_JOB_LAKE_ROOT is not set: with SWAN_LAKE_BACKEND=azure it must say where the jobs see the lake, "
        "e.g. /Volumes/main/swan/lake for a Unity Catalog external volume on the container"
    )
    raise ValueError(msg)


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
_SDK_CREDENTIAL_VARIABLES = ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_AUTH_TYPE")


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


def registry_client():
    """An MLflow client for ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``.

    When either is a Databricks URI (``databricks``, ``databricks-uc``) and the process has no
    ``DATABRICKS_HOST`` of its own, the workspace and credentials of the Airflow connection
    (:func:`databricks_environ`) are handed to MLflow through this task process's environment
    (never logged, never in XCom); credentials of another method left there are removed.
    """
    from swan_anomaly.registry import mlflow_client

    s = settings()
    if any(uri.startswith("databricks") for uri in s.mlflow_uris) and not os.environ.get("DATABRICKS_HOST"):
        environ = databricks_environ(databricks_workspace())
        for name in _SDK_CREDENTIAL_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(environ)
    return mlflow_client(*s.mlflow_uris)


def force_promote_reason(params, env=None) -> str:
    """The reason of a forced promotion, after checking that this deployment allows one.

    Raises:
        AirflowFailException: ``SWAN_ALLOW_FORCE_PROMOTE`` is false, or the reason is missing or
            shorter than 10 characters (no retry: only a new trigger can fix either).
    """
    from airflow.sdk.exceptions import AirflowFailException

    if not settings(env).allow_force_promote:
        msg = "force_promote is disabled in this deployment (SWAN_ALLOW_FORCE_PROMOTE=false); the gate decides"
        raise AirflowFailException(msg)
    reason = (params.get("force_promote_reason") or "").strip()
    if len(reason) < 10:
        msg = f"force_promote needs a force_promote_reason of at least 10 characters, got {reason!r}"
        raise AirflowFailException(msg)
    return reason
