"""Screenshot the Airflow grid of a finished ``swan_anomaly_pipeline`` run and its MLflow training run, for the docs.

Usage::

    .venv/bin/python scripts/screenshot_ui.py [--airflow-home .airflow] [--mlflow-db .swan/mlflow/mlflow.db]
                                              [--out-dir docs/images] [--run-id RUN_ID] [--only airflow|mlflow]

The defaults are the state ``make demo`` leaves behind. Nothing there is changed:

1. copies ``<airflow-home>/airflow.db`` and the MLflow SQLite store into a temporary directory (plain
   file copies, with a pending write-ahead log: nothing is opened or written next to the originals); the
   MLflow runs' artifact locations stay absolute paths into the original artifact folder, which the
   MLflow UI only reads;
2. Airflow: runs ``airflow db migrate`` on the copy, starts ``airflow api-server`` (simple auth manager,
   "all admins": no login) and ``airflow dag-processor`` on this project's dags/ and plugins/, waits until
   the DAG is listed, picks the newest successful run (or ``--run-id``) through the REST API, opens
   ``/dags/swan_anomaly_pipeline/runs/<run_id>`` in headless Chromium and waits until the grid shows
   the run's task rows -> ``airflow_grid.png``;
3. MLflow: starts ``mlflow ui`` on the copied store, finds the experiment (``--experiment``, default
   ``swan-anomaly``) and its training run (the one tagged with the Airflow run's id, else the newest
   finished run) through the REST API, opens ``#/experiments/<id>/runs/<run_id>`` (the UI's "Model
   training" mode, its assistant panel closed) and waits until the run's overview and metrics are
   rendered -> ``mlflow_run.png``;
4. stops every process it started (process groups) and removes the temporary directory.

Both pictures are the browser viewport (``--width`` x ``--height``, default 1400x900) at 1x device scale.
The Chromium driver (Chrome DevTools Protocol over ``websockets``), the process handling and the Airflow
environment come from ``scripts/screenshot_trigger_form.py``. Needs Chromium (Debian:
``apt-get install chromium``; another binary: ``--chromium PATH`` or env ``CHROMIUM``) and the project
venv. Its processes run at a lower CPU priority (``--nice``). Takes about a minute, most of it
Airflow starting.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from screenshot_trigger_form import (
    CDP,
    DAG_ID,
    ROOT,
    Processes,
    StepError,
    airflow_env,
    click,
    find_chromium,
    free_port,
    http_json,
    log,
    start_chromium,
    step_failed,
    wait_for_dag,
)

#: A task of the DAG the grid must show before the picture is taken.
GRID_TASK = "run_training"


def copy_sqlite(src: Path, dst: Path, what: str) -> None:
    """Copy a SQLite database (and its write-ahead log, if any) as files, then check the copy.

    Not SQLite's backup API: opening the source, even read-only, would leave ``-wal``/``-shm`` files
    next to a WAL-mode database (Airflow's); file copies never write there.
    """
    if not src.is_file():
        raise StepError(f"copy {what}: {src} does not exist (run `make demo` first, or pass its path)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        shutil.copyfile(wal, dst.with_name(dst.name + "-wal"))  # committed transactions not checkpointed yet
    try:
        with contextlib.closing(sqlite3.connect(dst)) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise StepError(f"copy {what}: the copy of {src} is not a usable SQLite database: {exc}") from exc
    if result != "ok":
        raise StepError(f"copy {what}: the copy of {src} fails SQLite's quick_check: {result}")


def http_post_json(url: str, body: dict, timeout: float = 10) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_http(url: str, procs: Processes, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1)
    raise StepError(f"{what}: {url} did not answer within {timeout:.0f}s ({last})")


def wait_still(cdp: CDP, timeout: float = 15) -> None:
    """Wait until the page stops changing: same size of the DOM and no running animations over a few polls."""
    last, still = None, 0
    deadline = time.monotonic() + timeout
    while still < 4 and time.monotonic() < deadline:
        state = cdp.js(
            "document.getElementsByTagName('*').length + ':' + document.body.innerText.length + ':'"
            " + document.getAnimations().filter(a => a.playState === 'running' && a.effect?.getTiming().iterations !== Infinity).length"
        )
        still = still + 1 if (state == last and state.endswith(":0")) else 0
        last = state
        time.sleep(0.4)


def viewport_png(cdp: CDP, out: Path) -> None:
    cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)  # no hover styles in the picture
    cdp.js("document.activeElement && document.activeElement.blur && document.activeElement.blur(); true")
    data = cdp.call("Page.captureScreenshot", format="png", timeout=60)["data"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(data))
    log(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def new_browser(chromium: str, tmp: Path, procs: Processes, width: int, height: int) -> CDP:
    """Headless Chromium with a fresh profile (in ``tmp``, which must not hold one yet) and a fixed viewport."""
    tmp.mkdir(parents=True, exist_ok=True)
    cdp = start_chromium(chromium, tmp, procs, width, height)
    cdp.call("Page.enable")
    cdp.call("Runtime.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
    return cdp


# --- Airflow ----------------------------------------------------------------------------------------


def start_airflow(args: argparse.Namespace, tmp: Path, procs: Processes) -> tuple[str, str]:
    """Airflow on a copy of the metadata DB; returns (base URL, API token)."""
    port = free_port()
    env = airflow_env(tmp, port)
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    copy_sqlite(args.airflow_home / "airflow.db", db, "airflow.db")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{db}"
    # Parse the DAG once; no re-parsing every 30 s while the pictures are taken.
    env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] = "3600"
    env["AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL"] = "3600"
    # The source home's Fernet key, so that connections and variables in the copy stay readable.
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(args.airflow_home / "airflow.cfg")
    if fernet := cfg.get("core", "fernet_key", fallback=""):
        env["AIRFLOW__CORE__FERNET_KEY"] = fernet
    base = f"http://127.0.0.1:{port}"

    log(f"airflow db migrate (copy of {args.airflow_home / 'airflow.db'} in {db.parent})")
    res = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True)
    if res.returncode:
        raise StepError(f"airflow db migrate failed ({res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")

    log(f"starting airflow api-server on {base} and dag-processor")
    procs.start(
        "api-server", [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env
    )
    procs.start("dag-processor", [sys.executable, "-m", "airflow", "dag-processor"], env)
    wait_for_dag(base, procs, args.timeout)
    return base, http_json(f"{base}/auth/token")["access_token"]


def pick_dag_run(base: str, token: str, run_id: str | None) -> dict:
    if run_id:
        try:
            run = http_json(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}", token)
        except urllib.error.HTTPError as exc:
            raise StepError(f"pick DAG run: {DAG_ID} has no run {run_id!r} in the copied DB ({exc})") from exc
    else:
        runs = http_json(f"{base}/api/v2/dags/{DAG_ID}/dagRuns?state=success&order_by=-run_after&limit=1", token)["dag_runs"]
        if not runs:
            raise StepError(f"pick DAG run: the copied DB has no successful run of {DAG_ID} (run `make demo` first)")
        run = runs[0]
    if run["state"] not in ("success", "failed"):
        raise StepError(f"pick DAG run: {run['dag_run_id']} is {run['state']}, not finished")
    return run


def shoot_airflow(args: argparse.Namespace, chromium: str, tmp: Path, procs: Processes, out: Path) -> str:
    """``airflow_grid.png``; returns the DAG run's id."""
    base, token = start_airflow(args, tmp, procs)
    run = pick_dag_run(base, token, args.run_id)
    run_id = run["dag_run_id"]
    log(f"DAG run {run_id} ({run['state']})")

    cdp = new_browser(chromium, tmp / "airflow-browser", procs, args.width, args.height)
    try:
        url = f"{base}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}"
        # /auth/token/login sets the "all admins" session cookie, then redirects to the run's page.
        cdp.call("Page.navigate", url=f"{base}/auth/token/login?next={urllib.parse.quote(url, safe='')}")
        cdp.wait_js(f"location.pathname.startsWith('/dags/{DAG_ID}/runs/') && document.readyState === 'complete'", "the DAG run page")
        cdp.wait_js(f"!!document.querySelector('[data-testid=\"task-{GRID_TASK}\"]')", f"the grid's row of task {GRID_TASK}", timeout=90)
        cdp.wait_js(f"document.body.innerText.includes({json.dumps(run_id)})", "the run's id on the page", timeout=30)
        wait_still(cdp)
        viewport_png(cdp, out)
    finally:
        cdp.close()
    return run_id


# --- MLflow -----------------------------------------------------------------------------------------


#: localStorage of the MLflow UI (3.x), set before it loads: the "Model training" workflow, whose run page
#: has the metrics and parameters tables, and the assistant panel (it opens itself on a first visit) closed.
MLFLOW_UI_STORAGE = {
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}
JS_MLFLOW_ASSISTANT_CLOSE = (
    "([...document.querySelectorAll('button[aria-label=Close]')].find(b => b.getClientRects().length"
    " && b.parentElement?.parentElement?.innerText.startsWith('MLflow Assistant')) || null)"
)


def start_mlflow(args: argparse.Namespace, tmp: Path, procs: Processes) -> str:
    home = tmp / "mlflow"
    db = home / "mlflow.db"
    copy_sqlite(args.mlflow_db, db, "mlflow.db")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", f"sqlite:///{db}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--artifacts-destination", str(home / "mlartifacts")]
    log(f"starting mlflow ui on {base} (copy of {args.mlflow_db})")
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    procs.start("mlflow", cmd, env, cwd=home)  # cwd: anything it writes by default lands in the temporary directory
    wait_http(f"{base}/health", procs, "start mlflow", 120)
    return base


def pick_mlflow_run(base: str, experiment: str, airflow_run_id: str | None) -> tuple[str, dict]:
    """(experiment id, run): the run tagged with the Airflow run's id, else the newest finished one."""
    try:
        query = urllib.parse.urlencode({"experiment_name": experiment})
        exp_id = http_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]["experiment_id"]
    except urllib.error.HTTPError as exc:
        names = [
            e["name"] for e in http_post_json(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100}).get("experiments", [])
        ]
        raise StepError(f"pick MLflow run: no experiment {experiment!r} (there are {names}; --experiment)") from exc
    filters = [f"tags.airflow_run_id = '{airflow_run_id}'"] if airflow_run_id else []
    for flt in [*filters, "attributes.status = 'FINISHED'"]:
        body = {"experiment_ids": [exp_id], "filter": flt, "order_by": ["attributes.start_time DESC"], "max_results": 1}
        if runs := http_post_json(f"{base}/api/2.0/mlflow/runs/search", body).get("runs"):
            return exp_id, runs[0]
    raise StepError(f"pick MLflow run: experiment {experiment!r} ({exp_id}) has no finished run")


def shoot_mlflow(args: argparse.Namespace, chromium: str, tmp: Path, procs: Processes, out: Path, airflow_run_id: str | None) -> None:
    base = start_mlflow(args, tmp, procs)
    exp_id, run = pick_mlflow_run(base, args.experiment, airflow_run_id)
    info = run["info"]
    run_id, run_name = info["run_id"], info.get("run_name") or info["run_id"]
    metrics = sorted(m["key"] for m in run.get("data", {}).get("metrics", []))
    log(f"MLflow run {run_name} ({run_id}) of experiment {exp_id}, {len(metrics)} metrics")

    cdp = new_browser(chromium, tmp / "mlflow-browser", procs, args.width, args.height)
    try:
        # Before the UI first loads: its "Model training" mode (not GenAI), and the assistant panel closed.
        cdp.call("Page.navigate", url=f"{base}/health")
        cdp.wait_js(f"location.href === {json.dumps(base + '/health')} && document.readyState === 'complete'", "MLflow's /health page")
        cdp.js(f"Object.entries({json.dumps(MLFLOW_UI_STORAGE)}).forEach(([k, v]) => localStorage.setItem(k, v)); true")
        cdp.call("Page.navigate", url=f"{base}/#/experiments/{exp_id}/runs/{run_id}")
        cdp.wait_js(f"document.body && document.body.innerText.includes({json.dumps(run_name)})", f"the run page of {run_name}", timeout=90)
        cdp.wait_js("document.body.innerText.includes('About this run')", "the run's overview", timeout=30)
        if metrics:
            cdp.wait_js(f"document.body.innerText.includes({json.dumps(metrics[0])})", f"the run's metric {metrics[0]}", timeout=60)
        if cdp.js(f"!!{JS_MLFLOW_ASSISTANT_CLOSE}"):
            click(cdp, JS_MLFLOW_ASSISTANT_CLOSE, "MLflow assistant's Close button")
        wait_still(cdp)
        viewport_png(cdp, out)
    finally:
        cdp.close()


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airflow-home", type=Path, default=ROOT / ".airflow", help="Airflow home with airflow.db (default: .airflow)")
    parser.add_argument("--mlflow-db", type=Path, default=ROOT / ".swan" / "mlflow" / "mlflow.db", help="default: .swan/mlflow/mlflow.db")
    parser.add_argument("--experiment", default="swan-anomaly", help="MLflow experiment (default: swan-anomaly)")
    parser.add_argument("--run-id", help=f"the {DAG_ID} run to show (default: the newest successful one)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "images", help="default: docs/images")
    parser.add_argument("--only", choices=("airflow", "mlflow"), help="take one of the two pictures")
    parser.add_argument("--chromium", help="Chromium/Chrome binary (default: env CHROMIUM, else chromium on PATH)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS px (default 1400)")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS px (default 900)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for the DAG to be parsed (default 240)")
    parser.add_argument("--nice", type=int, default=10, help="CPU niceness of this script and its processes (default 10; 0: unchanged)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary copies and logs (for debugging)")
    args = parser.parse_args(argv)
    args.airflow_home, args.mlflow_db, out_dir = args.airflow_home.resolve(), args.mlflow_db.resolve(), args.out_dir.resolve()
    if args.nice:
        os.nice(args.nice)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="swan-screenshot-ui-"))
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs")
    step = "find chromium"
    try:
        chromium = find_chromium(args.chromium)
        airflow_run_id = args.run_id
        if args.only != "mlflow":
            step = "airflow grid"
            airflow_run_id = shoot_airflow(args, chromium, tmp, procs, out_dir / "airflow_grid.png")
            procs.stop_all()  # Airflow and its browser are done: free the CPU before MLflow starts
        if args.only != "airflow":
            step = "mlflow run page"
            shoot_mlflow(args, chromium, tmp, procs, out_dir / "mlflow_run.png", airflow_run_id)
        log(f"done in {time.monotonic() - started:.0f}s")
        return 0
    except Exception as exc:  # noqa: BLE001 - name the step of anything that fails
        return step_failed(step, exc)
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
