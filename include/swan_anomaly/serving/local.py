"""Start, find and stop the local model server process of the embedded default.

The server runs detached (its own session), so it outlives the Airflow task that started
it, like a real endpoint; its pid and log live under ``$SWAN_HOME/serving``.

Example:
    >>> url = ensure_local_server(Settings.from_env())   # doctest: +SKIP
    >>> stop_local_server(Settings.from_env())            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx

from swan_anomaly._errors import ConfigError, EndpointError
from swan_anomaly.config import Settings

log = logging.getLogger(__name__)


def _health(url: str) -> dict | None:
    try:
        response = httpx.get(f"{url}/health", timeout=2.0)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def running_server(settings: Settings) -> bool:
    """True when this deployment's model server (the one reading ``settings``' registry) answers at its URL.

    Raises:
        ConfigError: another deployment's server (another ``SWAN_HOME``) answers there.
    """
    health = _health(settings.endpoint_url)
    if health is None:
        return False
    if health.get("registry_uri") not in (None, settings.registry_uri):
        msg = (
            f"the model server at {settings.endpoint_url} serves models from {health.get('registry_uri')}, not {settings.registry_uri}; "
            "stop it (make stop-endpoint with its SWAN_HOME) or set SWAN_ENDPOINT_URL to a free port"
        )
        raise ConfigError(msg)
    return True


def ensure_local_server(settings: Settings, *, timeout: float = 90.0) -> str:
    """Return the endpoint base URL, starting the server first if nothing answers there.

    Raises:
        ConfigError: a server answers at the URL but reads another MLflow registry (another
            ``SWAN_HOME``): only an operator can fix that, so no retry helps.
        EndpointError: a new server does not come up.
    """
    url = settings.endpoint_url
    if running_server(settings):
        return url
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
        "--tracking-uri",
        settings.tracking_uri,
        "--registry-uri",
        settings.registry_uri,
    ]
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy()
        )
    (settings.serving_dir / "server.pid").write_text(str(proc.pid))
    log.info("started local model server pid %d on %s (log: %s)", proc.pid, url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            msg = f"local model server exited with code {proc.returncode} before answering on {url}; log tail:\n{tail}"
            raise EndpointError(msg)
        if _health(url) is not None:
            return url
        time.sleep(0.5)
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
