"""The whole DAG in remote mode: the lake on Azure Storage (Azurite) through WasbHook, the jobs as
Databricks one-time runs (the real, deferrable DatabricksSubmitRunOperator against the REST double,
whose cluster really runs the submitted files and sees the container as a volume), MLflow registry
and serving as configured.

The deployment's default backend stays ``local``: the run asks for Databricks in its conf, as a
user does in the trigger form. One DAG run (and one rerun) serves every test of this module."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import AZURITE_KEY, ROOT, canonical_name, captured_output, pinned_versions, stored_run_texts
from databricks_double import DatabricksDouble

LANDING_DATE = "2026-11-22"
DATASET = "20261122"
TOKEN = "dapi-remote-0123456789"
LOCK = pinned_versions(ROOT / "requirements.txt")
CONTAINER, PREFIX = "lake", "swan/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path):
    """An MLflow tracking server over HTTP with proxied artifacts: what a Databricks cluster can reach, unlike a store
    on the worker's disk (a Databricks run with that is refused when it is submitted)."""
    import mlflow

    port = _free_port()
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    args += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url, previous = f"http://127.0.0.1:{port}", (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        for _ in range(240):
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        mlflow.set_tracking_uri(previous[0])  # MLflow's process-wide URIs: the later tests' own again
        mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def remote_run(airflow_db, demo_video, azurite, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    from swan_anomaly.config import Settings

    volume = tmp_path_factory.mktemp("volume") / "lake"
    tracking = contextlib.ExitStack()
    mlflow_url = tracking.enter_context(mlflow_server(tmp_path_factory.mktemp("mlflow")))
    double = DatabricksDouble(
        token=TOKEN,
        volume={"path": str(volume), "connection_string": azurite["connection_string"], "container": CONTAINER, "prefix": PREFIX},
    ).start()
    mp = pytest.MonkeyPatch()
    mp.delenv("SWAN_COMPUTE_BACKEND", raising=False)  # the deployment default stays local; the run asks for Databricks
    for key, value in {
        "SWAN_DATABRICKS_POLL_SECONDS": "1",
        "SWAN_DATABRICKS_RETRY_DELAY": "1",
        "AIRFLOW_CONN_DATABRICKS_DEFAULT": double.connection(),
        "SWAN_LAKE_BACKEND": "azure",
        "SWAN_LAKE_CONN_ID": "swan_lake_remote",
        "AIRFLOW_CONN_SWAN_LAKE_REMOTE": json.dumps({"conn_type": "wasb", "extra": {"connection_string": azurite["connection_string"]}}),
        "SWAN_LAKE_CONTAINER": CONTAINER,
        "SWAN_LAKE_PREFIX": PREFIX,
        "SWAN_JOB_LAKE_ROOT": str(volume),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_REGISTRY_URI": mlflow_url,  # set too: an earlier test's mlflow.set_registry_uri exports its own
        # a deployment of its own: the session's model server reads another registry, and is rightly not used
        "SWAN_HOME": str(tmp_path_factory.mktemp("remote-home")),
        "SWAN_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}",
    }.items():
        mp.setenv(key, value)
    landing = Settings.from_env().landing_dir / LANDING_DATE
    landing.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_video, landing / "swans.mp4")
    try:
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["swan_anomaly_pipeline"]
        assert type(dag.get_task("run_etl")).__name__ == "SwanJobOperator" and dag.params["backend"] == "local"
        logical = dt.datetime.fromisoformat(LANDING_DATE).replace(tzinfo=dt.UTC)
        run_after = dt.datetime.now(dt.UTC)
        dag_run = _run(dag, logical, run_after=run_after)
        dag_run.rerun = lambda: _run(dag, logical, run_after=run_after)
        yield dag_run, double, volume
    finally:
        from swan_anomaly.serving.local import stop_local_server

        stop_local_server(Settings.from_env())  # the model server this deployment started
        mp.undo()
        double.stop()
        tracking.close()


def _run(dag, logical, *, run_after):
    """One DAG run; called again with the same ``run_after`` it reruns the same run id, as a clear does."""
    with captured_output() as captured:
        conf = {"landing_date": LANDING_DATE, "backend": "databricks", "anomaly_families": ["salt_pepper_polygons"]}
        dag_run = dag.test(logical_date=logical, run_after=run_after, run_conf=conf)
    dag_run.logs = captured.getvalue()
    return dag_run


def _blob_etags(connection_string: str) -> dict[str, str]:
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(connection_string).get_container_client(CONTAINER)
    return {b.name: b.etag for b in container.list_blobs()}


def _blobs(connection_string: str) -> set[str]:
    return set(_blob_etags(connection_string))


@pytest.mark.slow
def test_remote_run_writes_the_container_and_runs_the_deployed_code(remote_run, azurite):
    from airflow.providers.databricks.utils.databricks import normalise_json_content

    from swan_airflow.databricks_runs import cluster_spec, cluster_env_vars
    from swan_airflow.submit_run import generation_token, token_base
    from swan_anomaly.lake import MANIFEST, LocalLake, gold_files_digest, sha256_text

    dag_run, double, volume = remote_run
    assert str(dag_run.state) == "success"
    blobs = _blobs(azurite["connection_string"])
    raw = f"{PREFIX}raw/{DATASET}/"
    assert {raw + "_SUCCESS", raw + "manifest.json", raw + "labels.csv"} <= blobs
    assert sum(b.startswith(raw + "anomalies/") and b.endswith(".png") for b in blobs) == 40
    assert any(b.startswith(f"{PREFIX}silver/images/dataset_id={DATASET}/") and b.endswith(".parquet") for b in blobs)
    assert any(b.startswith(f"{PREFIX}gold/training/dataset_id={DATASET}/") and b.endswith(".parquet") for b in blobs)
    safe_run = dag_run.run_id.replace(":", "_").replace("+", "_")
    assert {f"{PREFIX}runs/{safe_run}/{job}.json" for job in ("etl", "augment", "train", "summary")} <= blobs
    code = sorted(b for b in blobs if b.startswith(f"{PREFIX}code/") and b.endswith(".whl"))
    assert len(code) == 1
    assert [p["tasks"][0]["task_key"] for p in double.submissions] == ["etl", "augment", "train"]
    for payload, cluster in zip(double.submissions, ("cpu", "cpu", "gpu")):
        task = payload["tasks"][0]
        assert task["new_cluster"] == normalise_json_content({**cluster_spec(cluster), "spark_env_vars": cluster_env_vars()})
        *pypi, wheel = task["libraries"]
        assert wheel == {"whl": f"{volume}/{code[0][len(PREFIX):]}"}
        assert {lib["pypi"]["package"] for lib in pypi} >= {f"opencv-python-headless=={LOCK['opencv-python-headless']}"}
        for lib in pypi:  # each run library pinned to the lock the tests run with
            name, version = lib["pypi"]["package"].split("==")
            assert LOCK[canonical_name(name)] == version, lib
        assert task["spark_python_task"]["python_file"] == f"{volume}/{code[0][len(PREFIX):].rsplit('/', 1)[0]}/jobs/{task['task_key']}.py"
        assert task["spark_python_task"]["parameters"][:6] == [
            "--lake-root",
            str(volume),
            "--dataset-id",
            DATASET,
            "--run-id",
            dag_run.run_id,
        ]
        assert 0 < len(payload["idempotency_token"]) <= 64
        result = LocalLake(volume).read_result(dag_run.run_id, task["task_key"])
        assert ".whl" in result["package_path"], "the job did not run the deployed wheel"
    assert len({p["idempotency_token"] for p in double.submissions}) == 3
    assert LocalLake(volume).read_result(dag_run.run_id, "train")["val"]["auroc"] >= 0.9
    # the training token's window digest, listed from the container, is that of the gold files the jobs wrote
    job_side = LocalLake(volume).gold_files([DATASET])
    assert [name for name, _ in job_side[DATASET] if name.endswith(".parquet")]
    window = gold_files_digest(job_side)
    assert f"gold files digest {window[:16]}" in dag_run.logs
    # the training run's token digests its input partition and the gold files of its window as they were
    train_payload, raw_digest = double.submissions[2], sha256_text((LocalLake(volume).raw(DATASET) / MANIFEST).read_text())
    base = token_base(dag_run.dag_id, dag_run.run_id, "run_training", -1, train_payload, f"{raw_digest}|gold:{window}")
    assert train_payload["idempotency_token"] == generation_token(base, 0)


@pytest.mark.slow
def test_resubmitting_with_the_same_token_attaches_to_the_same_run(remote_run):
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    _, double, _ = remote_run
    first, submitted = double.submissions[0], len(double.submissions)
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_DATABRICKS_RESUBMIT", double.connection())
    try:
        run_id = DatabricksHook(databricks_conn_id="databricks_resubmit").submit_run(first)
    finally:
        mp.undo()
    assert run_id == double.by_token[first["idempotency_token"]]
    assert len(double.submissions) == submitted


@pytest.mark.slow
def test_remote_run_registers_and_serves_its_champion(remote_run):
    from swan_anomaly.config import Settings
    from swan_anomaly.registry import CHAMPION, mlflow_client
    from swan_anomaly.serving.deploy import served_version, workspace_client
    from swan_anomaly.serving.local import endpoint_token

    dag_run, _, _ = remote_run
    s = Settings.from_env()
    champion = mlflow_client(*s.mlflow_uris).get_model_version_by_alias(s.model_name, CHAMPION)
    assert champion.tags["airflow_run_id"] == dag_run.run_id
    assert served_version(workspace_client(s.endpoint_url, token=endpoint_token(s)), s.endpoint_name) == str(champion.version)


@pytest.mark.slow
def test_remote_run_leaks_neither_the_storage_key_nor_the_token(remote_run):
    dag_run, _, _ = remote_run
    assert "upload_to_lake" in dag_run.logs and len(dag_run.logs) > 10_000
    stored = stored_run_texts(dag_run.run_id)
    assert "spark_python_task" in stored["rendered templates"], "the Databricks payloads were not rendered"
    for where, text in {"task logs": dag_run.logs, **stored}.items():
        assert AZURITE_KEY not in text, f"the storage account key leaked into {where}"
        assert TOKEN not in text, f"the Databricks token leaked into {where}"


@pytest.mark.slow
def test_rerunning_the_dag_run_duplicates_no_runs_blobs_or_versions(remote_run, azurite):
    from swan_anomaly.config import Settings
    from swan_anomaly.registry import CHAMPION, mlflow_client

    dag_run, double, _ = remote_run
    s = Settings.from_env()
    client = mlflow_client(*s.mlflow_uris)
    before = _blob_etags(azurite["connection_string"])
    runs_before = dict(double.runs)
    champion = client.get_model_version_by_alias(s.model_name, CHAMPION)

    again = dag_run.rerun()

    assert str(again.state) == "success" and again.run_id == dag_run.run_id
    assert double.runs == runs_before, "the rerun started new Databricks runs"
    after = _blob_etags(azurite["connection_string"])
    raw = f"{PREFIX}raw/{DATASET}/"
    rewritten = {name for name in before if after.get(name) != before[name]}
    # the completeness marker and manifest are rewritten last on every upload, by design; the
    # gate's, the validation's and the summary's records are the rerun's own; no frame, label,
    # code, silver or gold blob is touched
    runs = f"{PREFIX}runs/{dag_run.run_id.replace(':', '_').replace('+', '_')}/"
    assert rewritten <= {raw + "_SUCCESS", raw + "manifest.json", runs + "gate.json", runs + "validation.json", runs + "summary.json"}
    assert set(after) == set(before)
    versions = [
        v.version for v in client.search_model_versions(f"name = '{s.model_name}'") if v.tags.get("airflow_run_id") == dag_run.run_id
    ]
    assert versions == [champion.version]
    assert client.get_model_version_by_alias(s.model_name, CHAMPION).version == champion.version
