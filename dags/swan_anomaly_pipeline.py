"""The swan-anomaly pipeline DAG: videos of a normal scene in, a validated anomaly endpoint out.

Each task is a few lines that call a named step of ``swan_airflow.steps``, apart from the three jobs
(``run_etl``, ``run_augmentation``, ``run_training``): operators that :func:`swan_airflow.submit_run.job_task`
builds, a local subprocess or a Databricks run. Parse-time cheap:
only airflow.sdk, pendulum and light modules at module level; every heavy import (cv2, torch,
pyspark, mlflow) happens inside a step.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable, PokeReturnValue, dag, task

from swan_airflow import lineage
from swan_airflow.callbacks import failure_callbacks, log_failure
from swan_airflow.context import RunContext
from swan_airflow.ingest import LANDING_ASSET
from swan_airflow.params import pipeline_params
from swan_airflow.steps import code, data, promotion, registration, report, serving
from swan_airflow.submit_run import job_task
from swan_anomaly.config import Settings

# Every setting (docs/configuration.md); a malformed one fails parsing with its name.
SETTINGS = Settings.from_env()
MODEL = "{{ params.model or '" + SETTINGS.model + "' }}"
TASK_TIMEOUT = dt.timedelta(minutes=SETTINGS.task_timeout_minutes)
# How long a run waits for other runs to finish promoting, deploying and validating.
PROMOTION_WAIT = dt.timedelta(minutes=SETTINGS.promotion_wait_minutes)

default_args = {
    "owner": "swan-anomaly",
    "retries": SETTINGS.retries,
    "retry_delay": dt.timedelta(seconds=SETTINGS.retry_delay_seconds),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=10),
    "execution_timeout": TASK_TIMEOUT,
    "on_failure_callback": failure_callbacks(),
}


@dag(
    # Daily over data intervals (backfillable), and also whenever the ingest DAG lands videos.
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(SETTINGS.schedule, timezone="UTC"), assets=LANDING_ASSET),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["swan", "mlops", "anomaly-detection"],
    params=pipeline_params(SETTINGS),
)
def swan_anomaly_pipeline():
    """## swan_anomaly_pipeline

    | stage | task | where it runs |
    |---|---|---|
    | find new videos (each content once) | `find_videos` | worker |
    | frames (OpenCV, mapped per video; bad ones set aside) | `extract_frames` | worker |
    | synthetic anomalies | `synthesize_anomalies` | worker |
    | label manifest | `build_labels` | worker |
    | label check (optional) | `check_labels` | worker -> Azure OpenAI |
    | upload to the lake | `upload_to_lake` | worker -> lake |
    | code version (wheel + jobs) | `deploy_code` | worker -> lake |
    | crop/resize/JPEG | `run_etl` | Spark job (local subprocess or Databricks run) |
    | augmentation + splits | `run_augmentation` | Spark job (local subprocess or Databricks run) |
    | ViT fine-tuning | `run_training` | training job (local subprocess or Databricks GPU run) |
    | MLflow registration (`challenger`) | `register_model` | MLflow |
    | one run at a time from here to `ensure_validated_endpoint` | `wait_for_promotion_turn` | worker |
    | gate: challenger vs champion on the same rows | `gate_model` -> `promote_model` / `keep_champion` | worker + MLflow |
    | serve the champion | `update_endpoint` | serving endpoint |
    | REST validation: parity + held-out quality, rollback once | `validate_endpoint` | serving endpoint |
    | whatever failed: only a validated version is champion and serves | `ensure_validated_endpoint` | MLflow + serving endpoint |
    | summary, also of a failed run | `summarize_run` | worker |

    Class 0 = abnormal, class 1 = normal; `anomaly_score = softmax(logits)[0]`.
    """

    @task
    def find_videos() -> list[dict]:
        """Videos to process: the `videos` Param, or those that landed on the run's date; each content once."""
        return data.find_videos(RunContext.current())

    @task(map_index_template="{{ task.op_kwargs['candidate']['video'].rsplit('/', 1)[-1] }}")
    def extract_frames(candidate: dict) -> dict:
        """Frames from one video, or the reason it was set aside."""
        return data.extract_frames(RunContext.current(), candidate)

    @task
    def synthesize_anomalies(videos: list[dict]) -> dict:
        """Seeded anomalies of the chosen families at the controlled ratio."""
        return data.synthesize_anomalies(RunContext.current(), videos)

    @task
    def build_labels(synthesis: dict) -> dict:
        """The validated label manifest (labels.csv) of the staged dataset."""
        return data.build_labels(RunContext.current(), synthesis)

    @task
    def check_labels(labels: dict) -> dict:  # labels: only to run after build_labels (it reads the staged labels.csv)
        """Optional (off by default): a vision model names what a seeded sample of normal frames shows."""
        return data.check_labels(RunContext.current())

    @task(outlets=[lineage.RAW])
    def upload_to_lake(labels: dict) -> dict:
        """Frames, anomalies and labels to raw/{dataset_id}/; manifest.json and _SUCCESS last."""
        ctx = RunContext.current()
        uploaded = data.upload_to_lake(ctx, labels)
        lineage.raw_uploaded(ctx.task, uploaded)
        return uploaded

    @task
    def deploy_code() -> dict:
        """The swan_anomaly wheel and jobs/*.py under code/{version}/ in the lake (once per code version)."""
        return code.deploy_code()

    @task(outlets=[lineage.MODEL_VERSION])
    def register_model() -> dict:
        """Register the trained pyfunc as a new version with alias `challenger` (once per training run)."""
        ctx = RunContext.current()
        registered = registration.register_model(ctx)
        lineage.model_registered(ctx.task, registered)
        return registered

    # Poke mode: one instance at a time across runs (max_active_tis_per_dag=1) holds one worker slot while it
    # waits, the other runs' instances wait unscheduled. Reschedule mode would free that slot, but Airflow
    # 3.2-3.3 can fail a rescheduled sensor on a stale executor event (apache/airflow#71172).
    # execution_timeout above the sensor's timeout: the wait ends with AirflowSensorTimeout, which is not retried.
    @task.sensor(
        poke_interval=SETTINGS.promotion_poke_seconds,
        timeout=PROMOTION_WAIT.total_seconds(),
        mode="poke",
        max_active_tis_per_dag=1,
        execution_timeout=PROMOTION_WAIT + dt.timedelta(minutes=5),
    )
    def wait_for_promotion_turn() -> bool | PokeReturnValue:
        """Wait until no other run is between its promotion turn and the end of its promotion section; its XCom: when it entered."""
        return promotion.promotion_turn(RunContext.current())

    @task.branch
    def gate_model(registered: dict) -> str:
        """Score challenger and champion on the same validation rows; promote only a better model."""
        return promotion.gate_model(RunContext.current(), registered)

    @task
    def promote_model(registered: dict) -> dict:
        """Move alias `champion` to the challenger (idempotent); a forced promotion is tagged with its reason."""
        ctx = RunContext.current()
        promoted = promotion.promote_model(ctx, registered)
        lineage.version_linked(ctx.task, registered)
        return promoted

    @task
    def keep_champion(registered: dict) -> dict:
        """The challenger failed the gate: the current champion keeps serving."""
        return promotion.keep_champion(registered)

    @task(trigger_rule="none_failed_min_one_success")
    def update_endpoint() -> dict:
        """Serve the current champion (databricks-sdk: create the endpoint, or update its config and wait)."""
        ctx = RunContext.current()
        lineage.endpoint_linked(ctx.task)
        return serving.update_endpoint(ctx)

    @task(outlets=[lineage.CHAMPION])
    def validate_endpoint(endpoint: dict, registered: dict) -> dict:
        """Held-out test split through the endpoint: parity with the registry model, AUROC and recall; rollback once."""
        ctx = RunContext.current()
        lineage.endpoint_linked(ctx.task)
        validated = serving.validate_endpoint(ctx, endpoint, registered)
        lineage.champion_validated(ctx.task, registered["name"], validated)
        return validated

    @task(trigger_rule="all_done")
    def ensure_validated_endpoint() -> dict:
        """Whatever failed in the section: a version that passed validation is champion and serves (else nothing serves)."""
        return serving.ensure_validated_endpoint(RunContext.current())

    @task(trigger_rule="all_done", on_failure_callback=[log_failure])
    def summarize_run(upload: dict | None, registered: dict | None) -> dict:
        """One summary of the run, also of a failed one, in the log and in runs/{run_id}/summary.json."""
        return report.summarize_run(RunContext.current(), upload, registered)

    frames = extract_frames.expand(candidate=find_videos())
    labels = build_labels(synthesize_anomalies(frames))
    checked = check_labels(labels)
    upload = upload_to_lake(labels)
    shipped = deploy_code()
    etl = job_task("run_etl", "etl", ["--model", MODEL, "--image-size", "{{ params.image_size or 0 }}"], shipped, upload, SETTINGS)
    augment = job_task("run_augmentation", "augment", ["--seed", "{{ params.seed }}"], shipped, upload, SETTINGS)
    train_args = ["--model", MODEL, "--epochs", "{{ params.epochs }}", "--seed", "{{ params.seed }}", "--git-sha", SETTINGS.git_sha]
    train_args += ["--window-days", "{{ params.training_window_days }}", "--dag-id", "{{ dag.dag_id }}"]
    train_args += ["--precision", SETTINGS.training_precision]  # a deployment setting, no Param: the GPU decides, not the run
    trained = job_task(
        "run_training",
        "train",
        train_args,
        shipped,
        upload,
        SETTINGS,
        execution_timeout=dt.timedelta(minutes=SETTINGS.training_timeout_minutes),
        pool=SETTINGS.pool,  # one slot: two runs (scheduled, asset-triggered, backfilled, manual) never train at once
        window_days="{{ params.training_window_days }}",  # on Databricks the token also digests the window's gold files
    )
    registered = lineage.with_links(register_model(), lineage.ModelVersionLink())
    [upload, shipped, checked] >> etl >> augment >> trained >> registered
    decision = gate_model(registered)
    registered >> wait_for_promotion_turn() >> decision
    endpoint = update_endpoint()
    promoted = lineage.with_links(promote_model(registered), lineage.ModelVersionLink())
    decision >> [promoted, keep_champion(registered)] >> endpoint
    lineage.with_links(endpoint, lineage.EndpointLink())
    validation = lineage.with_links(validate_endpoint(endpoint, registered), lineage.EndpointLink())
    secured = ensure_validated_endpoint()
    validation >> secured
    # last: after the promotion section (whose records it reads) and every task that reads the staging folder it removes
    [secured, checked] >> summarize_run(upload, registered)


swan_anomaly_pipeline()
