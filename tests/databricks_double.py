"""A Databricks REST API double for tests: the parts of Jobs API 2.2 the pipeline calls.

It speaks the real wire protocol over HTTP on 127.0.0.1, so the real provider operators and
hooks talk to it unchanged: ``POST /api/2.2/jobs/runs/submit`` (with ``idempotency_token``),
``GET /api/2.2/jobs/runs/get``, ``GET /api/2.2/jobs/runs/get-output``,
``POST /api/2.2/jobs/runs/cancel``, with the real life-cycle states
(PENDING -> RUNNING -> TERMINATED with SUCCESS/FAILED/CANCELED, or INTERNAL_ERROR); and, for
MLflow clients pointed at the workspace (``MLFLOW_TRACKING_URI=databricks``), an empty
``GET /api/2.0/mlflow/registered-models/search``; for databricks-sdk's serving client, an empty
``GET /api/2.0/serving-endpoints`` and ``GET /api/2.0/serving-endpoints/{name}`` answering
``RESOURCE_DOES_NOT_EXIST``.

Every API route takes a bearer token: the personal access token, or an OAuth access token the
double issued to its service principal (``client_id``/``client_secret``) as a workspace does
for OAuth machine-to-machine: host metadata ``GET /.well-known/databricks-config`` (which
databricks-sdk reads first), the discovery document
``GET /oidc/.well-known/oauth-authorization-server`` and the token endpoint
``POST /oidc/v1/token`` (form-encoded ``grant_type=client_credentials&scope=all-apis``, the
client authenticated by HTTP basic auth or ``client_id``/``client_secret`` form fields; a wrong
secret gets 401 ``{"error": "invalid_client", ...}``). Tokens expire after ``token_lifetime``
seconds; the discovery routes need no token, as on a workspace. A missing, wrong or expired
bearer token gets what a workspace answers: 403 ``{"error_code": 403, "message": "Invalid access
token."}`` (the error code a number).

Submitted ``spark_python_task``s really run: the python file is executed locally with its
parameters, the attached ``whl`` libraries first on ``PYTHONPATH`` (as a cluster installs them)
and the cluster spec's ``spark_env_vars`` in the environment. Files must be local paths (or
``file:`` URIs): the double has no DBFS or ADLS of its own.

Faults can be injected: ``fail_next("runs/submit", 429, times=2)`` answers the next two matching
requests with that status before serving them normally.

A ``volume`` stands in for a Unity Catalog external volume on an ADLS container: before each run
the double mirrors the container folder (Azurite in tests) into a local directory, the job sees
the lake there, and afterwards the double mirrors the directory back (new, changed and deleted
files), as reads and writes through ``/Volumes/...`` on a cluster would land in the container.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def _local(path: str) -> str:
    return path[len("file:") :] if path.startswith("file:") else path


@dataclass
class Run:
    run_id: int
    task_run_id: int
    payload: dict
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    output: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def state(self) -> dict:
        state = {"life_cycle_state": self.life_cycle_state, "state_message": self.state_message, "user_cancelled_or_timedout": False}
        if self.result_state:
            state["result_state"] = self.result_state
        return state


class DatabricksDouble:
    """Start with :meth:`start`; ``host``/``port`` go into an Airflow ``databricks`` connection."""

    def __init__(
        self,
        *,
        token: str,
        env: dict[str, str] | None = None,
        volume: dict | None = None,
        client_id: str = "swan-sp-7f1c",
        client_secret: str = "double-sp-secret-0123456789",
        token_lifetime: int = 3600,
    ) -> None:
        self.token = token
        self.client_id, self.client_secret, self.token_lifetime = client_id, client_secret, token_lifetime
        self.oauth_tokens: dict[str, float] = {}  # issued access token -> expiry (epoch seconds)
        self.token_requests: list[dict] = []  # what each token request sent: grant_type, scope, how the client authenticated
        self.authenticated: list[tuple[str, str]] = []  # (path, "pat" | "oauth"): which kind of token each API request carried
        self.env = env or {}
        self.volume = volume  # {"path", "connection_string", "container", "prefix"}
        self.runs: dict[int, Run] = {}
        self.by_token: dict[str, int] = {}
        self.submissions: list[dict] = []
        self.requests: list[tuple[str, str, int]] = []
        self._faults: list[list] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- control -------------------------------------------------------------------------
    def start(self) -> DatabricksDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for run in self.runs.values():
            if run.process and run.process.poll() is None:
                run.process.kill()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def connection(self, *, token: str | None = None, service_principal: bool = False, client_secret: str | None = None) -> str:
        """An Airflow ``databricks`` connection (JSON, for ``AIRFLOW_CONN_*``) pointing at this double.

        With ``service_principal``, the provider's OAuth form: login = client id, password = client
        secret (``client_secret`` overrides the right one), extra ``service_principal_oauth``.
        """
        conn = {"conn_type": "databricks", "host": "127.0.0.1", "port": self.port, "schema": "http"}
        if service_principal:
            conn |= {"login": self.client_id, "password": client_secret or self.client_secret, "extra": {"service_principal_oauth": True}}
        else:
            conn["password"] = token or self.token
        return json.dumps(conn)

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oidc/v1/token"

    def fail_next(self, path_suffix: str, status: int, *, times: int = 1) -> None:
        self._faults.append([path_suffix, status, times])

    # ---- HTTP ----------------------------------------------------------------------------
    def _reply(self, handler, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _token_kind(self, header: str | None) -> str | None:
        """``pat`` or ``oauth`` for a valid bearer token, else None (no token, an unknown or expired one)."""
        scheme, _, token = (header or "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        if secrets.compare_digest(token, self.token):
            return "pat"
        expiry = self.oauth_tokens.get(token)
        return "oauth" if expiry is not None and time.time() < expiry else None

    def _handle(self, handler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        discovery = {
            ("GET", "/.well-known/databricks-config"): self._host_metadata,
            ("GET", "/oidc/.well-known/oauth-authorization-server"): self._oidc_discovery,
            ("POST", "/oidc/v1/token"): self._token,
        }.get((method, url.path))
        if discovery is not None:  # no bearer token here: these are how a client gets one
            status, reply, headers = discovery(raw, handler)
            self.requests.append((method, url.path, status))
            return self._reply(handler, status, reply, headers)
        body = json.loads(raw or b"{}")
        # GETs carry their arguments as query parameters (sync hook) or as a JSON body (async hook).
        query = {**{k: str(v) for k, v in body.items()}, **{k: v[0] for k, v in parse_qs(url.query).items()}}
        kind = self._token_kind(handler.headers.get("Authorization"))
        if kind is None:
            # what a workspace answers a wrong or expired token: 403, the error code a number (databricks/databricks-sdk-go#873)
            self.requests.append((method, url.path, 403))
            return self._reply(handler, 403, {"error_code": 403, "message": "Invalid access token."})
        self.authenticated.append((url.path, kind))
        for fault in self._faults:
            if url.path.endswith(fault[0]) and fault[2] > 0:
                fault[2] -= 1
                self.requests.append((method, url.path, fault[1]))
                code = "REQUEST_LIMIT_EXCEEDED" if fault[1] == 429 else "TEMPORARILY_UNAVAILABLE"  # the codes the SDK maps
                return self._reply(handler, fault[1], {"error_code": code, "message": "injected fault"})
        routes = {
            ("POST", "/api/2.2/jobs/runs/submit"): self._submit,
            ("GET", "/api/2.2/jobs/runs/get"): self._get,
            ("GET", "/api/2.2/jobs/runs/get-output"): self._get_output,
            ("POST", "/api/2.2/jobs/runs/cancel"): self._cancel,
            ("GET", "/api/2.0/mlflow/registered-models/search"): lambda body, query, handler: (200, {"registered_models": []}),
            ("GET", "/api/2.0/serving-endpoints"): lambda body, query, handler: (200, {"endpoints": []}),
        }
        route = routes.get((method, url.path))
        if route is None and method == "GET" and url.path.startswith("/api/2.0/serving-endpoints/"):
            route = self._serving_endpoint
        if route is None:
            self.requests.append((method, url.path, 404))
            return self._reply(handler, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{method} {url.path}'"})
        status, reply = route(body, query, handler)
        self.requests.append((method, url.path, status))
        return self._reply(handler, status, reply)

    def _base_url(self, handler) -> str:
        return f"http://{handler.headers.get('Host')}"

    def _serving_endpoint(self, body: dict, query: dict, handler) -> tuple[int, dict]:
        name = urlparse(handler.path).path.rsplit("/", 1)[-1]
        return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Serving endpoint with name {name} does not exist"}

    # ---- OAuth (what a workspace serves for machine-to-machine OAuth) ----------------------
    def _host_metadata(self, raw: bytes, handler) -> tuple[int, dict, dict]:
        return 200, {"oidc_endpoint": f"{self._base_url(handler)}/oidc", "workspace_id": "1234567890123456"}, {}

    def _oidc_discovery(self, raw: bytes, handler) -> tuple[int, dict, dict]:
        base = f"{self._base_url(handler)}/oidc"
        document = {
            "issuer": base,
            "authorization_endpoint": f"{base}/v1/authorize",
            "token_endpoint": f"{base}/v1/token",
            "jwks_uri": f"{base}/jwks.json",
            "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["all-apis", "offline_access"],
        }
        return 200, document, {}

    def _token(self, raw: bytes, handler) -> tuple[int, dict, dict]:
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if not (handler.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "expected an application/x-www-form-urlencoded body"}, no_store
        form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        client_id, client_secret, method = form.get("client_id"), form.get("client_secret"), "client_secret_post"
        scheme, _, credentials = (handler.headers.get("Authorization") or "").partition(" ")
        if scheme == "Basic":  # RFC 6749 2.3.1: form-urlencoded id and secret, base64 of "id:secret"
            try:
                user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = password = ""
            client_id, client_secret, method = unquote(user), unquote(password), "client_secret_basic"
        self.token_requests.append(
            {"grant_type": form.get("grant_type"), "scope": form.get("scope"), "client_id": client_id, "auth_method": method}
        )
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": f"grant_type {form.get('grant_type')!r}"}, no_store
        if client_id != self.client_id or not secrets.compare_digest(client_secret or "", self.client_secret):
            challenge = {"WWW-Authenticate": 'Basic realm="oidc"'} if method == "client_secret_basic" else {}
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}, no_store | challenge
        if "all-apis" not in (form.get("scope") or "").split():
            return 400, {"error": "invalid_scope", "error_description": "scope must include all-apis"}, no_store
        access_token = "double-oauth-" + secrets.token_urlsafe(24)
        self.oauth_tokens[access_token] = time.time() + self.token_lifetime
        reply = {"access_token": access_token, "token_type": "Bearer", "expires_in": self.token_lifetime, "scope": form["scope"]}
        return 200, reply, no_store

    def _submit(self, body: dict, query: dict, handler) -> tuple[int, dict]:
        tasks = body.get("tasks") or []
        if len(tasks) != 1 or "spark_python_task" not in tasks[0]:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "this double runs exactly one spark_python_task per run"}
        with self._lock:
            token = body.get("idempotency_token")
            if token and token in self.by_token:
                return 200, {"run_id": self.by_token[token]}
            run_id = next(self._ids)
            run = Run(run_id, next(self._ids), body)
            self.runs[run_id] = run
            self.submissions.append(body)
            if token:
                self.by_token[token] = run_id
        threading.Thread(target=self._execute, args=(run,), daemon=True).start()
        return 200, {"run_id": run_id}

    def _run_json(self, run: Run, handler) -> dict:
        task = run.payload["tasks"][0]
        return {
            "job_id": run.run_id + 700000,  # one-time runs belong to an anonymous job, as on Databricks
            "run_id": run.run_id,
            "run_type": "SUBMIT_RUN",
            "run_name": run.payload.get("run_name"),
            "run_page_url": f"{self._base_url(handler)}/#job/runs/{run.run_id}",
            "state": run.state(),
            "tasks": [{"run_id": run.task_run_id, "task_key": task["task_key"], "state": run.state(), "attempt_number": 0}],
        }

    def _find(self, run_id: str) -> Run | None:
        rid = int(run_id)
        return self.runs.get(rid) or next((r for r in self.runs.values() if r.task_run_id == rid), None)

    def _get(self, body: dict, query: dict, handler) -> tuple[int, dict]:
        run = self._find(query.get("run_id", "0"))
        if run is None:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Run {query.get('run_id')} does not exist."}
        return 200, self._run_json(run, handler)

    def _get_output(self, body: dict, query: dict, handler) -> tuple[int, dict]:
        run = self._find(query.get("run_id", "0"))
        if run is None:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Run {query.get('run_id')} does not exist."}
        return 200, {"metadata": self._run_json(run, handler), **run.output}

    def _cancel(self, body: dict, query: dict, handler) -> tuple[int, dict]:
        run = self._find(str(body.get("run_id", 0)))
        if run is None:
            return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": f"Run {body.get('run_id')} does not exist."}
        if run.process and run.process.poll() is None:
            run.process.kill()
        if run.life_cycle_state not in ("TERMINATED", "INTERNAL_ERROR"):
            run.life_cycle_state, run.result_state, run.state_message = "TERMINATED", "CANCELED", "Run cancelled."
        return 200, {}

    # ---- execution -----------------------------------------------------------------------
    def _execute(self, run: Run) -> None:
        task = run.payload["tasks"][0]
        spt = task["spark_python_task"]
        python_file = _local(spt["python_file"])
        wheels = [_local(lib["whl"]) for lib in task.get("libraries", []) if "whl" in lib]
        if self.volume:
            self._volume_down()
        missing = [p for p in [python_file, *wheels] if not os.path.isfile(p)]
        if missing:
            run.life_cycle_state, run.result_state = "INTERNAL_ERROR", "FAILED"
            run.state_message = f"Library installation or file access failed: {missing[0]} not found"
            return
        env = {**os.environ, **self.env, **(task.get("new_cluster", {}).get("spark_env_vars") or {})}
        env["PYTHONPATH"] = os.pathsep.join([*wheels, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        run.life_cycle_state, run.state_message = "RUNNING", "In run"
        run.process = subprocess.Popen(
            [sys.executable, python_file, *spt.get("parameters", [])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        logs, _ = run.process.communicate()
        if run.result_state == "CANCELED":
            return
        lines = [line for line in logs.strip().splitlines() if line.strip()]
        if self.volume:
            self._volume_up()
        if run.process.returncode == 0:
            run.life_cycle_state, run.result_state, run.state_message = "TERMINATED", "SUCCESS", ""
            run.output = {"logs": "\n".join(lines[-50:])}
        else:
            run.life_cycle_state, run.result_state = "TERMINATED", "FAILED"
            run.state_message = "Workload failed, see run output for details"
            run.output = {"error": lines[-1] if lines else f"exit code {run.process.returncode}", "error_trace": "\n".join(lines[-40:])}

    # ---- the volume ----------------------------------------------------------------------
    def _container(self):
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.volume["connection_string"])
        return service.get_container_client(self.volume["container"])

    def _volume_down(self) -> None:
        import shutil
        from pathlib import Path

        root, prefix = Path(self.volume["path"]), self.volume.get("prefix", "")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        container = self._container()
        for blob in container.list_blobs(name_starts_with=prefix):
            target = root / blob.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(container.download_blob(blob.name).readall())
        self._snapshot = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def _volume_up(self) -> None:
        from pathlib import Path

        root, prefix = Path(self.volume["path"]), self.volume.get("prefix", "")
        container = self._container()
        now = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
        for rel, path in now.items():
            data = path.read_bytes()
            if self._snapshot.get(rel) != data:
                container.upload_blob(prefix + rel, data, overwrite=True)
        for rel in set(self._snapshot) - set(now):
            container.delete_blob(prefix + rel)
