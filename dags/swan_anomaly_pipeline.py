"""The swan-anomaly pipeline DAG: videos of a normal scene in, a validated anomaly endpoint out.

Parse-time cheap: only airflow.sdk and pendulum at module level; every heavy import
(cv2, torch, pyspark, mlflow) happens inside a task.
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, Param, dag, get_current_context, task

from swan_airflow.callbacks import failure_callbacks
from swan_airflow.databricks_runs import submit_run_json
from swan_airflow.ingest import LANDING_ASSET, landing_date_from_events
from swan_anomaly.gate import promotion_thresholds
from swan_anomaly.modeling import PRESETS, PRODUCTION_MODEL

SCHEDULE = os.environ.get("SWAN_SCHEDULE", "@daily")
# Default of the `backend` Param: where the Spark and training jobs run, "local" (subprocesses,
# the embedded default) or "databricks" (one-time job runs; needs the ADLS lake).
COMPUTE_BACKEND = os.environ.get("SWAN_COMPUTE_BACKEND", "local")
DATABRICKS_CONN_ID = os.environ.get("SWAN_DATABRICKS_CONN_ID", "databricks_default")
DEFAULT_MODEL = os.environ.get("SWAN_MODEL", "vit-tiny-offline")
MODEL = "{{ params.model or '" + DEFAULT_MODEL + "' }}"
MODEL_EXAMPLES = [*PRESETS, PRODUCTION_MODEL]
# One slot: two runs (scheduled, asset-triggered, backfilled, manual) never train or promote at once.
POOL = os.environ.get("SWAN_POOL", "swan_training")
TASK_TIMEOUT = dt.timedelta(minutes=float(os.environ.get("SWAN_TASK_TIMEOUT_MINUTES", "60")))
TRAINING_TIMEOUT = dt.timedelta(minutes=float(os.environ.get("SWAN_TRAINING_TIMEOUT_MINUTES", "360")))
GATE_DEFAULTS = {name: t.minimum for name, t in promotion_thresholds().items()}
FAMILIES = ["salt_pepper_polygons", "cutpaste", "perlin_texture", "occlusion", "local_blur", "color_shift"]

default_args = {
    "owner": "swan-anomaly",
    "retries": int(os.environ.get("SWAN_RETRIES", "2")),
    "retry_delay": dt.timedelta(seconds=float(os.environ.get("SWAN_RETRY_DELAY_SECONDS", "30"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": TASK_TIMEOUT,
    "on_failure_callback": failure_callbacks(),
}


def _run_facts() -> tuple[str, str, dict]:
    """(dataset_id, run_id, params) of the current run."""
    from swan_airflow.runtime import dataset_id_for

    ctx = get_current_context()
    params = ctx["params"]
    dag_run = ctx["dag_run"]
    dataset_id = dataset_id_for(
        landing_date=_landing_date(ctx), interval_start=ctx.get("data_interval_start"), run_after=getattr(dag_run, "run_after", None)
    )
    return dataset_id, dag_run.run_id, params


def _landing_date(ctx) -> str | None:
    """The landing date a run processes: the `landing_date` Param, else the one its asset event names."""
    return ctx["params"].get("landing_date") or landing_date_from_events(ctx.get("triggering_asset_events"))


@dag(
    # Daily over data intervals (backfillable), and also whenever the ingest DAG lands videos.
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"), assets=LANDING_ASSET),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["swan", "mlops", "anomaly-detection"],
    params={
        # Data
        "landing_date": Param(
            None, type=["null", "string"], format="date", title="Landing date", section="Data",
            description="Process the videos that arrived on this date (landing/YYYY-MM-DD/). Empty: the run's data interval, or the date its asset event names.",
        ),
        "videos": Param(
            [], type="array", items={"type": "string", "minLength": 1}, title="Videos", section="Data",
            description="Explicit video paths, one per line; overrides the landing-zone lookup.",
        ),
        "every_seconds": Param(0.5, type="number", exclusiveMinimum=0, maximum=3600, title="Frame interval (s)", section="Data", description="Extract one frame every N seconds."),
        "frames_start_s": Param(None, type=["null", "number"], minimum=0, title="Start (s)", section="Data", description="Skip each video's first N seconds."),
        "frames_end_s": Param(None, type=["null", "number"], minimum=0, title="End (s)", section="Data", description="Stop at this second of each video (must lie inside it)."),
        "max_frames": Param(None, type=["null", "integer"], minimum=1, title="Max frames per video", section="Data", description="At most this many frames per video."),
        "dedupe_distance": Param(
            None, type=["null", "integer"], minimum=0, maximum=64, title="Near-duplicate distance", section="Data",
            description="Drop a frame whose perceptual hash is within this many bits of the last kept one (a still camera); empty keeps all.",
        ),
        "anomaly_families": Param(
            ["salt_pepper_polygons"], type="array", minItems=1, uniqueItems=True, items={"type": "string", "enum": FAMILIES},
            title="Anomaly families", section="Data", description="Synthetic anomaly families mixed into the dataset in equal shares (one per line).",
        ),
        "anomaly_ratio": Param(
            0.5, type="number", exclusiveMinimum=0, exclusiveMaximum=1, title="Anomaly ratio", section="Data", description="Share of abnormal images in the dataset, between 0 and 1.",
        ),
        "label_check": Param(
            None, type=["null", "boolean"], title="Label check", section="Data",
            description="Ask an Azure OpenAI vision deployment (connection swan_label_check) what a seeded sample of normal frames shows; empty: env SWAN_LABEL_CHECK decides.",
        ),
        "seed": Param(42, type="integer", minimum=0, title="Seed", section="Data", description="Seed of anomaly synthesis, splits, augmentation and training."),
        # Training
        "model": Param(
            None, type=["null", "string"], examples=MODEL_EXAMPLES, title="Model", section="Training",
            description=f"Offline preset, Hugging Face hub id or local directory (default: {DEFAULT_MODEL}, env SWAN_MODEL).",
        ),
        "image_size": Param(None, type=["null", "integer"], minimum=16, maximum=1024, title="Image size", section="Training", description="Override the model input size (default: the model config's)."),
        "epochs": Param(40, type="integer", minimum=1, maximum=200, title="Epochs", section="Training", description="Maximum training epochs (early stopping may end sooner)."),
        "training_window_days": Param(
            1, type="integer", minimum=1, maximum=365, title="Training window (days)", section="Training",
            description="Train on the dataset partitions of this many days up to the run's own (1: only this run's data).",
        ),
        "backend": Param(
            COMPUTE_BACKEND, enum=["local", "databricks"], title="Compute backend", section="Training",
            description="Where ETL, augmentation and training run: local subprocesses or Databricks job runs (needs the ADLS lake).",
        ),
        # Promotion
        "gate_mode": Param("enabled", enum=["enabled", "dry_run", "disabled"], title="Gate mode", section="Promotion", description="Promotion gate: enforce, only report, or skip."),
        "gate_min_val_auroc": Param(GATE_DEFAULTS["auroc"], type="number", minimum=0, maximum=1, title="Min validation AUROC", section="Promotion", description="The challenger needs at least this validation AUROC (anomaly class positive)."),
        "gate_min_val_f1": Param(GATE_DEFAULTS["f1"], type="number", minimum=0, maximum=1, title="Min validation F1", section="Promotion", description="The challenger needs at least this validation F1 at its stored threshold."),
        "gate_min_unseen_auroc": Param(
            None, type=["null", "number"], minimum=0, maximum=1, title="Min unseen-family AUROC", section="Promotion",
            description="Also require this AUROC on every anomaly family held out of training (leave-one-family-out report; needs 2+ families).",
        ),
        "force_promote": Param(
            False, type="boolean", title="Force promote", section="Promotion",
            description="Promote the challenger even if it fails the gate. Needs a reason; the endpoint validation still runs and rolls back on failure. Off in deployments with SWAN_ALLOW_FORCE_PROMOTE=false.",
        ),
        "force_promote_reason": Param(
            None, type=["null", "string"], maxLength=500, title="Force-promote reason", section="Promotion",
            description="Why the gate is overridden (at least 10 characters); stored as a tag of the model version.",
        ),
    },
)
def swan_anomaly_pipeline():
    """## swan_anomaly_pipeline

    | stage | task | where it runs |
    |---|---|---|
    | find new videos | `find_videos` | worker |
    | frames (OpenCV, mapped per video) | `extract_frames` | worker |
    | synthetic anomalies | `synthesize_anomalies` | worker |
    | label manifest | `build_labels` | worker |
    | label check (optional) | `check_labels` | worker -> Azure OpenAI |
    | upload to the lake | `upload_to_lake` | worker -> lake |
    | code version (wheel + jobs) | `deploy_code` | worker -> lake |
    | crop/resize/JPEG | `run_etl` | Spark job (local subprocess or Databricks run) |
    | augmentation + splits | `run_augmentation` | Spark job (local subprocess or Databricks run) |
    | ViT fine-tuning | `run_training` | training job (local subprocess or Databricks GPU run) |
    | MLflow registration (`challenger`) | `register_model` | MLflow |
    | gate | `gate_model` -> `promote_model` / `keep_champion` | MLflow |
    | serve the champion | `update_endpoint` | serving endpoint |
    | REST validation | `validate_endpoint` | serving endpoint |
    | summary | `summarize_run` | worker |

    Class 0 = abnormal, class 1 = normal; `anomaly_score = softmax(logits)[0]`.
    """

    @task
    def find_videos() -> list[str]:
        """Videos to process: the `videos` Param, or those that landed in the run's data interval."""
        import shutil
        from pathlib import Path

        from airflow.sdk.exceptions import AirflowSkipException

        from swan_airflow.runtime import find_landed_videos, landing_window, settings

        ctx = get_current_context()
        params = ctx["params"]
        dataset_id, _, _ = _run_facts()
        shutil.rmtree(settings().staging_dir / dataset_id, ignore_errors=True)  # staging is scratch space of this run
        if params.get("videos"):
            videos = [str(Path(v).absolute()) for v in params["videos"]]
        else:
            start, end = landing_window(
                landing_date=_landing_date(ctx), interval_start=ctx.get("data_interval_start"), interval_end=ctx.get("data_interval_end"),
                run_after=getattr(ctx["dag_run"], "run_after", None),
            )
            videos = [str(p) for p in find_landed_videos(settings().landing_dir, start, end)]
        if not videos:
            raise AirflowSkipException("no new videos for this run; nothing to do")
        return videos

    @task(map_index_template="{{ task.op_kwargs['video'].rsplit('/', 1)[-1] }}")
    def extract_frames(video: str) -> dict:
        """Frames from one video (one every `every_seconds`), written losslessly to staging.

        A video that cannot be read (corrupt, truncated, empty, not a video) is set aside with
        its reason instead of failing the run: the other videos still arrive.
        """
        import json
        from pathlib import Path

        from swan_airflow.runtime import settings
        from swan_anomaly import VideoError
        from swan_anomaly.video import extract_frames as extract

        dataset_id, _, params = _run_facts()
        dataset_dir = settings().staging_dir / dataset_id
        try:
            frames = extract(
                Path(video), dataset_dir / "frames", every_seconds=params["every_seconds"], start_s=params.get("frames_start_s"),
                end_s=params.get("frames_end_s"), max_frames=params.get("max_frames"), dedupe_distance=params.get("dedupe_distance"),
            )
        except VideoError as exc:
            print(f"REJECTED video {video}: {exc}")
            return {"video": video, "video_id": None, "frames": 0, "error": str(exc)}
        records = [r.to_dict() for r in frames]
        vid = records[0]["video_id"]
        for r in records:
            r["path"] = str(Path(r["path"]).relative_to(dataset_dir))
        (dataset_dir / "frames" / vid / "index.json").write_text(json.dumps(records, indent=1))
        return {"video": video, "video_id": vid, "frames": len(records), "error": None}

    @task
    def synthesize_anomalies(videos: list[dict]) -> dict:
        """Seeded anomalies of the chosen families at the controlled ratio."""
        import json
        import shutil

        from swan_airflow.runtime import settings
        from swan_anomaly.anomalies import synthesize_dataset

        dataset_id, _, params = _run_facts()
        dataset_dir = settings().staging_dir / dataset_id
        rejected = [{"video": v["video"], "reason": v["error"]} for v in videos if v.get("error")]
        good = [v for v in videos if not v.get("error")]
        if not good:
            from airflow.sdk.exceptions import AirflowFailException

            reasons = "; ".join(f"{r['video']}: {r['reason']}" for r in rejected)
            raise AirflowFailException(f"none of the {len(videos)} videos could be read: {reasons}")
        frames = []
        for v in good:
            for r in json.loads((dataset_dir / "frames" / v["video_id"] / "index.json").read_text()):
                frames.append({**r, "path": str(dataset_dir / r["path"])})
        shutil.rmtree(dataset_dir / "anomalies", ignore_errors=True)  # a rerun replaces, never accumulates
        records = synthesize_dataset(frames, dataset_dir, anomaly_ratio=params["anomaly_ratio"], seed=params["seed"], families=params["anomaly_families"])
        (dataset_dir / "anomalies").mkdir(exist_ok=True)
        (dataset_dir / "anomalies" / "index.json").write_text(json.dumps([r.__dict__ for r in records], indent=1))
        return {"frames": len(frames), "anomalies": len(records), "videos": [v["video_id"] for v in good], "rejected_videos": rejected}

    @task
    def build_labels(synthesis: dict) -> dict:
        """The validated label manifest (labels.csv) of the staged dataset."""
        import json

        from swan_airflow.runtime import settings
        from swan_anomaly.anomalies import AnomalyRecord
        from swan_anomaly.labels import build_manifest, write_manifest

        dataset_id, _, _ = _run_facts()
        dataset_dir = settings().staging_dir / dataset_id
        frames = []
        for vid in synthesis["videos"]:
            frames += [{**r, "path": str(dataset_dir / r["path"])} for r in json.loads((dataset_dir / "frames" / vid / "index.json").read_text())]
        anomalies = [AnomalyRecord(**r) for r in json.loads((dataset_dir / "anomalies" / "index.json").read_text())]
        table = build_manifest(frames, anomalies, dataset_dir)
        write_manifest(table, dataset_dir / "labels.csv")
        counts = table.label.value_counts().to_dict()
        return {
            "images": len(table), "abnormal": int(counts.get(0, 0)), "normal": int(counts.get(1, 0)), "groups": int(table.group.nunique()),
            "families": table[table.label == 0].family.value_counts().sort_index().to_dict(), "rejected_videos": synthesis["rejected_videos"],
        }

    @task
    def check_labels(labels: dict) -> dict:
        """Optional (off by default): a vision model names what a seeded sample of normal frames shows."""
        from swan_airflow.label_check import label_check_enabled, run_label_check
        from swan_airflow.runtime import settings
        from swan_anomaly.labels import read_manifest

        dataset_id, _, params = _run_facts()
        if not label_check_enabled(params):
            return {"enabled": False}
        dataset_dir = settings().staging_dir / dataset_id
        return {"enabled": True, **run_label_check(dataset_dir, read_manifest(dataset_dir / "labels.csv"), seed=params["seed"])}

    @task
    def upload_to_lake(labels: dict) -> dict:
        """Frames, anomalies and labels to raw/{dataset_id}/; manifest.json and _SUCCESS last."""
        from swan_airflow.runtime import lake, settings

        dataset_id, _, _ = _run_facts()
        report = lake().put_dataset(settings().staging_dir / dataset_id, dataset_id)
        return {**report.__dict__, "dataset_id": dataset_id, **labels}

    @task
    def deploy_code() -> dict:
        """The swan_anomaly wheel and jobs/*.py under code/{version}/ in the lake (once per code version)."""
        from swan_airflow.code_deploy import deploy_code as deploy
        from swan_airflow.runtime import job_lake_root, lake

        return deploy(lake(), job_lake_root())

    def job_task(task_id: str, job: str, args: list[str], **kwargs):
        """The job as a local subprocess or a Databricks one-time run, by the run's `backend` Param; same task id."""
        from swan_airflow.submit_run import SwanJobOperator

        return SwanJobOperator(
            task_id=task_id,
            job=job,
            job_args=args,
            databricks_conn_id=DATABRICKS_CONN_ID,
            # the Databricks run ends when the task would time out
            json=submit_run_json(job, args, timeout_seconds=int(kwargs.get("execution_timeout", TASK_TIMEOUT).total_seconds())),
            inputs="{{ ti.xcom_pull(task_ids='upload_to_lake')['digest'] }}",
            deferrable=True,
            polling_period_seconds=int(os.environ.get("SWAN_DATABRICKS_POLL_SECONDS", "30")),
            databricks_retry_limit=5,
            databricks_retry_delay=int(os.environ.get("SWAN_DATABRICKS_RETRY_DELAY", "10")),
            **kwargs,
        )

    @task
    def register_model() -> dict:
        """Register the trained pyfunc as a new version with alias `challenger` (once per run)."""
        from swan_airflow.runtime import lake, registry_client, settings
        from swan_anomaly.registry import register_challenger

        dataset_id, run_id, _ = _run_facts()
        s = settings()
        training = lake().read_result(run_id, "train")
        client = registry_client()
        v = register_challenger(
            client, s.model_name, training["model_uri"], training["mlflow_run_id"], run_id,
            tags={"dataset_id": dataset_id, "anomaly_threshold": f"{training['threshold']:.6f}"},
        )
        return {
            "name": s.model_name, "version": str(v.version), "aliases": sorted(v.aliases), "val": training["val"],
            "unseen_auroc": training.get("generalization_min_unseen_auroc"),
        }

    @task.branch
    def gate_model(registered: dict) -> str:
        """Promote the challenger only if it passes the thresholds and does not regress vs the champion."""
        from swan_airflow.runtime import registry_client
        from swan_anomaly.gate import MinThreshold, decide
        from swan_anomaly.registry import CHAMPION, get_alias

        _, _, params = _run_facts()
        client = registry_client()
        thresholds = {name: MinThreshold(params[f"gate_min_val_{name}"]) for name in GATE_DEFAULTS}
        if params.get("gate_min_unseen_auroc") is not None:
            thresholds["unseen_auroc"] = MinThreshold(params["gate_min_unseen_auroc"])
        champion = get_alias(client, registered["name"], CHAMPION)
        champion_metrics = None
        if champion is not None and str(champion.version) != registered["version"]:
            m = client.get_run(champion.run_id).data.metrics
            champion_metrics = {"auroc": m.get("val_auroc"), "f1": m.get("val_f1"), "unseen_auroc": m.get("lofo_min_unseen_auroc")}
        challenger = {"auroc": registered["val"]["auroc"], "f1": registered["val"]["f1"], "unseen_auroc": registered.get("unseen_auroc")}
        decision = decide(challenger, champion_metrics, params["gate_mode"], thresholds=thresholds)
        print(f"gate ({decision.mode}): passed={decision.passed} promote={decision.promote} reasons={decision.reasons or 'none'}")
        print(f"challenger v{registered['version']}: {decision.challenger}; champion: {champion.version if champion else None} {champion_metrics}")
        if params.get("force_promote"):
            from swan_airflow.runtime import force_promote_reason

            reason = force_promote_reason(params)  # fails the task unless allowed and explained
            print(f"FORCE PROMOTE of v{registered['version']} (gate passed={decision.passed}): {reason}")
            return "promote_model"
        return "promote_model" if decision.promote else "keep_champion"

    @task(pool=POOL)
    def promote_model(registered: dict) -> dict:
        """Move alias `champion` to the challenger (idempotent); a forced promotion is tagged with its reason."""
        from swan_airflow.runtime import force_promote_reason, registry_client
        from swan_anomaly.registry import promote

        _, run_id, params = _run_facts()
        client = registry_client()
        if params.get("force_promote"):
            client.set_model_version_tag(registered["name"], registered["version"], "force_promoted", f"{run_id}: {force_promote_reason(params)}")
        changed = promote(client, registered["name"], registered["version"])
        return {"promoted": changed, "version": registered["version"], "forced": bool(params.get("force_promote"))}

    @task
    def keep_champion(registered: dict) -> dict:
        """The challenger failed the gate: the current champion keeps serving."""
        print(f"challenger v{registered['version']} not promoted; champion unchanged")
        return {"promoted": False, "version": registered["version"]}

    @task(trigger_rule="none_failed_min_one_success", pool=POOL)
    def update_endpoint() -> dict:
        """Serve the current champion (databricks-sdk: create the endpoint, or update its config and wait)."""
        from swan_airflow.runtime import registry_client, settings
        from swan_airflow.serving import serving_target
        from swan_anomaly.registry import CHAMPION, get_alias
        from swan_anomaly.serving.deploy import ServingConfig, deploy_version

        s = settings()
        champion = get_alias(registry_client(), s.model_name, CHAMPION)
        if champion is None:
            raise RuntimeError(f"registered model {s.model_name} has no 'champion' alias; nothing to serve")
        target = serving_target()
        result = deploy_version(target.workspace(), target.endpoint, s.model_name, str(champion.version), ServingConfig.from_env())
        print(f"endpoint {target.endpoint} ({target.backend}) serves {s.model_name} v{result.version}" + (f" (was v{result.previous_version})" if result.changed else " (unchanged)"))
        return {"url": target.invocations_url, "name": s.model_name, "version": result.version, "previous": result.previous_version, "changed": result.changed}

    @task(pool=POOL)
    def validate_endpoint(endpoint: dict) -> dict:
        """Score held-out raw test frames over REST; unless abnormal and normal scores separate, roll back and fail."""
        import pandas as pd

        from swan_airflow.runtime import lake as run_lake
        from swan_airflow.serving import roll_back, serving_target
        from swan_anomaly import EndpointValidationFailed
        from swan_anomaly.serving.client import score_table, separation
        from swan_anomaly.splits import Split

        dataset_id, _, _ = _run_facts()
        lake = run_lake()
        gold = lake.read_gold(dataset_id, columns=["image_path", "label", "split", "aug"])
        held_out = gold[(gold.split == Split.TEST.value) & (gold.aug == "none")].sort_values("image_path")
        sample = pd.concat([held_out[held_out.label == lab].head(8) for lab in (0, 1)])
        images = [lake.read_raw(dataset_id, p) for p in sample.image_path]
        target = serving_target()
        predictions = target.client().score(images)
        rows = [(p, int(lab), float(pred["anomaly_score"])) for p, lab, pred in zip(sample.image_path, sample.label, predictions)]
        margin = separation(rows)
        print(f"endpoint {target.invocations_url} serving v{endpoint['version']}\n{score_table(rows)}\nseparation margin (min abnormal - max normal): {margin:.6f}")
        if margin <= 0:
            message = f"abnormal and normal scores overlap on {len(rows)} held-out images (margin {margin:.6f})"
            if endpoint["changed"] and endpoint["previous"]:
                roll_back(target, endpoint["previous"])
                message += f"; rolled the endpoint and the champion alias back to v{endpoint['previous']}"
            raise EndpointValidationFailed(message)
        return {"url": target.invocations_url, "version": endpoint["version"], "previous": endpoint["previous"], "margin": margin, "scores": rows}

    @task
    def summarize_run(upload: dict, registered: dict, validation: dict) -> dict:
        """One summary of the run, in the log and in runs/{run_id}/summary.json."""
        import json

        from swan_airflow.runtime import lake as run_lake
        from swan_airflow.runtime import registry_client
        from swan_anomaly.registry import aliases_of

        dataset_id, run_id, _ = _run_facts()
        lake = run_lake()
        etl, augment, training = (lake.read_result(run_id, job) for job in ("etl", "augment", "train"))
        summary = {
            "dataset_id": dataset_id,
            "run_id": run_id,
            "images": {"total": upload["images"], "normal": upload["normal"], "abnormal": upload["abnormal"], "groups": upload["groups"]},
            "families": upload["families"],
            "rejected_videos": upload["rejected_videos"],
            "upload": {"written": upload["written"], "unchanged": upload["unchanged"], "removed": upload["removed"], "uri": upload["uri"]},
            "etl_rows": etl["silver_rows"],
            "quarantined": len(etl["quarantined"]),
            "training_rows": augment["gold_rows"],
            "rows_by_split": augment["rows_by_split_label"],
            "val": {k: training["val"][k] for k in ("auroc", "f1", "precision", "recall")},
            "test": {k: training["test"][k] for k in ("auroc", "f1", "precision", "recall")},
            "best_epoch": training["best_epoch"],
            "threshold": training["threshold"],
            "generalization": training["generalization"],
            "model": {"name": registered["name"], "version": registered["version"], "aliases": aliases_of(registry_client(), registered["name"], registered["version"])},
            "endpoint": {"url": validation["url"], "serving_version": validation["version"], "previous_version": validation["previous"], "margin": validation["margin"]},
            "scores": validation["scores"],
        }
        lake.write_result(run_id, "summary", summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "scores"}, indent=2))
        return summary

    videos = find_videos()
    frames = extract_frames.expand(video=videos)
    synthesis = synthesize_anomalies(frames)
    labels = build_labels(synthesis)
    checked = check_labels(labels)
    upload = upload_to_lake(labels)
    code = deploy_code()
    etl = job_task("run_etl", "etl", ["--model", MODEL, "--image-size", "{{ params.image_size or 0 }}"])
    augment = job_task("run_augmentation", "augment", ["--seed", "{{ params.seed }}"])
    training = job_task(
        "run_training", "train",
        [
            "--model", MODEL, "--epochs", "{{ params.epochs }}", "--seed", "{{ params.seed }}", "--window-days", "{{ params.training_window_days }}",
            "--dag-id", "{{ dag.dag_id }}", "--git-sha", os.environ.get("SWAN_GIT_SHA", "unknown"),
        ],
        execution_timeout=TRAINING_TIMEOUT,
        pool=POOL,
        window_days="{{ params.training_window_days }}",  # on Databricks the token also digests the window's gold files
    )
    registered = register_model()
    [upload, code, checked] >> etl >> augment >> training >> registered
    decision = gate_model(registered)
    endpoint = update_endpoint()
    decision >> [promote_model(registered), keep_champion(registered)] >> endpoint
    validation = validate_endpoint(endpoint)
    summarize_run(upload, registered, validation)

swan_anomaly_pipeline()
