"""Training job: fine-tune a ViT on the gold set, log to MLflow, log the served pyfunc.

Trains on a window of gold partitions: the ``window_days`` landing days ending with the run's
dataset, a group that landed twice kept only from its newest partition (:func:`load_gold`).

Seeded; AdamW with linear warmup and decay; early stopping on the validation loss (or on
validation AUROC with ties broken by the loss, ``monitor="val_auroc"``) with the best epoch
restored; metrics with the anomaly class as positive.

Runs on the GPU when there is one (``TrainConfig.device="auto"``): bfloat16 autocast, fused
AdamW, TF32 matmuls, the training set kept on the GPU when it fits. The CPU path is float32 and
gives bit-for-bit the same result for the same seed. :func:`train_step` is the one optimizer
step, shared with ``bench/train_throughput.py``.

Example:
    >>> result = run_training(lake_root=Path(".swan/lake"), dataset_id="20261126", run_id="manual__x",
    ...                       config=TrainConfig(model="vit-tiny-offline"), settings=Settings.from_env(), window_days=7)  # doctest: +SKIP
    >>> result["val"]["auroc"]                                                                             # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from swan_anomaly._errors import JobError
from swan_anomaly.config import Settings
from swan_anomaly.evaluation import curves_figure, histogram_figure, worst_grid
from swan_anomaly.generalization import COLUMNS as LOFO_COLUMNS
from swan_anomaly.generalization import format_table, leave_one_family_out, min_unseen_auroc
from swan_anomaly.labels import ABNORMAL, NORMAL
from swan_anomaly.lake import LocalLake, window_dataset_ids
from swan_anomaly.metrics import anomaly_metrics, anomaly_scores, choose_threshold, evaluation_report, recall_by_family
from swan_anomaly.splits import Split

log = logging.getLogger(__name__)

SERVING_REQUIREMENTS = ("torch", "transformers", "opencv-python-headless", "numpy", "pandas", "scikit-learn", "mlflow")

#: Seconds between progress lines inside an epoch (the per-epoch line comes on top).
PROGRESS_EVERY_S = 30.0
#: The training set moves to the GPU whole when it takes at most this share of the free GPU memory.
GPU_DATA_SHARE = 0.5
#: ``compile="auto"`` compiles on CUDA only for runs of at least this many optimizer steps:
#: compiling costs about 30 s (measured on an H100) and pays back only over a longer run.
COMPILE_MIN_STEPS = 500


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; all are logged as MLflow params.

    ``device`` is ``"auto"`` (CUDA when there is a GPU, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    model: str = "vit-tiny-offline"
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    patience: int = 8
    monitor: str = "val_loss"  # or "val_auroc" (ties broken by val_loss)
    threshold_method: str = "max_f1"  # or "target_fpr"; chosen on the validation split
    target_fpr: float = 0.01
    generalization: str = "auto"  # leave-one-family-out report when the data has 2+ families; "off" skips it
    lofo_epochs: int = 15  # epoch budget of each leave-one-family-out model (early stopping may end sooner)
    seed: int = 42
    bias_x: float = 0.4
    bias_y: float = 0.5
    device: str = "auto"
    compile: str = (
        "auto"  # torch.compile the training step, attention as an eager island: "auto" (CUDA, >= COMPILE_MIN_STEPS steps), "on", "off"
    )


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    val_f1: float
    images_per_s: float


def _read_partition(lake: LocalLake, dataset_id: str) -> pd.DataFrame:
    table = lake.read_gold(dataset_id) if lake.gold_partition(dataset_id).is_dir() else pd.DataFrame()
    # the partition value lives in the directory name; keep it as the string it is
    return table.assign(dataset_id=dataset_id) if not table.empty else table


def load_gold(lake: LocalLake, dataset_id: str, window_days: int = 1) -> pd.DataFrame:
    """The gold rows of the training window of ``dataset_id`` (pyarrow, no Spark needed).

    Reads every partition of :func:`window_dataset_ids` and adds a ``dataset_id`` column. Splits
    are assigned per partition by source group (video + time block), so the same video landing
    on two days would put the same group, and the same images, into two partitions, possibly
    into different splits. A group is therefore kept only from the newest partition that has it:
    an older partition loses every group whose name, or any of whose images (``image_path``),
    occurs in a newer partition of the window. What is dropped is logged.

    Args:
        lake: the lake.
        dataset_id: the newest partition of the window; it must exist and hold rows.
        window_days: days of partitions, ending with ``dataset_id`` (1: that partition only).

    Returns:
        The rows sorted by ``(dataset_id, sample_id)``, index ``0..n-1``.

    Raises:
        JobError: the partition of ``dataset_id`` is missing or empty.
        ConfigError: as for :func:`window_dataset_ids` (:func:`swan_anomaly.lake.window_ids`).

    Example:
        >>> gold = load_gold(LocalLake(Path(".swan/lake")), "20261126", window_days=7)  # doctest: +SKIP
        >>> sorted(gold.dataset_id.unique())                                           # doctest: +SKIP
        ['20261124', '20261126']
    """
    ids = window_dataset_ids(lake, dataset_id, window_days)
    current = _read_partition(lake, dataset_id)
    if current.empty:
        msg = f"{lake.gold_partition(dataset_id)}: no gold rows for dataset {dataset_id!r}; run the augmentation job first"
        raise JobError(msg)
    kept = [current]
    seen_groups, seen_images = set(current.group), set(current.image_path)
    for older_id in reversed(ids[:-1]):  # newest first, so each group stays with the newest partition that has it
        older = _read_partition(lake, older_id)
        if older.empty:
            log.info("gold partition %s of the training window has no rows; skipped", older_id)
            continue
        clash = older.group.isin(seen_groups) | older.image_path.isin(seen_images)
        dropped_groups = set(older.group[clash])
        drop = older.group.isin(dropped_groups)
        seen_groups |= set(older.group)
        seen_images |= set(older.image_path)
        if drop.any():
            names = sorted(dropped_groups)
            log.warning(
                "gold partition %s: dropped %d rows of %d groups that a newer partition of the window also has: %s%s",
                older_id,
                int(drop.sum()),
                len(names),
                ", ".join(names[:10]),
                f" and {len(names) - 10} more" if len(names) > 10 else "",
            )
        if drop.all():
            log.info("gold partition %s of the training window adds nothing after the overlap rule", older_id)
            continue
        kept.append(older[~drop])
    gold = pd.concat(kept, ignore_index=True) if len(kept) > 1 else current
    gold = gold.sort_values(["dataset_id", "sample_id"], ignore_index=True)
    log.info(
        "training window of %s (%d days): %s",
        dataset_id,
        window_days,
        ", ".join(f"{d} {n} rows" for d, n in gold.dataset_id.value_counts(sort=False).sort_index().items()),
    )
    return gold


def _tensors(frame: pd.DataFrame, spec):
    import torch

    from swan_anomaly.images import preprocess

    x = preprocess(
        list(frame.content),
        size=spec.size,
        mean=spec.mean,
        std=spec.std,
        bias_x=spec.bias_x,
        bias_y=spec.bias_y,
        names=list(frame.sample_id),
    )
    return torch.from_numpy(x), torch.tensor(frame.label.to_numpy(copy=True), dtype=torch.long)


def _evaluate(model, x, y, batch_size: int) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and ``[N, 2]`` float32 logits of ``model`` on ``(x [N, 3, S, S], y [N])``.

    Runs on the model's device through :func:`swan_anomaly.modeling.forward_logits` (bfloat16
    autocast on CUDA, float32 on CPU); ``x`` and ``y`` may live on the host.
    """
    import torch

    from swan_anomaly.modeling import forward_logits

    model.eval()
    logits = np.concatenate([forward_logits(model, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), y.cpu()).item()
    return loss, logits


def class_weights(y):
    """Inverse-frequency weights ``[2]`` (float32) of the two classes in ``y`` (``[N]`` long, 0 or 1).

    Example:
        >>> import torch
        >>> [round(w, 4) for w in class_weights(torch.tensor([0, 1, 1, 1])).tolist()]
        [2.0, 0.6667]
    """
    import torch

    counts = torch.bincount(y, minlength=2).float()
    return (counts.sum() / (2 * counts.clamp(min=1))).float()


def place_for_training(model, device: str):
    """Move ``model`` to ``device`` and pick the autocast dtype of its training steps.

    On CUDA this also allows TF32 matmuls (for what autocast leaves in float32).

    Args:
        model: a ``ViTForImageClassification``; moved in place.
        device: as for :func:`swan_anomaly.modeling.resolve_device`.

    Returns:
        ``(torch.device, autocast dtype)``: ``torch.bfloat16`` on CUDA, ``None`` (plain float32) on CPU.

    Example:
        >>> place_for_training(model, "cpu")  # doctest: +SKIP
        (device(type='cpu'), None)
    """
    import torch

    from swan_anomaly.modeling import resolve_device

    target = resolve_device(device)
    if target.type != "cuda":
        return target, None
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True  # fixed input shapes: cuDNN times the patch-embedding convolution once
    model.to(target)
    return target, torch.bfloat16


def make_optimizer(model, cfg: TrainConfig, *, total_steps: int):
    """AdamW with a linear warmup over ``cfg.warmup_ratio`` of ``total_steps``, then linear decay to zero.

    Fused AdamW when the model sits on CUDA; torch's default implementation on CPU (so CPU
    results do not change). Call ``scheduler.step()`` once per optimizer step.

    Returns:
        ``(optimizer, scheduler)``.

    Example:
        >>> optimizer, scheduler = make_optimizer(model, TrainConfig(), total_steps=100)  # doctest: +SKIP
    """
    import torch

    fused = True if next(model.parameters()).device.type == "cuda" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    warmup = max(1, int(total_steps * cfg.warmup_ratio))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    return optimizer, scheduler


def train_step(model, optimizer, scheduler, x, y, class_weights, *, autocast_dtype=None):
    """One optimizer step on class-weighted cross-entropy; the step :func:`train_classifier` runs.

    Args:
        model: a ``ViTForImageClassification`` (or its ``torch.compile`` wrapper) in train mode.
        optimizer: from :func:`make_optimizer`.
        scheduler: from :func:`make_optimizer`; stepped once.
        x: ``[B, 3, S, S]`` float32 normalised pixels, on the model's device.
        y: ``[B]`` long labels (0 = abnormal, 1 = normal), same device.
        class_weights: ``[2]`` float32 loss weights (see :func:`class_weights`), same device.
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (``torch.bfloat16``
            on CUDA, from :func:`place_for_training`); ``None`` runs in the weights' dtype.

    Returns:
        The batch loss, a detached scalar float32 tensor on ``x``'s device. Reading it
        (``.item()``) waits for the GPU, so do that only when needed.

    Example:
        >>> optimizer, scheduler = make_optimizer(model, TrainConfig(), total_steps=10)     # doctest: +SKIP
        >>> train_step(model, optimizer, scheduler, x, y, class_weights(y)).item()          # doctest: +SKIP
        0.6931
    """
    import torch

    autocast = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    with autocast:
        logits = model(pixel_values=x).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), y, weight=class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def _to_device(t, device):
    """``t`` on ``device``: as it is when already there, else through pinned memory without blocking."""
    return t if t.device == device else t.pin_memory().to(device, non_blocking=True)


def train_classifier(model, train: tuple, val: tuple, cfg: TrainConfig, *, on_epoch=None):
    """Train with early stopping; returns ``(model, history, best_epoch)``, the model on the CPU with the best epoch's weights.

    Runs on ``cfg.device``. On CUDA the training set is copied to the GPU once when it takes at
    most :data:`GPU_DATA_SHARE` of the free GPU memory, else each batch is copied through pinned
    memory. Logs one line per epoch and, within long epochs, a progress line at most every
    :data:`PROGRESS_EVERY_S` seconds.

    Args:
        model: a ``ViTForImageClassification`` on the CPU.
        train: ``(x [N, 3, S, S] float32, y [N] long)`` on the CPU.
        val: same shapes, the early-stopping set.
        cfg: knobs.
        on_epoch: called with each :class:`EpochResult`.

    Raises:
        ValueError: ``cfg.epochs`` or ``cfg.batch_size`` is below 1, or ``cfg.device`` is unusable.

    Example:
        >>> model, history, best_epoch = train_classifier(model, (x, y), (x_val, y_val), TrainConfig(epochs=3))  # doctest: +SKIP
    """
    import torch

    if cfg.monitor not in ("val_loss", "val_auroc"):
        msg = f"monitor must be 'val_loss' or 'val_auroc', got {cfg.monitor!r}"
        raise ValueError(msg)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        msg = f"epochs and batch_size must be at least 1, got epochs={cfg.epochs}, batch_size={cfg.batch_size}"
        raise ValueError(msg)
    torch.manual_seed(cfg.seed)
    x_train, y_train = train
    x_val, y_val = val
    if cfg.compile not in ("auto", "on", "off"):
        msg = f"compile must be 'auto', 'on' or 'off', got {cfg.compile!r}"
        raise ValueError(msg)
    device, autocast_dtype = place_for_training(model, cfg.device)
    step_model, attention = model, model.config._attn_implementation
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda" and steps_per_epoch * cfg.epochs >= COMPILE_MIN_STEPS):
        from swan_anomaly.modeling import compile_model

        step_model = compile_model(model)
        log.info("training steps run through torch.compile (attention as an eager SDPA island); the first step compiles")
    weights = class_weights(y_train).to(device)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        if x_train.nbytes <= GPU_DATA_SHARE * free_bytes:
            x_train, y_train = x_train.to(device), y_train.to(device)
        else:
            log.info("training set (%.1f GiB) stays on the host; batches go through pinned memory", x_train.nbytes / 2**30)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=steps_per_epoch * cfg.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_key, best_state, best_epoch, stale = None, None, 0, 0
    history: list[EpochResult] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
        started = last_progress = time.perf_counter()
        # float64 sum of loss * batch size, kept on the device: no GPU wait per step, same sum as in Python floats
        running = torch.zeros((), dtype=torch.float64, device=device)
        for step, i in enumerate(range(0, len(order), cfg.batch_size), start=1):
            idx = order[i : i + cfg.batch_size]
            loss = train_step(
                step_model,
                optimizer,
                scheduler,
                _to_device(x_train[idx], device),
                _to_device(y_train[idx], device),
                weights,
                autocast_dtype=autocast_dtype,
            )
            running += loss.double() * len(idx)
            if time.perf_counter() - last_progress >= PROGRESS_EVERY_S and step < steps_per_epoch:
                seen = i + len(idx)
                mean_loss = running.item() / seen  # waits for the GPU, so the rate below is true
                rate = seen / (time.perf_counter() - started)
                log.info(
                    "epoch %d/%d  step %d/%d  train_loss %.4f  %.0f img/s  epoch eta %.0fs",
                    epoch,
                    cfg.epochs,
                    step,
                    steps_per_epoch,
                    mean_loss,
                    rate,
                    (len(x_train) - seen) / rate,
                )
                last_progress = time.perf_counter()
        train_loss = running.item() / len(x_train)
        elapsed = time.perf_counter() - started
        val_loss, val_logits = _evaluate(model, x_val, y_val, cfg.batch_size)
        m = anomaly_metrics(y_val.numpy(), anomaly_scores(val_logits))
        result = EpochResult(epoch, train_loss, val_loss, m["auroc"], m["f1"], len(x_train) / elapsed)
        history.append(result)
        eta = elapsed * (cfg.epochs - epoch)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_auroc %.4f  val_f1 %.4f  %.0f img/s  eta %.0fs",
            epoch,
            cfg.epochs,
            result.train_loss,
            val_loss,
            m["auroc"],
            m["f1"],
            result.images_per_s,
            eta,
        )
        if on_epoch:
            on_epoch(result)
        # AUROC of a small validation set saturates at 1.0 by chance early on; the loss keeps telling
        key = (-val_loss,) if cfg.monitor == "val_loss" else (round(m["auroc"], 6), -val_loss)
        if best_key is None or key > best_key:
            best_key, best_epoch, stale = key, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("early stopping after epoch %d: no improvement for %d epochs; restoring epoch %d", epoch, stale, best_epoch)
                break
    model.to("cpu")
    model.load_state_dict(best_state)
    model.config._attn_implementation = attention  # the island is a compile detail; the saved model asks for what it had
    return model, history, best_epoch


def epoch_metrics(result: EpochResult) -> dict[str, float]:
    """The MLflow metrics of one epoch, under keys of their own (``epoch_val_auroc``, ...).

    The final metrics of the restored best epoch at the chosen threshold are logged once, as
    ``val_auroc``, ``test_f1``, ...; per-epoch values under the same keys would make MLflow's
    latest value (what ``get_run().data.metrics`` returns) the last epoch's instead.
    """
    return {
        "epoch_train_loss": result.train_loss,
        "epoch_val_loss": result.val_loss,
        "epoch_val_auroc": result.val_auroc,
        "epoch_val_f1": result.val_f1,
        "epoch_images_per_s": result.images_per_s,
    }


def held_out_rows(part: pd.DataFrame, hashes: dict[tuple[str, str], str] | None = None) -> list[list]:
    """The images of a validation or test split as ``[dataset_id, image_path, label, family, sha256]`` rows.

    What the gate and the endpoint validation score again, from the raw partition: the very
    rows the model was validated or tested on, after the training window's overlap rule. The
    sha256 (from the raw partition's label manifest; None when it is not at hand) lets them
    check that the raw image is still the one the model was tested on.
    """
    hashes = hashes or {}
    originals = part[part.aug == "none"] if "aug" in part else part
    rows = originals[["dataset_id", "image_path", "label", "family"]].drop_duplicates(["dataset_id", "image_path"])
    return [
        [str(d), str(p), int(lab), str(f), hashes.get((str(d), str(p)))]
        for d, p, lab, f in rows.sort_values(["dataset_id", "image_path"]).itertuples(index=False)
    ]


def raw_image_hashes(lake: LocalLake, dataset_ids: list[str]) -> dict[tuple[str, str], str]:
    """``{(dataset_id, image_path): sha256}`` from the label manifests of the raw partitions that have one."""
    from swan_anomaly.labels import read_manifest

    hashes = {}
    for dataset_id in dataset_ids:
        path = lake.raw(dataset_id) / "labels.csv"
        if path.is_file():
            manifest = read_manifest(path)
            hashes.update({(dataset_id, str(p)): str(h) for p, h in zip(manifest.image_path, manifest.sha256)})
    return hashes


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


def log_served_model(model, spec, *, threshold: float, threshold_method: str, example: list[bytes]):
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

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what registration takes).
    """
    import mlflow

    from swan_anomaly.serving.pyfunc import PREPROCESS_FILE, THRESHOLD_FILE, SwanAnomalyModel, signature

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model.save_pretrained(model_dir)
        (model_dir / PREPROCESS_FILE).write_text(spec.to_json())
        decision = {"threshold": threshold, "method": threshold_method, "chosen_on": "val"}
        (model_dir / THRESHOLD_FILE).write_text(json.dumps(decision, indent=1))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=SwanAnomalyModel(),
            artifacts={"model_dir": str(model_dir)},
            code_paths=[str(package_snapshot(Path(tmp) / "code"))],
            signature=signature(),
            input_example=pd.DataFrame({"image": example}),
            pip_requirements=_pinned_requirements(),
            metadata={"anomaly_threshold": threshold, "threshold_method": threshold_method},
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


def run_training(
    *,
    lake_root: Path,
    dataset_id: str,
    run_id: str,
    config: TrainConfig,
    settings: Settings,
    tags: dict | None = None,
    window_days: int = 1,
) -> dict:
    """Train on the gold window of ``dataset_id``, log everything to MLflow and return the job result.

    ``window_days`` days of gold partitions ending with ``dataset_id`` are trained on, validated
    and tested on together (:func:`load_gold`; 1: that dataset only). Every partition used is an
    MLflow input of the run and is named in the param and tag ``training_dataset_ids`` and in the
    result's ``dataset_ids``.
    """
    import mlflow
    import torch

    from swan_anomaly.modeling import load_classifier, preprocess_spec, resolve_base_model, resolve_device

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    lake = LocalLake(lake_root)
    gold = load_gold(lake, dataset_id, window_days)
    dataset_ids = sorted(gold.dataset_id.unique())
    base = resolve_base_model(config.model, settings.models_dir, seed=config.seed)
    spec = preprocess_spec(base, bias_x=config.bias_x, bias_y=config.bias_y)
    model = load_classifier(base)
    parts = {s: gold[gold.split == s.value] for s in Split}
    for s, part in parts.items():
        if s is not Split.TRAIN and part.label.nunique() < 2:
            msg = (
                f"{s.value} split of datasets {dataset_ids} has labels "
                f"{sorted(part.label.unique())}; it needs both abnormal and normal images"
            )
            raise JobError(msg)
    images = _tensors(gold, spec)  # every image decoded and preprocessed once; the splits and the LOFO report take rows of it
    train, val, test = (
        tuple(t[parts[s].index.to_numpy()] for t in images) for s in (Split.TRAIN, Split.VAL, Split.TEST)
    )  # gold's index is 0..n-1
    if config.generalization == "off":
        images = None  # only the leave-one-family-out report needs every row again
    log.info(
        "training %s on %d images (val %d, test %d) of datasets %s, input %dpx, on %s",
        config.model,
        len(train[0]),
        len(val[0]),
        len(test[0]),
        ",".join(dataset_ids),
        spec.size,
        device,
    )

    experiment_id = ensure_experiment(settings)
    run_tags = {"airflow_run_id": run_id, "dataset_id": dataset_id, "training_dataset_ids": ",".join(dataset_ids), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{dataset_id}", tags=run_tags) as run:
        mlflow.log_params(
            {
                **asdict(config),
                "base_model": base,
                "image_size": spec.size,
                "train_images": len(train[0]),
                "dataset_id": dataset_id,
                "device_used": str(device),
                "window_days": window_days,
                "training_dataset_ids": ",".join(dataset_ids),
            }
        )
        for used in dataset_ids:  # one input per partition, its digest over the rows that trained
            mlflow.log_input(gold_dataset(lake, used, gold[gold.dataset_id == used]), context="training")
        model, history, best_epoch = train_classifier(
            model,
            train,
            val,
            config,
            on_epoch=lambda r: mlflow.log_metrics(epoch_metrics(r), step=r.epoch),
        )
        model.to(device)  # evaluate where it trained; back to the CPU below, before saving
        scored = {}
        for name, (x, y) in (("val", val), ("test", test)):
            loss, logits = _evaluate(model, x, y, config.batch_size)
            scored[name] = (y.numpy(), anomaly_scores(logits), loss)
        model.to("cpu")
        threshold = choose_threshold(scored["val"][0], scored["val"][1], method=config.threshold_method, target_fpr=config.target_fpr)
        results = {}
        for name, (labels, scores, loss) in scored.items():
            part = parts[Split.VAL if name == "val" else Split.TEST]
            metrics = evaluation_report(labels, scores, threshold=threshold, seed=config.seed)  # with the AUROC interval and class counts
            metrics["recall_by_family"] = recall_by_family(labels, scores, part.family.to_numpy(), threshold=threshold)
            results[name] = {**metrics, "loss": loss}
            interval = dict(zip((f"{name}_auroc_ci_low", f"{name}_auroc_ci_high"), metrics["auroc_ci"])) if metrics["auroc_ci"] else {}
            mlflow.log_metrics({f"{name}_{k}": v for k, v in metrics.items() if isinstance(v, float)} | {f"{name}_loss": loss} | interval)
            mlflow.log_metrics({f"{name}_recall_{family}": r for family, r in metrics["recall_by_family"].items()})
            mlflow.log_figure(
                _confusion_figure(metrics["confusion_matrix"], f"{name} (anomaly = positive)"), f"plots/confusion_matrix_{name}.png"
            )
            mlflow.log_figure(curves_figure(labels, scores, title=name), f"plots/roc_pr_{name}.png")
            mlflow.log_figure(histogram_figure(labels, scores, threshold=threshold, title=name), f"plots/score_histogram_{name}.png")
            mlflow.log_image(
                worst_grid(list(part.content.map(bytes)), labels, scores, list(part.sample_id)), f"plots/worst_scored_{name}.png"
            )
        mlflow.log_metric("threshold", threshold)
        generalization = pd.DataFrame(columns=list(LOFO_COLUMNS))
        if config.generalization != "off":
            lofo_config = replace(config, epochs=min(config.epochs, config.lofo_epochs))
            generalization = leave_one_family_out(gold, base, spec, lofo_config, images=images)
            if not generalization.empty:
                mlflow.log_table(generalization, "generalization/leave_one_family_out.json")
                mlflow.log_metric("lofo_min_unseen_auroc", min_unseen_auroc(generalization))
                log.info("leave-one-family-out report:\n%s", format_table(generalization))
        mlflow.log_metric("best_epoch", best_epoch)
        grid = family_grid_of(lake, dataset_id, seed=config.seed)
        if grid is not None:
            mlflow.log_image(grid, "plots/anomaly_families.png")
        mlflow.log_dict(
            {"history": [asdict(h) for h in history], "best_epoch": best_epoch, "threshold": threshold, **results}, "metrics/summary.json"
        )

        example = list(gold[gold.split == Split.TEST.value].content.iloc[:1].map(bytes))
        info = log_served_model(model, spec, threshold=threshold, threshold_method=config.threshold_method, example=example)
    hashes = raw_image_hashes(lake, dataset_ids)
    result = {
        "mlflow_run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "run_model_uri": f"runs:/{run.info.run_id}/model",
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "threshold": threshold,
        "generalization": generalization.to_dict("records"),
        "generalization_min_unseen_auroc": min_unseen_auroc(generalization),
        "val": results["val"],
        "test": results["test"],
        "images": {s.value: int(len(p)) for s, p in parts.items()},
        "held_out": {name: held_out_rows(parts[split], hashes) for name, split in (("val", Split.VAL), ("test", Split.TEST))},
        "dataset_ids": dataset_ids,
        "window_days": window_days,
        "labels": {str(ABNORMAL): "abnormal", str(NORMAL): "normal"},
        "config": asdict(config),
    }
    log.info(
        "trained: best epoch %d, threshold %.4f (%s on val), val AUROC %.4f F1 %.4f, test "
        "AUROC %.4f AP %.4f F1 %.4f, test recall by family %s",
        best_epoch,
        threshold,
        config.threshold_method,
        results["val"]["auroc"],
        results["val"]["f1"],
        results["test"]["auroc"],
        results["test"]["average_precision"],
        results["test"]["f1"],
        results["test"]["recall_by_family"],
    )
    return result
