"""MLflow for the training job: the experiment, the served pyfunc, the gold inputs, figures.

:func:`log_served_model` logs a classifier as the pyfunc the registry and the endpoints serve
(weights, preprocessing spec, decision threshold, novelty bank, a snapshot of this package's code, pinned
requirements); :func:`gold_dataset` makes a gold partition an MLflow dataset input.

Example:
    >>> [r.split("==")[0] for r in pinned_requirements()][:2]
    ['torch', 'transformers']
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd

from swan_anomaly.config import Settings
from swan_anomaly.contract import ABNORMAL, LABEL_NAMES, NORMAL
from swan_anomaly.lake import LocalLake

SERVING_REQUIREMENTS = ("torch", "transformers", "opencv-python-headless", "numpy", "pandas", "scikit-learn", "mlflow")
#: Served where the training environment has them, at its version: torchao for SWAN_SERVING_CPU_PRECISION=int8.
OPTIONAL_SERVING_REQUIREMENTS = ("torchao",)
#: Run tag naming the CPU precisions (``SWAN_SERVING_CPU_PRECISION``) the run's served model can load in, comma-separated;
#: a version whose run lacks it was logged before int8 existed, and its code refuses that value.
CPU_PRECISIONS_TAG = "swan_cpu_precisions"


def served_cpu_precisions() -> list[str]:
    """The CPU precisions a model logged here can serve in: int8 only with torchao among its requirements, and importable."""
    from swan_anomaly.modeling import CPU_PRECISIONS

    try:
        metadata.version("torchao")  # what pinned_requirements pins
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_  # noqa: F401 - what quantize_int8 imports
    except (metadata.PackageNotFoundError, ImportError):
        return [p for p in CPU_PRECISIONS if p != "int8"]
    return list(CPU_PRECISIONS)


def confusion_figure(cm: list[list[int]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center")
    names = [LABEL_NAMES[ABNORMAL], LABEL_NAMES[NORMAL]]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pinned_requirements() -> list[str]:
    """The served model's pip requirements: :data:`SERVING_REQUIREMENTS` at the versions installed here, plus
    :data:`OPTIONAL_SERVING_REQUIREMENTS` where they are installed."""
    reqs = []
    for name in SERVING_REQUIREMENTS:
        try:
            version = metadata.version(name).split("+")[0]
            reqs.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    for name in OPTIONAL_SERVING_REQUIREMENTS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            reqs.append(f"{name}=={metadata.version(name).split('+')[0]}")
    return reqs


def package_snapshot(target: Path) -> Path:
    """Copy the ``swan_anomaly`` sources into ``target/swan_anomaly`` for the model's ``code_paths``.

    Goes through ``importlib.resources`` so it works whether the package is a directory or
    sits inside a wheel on ``sys.path`` (zip import).
    """
    from importlib.resources import files

    def copy(node, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    copy(child, dest / child.name)
            elif child.name.endswith(".py"):
                (dest / child.name).write_bytes(child.read_bytes())

    copy(files("swan_anomaly"), target / "swan_anomaly")
    return target / "swan_anomaly"


def log_served_model(model, spec, *, threshold: float, threshold_method: str, example: list[bytes], novelty=None):
    """Log a classifier as the served pyfunc, in the active MLflow run, under the artifact path ``model``.

    The pyfunc (:class:`swan_anomaly.serving.pyfunc.SwanAnomalyModel`) carries the weights, the
    preprocessing spec, the decision threshold (file and model metadata ``anomaly_threshold``)
    and a snapshot of this package's code.

    Args:
        model: a ``ViTForImageClassification`` on the CPU.
        spec: its :class:`swan_anomaly.modeling.PreprocessSpec`.
        threshold: the anomaly-score threshold chosen on validation.
        threshold_method: how it was chosen.
        example: encoded images for the model's input example.
        novelty: the :class:`swan_anomaly.novelty.NoveltyBank` served as ``novelty_score`` (None: no such column).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what registration takes).
    """
    import mlflow

    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE, THRESHOLD_FILE, SwanAnomalyModel, as_registered, signature

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model.save_pretrained(model_dir)
        (model_dir / PREPROCESS_FILE).write_text(spec.to_json())
        decision = {"threshold": threshold, "method": threshold_method, "chosen_on": "val"}
        (model_dir / THRESHOLD_FILE).write_text(json.dumps(decision, indent=1))
        metadata = {"anomaly_threshold": threshold, "threshold_method": threshold_method}
        if novelty is not None:
            novelty.save(model_dir)
            metadata |= {"novelty_scale": novelty.scale, "novelty_bank_size": len(novelty.bank)}
        mlflow.set_tag(CPU_PRECISIONS_TAG, ",".join(served_cpu_precisions()))  # what deploying it may ask of it
        with as_registered():  # MLflow loads the model to check the input example: in float32, not compiled in int8 here
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=SwanAnomalyModel(),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(package_snapshot(Path(tmp) / "code"))],
                signature=signature(novelty=novelty is not None),
                input_example=pd.DataFrame({"image": example}),
                pip_requirements=pinned_requirements(),
                metadata=metadata,
            )


def ensure_experiment(settings: Settings) -> str:
    """Experiment id of ``settings.experiment``, created with the configured artifact root."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    exp = mlflow.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    location = settings.artifact_root.as_uri() if settings.tracking_uri.startswith("sqlite") else None
    return mlflow.create_experiment(settings.experiment, artifact_location=location)


def gold_dataset(lake: LocalLake, dataset_id: str, gold: pd.DataFrame):
    """The rows of one gold partition as an MLflow dataset: lake path as source, digest over rows and image bytes.

    Pass the rows that were used (after the window's overlap rule), so the digest says what trained.
    """
    import hashlib

    import mlflow.data

    rows = gold.drop(columns=["content"]).assign(content_sha256=[hashlib.sha256(bytes(c)).hexdigest() for c in gold.content])
    return mlflow.data.from_pandas(rows, source=str(lake.gold_partition(dataset_id)), name=f"gold-{dataset_id}", targets="label")


def family_grid_of(lake: LocalLake, dataset_id: str, *, seed: int):
    """Every anomaly family applied to the dataset's first normal raw frame (RGB), or None without one."""
    from swan_anomaly.anomalies import family_grid
    from swan_anomaly.images import decode_image
    from swan_anomaly.labels import read_manifest

    raw = lake.raw(dataset_id)
    if not (raw / "labels.csv").is_file():
        return None
    manifest = read_manifest(raw / "labels.csv")
    normal = manifest[manifest.label == NORMAL].image_path.sort_values()
    for rel in normal:
        try:
            return family_grid(decode_image((raw / rel).read_bytes(), name=rel), seed=seed)
        except Exception:  # noqa: BLE001 - a bad frame was quarantined by the ETL; try the next
            continue
    return None
