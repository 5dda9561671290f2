"""Every setting of swan-anomaly, in one typed object read from the environment.

Each field of :class:`Settings` names its variable, type, default and meaning; nothing else in the
code reads a ``SWAN_*`` variable. Every path has a default under ``SWAN_HOME`` (``./.swan``), so one
machine runs the whole pipeline with no set-up. Airflow maps its connections, Variables and Params
onto these names; this module knows nothing of Airflow. A malformed value is a :class:`ConfigError`
that names the variable, so a typo never silently changes what runs. The table in
``docs/configuration.md`` is generated from these fields (``python scripts/settings_table.py --write``)
and a test keeps the two equal.

Example:
    >>> settings = Settings.from_env({"SWAN_HOME": "/tmp/swan"})
    >>> str(settings.lake_root), settings.retries
    ('/tmp/swan/lake', 2)
    >>> Settings.from_env({"SWAN_RETRIES": "two"})
    Traceback (most recent call last):
    ...
    swan_anomaly._errors.ConfigError: SWAN_RETRIES must be a whole number, at least 0, got 'two'
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swan_anomaly._errors import ConfigError
from swan_anomaly.redact import has_credentials, redact_uri

#: ``SWAN_ENDPOINT_PARITY_TOLERANCE`` for an endpoint serving in each reduced CPU precision (docs/BENCHMARKS.md: on the
#: quality benchmark's trained model bfloat16 moved single scores by up to 4.1e-2, int8 by up to 6.3e-2).
PARITY_TOLERANCE_FOR = {"bfloat16": 5e-2, "int8": 1e-1}
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    """A boolean setting from the environment: unset or empty gives ``default``.

    Raises:
        ConfigError: the value is none of ``1/true/yes/on`` or ``0/false/no/off`` (any case),
            so a typo never silently flips a switch.

    Example:
        >>> env_flag("SWAN_LABEL_CHECK", False, {"SWAN_LABEL_CHECK": "Yes"})
        True
    """
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        return default
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    msg = f"{name} must be one of {sorted(TRUE_WORDS)} or {sorted(FALSE_WORDS)}, got {value!r}"
    raise ConfigError(msg)


def setting(
    env: str,
    default: Any = None,
    doc: str = "",
    *,
    derive: Callable[[dict[str, Any]], Any] | None = None,
    shown: str | None = None,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    high: float | None = None,
    secret: bool = False,
) -> Any:
    """A field of :class:`Settings`: its variable ``env``, default (or ``derive`` from earlier fields), one line of doc.

    ``shown`` is the default as the docs print it (e.g. ``$SWAN_HOME/lake``); ``choices`` and
    ``low``/``high`` bound the value. A ``secret`` never shows in the settings' ``repr`` (logs,
    tracebacks).
    """
    meta = {"env": env, "doc": doc, "derive": derive, "shown": shown, "choices": choices, "low": low, "high": high, "secret": secret}
    return field(default=default, metadata=meta, repr=not secret)


def _under_home(*parts: str) -> Callable[[dict[str, Any]], Path]:
    return lambda values: values["home"].joinpath(*parts)


@dataclass(frozen=True)
class Settings:
    """What swan-anomaly reads from its environment (see the module docs); build it with :meth:`from_env`."""

    # -- where things live (the embedded default keeps all of it under SWAN_HOME)
    home: Path = setting("SWAN_HOME", Path(".swan"), "Root of the embedded default's state (lake, MLflow, staging, server).")
    inbox_dir: Path = setting("SWAN_INBOX_DIR", doc="Where new videos are dropped for the ingest DAG.", derive=_under_home("inbox"))
    landing_dir: Path = setting(
        "SWAN_LANDING_DIR", doc="Landing zone: videos by arrival date (landing/YYYY-MM-DD/).", derive=_under_home("landing")
    )
    lake_root: Path = setting("SWAN_LAKE_ROOT", doc="The local lake (raw, silver, gold, runs, code).", derive=_under_home("lake"))
    staging_dir: Path = setting(
        "SWAN_STAGING_DIR", doc="Worker-local staging of a run's frames and labels before upload.", derive=_under_home("staging")
    )
    jobs_dir: Path | None = setting(
        "SWAN_JOBS_DIR", None, "The job entrypoints (etl.py, augment.py, train.py).", shown="the repository's jobs/"
    )
    # -- MLflow
    tracking_uri: str = setting(
        "MLFLOW_TRACKING_URI",
        doc="MLflow tracking server (``databricks`` on Databricks).",
        derive=lambda v: f"sqlite:///{v['home'] / 'mlflow' / 'mlflow.db'}",
        shown="sqlite:///$SWAN_HOME/mlflow/mlflow.db",
    )
    registry_uri: str = setting(
        "MLFLOW_REGISTRY_URI",
        doc="MLflow model registry (``databricks-uc`` for Unity Catalog).",
        derive=lambda v: v["tracking_uri"],
        shown="the tracking URI",
    )
    artifact_root: Path = setting(
        "SWAN_MLFLOW_ARTIFACTS", doc="Artifact root of the local MLflow.", derive=_under_home("mlflow", "artifacts")
    )
    mlflow_ui_url: str = setting(
        "SWAN_MLFLOW_UI_URL",
        doc="Where people open MLflow: the base of the MLflow run and model-version links on the Airflow tasks.",
        derive=lambda v: (
            v["tracking_uri"]
            if str(v["tracking_uri"]).lower().startswith(("http://", "https://"))
            else ""
            if str(v["tracking_uri"]).startswith("databricks")
            else "http://127.0.0.1:5000"
        ),
        shown="an http(s) tracking URI; the workspace with databricks; else http://127.0.0.1:5000 (make mlflow-ui)",
    )
    experiment: str = setting(
        "SWAN_EXPERIMENT",
        doc="MLflow experiment (with a Databricks tracking URI a workspace path: the workspace refuses a relative name).",
        derive=lambda v: "/Shared/swan-anomaly" if str(v["tracking_uri"]).startswith("databricks") else "swan-anomaly",
        shown="swan-anomaly; /Shared/swan-anomaly with a databricks tracking URI",
    )
    model_name: str = setting(
        "SWAN_MODEL_NAME",
        "swan_anomaly_vit",
        "Registered model name (in Unity Catalog catalog.schema.model, taken in lower case as Unity Catalog keeps it).",
    )
    model: str = setting(
        "SWAN_MODEL", "vit-tiny-offline", "Base model: an offline preset, a hub id (google/vit-base-patch16-224) or a directory."
    )
    epochs: int = setting("SWAN_EPOCHS", 40, "Default of the `epochs` Param (most epochs; early stopping may end sooner).", low=1)
    training_precision: str = setting(
        "SWAN_TRAINING_PRECISION",
        "auto",
        "GEMMs of the training job: auto (bfloat16 autocast on a GPU, float32 on CPU); float8 (also torchao's FP8 GEMMs for "
        "every linear layer but the head, on a GPU of compute capability 8.9+, e.g. H100; refused elsewhere); float8-emulated "
        "(torchao's emulation of them on any device, slower than float32: to measure what FP8 does to quality).",
        choices=("auto", "float8", "float8-emulated"),
    )
    git_sha: str = setting("SWAN_GIT_SHA", "unknown", "Code version recorded on each MLflow run.")
    # -- backends
    lake_backend: str = setting(
        "SWAN_LAKE_BACKEND", "local", "The lake: `local` (a folder) or `azure` (ADLS Gen2).", choices=("local", "azure")
    )
    lake_conn_id: str = setting("SWAN_LAKE_CONN_ID", "swan_lake", "Airflow connection of the Azure lake (wasb).")
    lake_container: str = setting("SWAN_LAKE_CONTAINER", "swan", "Container (file system) of the Azure lake.")
    lake_prefix: str = setting("SWAN_LAKE_PREFIX", "", "Folder inside the container under which the lake lives.")
    job_lake_root: str | None = setting(
        "SWAN_JOB_LAKE_ROOT",
        None,
        "The lake root as the jobs' file I/O sees it: an absolute path, e.g. /Volumes/main/swan/lake (not an abfss:// URI).",
        shown="the local lake; needed with the Azure lake",
    )
    compute_backend: str = setting(
        "SWAN_COMPUTE_BACKEND",
        "local",
        "Default of the `backend` Param: jobs as `local` subprocesses or `databricks` one-time runs.",
        choices=("local", "databricks"),
    )
    serving_backend: str = setting(
        "SWAN_SERVING_BACKEND",
        "local",
        "The endpoint: the `local` model server or a `databricks` serving endpoint.",
        choices=("local", "databricks"),
    )
    databricks_conn_id: str = setting("SWAN_DATABRICKS_CONN_ID", "databricks_default", "Airflow connection of the Databricks workspace.")
    databricks_clusters_dir: Path | None = setting(
        "SWAN_DATABRICKS_CLUSTERS_DIR", None, "Folder of the job cluster specs (JSON).", shown="plugins/swan_airflow/clusters"
    )
    databricks_poll_seconds: int = setting("SWAN_DATABRICKS_POLL_SECONDS", 30, "How often a deferred job task polls its run.", low=1)
    databricks_retry_delay: int = setting(
        "SWAN_DATABRICKS_RETRY_DELAY", 10, "Seconds between retries of a failed Databricks API call.", low=0
    )
    serving_workload_size: str = setting("SWAN_SERVING_WORKLOAD_SIZE", "Small", "Databricks served entity size (Small, Medium, Large).")
    serving_workload_type: str = setting("SWAN_SERVING_WORKLOAD_TYPE", "CPU", "Databricks served entity type (CPU, GPU_SMALL, ...).")
    serving_scale_to_zero: bool = setting("SWAN_SERVING_SCALE_TO_ZERO", True, "Let the Databricks endpoint scale to zero when idle.")
    endpoint_url: str = setting("SWAN_ENDPOINT_URL", "http://127.0.0.1:5055", "URL of the local model server.")
    serving_cpu_precision: str = setting(
        "SWAN_SERVING_CPU_PRECISION",
        "float32",
        "Weights and activations of the served model on CPU: float32 (scores as the registry's); bfloat16 (about "
        "2x the images/s of a ViT-B/16 on AVX512-BF16 CPUs, AUROC unchanged within 0.005; single scores differ by up to "
        f"about 4e-2: raise SWAN_ENDPOINT_PARITY_TOLERANCE to about {PARITY_TOLERANCE_FOR['bfloat16']:g} with it); or int8 "
        "(torchao's int8 GEMMs, compiled when the model loads, which needs a C++ compiler and takes a minute or more: 3.4x to "
        "4.5x float32's images/s at ViT-B/16 on two AVX512-VNNI cores, AUROC unchanged within 0.005, single scores differ by "
        f"up to about 6e-2: raise SWAN_ENDPOINT_PARITY_TOLERANCE to about {PARITY_TOLERANCE_FOR['int8']:g}). The gate and "
        "the endpoint's parity check always score in float32.",
        choices=("float32", "bfloat16", "int8"),
    )
    endpoint_ui_url: str = setting(
        "SWAN_ENDPOINT_UI_URL",
        doc="Where people reach the local model server from a browser (the endpoint link on the tasks).",
        derive=lambda v: v["endpoint_url"],
        shown="SWAN_ENDPOINT_URL",
    )
    endpoint_name: str = setting("SWAN_ENDPOINT_NAME", "swan-anomaly", "Name of the serving endpoint.")
    # -- the local model server: who may use it and how much one request may ask
    endpoint_conn_id: str = setting(
        "SWAN_ENDPOINT_CONN_ID",
        "swan_endpoint",
        "Airflow connection whose password is the local model server's bearer token (optional; see SWAN_ENDPOINT_TOKEN).",
    )
    endpoint_token: str | None = setting(
        "SWAN_ENDPOINT_TOKEN",
        None,
        "Bearer token of the local model server, when no Airflow connection gives one.",
        shown="a random token kept in $SWAN_HOME/serving/token (mode 600)",
        secret=True,
    )
    endpoint_invocations_auth: str = setting(
        "SWAN_ENDPOINT_INVOCATIONS_AUTH",
        "token",
        "Whether scoring needs the bearer token too (`token`) or is open (`none`); the management API always needs it.",
        choices=("token", "none"),
    )
    endpoint_max_body_mb: float = setting(
        "SWAN_ENDPOINT_MAX_BODY_MB", 16.0, "Largest request body the local model server reads (413 above).", low=0.001
    )
    endpoint_max_rows: int = setting("SWAN_ENDPOINT_MAX_ROWS", 256, "Most images in one scoring request (413 above).", low=1)
    endpoint_max_in_flight: int = setting(
        "SWAN_ENDPOINT_MAX_IN_FLIGHT", 64, "Most scoring requests the local model server holds at once (429 above).", low=1
    )
    endpoint_body_timeout_s: float = setting(
        "SWAN_ENDPOINT_BODY_TIMEOUT_S",
        30.0,
        "Seconds the local model server waits for a whole request body (408 after; 16 MB in 30 s is 4.5 Mbit/s).",
        low=1,
    )
    endpoint_max_connections: int = setting(
        "SWAN_ENDPOINT_MAX_CONNECTIONS", 256, "Most connections the local model server holds, idle ones too (503 above).", low=1
    )
    # -- schedules, retries, timeouts (read when the DAG file is parsed)
    schedule: str = setting("SWAN_SCHEDULE", "@daily", "Cron or preset of the pipeline's data intervals.")
    ingest_schedule: str = setting("SWAN_INGEST_SCHEDULE", "*/10 * * * *", "Cron of the ingest DAG (inbox to landing zone).")
    ingest_settle_seconds: float = setting(
        "SWAN_INGEST_SETTLE_SECONDS", 30.0, "A file must be unchanged this long before it lands (still being copied).", low=0
    )
    pool: str = setting("SWAN_POOL", "swan_training", "Airflow pool (1 slot) of the training task: one run trains at a time.")
    retries: int = setting("SWAN_RETRIES", 2, "Retries of a task that failed for a reason a retry can fix.", low=0)
    retry_delay_seconds: float = setting("SWAN_RETRY_DELAY_SECONDS", 30.0, "First retry delay (then exponential, at most 10 min).", low=0)
    task_timeout_minutes: float = setting(
        "SWAN_TASK_TIMEOUT_MINUTES", 60.0, "Execution timeout of a task (and of its Databricks run).", low=1
    )
    training_timeout_minutes: float = setting("SWAN_TRAINING_TIMEOUT_MINUTES", 360.0, "Execution timeout of the training task.", low=1)
    promotion_wait_minutes: float = setting(
        "SWAN_PROMOTION_WAIT_MINUTES", 360.0, "How long a run waits for other runs to finish promoting and validating.", low=1
    )
    promotion_poke_seconds: float = setting("SWAN_PROMOTION_POKE_SECONDS", 30.0, "How often the promotion-turn sensor checks.", low=1)
    # -- the gate and the endpoint validation
    gate_min_images_per_class: int = setting(
        "SWAN_GATE_MIN_IMAGES_PER_CLASS", 25, "Default of the `gate_min_images_per_class` Param: smallest measurable split.", low=1
    )
    max_false_alarm_rate: float = setting(
        "SWAN_MAX_FALSE_ALARM_RATE",
        0.50,
        "Largest share of normal images the served decision may call abnormal: in the gate (validation split) and the "
        "endpoint validation (test split). The default catches a broken decision; set it to your alarm budget.",
        low=0,
        high=1,
    )
    endpoint_min_auroc: float = setting(
        "SWAN_ENDPOINT_MIN_AUROC", 0.90, "AUROC the endpoint must show on the held-out test split.", low=0, high=1
    )
    endpoint_min_recall: float = setting(
        "SWAN_ENDPOINT_MIN_RECALL", 0.80, "Recall of anomalies at the stored threshold, same split.", low=0, high=1
    )
    endpoint_parity_tolerance: float = setting(
        "SWAN_ENDPOINT_PARITY_TOLERANCE",
        1e-4,
        "Largest difference of an endpoint score from the registry model's float32 one (a bfloat16 GPU endpoint needs ~1e-2; "
        "SWAN_SERVING_CPU_PRECISION=bfloat16 ~5e-2, int8 ~1e-1).",
        low=0,
        high=1,
    )
    drift_action: str = setting(
        "SWAN_DRIFT_ACTION",
        "warn",
        "When the unchanged champion fails its validation: `warn` (notify) or `fail`.",
        choices=("warn", "fail"),
    )
    allow_force_promote: bool = setting(
        "SWAN_ALLOW_FORCE_PROMOTE", True, "Whether a run may force a promotion past the gate (with a reason)."
    )
    # -- optional services
    label_check: bool = setting("SWAN_LABEL_CHECK", False, "Default of the `label_check` Param: ask a vision model about sampled frames.")
    label_check_conn_id: str = setting("SWAN_LABEL_CHECK_CONN_ID", "swan_label_check", "Airflow connection of the Azure OpenAI deployment.")
    failure_notifier: str = setting(
        "SWAN_FAILURE_NOTIFIER", "", "Airflow notifier class (module.Class) told of failures and drift; empty: log only."
    )
    failure_notifier_kwargs: str = setting("SWAN_FAILURE_NOTIFIER_KWARGS", "{}", "The notifier's keyword arguments, a JSON object.")
    # -- local Spark
    spark_master: str = setting("SWAN_SPARK_MASTER", "local[*]", "Spark master of the local jobs.")
    spark_shuffle_partitions: int = setting("SWAN_SPARK_SHUFFLE_PARTITIONS", 4, "spark.sql.shuffle.partitions of the local jobs.", low=1)
    spark_driver_memory: str = setting("SWAN_SPARK_DRIVER_MEMORY", "2g", "spark.driver.memory of the local jobs.")
    spark_arrow_batch: int = setting("SWAN_SPARK_ARROW_BATCH", 64, "Rows (whole images) per Arrow batch between the JVM and Python.", low=1)
    spark_log_level: str = setting("SWAN_SPARK_LOG_LEVEL", "WARN", "Log level of the Spark jobs.")
    spark_progress_seconds: float = setting(
        "SWAN_SPARK_PROGRESS_SECONDS", 15.0, "Seconds between the Spark jobs' progress lines (tasks, images, rate).", low=0.1
    )
    # -- the demo
    demo_families: str = setting("SWAN_DEMO_FAMILIES", "", "Anomaly families of `make demo`, comma-separated.", shown="all six families")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default: the process environment).

        Raises:
            ConfigError: a value is malformed or out of range (the message names the variable), the
                registry is Unity Catalog and the model name is not three-level, or the tracking URI is
                a Databricks workspace's and the experiment name is not a workspace path.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"], "")
            if raw.strip():
                values[f.name] = _parse(f, raw.strip())
            elif f.metadata["derive"] is not None:
                values[f.name] = f.metadata["derive"](values)
            else:
                values[f.name] = f.default
        for name in ("home", "inbox_dir", "landing_dir", "lake_root", "staging_dir", "artifact_root"):
            values[name] = Path(values[name]).absolute()
        values["endpoint_url"] = values["endpoint_url"].rstrip("/")
        values["mlflow_ui_url"] = values["mlflow_ui_url"].rstrip("/")
        values["endpoint_ui_url"] = values["endpoint_ui_url"].rstrip("/")
        for var, key in (("MLFLOW_TRACKING_URI", "tracking_uri"), ("MLFLOW_REGISTRY_URI", "registry_uri")):
            if str(values[key]).lower().startswith(("http://", "https://")) and has_credentials(values[key]):
                msg = (
                    f"{var} carries credentials ({redact_uri(values[key])}), which MLflow shows in its run links and logs; "
                    "give them as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
                )
                raise ConfigError(msg)
        # after the tracking URI's check: its own message says what to do for a derived link base
        for var, key in (("SWAN_MLFLOW_UI_URL", "mlflow_ui_url"), ("SWAN_ENDPOINT_UI_URL", "endpoint_ui_url")):
            if has_credentials(values[key]):  # the links are shown to everyone who sees the task
                msg = f"{var} carries credentials ({redact_uri(values[key])}): the task links show it to every viewer; drop them"
                raise ConfigError(msg)
        if values["job_lake_root"] is not None and not str(values["job_lake_root"]).startswith("/"):
            msg = (
                f"SWAN_JOB_LAKE_ROOT={values['job_lake_root']!r}: the jobs read and write the lake with file I/O, so this must be "
                "the absolute path at which clusters see it, e.g. /Volumes/main/swan/lake (a Unity Catalog volume on the "
                "container); a URI such as abfss://... is not a path"
            )
            raise ConfigError(msg)
        if str(values["tracking_uri"]).startswith("databricks") and not values["experiment"].startswith("/"):
            msg = (
                f"SWAN_EXPERIMENT={values['experiment']!r}: a Databricks workspace's MLflow (MLFLOW_TRACKING_URI="
                f"{values['tracking_uri']!r}) refuses a relative experiment name; give a workspace path, e.g. /Shared/swan-anomaly"
            )
            raise ConfigError(msg)
        registry_uri, model_name = values["registry_uri"], values["model_name"]
        if registry_uri.startswith("databricks-uc") and len([p for p in model_name.split(".") if p]) != 3:
            msg = (
                f"SWAN_MODEL_NAME={model_name!r}: the Unity Catalog registry (MLFLOW_REGISTRY_URI={registry_uri!r}) "
                "needs a three-level name, catalog.schema.model (e.g. main.swan.swan_anomaly_vit)"
            )
            raise ConfigError(msg)
        if registry_uri.startswith("databricks-uc"):  # Unity Catalog keeps names in lower case, whatever case they were given in
            values["model_name"] = model_name.lower()
        return cls(**values)

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of the field ``name``.

        Example:
            >>> Settings.variable("serving_cpu_precision")
            'SWAN_SERVING_CPU_PRECISION'
        """
        return next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...]:
        """The values the field ``name`` accepts (empty: any of its type).

        Example:
            >>> Settings.choices("serving_cpu_precision")
            ('float32', 'bfloat16', 'int8')
        """
        return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)

    @property
    def mlflow_uris(self) -> tuple[str, str]:
        """``(tracking URI, registry URI)``, e.g. ``("databricks", "databricks-uc")``."""
        return self.tracking_uri, self.registry_uri

    @property
    def serving_dir(self) -> Path:
        """State of the local model server (pid file, log)."""
        return self.home / "serving"

    @property
    def models_dir(self) -> Path:
        """Base models built from offline presets."""
        return self.home / "models"


@functools.cache
def _field_kinds() -> dict[str, type]:
    """Each field's type, ``X | None`` read as ``X`` (the annotations are strings; resolved once)."""
    hints = typing.get_type_hints(Settings)
    return {name: next((t for t in typing.get_args(hint) if t is not type(None)), hint) for name, hint in hints.items()}


def field_kind(f: dataclasses.Field) -> type:
    """The type a field of :class:`Settings` is parsed as: ``bool``, ``int``, ``float``, ``Path`` or ``str``."""
    return _field_kinds()[f.name]


def _parse(f: dataclasses.Field, raw: str) -> Any:
    """``raw`` as the field's type, within its choices and bounds."""
    name, meta, kind = f.metadata["env"], f.metadata, field_kind(f)
    if kind is bool:
        return env_flag(name, bool(f.default), {name: raw})
    if kind in (int, float):
        low, high = meta["low"], meta["high"]
        wanted = ("a whole number" if kind is int else "a number") + (
            f" in [{low}, {high}]" if high is not None else f", at least {low}" if low is not None else ""
        )
        try:
            value: Any = kind(raw)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            msg = f"{name} must be {wanted}, got {raw!r}"
            raise ConfigError(msg)
        return value
    if kind is Path:
        return Path(raw)
    if meta["choices"]:
        if raw.lower() not in meta["choices"]:
            msg = f"{name} must be one of {list(meta['choices'])}, got {raw!r}"
            raise ConfigError(msg)
        return raw.lower()
    return raw


def settings_table() -> str:
    """The Markdown table of every setting: variable, type, default, meaning (for ``docs/configuration.md``)."""
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        type_name = " \\| ".join(f"`{c}`" for c in meta["choices"]) if meta["choices"] else field_kind(f).__name__
        if meta["shown"] is not None:
            default = meta["shown"]
        elif meta["derive"] is not None:
            default = "`$SWAN_HOME/" + "/".join(meta["derive"]({"home": Path("")}).parts) + "`"
        elif f.default in ("", None):
            default = "(empty)"
        else:
            default = f"`{str(f.default).lower() if isinstance(f.default, bool) else f.default}`"
        rows.append(f"| `{meta['env']}` | {type_name} | {default} | {meta['doc']} |")
    return "\n".join(rows) + "\n"
