"""Training job: fine-tune a ViT on the gold set, log to MLflow, log the served pyfunc.

Seeded; AdamW with linear warmup and decay; early stopping on validation AUROC (ties broken
by validation loss) with the best epoch restored; metrics with the anomaly class as positive.

Example:
    >>> result = run_training(lake_root=Path(".swan/lake"), dataset_id="20261126", run_id="manual__x",
    ...                       config=TrainConfig(model="vit-tiny-offline"), settings=Settings.from_env())  # doctest: +SKIP
    >>> result["val"]["auroc"]                                                                             # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from swan_anomaly._errors import JobError
from swan_anomaly.config import Settings
from swan_anomaly.labels import ABNORMAL, NORMAL
from swan_anomaly.lake import LocalLake
from swan_anomaly.metrics import anomaly_metrics, anomaly_scores
from swan_anomaly.splits import Split

log = logging.getLogger(__name__)

SERVING_REQUIREMENTS = ("torch", "transformers", "opencv-python-headless", "numpy", "pandas", "scikit-learn", "mlflow")


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; all are logged as MLflow params."""

    model: str = "vit-tiny-offline"
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    patience: int = 8
    seed: int = 42
    bias_x: float = 0.4
    bias_y: float = 0.5


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    val_f1: float
    images_per_s: float


def load_gold(lake: LocalLake, dataset_id: str) -> pd.DataFrame:
    """The gold rows of one dataset (pyarrow, no Spark needed)."""
    partition = lake.gold / f"dataset_id={dataset_id}"
    table = pd.read_parquet(partition) if partition.is_dir() else pd.DataFrame()
    if table.empty:
        msg = f"{partition}: no gold rows for dataset {dataset_id!r}; run the augmentation job first"
        raise JobError(msg)
    return table.sort_values("sample_id", ignore_index=True)


def _tensors(frame: pd.DataFrame, spec):
    import torch

    from swan_anomaly.images import preprocess

    x = preprocess(list(frame.content), size=spec.size, mean=spec.mean, std=spec.std, bias_x=spec.bias_x, bias_y=spec.bias_y, names=list(frame.sample_id))
    return torch.from_numpy(x), torch.tensor(frame.label.to_numpy(copy=True), dtype=torch.long)


def _evaluate(model, x, y, batch_size: int) -> tuple[float, np.ndarray]:
    import torch

    model.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits.append(model(pixel_values=x[i : i + batch_size]).logits.float())
    all_logits = torch.cat(logits)
    loss = torch.nn.functional.cross_entropy(all_logits, y).item()
    return loss, all_logits.numpy()


def train_classifier(model, train: tuple, val: tuple, cfg: TrainConfig, *, on_epoch=None):
    """Train with early stopping; returns ``(model with best weights, history, best epoch)``.

    Args:
        model: a ``ViTForImageClassification``.
        train: ``(x [N, 3, S, S] float32, y [N] long)``.
        val: same shapes, the early-stopping set.
        cfg: knobs.
        on_epoch: called with each :class:`EpochResult`.
    """
    import torch

    torch.manual_seed(cfg.seed)
    x_train, y_train = train
    x_val, y_val = val
    counts = torch.bincount(y_train, minlength=2).float()
    class_weights = (counts.sum() / (2 * counts.clamp(min=1))).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    generator = torch.Generator().manual_seed(cfg.seed)
    best_key, best_state, best_epoch, stale = None, None, 0, 0
    history: list[EpochResult] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        started, running = time.perf_counter(), 0.0
        for step, i in enumerate(range(0, len(order), cfg.batch_size), start=1):
            idx = order[i : i + cfg.batch_size]
            logits = model(pixel_values=x_train[idx]).logits
            loss = torch.nn.functional.cross_entropy(logits, y_train[idx], weight=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
        elapsed = time.perf_counter() - started
        val_loss, val_logits = _evaluate(model, x_val, y_val, cfg.batch_size)
        m = anomaly_metrics(y_val.numpy(), anomaly_scores(val_logits))
        result = EpochResult(epoch, running / len(x_train), val_loss, m["auroc"], m["f1"], len(x_train) / elapsed)
        history.append(result)
        eta = elapsed * (cfg.epochs - epoch)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_auroc %.4f  val_f1 %.4f  %.0f img/s  eta %.0fs",
            epoch, cfg.epochs, result.train_loss, val_loss, m["auroc"], m["f1"], result.images_per_s, eta,
        )
        if on_epoch:
            on_epoch(result)
        key = (round(m["auroc"], 6), -val_loss)
        if best_key is None or key > best_key:
            best_key, best_state, best_epoch, stale = key, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stopping after epoch %d: no improvement for %d epochs; restoring epoch %d", epoch, stale, best_epoch)
                break
    model.load_state_dict(best_state)
    return model, history, best_epoch


def _confusion_figure(cm: list[list[int]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center")
    ax.set_xticks([0, 1], ["abnormal", "normal"])
    ax.set_yticks([0, 1], ["abnormal", "normal"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _pinned_requirements() -> list[str]:
    reqs = []
    for name in SERVING_REQUIREMENTS:
        try:
            version = metadata.version(name).split("+")[0]
            reqs.append(f"{name}=={version}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
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


def run_training(*, lake_root: Path, dataset_id: str, run_id: str, config: TrainConfig, settings: Settings, tags: dict | None = None) -> dict:
    """Train on the gold set of ``dataset_id``, log everything to MLflow and return the job result."""
    import mlflow
    import torch

    from swan_anomaly.modeling import load_classifier, preprocess_spec, resolve_base_model
    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE, SwanAnomalyModel, signature

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(config.seed)
    lake = LocalLake(lake_root)
    gold = load_gold(lake, dataset_id)
    base = resolve_base_model(config.model, settings.models_dir, seed=config.seed)
    spec = preprocess_spec(base, bias_x=config.bias_x, bias_y=config.bias_y)
    model = load_classifier(base)
    parts = {s: gold[gold.split == s.value] for s in Split}
    for s, part in parts.items():
        if s is not Split.TRAIN and part.label.nunique() < 2:
            msg = f"{s.value} split of dataset {dataset_id!r} has labels {sorted(part.label.unique())}; it needs both abnormal and normal images"
            raise JobError(msg)
    train, val, test = (_tensors(parts[s], spec) for s in (Split.TRAIN, Split.VAL, Split.TEST))
    log.info("training %s on %d images (val %d, test %d), input %dpx", config.model, len(train[0]), len(val[0]), len(test[0]), spec.size)

    experiment_id = ensure_experiment(settings)
    run_tags = {"airflow_run_id": run_id, "dataset_id": dataset_id, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{dataset_id}", tags=run_tags) as run:
        mlflow.log_params({**asdict(config), "base_model": base, "image_size": spec.size, "train_images": len(train[0]), "dataset_id": dataset_id})
        model, history, best_epoch = train_classifier(
            model, train, val, config,
            on_epoch=lambda r: mlflow.log_metrics(
                {"train_loss": r.train_loss, "val_loss": r.val_loss, "val_auroc": r.val_auroc, "val_f1": r.val_f1, "images_per_s": r.images_per_s}, step=r.epoch
            ),
        )
        results = {}
        for name, (x, y) in (("val", val), ("test", test)):
            loss, logits = _evaluate(model, x, y, config.batch_size)
            metrics = anomaly_metrics(y.numpy(), anomaly_scores(logits))
            results[name] = {**metrics, "loss": loss}
            mlflow.log_metrics({f"{name}_{k}": v for k, v in metrics.items() if isinstance(v, float)} | {f"{name}_loss": loss})
            mlflow.log_figure(_confusion_figure(metrics["confusion_matrix"], f"{name} (anomaly = positive)"), f"plots/confusion_matrix_{name}.png")
        mlflow.log_metric("best_epoch", best_epoch)
        mlflow.log_dict({"history": [asdict(h) for h in history], "best_epoch": best_epoch, **results}, "metrics/summary.json")

        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            model.save_pretrained(model_dir)
            (model_dir / PREPROCESS_FILE).write_text(spec.to_json())
            example = gold[gold.split == Split.TEST.value].content.iloc[:1].map(bytes).to_frame("image").reset_index(drop=True)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=SwanAnomalyModel(),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(package_snapshot(Path(tmp) / "code"))],
                signature=signature(),
                input_example=example,
                pip_requirements=_pinned_requirements(),
            )
    result = {
        "mlflow_run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "run_model_uri": f"runs:/{run.info.run_id}/model",
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "val": results["val"],
        "test": results["test"],
        "images": {s.value: int(len(p)) for s, p in parts.items()},
        "labels": {str(ABNORMAL): "abnormal", str(NORMAL): "normal"},
        "config": asdict(config),
    }
    log.info("trained: best epoch %d, val AUROC %.4f F1 %.4f, test AUROC %.4f F1 %.4f", best_epoch, results["val"]["auroc"], results["val"]["f1"], results["test"]["auroc"], results["test"]["f1"])
    return result
