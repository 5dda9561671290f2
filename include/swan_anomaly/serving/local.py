"""Start, find and stop the local model server process of the embedded default.

The server runs detached (its own session), so it outlives the Airflow task that started
it, like a real endpoint; its pid and log live under ``$SWAN_HOME/serving``.

It is given what it needs and nothing more: an allow-listed environment (:func:`server_env`;
a task's ``DATABRICKS_TOKEN`` or cloud keys stay behind unless the registry itself is on
Databricks), the MLflow URIs and its bearer token through that environment, never on the
command line (``ps`` shows the command line to every user of the machine). The token is
:func:`endpoint_token`'s: ``SWAN_ENDPOINT_TOKEN``, else a random one created once in
``$SWAN_HOME/serving/token`` with mode 600.

Example:
    >>> url = ensure_local_server(Settings.from_env())   # doctest: +SKIP
    >>> stop_local_server(Settings.from_env())            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from urllib.parse import urlparse

import httpx

from swan_anomaly._errors import ConfigError, EndpointBusy, EndpointError, OutdatedServer
from swan_anomaly.config import Settings
from swan_anomaly.redact import SECRET_NAME, redact_uri

log = logging.getLogger(__name__)

#: Variables the detached server inherits from the task that starts it (besides its own, set by :func:`server_env`):
#: the basics, the proxies and CA bundles a remote MLflow or workspace is reached through, library paths and GPUs.
SERVER_ENV_KEEP = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SWAN_HOME"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
    | {"REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"}
    | {"LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "JAVA_HOME"}
)
#: Prefixes of variables it inherits: its own settings, MLflow's (a tracking server's credentials), thread counts.
SERVER_ENV_PREFIXES = ("SWAN_", "MLFLOW_", "OMP_", "MKL_", "TORCH_", "HF_", "TRANSFORMERS_")
#: Of those, prefixes whose secrets the server does not need: it loads models from the registry, never from the hub.
SERVER_ENV_NO_SECRETS = ("HF_", "TRANSFORMERS_")
#: Inherited only when the registry or tracking store is a Databricks workspace (it reads the models from there):
#: its login, an Azure AD service principal's (``ARM_*``) included.
DATABRICKS_ENV_PREFIXES = ("DATABRICKS_", "ARM_")
TOKEN_FILE = "token"


def endpoint_token(settings: Settings) -> str:
    """The local model server's bearer token: ``SWAN_ENDPOINT_TOKEN``, else ``$SWAN_HOME/serving/token``.

    The file is created once, with a random token (``secrets.token_urlsafe``) and mode 600, so
    the embedded default is guarded with no set-up and only this user can read the token. It
    appears whole or not at all (written aside, then linked into place), so a server and a task
    starting together read the same token.
    """
    if settings.endpoint_token:
        return settings.endpoint_token
    path = settings.serving_dir / TOKEN_FILE
    if not path.exists():
        settings.serving_dir.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(aside, path)  # fails when another process made the token first: theirs is the token
            log.info("created the local model server's bearer token in %s (mode 600)", path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: create it in place (a reader may then see it empty once)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(aside.read_text())
            except FileExistsError:
                pass
        finally:
            aside.unlink()
    token = path.read_text().strip()
    if not token:
        msg = f"{path} is empty: delete it (a new token is made) or set SWAN_ENDPOINT_TOKEN"
        raise ConfigError(msg)
    return token


def server_env(settings: Settings, token: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the detached server: the allow-list, the MLflow URIs and the token.

    Example:
        >>> s = Settings.from_env({"SWAN_HOME": "/tmp/h"})
        >>> env = server_env(s, "t0k", {"PATH": "/bin", "DATABRICKS_TOKEN": "dapi1", "AWS_SECRET_ACCESS_KEY": "x"})
        >>> sorted(env), env["SWAN_ENDPOINT_TOKEN"]
        (['MLFLOW_REGISTRY_URI', 'MLFLOW_TRACKING_URI', 'PATH', 'SWAN_ENDPOINT_TOKEN'], 't0k')
    """
    environ = os.environ if environ is None else environ
    on_databricks = any(uri.startswith("databricks") for uri in settings.mlflow_uris)
    env = {
        k: v
        for k, v in environ.items()
        if k in SERVER_ENV_KEEP or k.startswith(SERVER_ENV_PREFIXES) or (on_databricks and k.startswith(DATABRICKS_ENV_PREFIXES))
    }
    env = {k: v for k, v in env.items() if not (k.startswith(SERVER_ENV_NO_SECRETS) and SECRET_NAME.search(k))}  # HF_TOKEN
    env["MLFLOW_TRACKING_URI"], env["MLFLOW_REGISTRY_URI"] = settings.mlflow_uris
    env["SWAN_ENDPOINT_TOKEN"] = token
    return env


def _proven(proof, token: str, challenge: str) -> bool:
    """Whether ``proof`` (what a /health answer holds) is :func:`token_proof` of ``token`` and ``challenge``."""
    return isinstance(proof, str) and hmac.compare_digest(proof.encode(), token_proof(token, challenge).encode())


def token_proof(token: str, challenge: str) -> str:
    """What a model server holding ``token`` answers to ``/health?challenge=...``: an HMAC of the challenge, which shows
    the token is held without sending it (a process squatting on the port cannot forge it).

    Example:
        >>> token_proof("t0k", "abc") == token_proof("t0k", "abc") != token_proof("other", "abc")
        True
    """
    return hmac.new(token.encode(), b"swan-anomaly /health proof\0" + challenge.encode(), hashlib.sha256).hexdigest()


def _health(url: str, challenge: str | None = None) -> dict | None:
    """What ``/health`` answers at ``url``; None when nothing answers 200 there, ``{}`` when the answer is not JSON.

    Raises:
        EndpointBusy: 503: a server is there, with every connection it may hold taken (uvicorn's
            ``limit_concurrency``). It is not absent: starting another would only fail to bind its port.
    """
    try:
        response = httpx.get(f"{url}/health", params={"challenge": challenge} if challenge else None, timeout=2.0)
    except httpx.HTTPError:
        return None
    if response.status_code == 503:
        msg = (
            f"the model server at {url} answers 503: it holds as many connections as it may (SWAN_ENDPOINT_MAX_CONNECTIONS); "
            "not starting another beside it. Retry later, or see who holds its connections"
        )
        raise EndpointBusy(msg)
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return {}


def running_server(settings: Settings, token: str | None = None) -> bool:
    """True when this deployment's model server answers at its URL: it reads ``settings``' registry and holds ``token``.

    It proves it holds the token by answering a fresh random challenge (:func:`token_proof`):
    the token itself is never sent to a process before it has proven that.

    Args:
        settings: the deployment's settings (URL, registry, where the token is).
        token: the bearer token (default: :func:`endpoint_token`).

    Raises:
        ConfigError: another deployment's server (another ``SWAN_HOME``) answers there, or a
            process that is no model server of this project, or one that does not hold the
            token: only an operator can fix that, so no retry helps.
        EndpointBusy: the server answers 503: every connection it may hold is taken.
    """
    return _proven_health(settings, token) is not None


def _proven_health(settings: Settings, token: str | None = None) -> dict | None:
    """What this deployment's model server answered ``/health`` with, once it proved it holds ``token``; None when
    nothing answers (raises as :func:`running_server`)."""
    challenge = secrets.token_urlsafe(32)
    health = _health(settings.endpoint_url, challenge)
    if health is None:
        return None
    if not isinstance(health, dict) or "registry_uri" not in health:
        msg = (
            f"something answers at {settings.endpoint_url} that is no swan-anomaly model server (its /health names no "
            "registry); stop it, or set SWAN_ENDPOINT_URL to a free port"
        )
        raise ConfigError(msg)
    if health["registry_uri"] != redact_uri(settings.registry_uri):
        msg = (
            f"the model server at {settings.endpoint_url} serves models from {health.get('registry_uri')}, "
            f"not {redact_uri(settings.registry_uri)}; stop it (make stop-endpoint with its SWAN_HOME) "
            "or set SWAN_ENDPOINT_URL to a free port"
        )
        raise ConfigError(msg)
    proof = health.get("proof")
    if proof is None:  # a server of a version before the proof: the same token, most likely, but unproven
        msg = (
            f"the model server at {settings.endpoint_url} gives no proof that it holds this deployment's bearer token: it runs "
            "an older version of swan-anomaly, and it is not sent the token. Restart it so that it runs this version (make "
            "stop-endpoint; in the compose stack: docker compose restart model-server)"
        )
        raise OutdatedServer(msg)
    if not _proven(proof, token or endpoint_token(settings), challenge):
        msg = (
            f"the model server at {settings.endpoint_url} does not prove it holds this deployment's bearer token: it was started "
            "with another one (or it is no model server of this deployment), and it is not sent the token. Stop it (make "
            "stop-endpoint) so that it starts again with this token, or give this deployment its token (Airflow connection "
            f"{settings.endpoint_conn_id!r}, SWAN_ENDPOINT_TOKEN or {settings.serving_dir / TOKEN_FILE})"
        )
        raise ConfigError(msg)
    return health


def _remember_pid(settings: Settings, pid) -> None:
    """Write ``pid``, a proven server's, to the pid file when the file names no live process (so that ``make stop-endpoint``
    can stop it: a task killed while its server started left none)."""
    pid_file = settings.serving_dir / "server.pid"
    if not isinstance(pid, int) or pid <= 0:
        return
    try:
        os.kill(int(pid_file.read_text()), 0)
        return  # it names a live process
    except (OSError, ValueError):
        pass
    pid_file.write_text(str(pid))


def ensure_local_server(settings: Settings, *, token: str | None = None, timeout: float = 90.0) -> str:
    """Return the endpoint base URL, starting the server first if nothing answers there.

    Args:
        settings: the deployment's settings (URL, name, registry, limits).
        token: the bearer token the server must take (default: :func:`endpoint_token`).
        timeout: seconds a new server has to answer.

    The pid file names the server only once it has proven it holds the token (a new server that exits
    at once, e.g. because the port is taken, never replaces the running one's), or when a new one is
    still starting at ``timeout``.

    Raises:
        ConfigError: a server answers at the URL but reads another MLflow registry (another
            ``SWAN_HOME``) or does not hold the token: only an operator can fix that, so no retry helps.
        EndpointBusy: the server there answers 503 (its connections are full): not started again beside it.
        EndpointError: a new server does not come up.
    """
    url = settings.endpoint_url
    token = token or endpoint_token(settings)
    try:
        if (health := _proven_health(settings, token)) is not None:
            _remember_pid(settings, health.get("pid"))
            return url
    except OutdatedServer:
        if not stop_local_server(settings):  # not one this deployment started (no pid file of its own): an operator's call
            raise
        log.warning("stopped the local model server of an older swan-anomaly version at %s; starting this version", url)
    parsed = urlparse(url)
    settings.serving_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.serving_dir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "swan_anomaly.serving.server",
        "--host",
        parsed.hostname or "127.0.0.1",
        "--port",
        str(parsed.port or 5055),
        "--name",
        settings.endpoint_name,
        "--model-name",
        settings.model_name,
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=server_env(settings, token),
        )
    log.info("started local model server pid %d on %s (log: %s)", proc.pid, url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:  # e.g. the port was taken: the pid file still names the server that holds it
            tail = log_path.read_text(errors="replace")[-2000:]
            msg = f"local model server exited with code {proc.returncode} before answering on {url}; log tail:\n{tail}"
            raise EndpointError(msg)
        challenge = secrets.token_urlsafe(32)
        try:
            health = _health(url, challenge)
        except EndpointBusy:
            health = None
        if isinstance(health, dict) and _proven(health.get("proof"), token, challenge):
            # a server of this deployment answers (a process that took the port first never gets the token): ours, or one
            # that another task started meanwhile, whose pid it names (ours then fails to bind, and exits)
            _remember_pid(settings, health.get("pid"))
            return url
        time.sleep(0.5)
    _remember_pid(settings, proc.pid)  # still starting (a slow machine): the next try finds it, and stop-endpoint can stop it
    msg = f"local model server did not answer on {url} within {timeout:.0f}s; see {log_path}"
    raise EndpointError(msg)


def stop_local_server(settings: Settings) -> bool:
    """Stop the server recorded in the pid file; True if one was stopped."""
    pid_file = settings.serving_dir / "server.pid"
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    return True
