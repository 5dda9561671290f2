"""A Databricks REST API double for tests: the parts of Jobs API 2.2 the pipeline calls.

It speaks the real wire protocol over HTTP on 127.0.0.1, so the real provider operators and
hooks talk to it unchanged: ``POST /api/2.2/jobs/runs/submit`` (with ``idempotency_token``),
``GET /api/2.2/jobs/runs/get``, ``GET /api/2.2/jobs/runs/get-output``,
``POST /api/2.2/jobs/runs/cancel``, with the real life-cycle states
(PENDING -> RUNNING -> TERMINATED with SUCCESS/FAILED/CANCELED, or INTERNAL_ERROR); and, for
MLflow clients pointed at the workspace (``MLFLOW_TRACKING_URI=databricks``), an empty
``GET /api/2.0/mlflow/registered-models/search``.

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

import itertools
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


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

    def __init__(self, *, token: str, env: dict[str, str] | None = None, volume: dict | None = None) -> None:
        self.token = token
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

    def connection(self, *, token: str | None = None) -> str:
        """An Airflow ``databricks`` connection (JSON, for ``AIRFLOW_CONN_*``) pointing at this double."""
        return json.dumps(
            {"conn_type": "databricks", "host": "127.0.0.1", "port": self.port, "schema": "http", "password": token or self.token}
        )

    def fail_next(self, path_suffix: str, status: int, *, times: int = 1) -> None:
        self._faults.append([path_suffix, status, times])

    # ---- HTTP ----------------------------------------------------------------------------
    def _reply(self, handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler, method: str) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        # GETs carry their arguments as query parameters (sync hook) or as a JSON body (async hook).
        query = {**{k: str(v) for k, v in body.items()}, **{k: v[0] for k, v in parse_qs(url.query).items()}}
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            self.requests.append((method, url.path, 401))
            return self._reply(handler, 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        for fault in self._faults:
            if url.path.endswith(fault[0]) and fault[2] > 0:
                fault[2] -= 1
                self.requests.append((method, url.path, fault[1]))
                return self._reply(handler, fault[1], {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected fault"})
        routes = {
            ("POST", "/api/2.2/jobs/runs/submit"): self._submit,
            ("GET", "/api/2.2/jobs/runs/get"): self._get,
            ("GET", "/api/2.2/jobs/runs/get-output"): self._get_output,
            ("POST", "/api/2.2/jobs/runs/cancel"): self._cancel,
            ("GET", "/api/2.0/mlflow/registered-models/search"): lambda body, query, handler: (200, {"registered_models": []}),
        }
        route = routes.get((method, url.path))
        if route is None:
            self.requests.append((method, url.path, 404))
            return self._reply(handler, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"No API found for '{method} {url.path}'"})
        status, reply = route(body, query, handler)
        self.requests.append((method, url.path, status))
        return self._reply(handler, status, reply)

    def _base_url(self, handler) -> str:
        return f"http://{handler.headers.get('Host')}"

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
