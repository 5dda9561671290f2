"""The training loop: config, one optimizer step, evaluation, early stopping with the best epoch restored.

Seeded; AdamW with linear warmup and decay; early stopping on the validation loss (or on
validation AUROC with ties broken by the loss, ``monitor="val_auroc"``) with the best epoch
restored; metrics with the anomaly class as positive.

Runs on the GPU when there is one (``TrainConfig.device="auto"``): bfloat16 autocast, fused
AdamW, TF32 matmuls, the training set kept on the GPU when it fits. The CPU path is float32 and
gives bit-for-bit the same result for the same seed. ``TrainConfig.precision="float8"`` adds
torchao's FP8 GEMMs on GPUs that have them (:func:`use_float8_training`; ``"float8-emulated"``
emulates them anywhere, to measure quality); validation and the returned model use plain linear
layers. :func:`train_step` is the one optimizer step, shared with ``bench/train_throughput.py``.
The job around it (data, MLflow, the result) is :mod:`swan_anomaly.training`.

Example:
    >>> TrainConfig().monitor, TrainConfig().bias_x
    ('val_loss', 0.4)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from swan_anomaly._errors import ConfigError, JobError
from swan_anomaly.config import Settings
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y
from swan_anomaly.metrics import anomaly_metrics, anomaly_scores

log = logging.getLogger(__name__)

#: Seconds between progress lines inside an epoch (the per-epoch line comes on top).
PROGRESS_EVERY_S = 30.0
#: The training set moves to the GPU whole when it takes at most this share of the free GPU memory.
GPU_DATA_SHARE = 0.5
#: Training precisions (``TrainConfig.precision``, ``SWAN_TRAINING_PRECISION``): see :func:`place_for_training`.
PRECISIONS = Settings.choices("training_precision")
#: What early stopping may watch (``TrainConfig.monitor``).
MONITORS = ("val_loss", "val_auroc")
#: FP8 GEMMs (``torch._scaled_mm``) need a GPU of at least this CUDA compute capability (Ada, Hopper and later).
FLOAT8_MIN_CAPABILITY = (8, 9)
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
    min_delta: float = 1e-3  # an epoch resets patience only when it beats the reference by more than this (see train_classifier)
    monitor: str = "val_loss"  # or "val_auroc" (ties broken by val_loss)
    threshold_method: str = "max_f1"  # or "target_fpr"; chosen on the validation split
    target_fpr: float = 0.01
    generalization: str = "auto"  # leave-one-family-out report when the data has 2+ families; "off" skips it
    lofo_epochs: int = 15  # epoch budget of each leave-one-family-out model (early stopping may end sooner)
    seed: int = 42
    bias_x: float = CROP_BIAS_X
    bias_y: float = CROP_BIAS_Y
    device: str = "auto"
    compile: str = (
        "auto"  # torch.compile the training step, attention as an eager island: "auto" (CUDA, >= COMPILE_MIN_STEPS steps), "on", "off"
    )
    precision: str = "auto"  # "auto": bfloat16 autocast on CUDA, float32 on CPU; "float8" also FP8 GEMMs; "float8-emulated" anywhere


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    val_f1: float
    images_per_s: float


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


def frame_tensors(frame: pd.DataFrame, spec, *, workers: int | None = None):
    """``(pixels [N, 3, S, S] uint8, y [N] long)``: the ``content`` images of ``frame`` decoded, cropped and resized, with their ``label``s.

    Decodes on ``workers`` threads (default: every usable core; see
    :func:`swan_anomaly.images.decode_pixels`), with the same result as one, and logs the rate. A
    bad image raises an error naming its ``sample_id``. The pixels stay uint8, a quarter of the
    bytes of the model's float32 input: :func:`train_classifier`, :func:`evaluate` and
    :func:`swan_anomaly.modeling.patch_features_of` normalise each batch on the model's device
    (:func:`swan_anomaly.modeling.normalize_pixels`).
    """
    import torch

    from swan_anomaly.images import decode_pixels, preprocess_threads

    workers = usable_cores() if workers is None else workers
    started = time.perf_counter()
    pixels = decode_pixels(
        list(frame.content),
        size=spec.size,
        bias_x=spec.bias_x,
        bias_y=spec.bias_y,
        names=list(frame.sample_id),
        workers=workers,
    )
    seconds = time.perf_counter() - started
    threads = preprocess_threads(len(pixels), workers)
    log.info(
        "decoded %d images (%.1f MiB as uint8) in %.1fs (%.0f img/s on %d threads)",
        len(pixels),
        pixels.nbytes / 2**20,
        seconds,
        len(pixels) / max(seconds, 1e-9),
        threads,
    )
    return torch.from_numpy(pixels), torch.tensor(frame.label.to_numpy(copy=True), dtype=torch.long)


def evaluate(model, pixels, y, spec, batch_size: int) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and ``[N, 2]`` float32 logits of ``model`` on ``(pixels [N, 3, S, S] uint8, y [N])``.

    Each batch is normalised (``spec``'s mean and std) and run on the model's device through
    :func:`swan_anomaly.modeling.forward_logits` (bfloat16 autocast on CUDA, float32 on CPU);
    ``pixels`` and ``y`` may live on the host.
    """
    import torch

    from swan_anomaly.modeling import forward_logits, normalized_batches

    model.eval()
    logits = np.concatenate([forward_logits(model, x) for x in normalized_batches(model, pixels, spec, batch_size)])
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


def place_for_training(model, device: str, precision: str = "auto"):
    """Move ``model`` to ``device`` and pick the autocast dtype of its training steps.

    On CUDA this also allows TF32 matmuls (for what autocast leaves in float32) and computes the
    patch embedding as one GEMM (:func:`swan_anomaly.modeling.patch_embedding_as_matmul`: the same
    weights and function, 1.025x the compiled training step on an H200). ``precision="float8"``
    (or ``"float8-emulated"``) also makes the linear layers FP8 GEMMs (:func:`use_float8_training`);
    :func:`without_float8` undoes that after training.

    Args:
        model: a ``ViTForImageClassification``; moved in place.
        device: as for :func:`swan_anomaly.modeling.resolve_device`.
        precision: one of :data:`PRECISIONS`.

    Returns:
        ``(torch.device, autocast dtype)``: ``torch.bfloat16`` on CUDA, ``None`` (plain float32) on CPU.

    Raises:
        ConfigError: see :func:`check_precision`.

    Example:
        >>> place_for_training(model, "cpu")  # doctest: +SKIP
        (device(type='cpu'), None)
    """
    import torch

    from swan_anomaly.modeling import patch_embedding_as_matmul, resolve_device

    target = resolve_device(device)
    check_precision(precision, target)
    if target.type == "cuda":
        torch.set_float32_matmul_precision("high")
        patch_embedding_as_matmul(model)
        model.to(target)
    if precision != "auto":
        use_float8_training(model, target, emulate=precision == "float8-emulated")
    return target, (torch.bfloat16 if target.type == "cuda" else None)


def float8_linears(module, fqn: str = "") -> bool:
    """torchao's module filter: FP8 for the linear layers whose sides are both multiples of 16, as FP8 GEMMs
    need, so for every projection and MLP layer of a ViT and not its 2-class head.

    Example:
        >>> import torch
        >>> float8_linears(torch.nn.Linear(768, 3072)), float8_linears(torch.nn.Linear(768, 2))
        (True, False)
    """
    import torch

    # a plain Linear only: a subclass computes more than the GEMM (LinearGelu: its GELU), which FP8's Linear would drop
    return type(module) is torch.nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0


def check_precision(precision: str, device) -> None:
    """Refuse a training ``precision`` that cannot run on ``device``, before any work: a retry would fail the same way.

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`; or it is ``float8`` and ``device``
            is not a GPU with FP8 GEMMs (compute capability :data:`FLOAT8_MIN_CAPABILITY` or later); or
            it is either FP8 one and torchao does not import.

    Example:
        >>> check_precision("auto", "cpu")
        >>> check_precision("fp8", "cpu")
        Traceback (most recent call last):
        ...
        swan_anomaly._errors.ConfigError: precision must be one of ('auto', 'float8', 'float8-emulated'), got 'fp8'
    """
    import torch

    if precision not in PRECISIONS:
        msg = f"precision must be one of {PRECISIONS}, got {precision!r}"
        raise ConfigError(msg)
    if precision == "auto":
        return
    device = torch.device(device)
    if precision == "float8":
        needs = f"precision='float8' needs FP8 GEMMs, on a GPU of compute capability {'.'.join(map(str, FLOAT8_MIN_CAPABILITY))} or later "
        needs += "(L4, L40S, H100, H200, B200)"
        if device.type != "cuda":
            msg = (
                f"{needs}; this job runs on {device}. Train with precision='auto' here; 'float8-emulated' runs torchao's "
                "emulation anywhere, slower than float32, to measure what FP8 rounding does to quality"
            )
            raise ConfigError(msg)
        capability = torch.cuda.get_device_capability(device)
        if capability < FLOAT8_MIN_CAPABILITY:
            msg = f"{needs}; {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}. Train with precision='auto' there"
            raise ConfigError(msg)
    try:
        import torchao.float8  # noqa: F401  (installed against another torch, it may be found and still not import)
    except Exception as exc:
        msg = (
            f"precision={precision!r} needs torchao's float8 training (requirements.txt pins torchao==0.18.0, which needs "
            f"torch >= 2.11; this is torch {torch.__version__}): {type(exc).__name__}: {exc}"
        )
        raise ConfigError(msg) from exc


def use_float8_training(model, device, *, emulate: bool = False) -> int:
    """Make ``model``'s linear layers (:func:`float8_linears`) FP8 GEMMs in place, with torchao's float8 training.

    Forward GEMMs take e4m3 inputs and weights, backward ones e5m2 gradients, each tensor scaled
    by its own dynamic scale (torchao's tensorwise recipe); weights, gradients and the optimizer
    stay in full precision, and so do the state dict and a saved checkpoint. The GEMMs' inner
    dimension is padded to a multiple of 16 where it is not (the weight gradient's is batch x
    tokens: 197 tokens for ViT-B/16, so any batch size that is not a multiple of 16).

    Without ``emulate`` the device must be a GPU with FP8 GEMMs (:func:`check_precision`). With
    it, torchao emulates them on any device: the operands rounded as FP8 GEMMs round them, the
    products in the model's dtype (a GPU's FP8 GEMM accumulates its own way). That is slower than
    plain float32, and is for tests and for measuring what the rounding does to quality.

    Returns:
        How many linear layers now run FP8 GEMMs.

    Raises:
        ConfigError: see :func:`check_precision`.
    """
    import torch

    device = torch.device(device)
    check_precision("float8-emulated" if emulate else "float8", device)
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    config = Float8LinearConfig(emulate=emulate, pad_inner_dim=True)
    convert_to_float8_training(model, config=config, module_filter_fn=float8_linears)
    converted = sum(1 for m in model.modules() if isinstance(m, Float8Linear))
    linears = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    how = "emulated, slower than float32" if emulate else "on the GPU"
    log.info("FP8 GEMMs (torchao, tensorwise dynamic scaling, %s) in %d of %d linear layers", how, converted, linears)
    return converted


def _swap_float8(model) -> list:
    """Put a plain ``torch.nn.Linear`` on the same parameters in place of each of torchao's FP8 linear layers of ``model``.

    Returns ``(parent, name, FP8 layer)`` for each swap, to put it back.
    """
    import sys

    import torch

    float8 = sys.modules.get("torchao.float8.float8_linear")  # not imported: no FP8 layer can exist
    if float8 is None:
        return []
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, float8.Float8Linear):
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain.train(parent.training))
                swapped.append((parent, name, child))
    return swapped


def without_float8(model):
    """``model`` with each of torchao's FP8 linear layers back as a plain ``torch.nn.Linear`` on the same parameters, in place.

    What a trained model is evaluated, scored and saved as: the served model loads plain linear
    layers from the checkpoint, so the training job's own scores (threshold, metrics, novelty bank)
    come from the same function. A model without FP8 layers comes back unchanged.
    """
    _swap_float8(model)
    return model


@contextlib.contextmanager
def plain_linears(model):
    """Within the block, ``model``'s FP8 linear layers are plain ones on the same parameters; after it, FP8 again.

    Each epoch's validation runs in it, so early stopping picks the epoch whose model, as it will
    be served, does best.
    """
    swapped = _swap_float8(model)
    try:
        yield model
    finally:
        for parent, name, layer in swapped:
            setattr(parent, name, layer.train(parent.training))


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


def epoch_batches(x, y, order, batch_size: int, device, *, prefetch: bool | None = None):
    """Yield ``(x[idx], y[idx])`` on ``device`` for each ``batch_size`` slice ``idx`` of ``order``, in order.

    A set already on ``device`` is gathered there. A set on the host bound for a GPU is gathered
    one batch ahead on a background thread into pinned memory, while the current step runs, and
    copied without blocking (``prefetch`` defaults to that case; ``True`` forces the thread, as
    a test on the CPU does). The batches are the same either way.
    """
    import torch

    device = torch.device(device)
    starts = range(0, len(order), batch_size)
    if prefetch is None:
        prefetch = x.device != device
    if not prefetch:
        for i in starts:
            idx = order[i : i + batch_size]
            yield x[idx].to(device), y[idx].to(device)
        return
    from concurrent.futures import ThreadPoolExecutor

    pin = device.type == "cuda"

    def gather(i: int):
        idx = order[i : i + batch_size]
        xb, yb = x[idx], y[idx]
        return (xb.pin_memory(), yb.pin_memory()) if pin else (xb, yb)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="swan-batches") as pool:
        pending = pool.submit(gather, starts[0]) if starts else None
        for k in range(len(starts)):
            xb, yb = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(gather, starts[k + 1])  # the next batch is gathered while this one trains
            yield xb.to(device, non_blocking=pin), yb.to(device, non_blocking=pin)


def train_classifier(model, train: tuple, val: tuple, spec, cfg: TrainConfig, *, on_epoch=None):
    """Train with early stopping; returns ``(model, history, best_epoch)``, the model on the CPU with the best epoch's weights.

    Runs on ``cfg.device``. On CUDA the training set (uint8) is copied to the GPU once when it takes at
    most :data:`GPU_DATA_SHARE` of the free GPU memory, else each batch is gathered one step
    ahead into pinned memory (:func:`epoch_batches`). Each batch is normalised where it trains.
    Logs one line per epoch and, within long epochs, a progress line at most every
    :data:`PROGRESS_EVERY_S` seconds.

    Args:
        model: a ``ViTForImageClassification`` on the CPU.
        train: ``(pixels [N, 3, S, S] uint8, y [N] long)`` on the CPU, as :func:`frame_tensors` gives them.
        val: same shapes, the early-stopping set.
        spec: the model's :class:`~swan_anomaly.modeling.PreprocessSpec`: each batch is normalised with its
            mean and std on the model's device (:func:`swan_anomaly.modeling.normalize_pixels`).
        cfg: knobs.
        on_epoch: called with each :class:`EpochResult`.

    Raises:
        ValueError: ``cfg.epochs`` or ``cfg.batch_size`` is below 1, or ``cfg.device`` is unusable.
        JobError: the training diverged (a loss or validation logits that are not numbers): a retry would too.

    Example:
        >>> model, history, best_epoch = train_classifier(model, (x, y), (x_val, y_val), spec, TrainConfig(epochs=3))  # doctest: +SKIP
    """
    import torch

    if cfg.monitor not in MONITORS:
        msg = f"monitor must be one of {MONITORS}, got {cfg.monitor!r}"
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
    from swan_anomaly.modeling import normalize_pixels

    device, autocast_dtype = place_for_training(model, cfg.device, cfg.precision)
    step_model, attention = model, model.config._attn_implementation
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    # FP8 pays only compiled: eager, torchao's scaling and casts are kernels of their own
    long_enough = steps_per_epoch * cfg.epochs >= COMPILE_MIN_STEPS or cfg.precision == "float8"
    if cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda" and long_enough):
        from swan_anomaly.modeling import compile_model

        step_model = compile_model(model)
        log.info("training steps run through torch.compile (attention as an eager SDPA island); the first step compiles")
    weights = class_weights(y_train).to(device)
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        if x_train.nbytes <= GPU_DATA_SHARE * free_bytes:
            x_train, y_train = x_train.to(device), y_train.to(device)
        else:
            log.info(
                "training set (%.1f GiB) stays on the host; batches are gathered a step ahead into pinned memory", x_train.nbytes / 2**30
            )
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=steps_per_epoch * cfg.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_key, best_state, best_epoch, stale, reference = None, None, 0, 0, None
    history: list[EpochResult] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
        started = last_progress = time.perf_counter()
        # float64 sum of loss * batch size, kept on the device: no GPU wait per step, same sum as in Python floats
        running = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for step, (xb, yb) in enumerate(epoch_batches(x_train, y_train, order, cfg.batch_size, device), start=1):
            xb = normalize_pixels(xb, spec)
            loss = train_step(step_model, optimizer, scheduler, xb, yb, weights, autocast_dtype=autocast_dtype)
            running += loss.double() * len(yb)
            seen += len(yb)
            if time.perf_counter() - last_progress >= PROGRESS_EVERY_S and step < steps_per_epoch:
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
        with plain_linears(model):  # validated as it will be served
            val_loss, val_logits = evaluate(model, x_val, y_val, spec, cfg.batch_size)
        if not (math.isfinite(train_loss) and np.isfinite(val_logits).all()):  # diverged: the same seed diverges again
            msg = (
                f"training diverged in epoch {epoch}: train loss {train_loss}, {int((~np.isfinite(val_logits)).any(axis=1).sum())} of "
                f"{len(val_logits)} validation images without finite logits (precision {cfg.precision!r}, learning rate "
                f"{cfg.learning_rate:g}); a retry would diverge the same way: lower the learning rate, or train with precision='auto'"
            )
            raise JobError(msg)
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
        # Early stopping as Lightning's EarlyStopping: patience counts epochs since the last improvement of more than
        # min_delta over the reference (the monitored value at that improvement), so a slow creep resets it only once
        # it adds up to min_delta. With val_auroc, AUROC must rise by more than min_delta, or not fall while the loss
        # falls by more than min_delta. The weights kept are the best epoch's, however small its margin (as a
        # checkpoint of the best would). min_delta=0 is the plain "better than the best" rule.
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if (
            reference is None
            or key[0] > reference[0] + cfg.min_delta
            or (len(key) > 1 and key[0] >= reference[0] and key[1] > reference[1] + cfg.min_delta)
        ):
            reference, stale = key, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info(
                    "early stopping after epoch %d: no improvement over %g for %d epochs; restoring epoch %d",
                    epoch,
                    cfg.min_delta,
                    stale,
                    best_epoch,
                )
                break
    without_float8(model).to("cpu")
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
