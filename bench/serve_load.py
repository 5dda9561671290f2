"""bench/serve_load.py: N clients for M seconds against a model server: latency, throughput, errors, memory.

Three servers score the same registered model (the offline preset's shape, random weights, with
a novelty bank), one after the other on this machine:

* ``batched``: the local model server as the DAG starts it (``swan_anomaly.serving.server``),
  which scores concurrent requests together (:class:`swan_anomaly.serving.server.MicroBatcher`);
* ``unbatched``: the same server with ``--no-batching``: each request is scored alone, as before
  dynamic batching (the baseline of the ratio);
* ``mlflow``: ``mlflow models serve`` on the same model version (``--env-manager local``).

Each gets ``--clients`` concurrent clients that each post one image per request, back to back,
for ``--seconds``; then one client posting ``--batch-rows``-image requests (the throughput one
big request gets). Printed for each: requests/s, images/s, p50 and p99 latency, errors by status,
and the server's peak resident memory (``VmHWM``). The ratios batched/unbatched and
batched/mlflow come last. Clients and servers share this machine's cores.

``--stress`` instead hammers the batched server with a mix of single images, 256-image requests,
bodies over the limit, too many rows and bursts over the in-flight limit, and reports whether
every good request was answered, what the bad ones got, and the peak memory against ``--rss-bound-mb``.

Example:
    $ .venv/bin/python bench/serve_load.py --clients 64 --seconds 20 --json serve_load.json
    $ .venv/bin/python bench/serve_load.py --stress --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

NAME = "swan-anomaly"
MODEL = "swan_load_bench"
TOKEN = "serve-load-bench-token"


def progress(message: str) -> None:
    print(f"[serve_load] {message}", file=sys.stderr, flush=True)


def build_model(home: Path, preset: str) -> str:
    """Register the offline preset (random weights, a novelty bank on a few frames) in a SQLite MLflow under ``home``."""
    import mlflow
    import numpy as np

    from swan_anomaly.images import encode_jpeg
    from swan_anomaly.modeling import load_classifier, patch_features_of, preprocess_spec, resolve_base_model
    from swan_anomaly.novelty import default_layers, fit_novelty
    from swan_anomaly.registry import CHAMPION
    from swan_anomaly.tracking import log_served_model
    from swan_anomaly.trainer import frame_tensors

    import pandas as pd

    uri = f"sqlite:///{home}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    base = resolve_base_model(preset, home / "models")
    model, spec = load_classifier(base).eval(), preprocess_spec(base)
    rng = np.random.default_rng(0)
    frames = [encode_jpeg(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) for _ in range(16)]
    x, _ = frame_tensors(pd.DataFrame({"content": frames, "sample_id": [str(i) for i in range(16)], "label": [1] * 16}), spec)
    layers = default_layers(model.config.num_hidden_layers)
    features = patch_features_of(model, x, spec, layers)
    bank = fit_novelty(features[:12], features[12:], layers=layers)
    mlflow.set_experiment("serve-load")
    with mlflow.start_run():
        info = log_served_model(model, spec, threshold=0.5, threshold_method="max_f1", example=frames[:1], novelty=bank)
    version = mlflow.register_model(info.model_uri, MODEL)
    mlflow.MlflowClient().set_registered_model_alias(MODEL, CHAMPION, version.version)
    return uri


def frame_b64() -> str:
    """A 320x240 JPEG of a real photograph (scikit-image's bundled ``coffee``), base64: about 30 KB a request."""
    import cv2

    from swan_anomaly.images import encode_jpeg
    from swan_anomaly.quality.footage import load_photo

    image = cv2.cvtColor(cv2.resize(load_photo("coffee"), (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return base64.b64encode(encode_jpeg(image)).decode()


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` and its children, in MiB (``VmHWM``)."""
    import psutil

    total = 0.0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (OSError, psutil.Error):
            pass
    return total


def start_server(kind: str, port: int, uri: str, home: Path) -> subprocess.Popen:
    env = dict(os.environ) | {"MLFLOW_TRACKING_URI": uri, "SWAN_HOME": str(home), "SWAN_ENDPOINT_TOKEN": TOKEN}
    env["PYTHONPATH"] = str(ROOT / "include")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve runs `uvicorn`
    if kind == "mlflow":
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local"]
        cmd += ["-h", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [sys.executable, "-m", "swan_anomaly.serving.server", "--port", str(port), "--name", NAME, "--model-name", MODEL]
        cmd += [] if kind == "batched" else ["--no-batching"]
    log = (home / f"{kind}.log").open("wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def invocations_url(kind: str, port: int) -> str:
    return f"http://127.0.0.1:{port}/invocations" if kind == "mlflow" else f"http://127.0.0.1:{port}/serving-endpoints/{NAME}/invocations"


async def wait_ready(url: str, image: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = await client.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[image]]}}, timeout=30)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s (server exit code {proc.poll()})")


async def load(url: str, image: str, *, clients: int, seconds: float, rows: int = 1) -> dict:
    """``clients`` clients posting ``rows``-image requests back to back for ``seconds`` (aiohttp: a light client,
    since it shares the cores with the server)."""
    import aiohttp

    payload = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]] * rows}}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds

    async def client(session) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as r:
                    await r.read()
                    key = str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                key = type(exc).__name__
            if key == "200":
                latencies.append(time.perf_counter() - started)
            statuses[key] = statuses.get(key, 0) + 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    lat = sorted(latencies)

    def pct(q: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {
        "clients": clients,
        "rows_per_request": rows,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(ok / elapsed, 2),
        "images_per_s": round(ok * rows / elapsed, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "statuses": statuses,
        "errors": sum(v for k, v in statuses.items() if k != "200"),
    }


def measure(kind: str, port: int, uri: str, home: Path, args) -> dict:
    image = frame_b64()
    proc = start_server(kind, port, uri, home)
    url = invocations_url(kind, port)
    try:
        try:
            asyncio.run(wait_ready(url, image, proc))
        except TimeoutError:
            progress(f"{kind} never answered; its log ends:\n{(home / f'{kind}.log').read_text(errors='replace')[-3000:]}")
            raise
        progress(f"{kind}: ready; {args.clients} clients for {args.seconds:.0f}s")
        asyncio.run(load(url, image, clients=min(4, args.clients), seconds=2))  # warm-up
        singles = asyncio.run(load(url, image, clients=args.clients, seconds=args.seconds))
        progress(f"{kind}: {singles['requests_per_s']} req/s, p50 {singles['p50_ms']} ms, p99 {singles['p99_ms']} ms")
        big = asyncio.run(load(url, image, clients=1, seconds=args.seconds / 2, rows=args.batch_rows))
        progress(f"{kind}: one client, {args.batch_rows}-image requests: {big['images_per_s']} images/s")
        return {"singles": singles, "one_big_request": big, "peak_rss_mb": round(peak_rss_mb(proc.pid), 1)}
    finally:
        stop_server(proc)


async def stress(url: str, image: str, seconds: float) -> dict:
    """Good requests (singles and 256-image ones) beside bad ones (too big, too many rows) and bursts."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    good: dict = {"sent": 0, "answered": 0, "lost": 0, "retried_429": 0, "lost_because": {}}
    bad: dict[str, dict[str, int]] = {"body_over_limit": {}, "too_many_rows": {}}
    stop_at = time.perf_counter() + seconds
    big_body = b'{"dataframe_split": {"columns": ["image"], "data": [["' + b"A" * (20 * 2**20) + b'"]]}}'

    async def good_client(http: httpx.AsyncClient, rows: int) -> None:
        payload = {"dataframe_split": {"columns": ["image"], "data": [[image]] * rows}}
        while time.perf_counter() < stop_at:
            good["sent"] += 1
            for _ in range(100):  # 429 means "later": a client retries it, as EndpointClient does
                error = None
                try:
                    r = await http.post(url, json=payload, headers=headers, timeout=300)
                except httpx.HTTPError as exc:
                    r, error = None, f"{type(exc).__name__}: {exc}"[:200]
                if r is not None and r.status_code == 429:
                    good["retried_429"] += 1
                    await asyncio.sleep(0.2)
                    continue
                break
            if r is not None and r.status_code == 200 and len(r.json()["predictions"]) == rows:
                good["answered"] += 1
            else:
                good["lost"] += 1
                why = error or (f"{r.status_code}: {r.text[:200]}" if r is not None else "no answer")
                good["lost_because"][why] = good["lost_because"].get(why, 0) + 1

    async def bad_client(http: httpx.AsyncClient, kind: str) -> None:
        while time.perf_counter() < stop_at:
            if kind == "body_over_limit":
                r = await http.post(url, content=big_body, headers=headers | {"Content-Type": "application/json"}, timeout=60)
            else:
                r = await http.post(url, json={"dataframe_split": {"columns": ["image"], "data": [[image]] * 257}}, headers=headers)
            bad[kind][str(r.status_code)] = bad[kind].get(str(r.status_code), 0) + 1
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
        tasks = [good_client(http, 1) for _ in range(80)] + [good_client(http, 256) for _ in range(2)]
        tasks += [bad_client(http, "body_over_limit"), bad_client(http, "too_many_rows")]
        await asyncio.gather(*tasks)
    return {"good": good, "bad": bad}


def run_stress(uri: str, home: Path, args) -> dict:
    image = frame_b64()
    proc = start_server("batched", args.port, uri, home)
    url = invocations_url("batched", args.port)
    try:
        asyncio.run(wait_ready(url, image, proc))
        progress(f"stress: 80 single-image clients, 2 clients of 256 images, oversized bodies and rows, for {args.seconds:.0f}s")
        result = asyncio.run(stress(url, image, args.seconds))
        result["server_alive"] = proc.poll() is None
        result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 1)
        result["rss_bound_mb"] = args.rss_bound_mb
        result["ok"] = bool(
            result["server_alive"]
            and result["good"]["lost"] == 0
            and result["peak_rss_mb"] < args.rss_bound_mb
            and set(result["bad"]["body_over_limit"]) <= {"413", "429"}  # 429: over the in-flight limit, refused first
            and set(result["bad"]["too_many_rows"]) <= {"413", "429"}
        )
        return result
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--preset", default="vit-tiny-offline")
    parser.add_argument("--servers", default="batched,unbatched,mlflow", help="comma-separated: batched, unbatched, mlflow")
    parser.add_argument("--port", type=int, default=5071)
    parser.add_argument("--stress", action="store_true", help="the stress run instead of the comparison")
    parser.add_argument("--rss-bound-mb", type=float, default=2048.0, help="stress: the server's peak memory must stay under this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        home = Path(tmp)
        progress(f"registering the {args.preset} preset in {home}")
        uri = build_model(home, args.preset)
        figures: dict = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            "preset": args.preset,
        }
        if args.stress:
            figures["stress"] = run_stress(uri, home, args)
            print(json.dumps(figures["stress"], indent=1))
        else:
            for i, kind in enumerate(args.servers.split(",")):
                figures[kind] = measure(kind, args.port + i, uri, home, args)
            report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def report(figures: dict) -> None:
    kinds = [k for k in ("batched", "unbatched", "mlflow") if k in figures]
    print(f"{'server':<10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'big img/s':>10} {'peak MiB':>9}")
    for kind in kinds:
        s, b = figures[kind]["singles"], figures[kind]["one_big_request"]
        print(
            f"{kind:<10} {s['clients']:>7} {s['requests_per_s']:>8.1f} {s['p50_ms']!s:>8} {s['p99_ms']!s:>8} {s['errors']:>6} "
            f"{b['images_per_s']:>10.1f} {figures[kind]['peak_rss_mb']:>9.0f}"
        )
    for other in ("unbatched", "mlflow"):
        if "batched" in figures and other in figures:
            a, o = figures["batched"]["singles"], figures[other]["singles"]
            print(
                f"batched / {other}: throughput {a['requests_per_s'] / max(o['requests_per_s'], 1e-9):.2f}x, "
                f"p99 latency {(a['p99_ms'] or 0) / max(o['p99_ms'] or 1e-9, 1e-9):.2f}x"
            )


if __name__ == "__main__":
    main()
