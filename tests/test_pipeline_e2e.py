"""The whole DAG, end to end on the embedded default, with ``dag.test()`` on tiny data."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT

# Today: the newest data of the session. In the full suite the registry may already hold a champion of the Airflow stack's
# runs (yesterday's and older dates), and the gate never lets a model of older data replace one of newer data.
LANDING_DATE = dt.datetime.now(dt.UTC).date().isoformat()
DATASET = LANDING_DATE.replace("-", "")


@pytest.fixture(scope="module")
def pipeline_run(airflow_db, demo_video):
    """Land the demo video and a corrupt one for LANDING_DATE and run the DAG once."""
    from airflow.dag_processing.dagbag import DagBag

    from swan_anomaly.config import Settings

    landing = Settings.from_env().landing_dir / LANDING_DATE
    landing.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_video, landing / "swans.mp4")
    (landing / "broken.mp4").write_bytes(b"this upload is text, not a video\n" * 10)
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("swan_anomaly_pipeline")
    logical = dt.datetime.fromisoformat(LANDING_DATE).replace(tzinfo=dt.UTC)
    return dag.test(logical_date=logical, run_conf={"landing_date": LANDING_DATE, "anomaly_families": ["salt_pepper_polygons"]})


@pytest.mark.slow
def test_run_succeeds_and_writes_the_lake(pipeline_run):
    from swan_anomaly.config import Settings
    from swan_anomaly.labels import read_manifest
    from swan_anomaly.lake import LocalLake

    assert str(pipeline_run.state) == "success"
    lake = LocalLake(Settings.from_env().lake_root)
    raw = lake.require_complete(DATASET)
    labels = read_manifest(raw / "labels.csv")
    assert len(labels) == 80 and labels.label.value_counts().to_dict() == {0: 40, 1: 40}
    manifest = json.loads((raw / "manifest.json").read_text())
    on_disk = {p.relative_to(raw).as_posix() for p in raw.rglob("*.png")}
    assert on_disk == set(labels.image_path) and set(labels.image_path) <= set(manifest["files"])
    silver = pd.read_parquet(lake.silver / f"dataset_id={DATASET}")
    gold = pd.read_parquet(lake.gold / f"dataset_id={DATASET}")
    assert len(silver) == len(labels)
    etl = lake.read_result(pipeline_run.run_id, "etl")
    augment = lake.read_result(pipeline_run.run_id, "augment")
    assert etl["silver_rows"] == len(silver) and augment["gold_rows"] == len(gold)
    assert gold.groupby("group").split.nunique().max() == 1
    train = lake.read_result(pipeline_run.run_id, "train")
    assert train["val"]["auroc"] >= 0.9 and train["val"]["f1"] >= 0.8
    summary = lake.read_result(pipeline_run.run_id, "summary")
    [rejected] = summary["rejected_videos"]  # the corrupt upload is set aside with its reason; the good video arrived
    assert rejected["video"].endswith("broken.mp4") and "broken.mp4" in rejected["reason"] and "not a video" in rejected["reason"]
    assert summary["families"] == {"salt_pepper_polygons": 40}
    from swan_anomaly.registry import mlflow_client

    plots = {a.path for a in mlflow_client(*Settings.from_env().mlflow_uris).list_artifacts(train["mlflow_run_id"], "plots")}
    expected = {"plots/anomaly_families.png"} | {
        f"plots/{kind}_{split}.png"
        for kind in ("roc_pr", "score_histogram", "worst_scored", "confusion_matrix")
        for split in ("val", "test")
    }
    assert expected <= plots, expected - plots
    inputs = mlflow_client(*Settings.from_env().mlflow_uris).get_run(train["mlflow_run_id"]).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [f"gold-{DATASET}"] and f"dataset_id={DATASET}" in inputs[0].dataset.source
    assert 0 < train["threshold"] < 1 and train["test"]["threshold"] == train["threshold"]
    assert set(train["test"]["recall_by_family"]) == {"salt_pepper_polygons"} and "average_precision" in train["test"]


@pytest.mark.slow
def test_the_run_tells_airflow_which_partitions_and_model_version_it_made(pipeline_run):
    """Asset events for the lake partitions and the model version (data-aware downstream DAGs), and the task links."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from swan_anomaly.config import Settings
    from swan_anomaly.lake import LocalLake

    lake = LocalLake(Settings.from_env().lake_root)
    train = lake.read_result(pipeline_run.run_id, "train")
    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_run_id == pipeline_run.run_id)
        ).all()
        links = {
            (task_id, key): json.loads(value) if isinstance(value, str) and value.startswith('"') else value
            for task_id, key, value in session.execute(
                select(XComModel.task_id, XComModel.key, XComModel.value).where(
                    XComModel.run_id == pipeline_run.run_id, XComModel.key.like("%_url")
                )
            )
        }
        assert (
            session.scalar(
                select(TaskInstance.state).where(TaskInstance.run_id == pipeline_run.run_id, TaskInstance.task_id == "promote_model")
            )
            == "success"
        )
    events = {name: extra for name, extra in rows}
    assert events["swan_lake_raw"]["dataset_id"] == DATASET and events["swan_lake_raw"]["digest"]
    silver, gold = events["swan_lake_silver"], events["swan_lake_gold"]
    assert silver["dataset_id"] == gold["dataset_id"] == DATASET
    assert silver["rows"] == lake.read_result(pipeline_run.run_id, "etl")["silver_rows"] > 0
    assert gold["rows"] == lake.read_result(pipeline_run.run_id, "augment")["gold_rows"] > 0
    assert Path(silver["uri"]) == lake.silver / f"dataset_id={DATASET}" and Path(gold["uri"]) == lake.gold / f"dataset_id={DATASET}"
    version = events["swan_model_version"]
    assert version["mlflow_run_id"] == train["mlflow_run_id"] and version["uri"] == f"models:/{version['name']}/{version['version']}"
    champion = events["swan_model_champion"]  # emitted once the endpoint passed validation with it
    assert champion["version"] == version["version"] and champion["outcome"] == "passed" and champion["new"] is True
    assert (
        links[("run_training", "mlflow_run_url")]
        == f"http://127.0.0.1:5000/#/experiments/{train['mlflow_experiment_id']}/runs/{train['mlflow_run_id']}"
    )
    assert links[("register_model", "model_version_url")].endswith(f"/#/models/{version['name']}/versions/{version['version']}")
    assert links[("validate_endpoint", "endpoint_url")] == f"{Settings.from_env().endpoint_ui_url}/health"
    assert links[("promote_model", "model_version_url")] == links[("register_model", "model_version_url")]


@pytest.mark.slow
def test_champion_is_served_and_endpoint_scores_match_the_registry_model(pipeline_run):
    import mlflow.pyfunc

    from swan_anomaly.config import Settings
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.metrics import anomaly_scores
    from swan_anomaly.registry import CHAMPION, mlflow_client
    from swan_anomaly.serving.client import EndpointClient
    from swan_anomaly.serving.deploy import served_version, workspace_client
    from swan_anomaly.serving.local import endpoint_token

    s = Settings.from_env()
    summary = LocalLake(s.lake_root).read_result(pipeline_run.run_id, "summary")
    client = mlflow_client(*s.mlflow_uris)
    champion = client.get_model_version_by_alias(s.model_name, CHAMPION)
    assert str(champion.version) == summary["model"]["version"]
    assert champion.tags["airflow_run_id"] == pipeline_run.run_id
    train = LocalLake(s.lake_root).read_result(pipeline_run.run_id, "train")
    assert float(champion.tags["anomaly_threshold"]) == pytest.approx(train["threshold"], abs=1e-6)  # stored with the model
    assert CHAMPION in summary["model"]["aliases"]

    endpoint = EndpointClient(s.endpoint_url, s.endpoint_name, token=endpoint_token(s))
    assert served_version(workspace_client(s.endpoint_url, token=endpoint_token(s)), s.endpoint_name) == str(champion.version)
    # databricks-sdk's serving_endpoints.query (the Databricks backend's path) speaks the same protocol
    sdk = EndpointClient(s.endpoint_url, s.endpoint_name, workspace=workspace_client(s.endpoint_url, token=endpoint_token(s)))
    raw = LocalLake(s.lake_root).raw(DATASET)
    names = [r[0] for r in summary["scores"]]
    labels = [r[1] for r in summary["scores"]]
    images = [(raw / n).read_bytes() for n in names]
    predictions = endpoint.score(images)
    through_sdk = sdk.score(images)
    assert len(through_sdk) == len(predictions) and set(through_sdk[0]) == set(predictions[0])
    np.testing.assert_allclose([p["anomaly_score"] for p in through_sdk], [p["anomaly_score"] for p in predictions], atol=1e-6)
    logits = np.array([p["logits"] for p in predictions])
    scores = np.array([p["anomaly_score"] for p in predictions])
    np.testing.assert_allclose(scores, anomaly_scores(logits), atol=1e-7)

    registered = mlflow.pyfunc.load_model(f"models:/{s.model_name}@{CHAMPION}")
    direct = registered.predict(pd.DataFrame({"image": images}))
    np.testing.assert_allclose(scores, direct.anomaly_score.to_numpy(), atol=1e-6)

    # the training code path on the registered weights and preprocessing config: the training
    # loop's own tensor builder and evaluation
    from swan_anomaly.trainer import evaluate, frame_tensors

    served = registered.unwrap_python_model()
    x, y = frame_tensors(pd.DataFrame({"content": images, "sample_id": names, "label": labels}), served.spec)
    _, train_logits = evaluate(served.model, x, y, served.spec, batch_size=8)
    np.testing.assert_allclose(scores, anomaly_scores(train_logits), atol=1e-5)

    # the novelty score: served beside anomaly_score, the same from the endpoint, the registry
    # model and the training code path's features scored against the stored bank
    from swan_anomaly.modeling import patch_features_of

    novelty = np.array([p["novelty_score"] for p in predictions])
    np.testing.assert_allclose(novelty, direct.novelty_score.to_numpy(), atol=1e-6)
    bank = served.novelty
    assert bank is not None and len(bank.bank) > 0 and bank.scale > 0
    np.testing.assert_allclose(novelty, bank.scores(patch_features_of(served.model, x, served.spec, bank.layers, batch_size=8)), atol=1e-5)
    assert np.all(np.isfinite(novelty)) and novelty.min() >= 0
    assert {"novelty", "decision"} <= set(train["test"]) and 0.0 <= train["test"]["novelty"]["auroc"] <= 1.0
    abnormal = [sc for sc, lab in zip(scores, labels) if lab == 0]
    normal = [sc for sc, lab in zip(scores, labels) if lab == 1]
    assert len(abnormal) == len(normal) == 8 and min(abnormal) > max(normal)


@pytest.mark.slow
def test_endpoint_rejects_bad_input_without_crashing(pipeline_run):
    import httpx

    from swan_anomaly.config import Settings
    from swan_anomaly.serving.client import EndpointClient
    from swan_anomaly.serving.deploy import workspace_client
    from swan_anomaly.serving.local import endpoint_token

    s = Settings.from_env()
    endpoint = EndpointClient(s.endpoint_url, s.endpoint_name, token=endpoint_token(s))
    payload = {"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}}
    bad = httpx.post(endpoint.invocations_url, json=payload, headers={"Authorization": f"Bearer {endpoint_token(s)}"})
    assert bad.status_code == 400 and "not a decodable image" in bad.text
    # the detached server the DAG started takes its token and no other, for scoring and for its management API
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert httpx.post(endpoint.invocations_url, json=payload, headers=headers).status_code == 401
        config_url = f"{s.endpoint_url}/api/2.0/serving-endpoints/{s.endpoint_name}/config"
        assert httpx.put(config_url, json={}, headers=headers).status_code == 401
    assert workspace_client(s.endpoint_url, token=endpoint_token(s)).serving_endpoints.get(s.endpoint_name).state.ready.value == "READY"


@pytest.mark.slow
def test_a_restarted_model_server_serves_the_champion_again(pipeline_run):
    """Before, a restarted server served nothing until the next pipeline run deployed the champion."""
    import datetime as dt

    from swan_anomaly.config import Settings
    from swan_anomaly.registry import CHAMPION, mlflow_client
    from swan_anomaly.serving.client import EndpointClient
    from swan_anomaly.serving.deploy import served_version, workspace_client
    from swan_anomaly.serving.local import endpoint_token, ensure_local_server, stop_local_server

    s = Settings.from_env()
    champion = mlflow_client(*s.mlflow_uris).get_model_version_by_alias(s.model_name, CHAMPION)
    assert stop_local_server(s)
    ensure_local_server(s)  # a new process, nothing deployed to it
    w = workspace_client(s.endpoint_url, token=endpoint_token(s))
    w.serving_endpoints.wait_get_serving_endpoint_not_updating(s.endpoint_name, timeout=dt.timedelta(minutes=3))
    assert served_version(w, s.endpoint_name) == str(champion.version)
    image = next((s.lake_root / "raw" / DATASET / "frames").rglob("*.png")).read_bytes()
    assert len(EndpointClient(s.endpoint_url, s.endpoint_name, token=endpoint_token(s)).score([image])) == 1


@pytest.mark.slow
def test_failed_endpoint_update_keeps_the_champion_serving(pipeline_run):
    from swan_anomaly import EndpointError
    from swan_anomaly.config import Settings
    from swan_anomaly.serving.client import EndpointClient
    from swan_anomaly.serving.deploy import ServingConfig, deploy_version, served_version, workspace_client
    from swan_anomaly.serving.local import endpoint_token

    s = Settings.from_env()
    endpoint = EndpointClient(s.endpoint_url, s.endpoint_name, token=endpoint_token(s))
    w = workspace_client(s.endpoint_url, token=endpoint_token(s))
    serving = served_version(w, s.endpoint_name)
    with pytest.raises(EndpointError, match=f"failed to serve {s.model_name} v999 and keeps serving v{serving}"):
        deploy_version(w, s.endpoint_name, s.model_name, "999", ServingConfig(timeout=dt.timedelta(seconds=60)))
    assert w.serving_endpoints.get(s.endpoint_name).state.config_update.value == "UPDATE_FAILED"
    assert served_version(w, s.endpoint_name) == serving
    image = next((s.lake_root / "raw" / DATASET / "frames").rglob("*.png")).read_bytes()
    assert len(endpoint.score([image])) == 1


@pytest.mark.slow
def test_roll_back_serves_the_previous_version_and_moves_the_champion_alias(pipeline_run):
    from swan_airflow.serving_target import restore_endpoint, serving_target
    from swan_anomaly.config import Settings
    from swan_anomaly.registry import CHAMPION, mlflow_client
    from swan_anomaly.serving.deploy import served_version

    s = Settings.from_env()
    client = mlflow_client(*s.mlflow_uris)
    champion = client.get_model_version_by_alias(s.model_name, CHAMPION)
    other = client.create_model_version(s.model_name, champion.source, run_id=champion.run_id, tags={"purpose": "rollback test"})
    target = serving_target()
    restore_endpoint(target, str(other.version))
    assert served_version(target.workspace(), target.endpoint) == str(other.version)
    assert str(client.get_model_version_by_alias(s.model_name, CHAMPION).version) == str(other.version)
    restore_endpoint(target, str(champion.version))
    assert served_version(target.workspace(), target.endpoint) == str(champion.version)
    image = next((s.lake_root / "raw" / DATASET / "frames").rglob("*.png")).read_bytes()
    assert len(target.client().score([image])) == 1


@pytest.mark.slow
def test_a_champion_that_stops_separating_new_data_is_drift_and_the_failed_run_still_writes_its_summary(
    pipeline_run, monkeypatch, tmp_path
):
    """A second run whose gate keeps a champion that scores every image 0.5: drift, reported and (by setting) failing the run,
    with no retry of the validation and a summary that says what serves. The second run processes the same date again and
    leaves its raw, silver and gold data exactly as the first run wrote them."""
    import mlflow
    import torch
    from airflow.dag_processing.dagbag import DagBag

    from swan_airflow.serving_target import serving_target
    from swan_anomaly.config import Settings
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.modeling import PreprocessSpec, load_classifier
    from swan_anomaly.registry import CHAMPION, mlflow_client, promote, register_challenger
    from swan_anomaly.serving.deploy import ServingConfig, deploy_version
    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE
    from swan_anomaly.tracking import ensure_experiment, log_served_model

    s = Settings.from_env()
    client = mlflow_client(*s.mlflow_uris)
    served = Path(mlflow.artifacts.download_artifacts(f"models:/{s.model_name}@{CHAMPION}"))
    [model_dir] = [p.parent for p in served.rglob(PREPROCESS_FILE)]
    constant = load_classifier(str(model_dir))
    with torch.no_grad():
        constant.classifier.weight.zero_()
        constant.classifier.bias.zero_()
    with mlflow.start_run(experiment_id=ensure_experiment(s), run_name="constant-champion") as run:
        info = log_served_model(
            constant,
            PreprocessSpec.from_json((model_dir / PREPROCESS_FILE).read_text()),
            threshold=0.5,
            threshold_method="max_f1",
            example=[b""],
        )
    version = str(
        register_challenger(
            client, s.model_name, info.model_uri, run.info.run_id, "manual__constant", tags={"anomaly_threshold": "0.5"}
        ).version
    )
    promote(client, s.model_name, version)
    target = serving_target()
    deploy_version(target.workspace(), target.endpoint, s.model_name, version, ServingConfig())
    client.set_model_version_tag(s.model_name, version, "endpoint_validation", "passed: an earlier run")  # it served and passed before

    out = tmp_path / "notified.txt"
    monkeypatch.setenv("SWAN_DRIFT_ACTION", "fail")
    monkeypatch.setenv("SWAN_FAILURE_NOTIFIER", "conftest:RecordingNotifier")
    monkeypatch.setenv("SWAN_FAILURE_NOTIFIER_KWARGS", json.dumps({"message": "{{ exception }}", "path": str(out)}))
    lake = LocalLake(s.lake_root)
    before = _partition_data(lake)
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("swan_anomaly_pipeline")
    logical = dt.datetime.fromisoformat(LANDING_DATE).replace(tzinfo=dt.UTC)
    # the gate refuses (an unseen-family AUROC is required, and one family gives none), so the constant champion stays
    conf = {"landing_date": LANDING_DATE, "epochs": 2, "gate_min_unseen_auroc": 1.0, "anomaly_families": ["salt_pepper_polygons"]}
    again = dag.test(logical_date=logical, run_after=dt.datetime.now(dt.UTC), run_conf=conf)

    assert str(again.state) == "failed"
    after = _partition_data(lake)
    assert after["raw"] == before["raw"], "a new run of the date changed its raw files"
    pd.testing.assert_frame_equal(after["silver"], before["silver"])
    pd.testing.assert_frame_equal(after["gold"], before["gold"])
    states = {ti.task_id: (str(ti.state), ti.try_number) for ti in again.get_task_instances()}
    assert states["keep_champion"][0] == "success" and states["promote_model"][0] == "skipped"
    assert states["validate_endpoint"] == ("failed", 1), "a validation failure is final: no retry"
    summary = LocalLake(s.lake_root).read_result(again.run_id, "summary")
    assert summary["status"] == "failed" and summary["failed_tasks"] == ["validate_endpoint"]
    assert summary["gate"]["promote"] is False and "unseen_auroc None < 1.0000" in summary["gate"]["reasons"]
    assert summary["gate"]["reports"]["champion"]["auroc"] == 0.5  # judged on the challenger's rows, not its own claims
    assert summary["endpoint"]["outcome"] == "drift" and summary["endpoint"]["validated_version"] == version
    assert summary["serving"] == {"endpoint": s.endpoint_name, "version": version, "champion": version}
    assert "DRIFT: the unchanged champion" in out.read_text() and "SWAN_DRIFT_ACTION=fail" in out.read_text()
    # leave the trained model serving for the modules after this one
    previous = client.get_model_version_by_alias(s.model_name, "previous_champion")
    promote(client, s.model_name, str(previous.version))
    deploy_version(target.workspace(), target.endpoint, s.model_name, str(previous.version), ServingConfig())


def _partition_data(lake) -> dict:
    """The raw files (name: sha256), silver rows and gold rows of DATASET, in a stable order."""
    from swan_anomaly.digests import sha256_file

    raw = {p.relative_to(lake.raw(DATASET)).as_posix(): sha256_file(p) for p in lake.raw(DATASET).rglob("*") if p.is_file()}
    raw = {name: digest for name, digest in raw.items() if name not in ("_SUCCESS", "manifest.json")}  # rewritten last on every upload
    silver = pd.read_parquet(lake.silver_partition(DATASET)).sort_values("image_path", ignore_index=True)
    gold = pd.read_parquet(lake.gold_partition(DATASET)).sort_values("sample_id", ignore_index=True)
    return {"raw": raw, "silver": silver, "gold": gold}
