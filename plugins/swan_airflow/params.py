"""The Params of the pipeline DAG: the trigger form, in three sections (Data, Training, Promotion).

Every Param has a title, a description, a section and bounds, so the Airflow UI draws a form
that says what each field means and refuses a bad value (the REST API answers 400 naming it).
Defaults that a deployment sets come from the environment at parse time.

Example:
    >>> from swan_anomaly.config import Settings
    >>> sorted({p.schema["section"] for p in pipeline_params(Settings.from_env({})).values()})
    ['Data', 'Promotion', 'Training']
"""

from __future__ import annotations

from airflow.sdk import Param

from swan_airflow.label_check import LABEL_CHECK_CHOICES, LABEL_CHECK_LEGACY
from swan_anomaly.contract import DEFAULT_FAMILIES, FAMILY_NAMES  # light: the anomalies package loads OpenCV, too heavy for the DAG
from swan_anomaly.config import Settings
from swan_anomaly.gate import MAX_REGRESSION, GateMode, promotion_thresholds
from swan_anomaly.modeling import PRESETS, PRODUCTION_MODEL

#: Default thresholds of the gate, by metric (the Params' defaults).
GATE_DEFAULTS = {name: t.minimum for name, t in promotion_thresholds().items()}

#: The shortest ``force_promote_reason`` a forced promotion accepts.
MIN_FORCE_REASON_CHARS = 10

#: The choices of the ``backend`` Param, by value: what the trigger form shows for each.
BACKEND_CHOICES = {"local": "Local subprocesses", "databricks": "Databricks job runs"}

#: The choices of the ``gate_mode`` Param, by value (an empty value, which the form's clear button
#: sends, means :attr:`GateMode.ENABLED`: see :func:`swan_anomaly.gate.gate_mode`).
GATE_MODE_CHOICES = {
    GateMode.ENABLED.value: "Enforce: promote only what passes",
    GateMode.DRY_RUN.value: "Dry run: judge and report; promoting a refused challenger needs a force_promote_reason",
    GateMode.DISABLED.value: "Disabled: promote unjudged (needs a force_promote_reason)",
}


def choice_param(default: str, choices: dict[str, str], *, legacy: tuple = (), **kwargs) -> Param:
    """A Param that the trigger form draws as a select of ``choices`` (value: label), which also accepts ``legacy`` values.

    The form offers the top-level ``enum``; Airflow validates a conf (form, REST API, CLI) against
    the whole schema with ``jsonschema``, which follows ``$schema``. Under draft-07 the keywords
    beside a ``$ref`` are ignored, so validation uses the referenced ``enum`` (the choices and
    ``legacy``) while the form offers only the choices.

    Example:
        >>> p = choice_param("on", {"on": "On", "off": "Off"}, legacy=(True, False))
        >>> p.schema["enum"], p.resolve(True), p.resolve("off")
        (['on', 'off'], True, 'off')
    """
    schema: dict = {"enum": list(choices), "values_display": dict(choices)}
    if legacy:
        schema |= {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$ref": "#/definitions/accepted",
            "definitions": {"accepted": {"enum": [*choices, *legacy]}},
        }
    return Param(default, **schema, **kwargs)


def pipeline_params(settings: Settings) -> dict[str, Param]:
    """The Params of ``swan_anomaly_pipeline``; a deployment's settings give some defaults.

    ``SWAN_MODEL`` (used when the ``model`` Param is empty), ``SWAN_COMPUTE_BACKEND``, ``SWAN_EPOCHS``,
    ``SWAN_GATE_MIN_IMAGES_PER_CLASS``.
    """
    min_per_class, epochs_default = settings.gate_min_images_per_class, settings.epochs
    return {
        # Data
        "landing_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Landing date",
            section="Data",
            description=(
                "Process the videos that arrived on this date (landing/YYYY-MM-DD/). Empty: the run's "
                "data interval, or the date its asset event names."
            ),
        ),
        "videos": Param(
            [],
            type=["null", "array"],  # "null" makes the form draw it optional; empty (null or []) keeps the lookup
            # absolute: every task derives the run's partition from these paths, and workers need not share a working directory
            items={"type": "string", "minLength": 2, "pattern": "^/"},
            title="Videos",
            section="Data",
            description=(
                "Explicit absolute video paths, one per line, instead of the landing zone's; they go to a lake partition of their own "
                "beside the date's (YYYYMMDD-videos-<digest>), which keeps the videos that landed. Empty: the videos that landed."
            ),
        ),
        "every_seconds": Param(
            0.5,
            type="number",
            exclusiveMinimum=0,
            maximum=3600,
            title="Frame interval (s)",
            section="Data",
            description="Extract one frame every N seconds.",
        ),
        "frames_start_s": Param(
            None, type=["null", "number"], minimum=0, title="Start (s)", section="Data", description="Skip each video's first N seconds."
        ),
        "frames_end_s": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="End (s)",
            section="Data",
            description="Stop at this second of each video (must lie inside it).",
        ),
        "max_frames": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Max frames per video",
            section="Data",
            description="At most this many frames per video.",
        ),
        "dedupe_distance": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            maximum=64,
            title="Near-duplicate distance",
            section="Data",
            description=(
                "Drop a frame whose perceptual hash is within this many bits of the last kept " "one (a still camera); empty keeps all."
            ),
        ),
        "anomaly_families": Param(
            list(DEFAULT_FAMILIES),
            type="array",
            minItems=1,
            uniqueItems=True,
            items={"type": "string", "enum": list(FAMILY_NAMES)},
            title="Anomaly families",
            section="Data",
            description="Synthetic anomaly families mixed into the dataset in equal shares (one per line); default: all of them.",
        ),
        "anomaly_ratio": Param(
            0.5,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Anomaly ratio",
            section="Data",
            description="Share of abnormal images in the dataset, between 0 and 1.",
        ),
        "label_check": choice_param(
            "default",
            LABEL_CHECK_CHOICES,
            legacy=tuple(LABEL_CHECK_LEGACY),  # null/true/false, from API and CLI triggers of before
            title="Label check",
            section="Data",
            description=(
                "Ask an Azure OpenAI vision deployment (connection swan_label_check) what a seeded sample of "
                "normal frames shows: as env SWAN_LABEL_CHECK says (default), or on or off for this run."
            ),
        ),
        "seed": Param(
            42,
            type="integer",
            minimum=0,
            title="Seed",
            section="Data",
            description="Seed of anomaly synthesis, augmentation and training (splits use a fixed seed, so that every run splits alike).",
        ),
        # Training
        "model": Param(
            None,
            type=["null", "string"],
            examples=[*PRESETS, PRODUCTION_MODEL],
            title="Model",
            section="Training",
            description=f"Offline preset, Hugging Face hub id or local directory (default: {settings.model}, env SWAN_MODEL).",
        ),
        "image_size": Param(
            None,
            type=["null", "integer"],
            minimum=16,
            maximum=1024,
            title="Image size",
            section="Training",
            description=(
                "Side in pixels of the silver and gold JPEGs (default: the model config's input size). The model still trains and "
                "serves at its config's size, so another value only resamples the images twice."
            ),
        ),
        "epochs": Param(
            epochs_default,
            type="integer",
            minimum=1,
            maximum=200,
            title="Epochs",
            section="Training",
            description="Maximum training epochs (early stopping may end sooner); default env SWAN_EPOCHS, else 40.",
        ),
        "training_window_days": Param(
            1,
            type="integer",
            minimum=1,
            maximum=365,
            title="Training window (days)",
            section="Training",
            description="Train on the dataset partitions of this many days up to the run's own (1: only this run's data).",
        ),
        "backend": choice_param(
            settings.compute_backend,
            BACKEND_CHOICES,
            legacy=(None,),  # the form's clear button sends null: the deployment's default
            title="Compute backend",
            section="Training",
            description=(
                "Where ETL, augmentation and training run: local subprocesses or Databricks job runs (needs the ADLS lake); "
                "empty: the deployment's default (env SWAN_COMPUTE_BACKEND)."
            ),
        ),
        # Promotion
        "gate_mode": choice_param(
            GateMode.ENABLED.value,
            GATE_MODE_CHOICES,
            legacy=(None,),  # the form's clear button sends null: enforce, as by default
            title="Gate mode",
            section="Promotion",
            description=" ".join(f"{label}." for label in GATE_MODE_CHOICES.values()) + " Empty: enforce.",
        ),
        "gate_min_val_auroc": Param(
            GATE_DEFAULTS["auroc"],
            type="number",
            minimum=0,
            maximum=1,
            title="Min validation AUROC",
            section="Promotion",
            description=(
                "The challenger needs at least this AUROC (anomaly class positive) on its validation split, and "
                f"no less than the champion's on the same images minus {MAX_REGRESSION:g}."
            ),
        ),
        "gate_min_val_f1": Param(
            GATE_DEFAULTS["f1"],
            type="number",
            minimum=0,
            maximum=1,
            title="Min validation F1",
            section="Promotion",
            description="The challenger needs at least this validation F1 at its stored threshold (the champion is scored at its own).",
        ),
        "gate_min_images_per_class": Param(
            min_per_class,
            type="integer",
            minimum=1,
            title="Min validation images per class",
            section="Promotion",
            description=(
                "A validation split with fewer abnormal or normal images than this is too small to measure: the gate "
                "refuses the challenger (env SWAN_GATE_MIN_IMAGES_PER_CLASS)."
            ),
        ),
        "gate_min_unseen_auroc": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            title="Min unseen-family AUROC",
            section="Promotion",
            description=(
                "Also require this AUROC on every anomaly family held out of training " "(leave-one-family-out report; needs 2+ families)."
            ),
        ),
        "force_promote": Param(
            False,
            type="boolean",
            title="Force promote",
            section="Promotion",
            description=(
                "Promote the challenger even if it fails the gate. Needs a reason; the endpoint validation still runs and rolls "
                "back on failure. Off in deployments with SWAN_ALLOW_FORCE_PROMOTE=false."
            ),
        ),
        "force_promote_reason": Param(
            None,
            type=["null", "string"],
            maxLength=500,
            title="Force-promote reason",
            section="Promotion",
            description=f"Why the gate is overridden (at least {MIN_FORCE_REASON_CHARS} characters); stored as a tag of the model version.",
        ),
    }
