"""The ViT classifier: offline presets, base-model resolution and the preprocessing spec.

``model`` is a hub id (production: ``google/vit-base-patch16-224``), a local directory, or a
named offline preset. A preset is built from ``ViTConfig`` and saved to a local directory
once, then loaded through the very same ``from_pretrained`` path as a hub model.

Inference runs where the model sits: :func:`prepare_for_inference` puts it on the GPU when
there is one (bfloat16 weights there, float32 on CPU) and :func:`forward_logits` feeds it.

Example:
    >>> base = resolve_base_model("vit-tiny-offline", Path("/tmp/models"))  # doctest: +SKIP
    >>> model = prepare_for_inference(load_classifier(base))                 # doctest: +SKIP
    >>> logits, novelty = predict_scores(model, preprocess_spec(base), [open("frame.jpg", "rb").read()])  # doctest: +SKIP
    >>> logits.shape                                                          # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from swan_anomaly.config import Settings
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y, LABEL_IDS, LABEL_NAMES

log = logging.getLogger(__name__)

ID2LABEL, LABEL2ID = LABEL_NAMES, LABEL_IDS

#: Offline presets: small ViTs built from ``ViTConfig`` (random weights, no download).
PRESETS: dict[str, dict] = {
    # 128 px in 16 px patches: the same 64 tokens (and about the same cost) as 64 px in 8 px
    # patches, with four times the pixels; on the realistic benchmark (bench/quality.py) test
    # AUROC 0.81 against 0.68 at 64 px (docs/BENCHMARKS.md).
    "vit-tiny-offline": dict(
        image_size=128, patch_size=16, hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192
    ),
    "vit-micro-offline": dict(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ),
}

PRODUCTION_MODEL = "google/vit-base-patch16-224"


@dataclass(frozen=True)
class PreprocessSpec:
    """What the model expects: square ``size`` pixels, normalised with ``mean``/``std``, cropped with ``bias``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bias_x: float = CROP_BIAS_X
    bias_y: float = CROP_BIAS_Y

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        d = json.loads(text)
        return cls(d["size"], tuple(d["mean"]), tuple(d["std"]), d.get("bias_x", CROP_BIAS_X), d.get("bias_y", CROP_BIAS_Y))


def resolve_base_model(model: str, models_dir: Path, *, seed: int = 0) -> str:
    """A path or hub id that ``from_pretrained`` can load.

    Presets are materialised under ``models_dir/{preset}`` (once; reused afterwards while their
    shapes are those of :data:`PRESETS`, built again when a new release changed them).
    """
    if model not in PRESETS:
        return model
    target = models_dir / model
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        built = json.loads((target / "config.json").read_text())
        side = json.loads((target / "preprocessor_config.json").read_text()).get("size", {}).get("height")
        if all(built.get(k) == v for k, v in PRESETS[model].items()) and side == PRESETS[model]["image_size"]:
            return str(target)
        log.info("offline preset %s at %s was built with other shapes; building it again", model, target)
    import shutil
    import tempfile

    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    cfg = ViTConfig(**PRESETS[model], num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)
    models_dir.mkdir(parents=True, exist_ok=True)
    # built next to its place and renamed into it: a reader never sees weights of one shape with
    # the preprocessing of another, whatever is interrupted
    staging = Path(tempfile.mkdtemp(prefix=f".{model}-", dir=models_dir))
    ViTForImageClassification(cfg).save_pretrained(staging)
    size = cfg.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(staging)
    old = target.with_name(f".{model}.old-{staging.name}")
    if target.exists():
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:  # another process put its build in place first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    log.info("built offline preset %s at %s", model, target)
    return str(target)


def load_classifier(name_or_path: str):
    """``ViTForImageClassification`` with a 2-class head (0 = abnormal, 1 = normal), SDPA attention."""
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(
        name_or_path,
        num_labels=2,
        id2label=ID2LABEL,
        label2id=LABEL2ID,
        ignore_mismatched_sizes=True,
        attn_implementation="sdpa",
    )


def preprocess_spec(name_or_path: str, *, bias_x: float = CROP_BIAS_X, bias_y: float = CROP_BIAS_Y) -> PreprocessSpec:
    """Input size and normalisation from the model's image processor config."""
    from transformers.image_processing_base import ImageProcessingMixin

    # Read the processor's config only: the crop, resize and normalisation are ours (one path
    # for training and serving), so no image-processor backend needs to be instantiated.
    config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path)
    size = config.get("size", {})
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    return PreprocessSpec(int(side), tuple(config["image_mean"]), tuple(config["image_std"]), bias_x, bias_y)


def resolve_device(name: str = "auto"):
    """The ``torch.device`` to run on.

    Args:
        name: ``"auto"`` (the current CUDA GPU when there is one, else CPU), ``"cpu"``, ``"cuda"``
            or ``"cuda:N"``.

    Returns:
        A ``torch.device``; a CUDA device always carries its index, so it compares equal to
        ``tensor.device`` of tensors placed on it.

    Raises:
        ValueError: ``name`` is none of the above, or names CUDA on a machine where torch sees no GPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and name.split(":")[0] != "cuda":
        msg = f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}"
        raise ValueError(msg)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        msg = f"device {name!r} asked for, but torch {torch.__version__} sees no CUDA GPU; use 'auto' or 'cpu'"
        raise ValueError(msg)
    device = torch.device(name)
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


#: Attention implementation name under which :func:`compile_model` registers Hugging Face's SDPA
#: attention as an eager island (``torch.compiler.disable``): compiled graphs keep the fused kernel.
ATTENTION_ISLAND = "sdpa_eager_island"


def compile_model(model):
    """``torch.compile`` the model, with attention left to the eager fused SDPA kernel.

    Compiled whole, Inductor decomposes ViT's SDPA into float32 batched matmuls and a softmax
    (measured on an H100: inference 6,340 images/s against 10,170 eager). With Hugging Face's SDPA
    attention function registered through ``transformers.AttentionInterface`` behind
    ``torch.compiler.disable``, Inductor fuses norms, GELU, residuals and biases around it while
    attention keeps the flash kernel (10,980 images/s inference, 2,981 training; see
    docs/BENCHMARKS.md). Outside a compiled graph the island is plain SDPA, so the same model
    object still runs eagerly, and saves, with the same results. Shapes are static: a batch of
    another size (the last of an epoch) compiles once more.

    Args:
        model: a ``ViTForImageClassification`` (its ``config._attn_implementation`` is switched
            to :data:`ATTENTION_ISLAND`).

    Returns:
        The ``torch.compile`` wrapper; parameters and state dict stay those of ``model``.

    Example:
        >>> step_model = compile_model(model)       # doctest: +SKIP
        >>> step_model(pixel_values=x).logits.shape  # doctest: +SKIP
        torch.Size([256, 2])
    """
    import torch

    register_attention_island()
    model.config._attn_implementation = ATTENTION_ISLAND
    return torch.compile(model, dynamic=False)


def patch_embedding_as_matmul(model):
    """Compute ViT's patch embedding as one matrix product instead of a strided convolution.

    A convolution whose kernel equals its stride is a matrix product over the flattened patches.
    cuDNN runs ViT-B/16's as a convolution at about 6.6 ms per 1024 images on an H100 (the
    profile in docs/BENCHMARKS.md), where the same multiply-adds as one GEMM take well under
    1 ms. The projection becomes a :class:`swan_anomaly.patch_embedding.PatchMatmul`, a ``Conv2d``
    subclass holding the same parameter objects under the same names, so the optimizer, the state
    dict, ``save_pretrained`` (which writes a plain checkpoint) and the scores stay the same: only
    the arithmetic's order differs (float32 outputs agree to about 1e-6). Hooks registered on the
    old projection are not carried over.

    Args:
        model: a ``ViTForImageClassification``; changed in place.

    Returns:
        The same model.

    Example:
        >>> model = patch_embedding_as_matmul(load_classifier(base))  # doctest: +SKIP
    """
    from swan_anomaly.patch_embedding import PatchMatmul

    patches = model.vit.embeddings.patch_embeddings
    projection = patches.projection
    if isinstance(projection, PatchMatmul):
        return model
    if (
        projection.kernel_size != projection.stride
        or projection.padding != (0, 0)
        or projection.dilation != (1, 1)
        or projection.groups != 1
    ):
        msg = f"patch embedding {projection} is not a plain patchify convolution (kernel == stride, no padding)"
        raise ValueError(msg)
    swapped = PatchMatmul(projection.in_channels, projection.out_channels, projection.kernel_size, stride=projection.stride, device="meta")
    swapped.weight, swapped.bias = projection.weight, projection.bias
    patches.projection = swapped.train(projection.training)
    return model


def gelu_in_gemm_epilogue(model) -> int:
    """Compute each MLP's first linear layer and its GELU as one GEMM with the GELU epilogue, for inference on CUDA.

    Each ``mlp.fc1`` becomes a :class:`swan_anomaly.gemm_epilogue.LinearGelu` holding the same
    parameter objects under the same names, and ``mlp.activation_fn`` an identity. cuBLASLt's
    epilogue computes GELU's tanh approximation, where ``google/vit-base-patch16-224`` and the
    offline presets use the exact GELU. On the realistic quality benchmark (the 128 px offline
    preset, in float32 on CPU: not ViT-B/16 in bfloat16) the tanh approximation moved the served
    model's scores by at most 2.8e-4, and no AUROC in the fourth decimal (``bench/quality.py
    --compare-served gelu-tanh``, docs/BENCHMARKS.md). A model whose activation is not the exact
    GELU is left as it is, and so is an MLP without a bias. Training never uses this.

    Args:
        model: a ``ViTForImageClassification``; changed in place.

    Returns:
        How many MLPs now run the fused GEMM (0 for a model left as it is, or already fused).

    Example:
        >>> gelu_in_gemm_epilogue(load_classifier(base))  # doctest: +SKIP
        12
    """
    import torch

    from swan_anomaly.gemm_epilogue import LinearGelu

    from transformers.activations import GELUActivation

    if getattr(model.config, "hidden_act", None) != "gelu":
        log.info("MLP activation %r is not the exact GELU: no GELU epilogue", getattr(model.config, "hidden_act", None))
        return 0
    fused = done = 0
    for mlp in [m for m in model.modules() if hasattr(m, "fc1") and hasattr(m, "activation_fn")]:
        if isinstance(mlp.fc1, LinearGelu):
            done += 1
            continue
        old, act = mlp.fc1, mlp.activation_fn
        exact = type(act) is GELUActivation or (type(act) is torch.nn.GELU and act.approximate == "none")
        if type(old) is not torch.nn.Linear or old.bias is None or not exact:
            continue
        new = LinearGelu(old.in_features, old.out_features, device="meta")
        new.weight, new.bias = old.weight, old.bias
        mlp.fc1, mlp.activation_fn = new.train(old.training), torch.nn.Identity()
        fused += 1
    if fused + done != model.config.num_hidden_layers:  # module names changed (another transformers): say so, serve unfused
        layers = model.config.num_hidden_layers
        log.warning("GELU epilogue in %d of %d MLPs: the others keep their GELU as a kernel of its own", fused + done, layers)
    return fused


def register_attention_island() -> None:
    """Register :data:`ATTENTION_ISLAND`: Hugging Face's SDPA attention behind ``torch.compiler.disable``."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register(ATTENTION_ISLAND, torch.compiler.disable(sdpa_attention_forward))


#: What the served model computes in on CPU (``SWAN_SERVING_CPU_PRECISION``; see :func:`prepare_for_inference`).
CPU_PRECISIONS = Settings.choices("serving_cpu_precision")


def is_compiled(model) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper (``int8`` on CPU, :func:`prepare_for_inference`): it compiles on its first calls."""
    import torch

    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule)


def quantize_int8(model) -> int:
    """Make each plain linear layer of ``model`` but the 2-class head an int8 GEMM (torchao); returns how many.

    torchao's ``Int8DynamicActivationInt8WeightConfig``: each weight row is quantized to int8 once,
    with a scale of its own, and each token's activations when it runs, with a scale per token, so
    a score does not depend on the other images of its batch. The head (a 768 x 2 product) keeps
    float32. Eager, torchao's int8 path is slower than float32 on a CPU: the speed comes from
    compiling it (:func:`prepare_for_inference`).

    Raises:
        ConfigError: torchao is not installed (``pip install torchao``, pinned in requirements.txt).
    """
    import torch

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        from swan_anomaly._errors import ConfigError

        msg = f"int8 serving (SWAN_SERVING_CPU_PRECISION=int8) needs torchao in the serving environment: {exc}"
        raise ConfigError(msg) from exc
    names = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and n.split(".")[-1] != "classifier"}
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda module, fqn: fqn in names)
    return len(names)


def warm_up(model, spec: PreprocessSpec, feature_layers: tuple[int, ...] | None = None) -> float:
    """Run ``model`` once on a batch of 2 blank images and once on 1, as :func:`predict_scores` will; returns the seconds.

    A compiled model (``int8`` on CPU, :func:`prepare_for_inference`) compiles here, at load, not on
    the first request: once for any batch of 2 or more, once more for single images.

    Raises:
        ConfigError: the model is compiled and this machine has no working C++ toolchain for Inductor
            (what a retry or another request would meet again). Other errors propagate as raised.
    """
    import time

    import torch

    started = time.perf_counter()
    try:
        for batch in (2, 1):
            forward_outputs(model, torch.zeros(batch, 3, spec.size, spec.size), feature_layers)
    except Exception as exc:
        said = (str(exc).strip().splitlines() or [""])[0][:500]
        chain, cause = [], exc
        while cause is not None and len(chain) < 10:  # Dynamo wraps Inductor's error (BackendCompilerFailed, InductorError)
            chain.append(f"{type(cause).__name__} {cause} {getattr(cause, 'details', '')}")  # a compile worker's error: its details
            cause = cause.__cause__ or cause.__context__
        toolchain = any(name in link for link in chain for name in ("InvalidCxxCompiler", "CppCompileError"))
        if not is_compiled(model) or not toolchain:
            raise  # not the toolchain: the error as torch raised it
        from swan_anomaly._errors import ConfigError

        msg = (
            f"compiling the served model failed ({type(exc).__name__}: {said}); SWAN_SERVING_CPU_PRECISION=int8 runs through "
            "torch.compile, which needs a working C++ compiler (g++, with Python's headers) on the serving machine: install one, "
            "or serve float32 or bfloat16"
        )
        raise ConfigError(msg) from exc
    return time.perf_counter() - started


def prepare_for_inference(model, device: str = "auto", *, cpu_precision: str = "float32"):
    """Put ``model`` in eval mode on ``device``; on CUDA also cast its weights to bfloat16 and patchify by one GEMM.

    On CPU the weights stay float32 by default, so CPU scores do not change; ``cpu_precision="bfloat16"``
    casts them too (oneDNN's bfloat16 kernels: 2.0x to 2.2x the images/s of a float32 ViT-B/16 on
    two cores with AVX512-BF16, docs/BENCHMARKS.md). ``cpu_precision="int8"`` makes the linear
    layers int8 GEMMs (:func:`quantize_int8`) and compiles the model for any batch size
    (``torch.compile(dynamic=True)``): 3.4x to 4.5x the images/s of float32 at ViT-B/16 on two AVX512-VNNI cores,
    once compiled (:func:`warm_up`; a minute or more on two cores). On CUDA, bfloat16 weights halve memory traffic
    and spare autocast its per-call weight casts, :func:`patch_embedding_as_matmul` replaces
    cuDNN's convolution (1.07x the compiled batch of 1024 on an H200), and :func:`gelu_in_gemm_epilogue`
    runs each MLP's GELU in its GEMM's epilogue (both: 1.18-1.21x, compiled; eager not measured). In bfloat16 scores differ from float32
    ones by up to about 4e-2 on a trained model, in int8 by up to about 6e-2, while its AUROC stays within 0.005
    (``bench/quality.py --compare-cpu-precision bfloat16|int8``).

    Args:
        model: a ``ViTForImageClassification``; moved in place.
        device: as for :func:`resolve_device`.
        cpu_precision: one of :data:`CPU_PRECISIONS`, on CPU (``SWAN_SERVING_CPU_PRECISION`` for the served model).

    Returns:
        The same model; for ``int8`` on CPU, its ``torch.compile`` wrapper (parameters, ``config``
        and state dict are the model's).

    Raises:
        ValueError: an unknown ``cpu_precision``.
        ConfigError: ``int8`` without torchao.

    Example:
        >>> model = prepare_for_inference(load_classifier(base), "cpu")  # doctest: +SKIP
        >>> next(model.parameters()).dtype                               # doctest: +SKIP
        torch.float32
    """
    import torch

    if cpu_precision not in CPU_PRECISIONS:
        msg = f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}; got {cpu_precision!r}"
        raise ValueError(msg)
    target = resolve_device(device)
    model = model.eval().to(target)
    if target.type != "cuda":
        if cpu_precision == "int8":
            log.info("int8 GEMMs in %d linear layers; compiled for any batch size on first use", quantize_int8(model))
            return torch.compile(model, dynamic=True)
        return model.to(torch.bfloat16) if cpu_precision == "bfloat16" else model
    gelu_in_gemm_epilogue(patch_embedding_as_matmul(model))
    return model.to(torch.bfloat16)


def normalize_pixels(pixels, spec: PreprocessSpec):
    """``[B, 3, S, S]`` uint8 ``pixels`` (a torch tensor, on any device) as the model's float32 input, on that device.

    The same values as :func:`swan_anomaly.images.normalize_into` (so :func:`~swan_anomaly.images.preprocess`) bit for bit: the same float32
    operations in the same order, each correctly rounded. The constants are tensors on
    ``pixels``' device because CUDA divides by a Python number as a multiplication by its
    reciprocal, which may differ in the last bit. Training keeps its images as uint8
    (:func:`swan_anomaly.images.decode_pixels`) and normalises each batch here, where the model runs.

    Example:
        >>> import torch
        >>> spec = PreprocessSpec(1, (0.5,) * 3, (0.5,) * 3)
        >>> normalize_pixels(torch.tensor([[[[0]], [[255]], [[51]]]], dtype=torch.uint8), spec).flatten().tolist()
        [-1.0, 1.0, -0.6000000238418579]
    """
    import torch

    if pixels.dtype != torch.uint8:  # normalised input normalised again would train on garbage without a word
        msg = f"normalize_pixels takes uint8 pixels (swan_anomaly.images.decode_pixels), got {pixels.dtype}"
        raise TypeError(msg)
    scale, mean, std = _normalization_constants(tuple(spec.mean), tuple(spec.std), pixels.device)
    x = pixels.to(torch.float32)  # uint8 to float32 is exact
    x /= scale
    x -= mean
    x /= std
    return x


@functools.lru_cache(maxsize=16)
def _normalization_constants(mean: tuple[float, ...], std: tuple[float, ...], device):
    """``(255, mean, std)`` as float32 ``[1, C, 1, 1]`` tensors on ``device``, made once: a host-to-device copy per
    training step would wait for the GPU to finish the step before it."""
    import torch

    def constant(values):
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    return constant([255.0]), constant(mean), constant(std)


def forward_logits(model, x):
    """Logits of one preprocessed batch, computed on the model's device in the model's dtype.

    A float32 model on CUDA runs under bfloat16 autocast; a bfloat16 model (see
    :func:`prepare_for_inference`) runs as it is; on CPU this is a plain float32 forward.
    :func:`predict_scores` (the served pyfunc), the training evaluation and the inference
    benchmark all go through here (or :func:`forward_outputs`), so their scores agree on the same device.

    Args:
        model: a ``ViTForImageClassification`` (or its ``torch.compile`` wrapper) in eval mode.
        x: ``[B, 3, S, S]`` float32 normalised pixels, on the host or on the model's device.

    Returns:
        ``[B, 2]`` float32 numpy logits (columns: abnormal, normal).

    Example:
        >>> forward_logits(model, torch.zeros(4, 3, 64, 64)).shape  # doctest: +SKIP
        (4, 2)
    """
    return forward_outputs(model, x)[0]


def forward_outputs(model, x, feature_layers: tuple[int, ...] | None = None):
    """One forward pass: ``([B, 2] float32 numpy logits, [B, P, D] float32 patch features on the model's device, or None)``.

    The patch features (:func:`swan_anomaly.novelty.patch_features` of the hidden states named by
    ``feature_layers``) come from the same pass as the logits; with ``feature_layers=None`` none
    are computed. Device and dtype as for :func:`forward_logits`.
    """
    import contextlib

    import torch

    param = next(model.parameters())
    on_cuda_fp32 = param.device.type == "cuda" and param.dtype == torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda_fp32 else contextlib.nullcontext()
    features = None
    with torch.inference_mode(), autocast:
        out = model(pixel_values=x.to(device=param.device, dtype=param.dtype, non_blocking=True), output_hidden_states=bool(feature_layers))
        if feature_layers:
            from swan_anomaly.novelty import patch_features

            features = patch_features(out.hidden_states, feature_layers)  # stays on the model's device
    return out.logits.float().cpu().numpy(), features


def patch_features_of(model, pixels, spec: PreprocessSpec, feature_layers: tuple[int, ...], batch_size: int = 64):
    """``[N, P, D]`` patch features (on the host) of ``pixels`` ``[N, 3, S, S]`` (uint8, as :func:`swan_anomaly.images.decode_pixels`
    gives them), batch by batch, each normalised on the model's device (model in eval mode)."""
    import torch

    model.eval()
    if len(pixels) == 0:
        return torch.zeros(0, 0, 0)
    return torch.cat([forward_outputs(model, x, feature_layers)[1].cpu() for x in normalized_batches(model, pixels, spec, batch_size)])


def normalized_batches(model, pixels, spec: PreprocessSpec, batch_size: int):
    """Yield each ``batch_size`` slice of uint8 ``pixels`` (on any device) moved to ``model``'s device and normalised there."""
    device = next(model.parameters()).device
    for i in range(0, len(pixels), batch_size):
        yield normalize_pixels(pixels[i : i + batch_size].to(device), spec)


def predict_scores(model, spec: PreprocessSpec, images: list[bytes], *, novelty=None, batch_size: int = 64, names: list[str] | None = None):
    """``(logits [N, 2] float32, novelty scores [N] float64 or None)`` for encoded images.

    The served pyfunc calls this: each batch is decoded and preprocessed with
    :func:`swan_anomaly.images.preprocess`, and one forward pass gives the logits and, when a
    :class:`swan_anomaly.novelty.NoveltyBank` is given, the patch features its scores come from.
    The model runs on its own device (see :func:`forward_logits`).
    """
    import numpy as np
    import torch

    from swan_anomaly.images import preprocess

    names = names or [f"image[{i}]" for i in range(len(images))]
    layers = tuple(novelty.layers) if novelty is not None else None
    logits, novel = [], []
    model.eval()
    for i in range(0, len(images), batch_size):
        x = preprocess(
            images[i : i + batch_size],
            size=spec.size,
            mean=spec.mean,
            std=spec.std,
            bias_x=spec.bias_x,
            bias_y=spec.bias_y,
            names=names[i : i + batch_size],
        )
        batch_logits, features = forward_outputs(model, torch.from_numpy(x), layers)
        logits.append(batch_logits)
        if novelty is not None:
            novel.append(novelty.scores(features))
    if not logits:
        return np.zeros((0, 2), dtype=np.float32), (np.zeros(0) if novelty is not None else None)
    return np.concatenate(logits), (np.concatenate(novel) if novelty is not None else None)
