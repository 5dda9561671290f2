"""The served model: an MLflow pyfunc that takes image bytes and returns logits and anomaly scores.

Input: a DataFrame with one column ``image`` (bytes; over REST, base64 strings, which MLflow's
scoring server decodes because the signature says ``binary``). Any size, JPEG or PNG: the
pyfunc applies the same crop, resize and normalisation as training
(:func:`swan_anomaly.modeling.predict_scores`). It runs on the GPU (bfloat16 weights) when the
host has one, else on the CPU in float32, or in the precision ``SWAN_SERVING_CPU_PRECISION`` names
(``bfloat16``, ``int8``) when it loads. :func:`swan_anomaly.scoring.registry_scorer`, the registry's own
scores, always loads it in float32.

Output: one row per image with ``logits`` ``[l0, l1]``, ``anomaly_score = softmax(logits)[0]`` and,
for models that carry a novelty bank (every version trained since it exists), ``novelty_score``:
how far the image's least normal patch lies from the normal training patches, 1 at its decision
boundary (:mod:`swan_anomaly.novelty`). The decision is ``anomaly_score >= threshold`` (the
model's ``swan_threshold.json``) or ``novelty_score >= 1``.

Example:
    >>> model = mlflow.pyfunc.load_model("models:/swan_anomaly_vit@champion")            # doctest: +SKIP
    >>> model.predict(pd.DataFrame({"image": [open("frame.jpg", "rb").read()]}))        # doctest: +SKIP
       logits                    anomaly_score  novelty_score
    0  [2.31, -1.92]             0.9857         1.43
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import threading
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from swan_anomaly.config import Settings
from swan_anomaly.contract import NOVELTY_COLUMN  # absent from the output of models logged without a novelty bank

PREPROCESS_FILE = "swan_preprocess.json"
#: The decision threshold chosen on validation: ``{"threshold", "method", "chosen_on"}``.
THRESHOLD_FILE = "swan_threshold.json"
INPUT_COLUMN = "image"
#: The served model's CPU precision (``Settings.serving_cpu_precision``), read when the pyfunc loads.
CPU_PRECISION_VARIABLE = Settings.variable("serving_cpu_precision")
log = logging.getLogger(__name__)
_ENVIRONMENT_LOCK = threading.RLock()


def _as_bytes(value, row: int) -> bytes:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            msg = f"row {row}: 'image' is not valid base64 ({exc})"
            raise MlflowException(msg, error_code=INVALID_PARAMETER_VALUE) from exc
    msg = f"row {row}: 'image' must be bytes or a base64 string, got {type(value).__name__}"
    raise MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)


@contextlib.contextmanager
def as_registered():
    """Inside this block the pyfunc loads as the registry holds it: in float32 on CPU, whatever ``SWAN_SERVING_CPU_PRECISION`` says.

    The setting is the endpoint's, and it reaches the Airflow worker and the training job too. What they
    load (the gate's and the endpoint validation's reference scores, MLflow's check of the input example
    when the model is logged) must be the registry's model, not a bfloat16 or int8 copy compiled there.
    Every version's pyfunc reads the variable when it loads, so this holds for versions logged before
    this block existed too.
    """
    with _ENVIRONMENT_LOCK:  # the variable is the process's: one such block at a time
        before = os.environ.get(CPU_PRECISION_VARIABLE)
        os.environ[CPU_PRECISION_VARIABLE] = "float32"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(CPU_PRECISION_VARIABLE, None)
            else:
                os.environ[CPU_PRECISION_VARIABLE] = before


class SwanAnomalyModel(mlflow.pyfunc.PythonModel):
    """ViT anomaly scorer with its preprocessing inside."""

    def load_context(self, context) -> None:
        import torch

        from swan_anomaly.modeling import PreprocessSpec, is_compiled, load_classifier, prepare_for_inference, warm_up
        from swan_anomaly.novelty import NoveltyBank

        torch.set_num_threads(max(1, torch.get_num_threads()))
        model_dir = context.artifacts["model_dir"]
        # GPU (bfloat16) when there is one, else CPU in SWAN_SERVING_CPU_PRECISION (float32 unless the endpoint says otherwise;
        # the worker's and the training job's loads set it to float32: as_registered)
        precision = Settings.from_env().serving_cpu_precision
        self.model = prepare_for_inference(load_classifier(model_dir), cpu_precision=precision)
        self.spec = PreprocessSpec.from_json((Path(model_dir) / PREPROCESS_FILE).read_text())
        self.novelty = NoveltyBank.load(Path(model_dir))  # None for a model logged without one
        if self.novelty is not None:
            self.novelty.to(next(self.model.parameters()).device)  # distances where the features are: on the GPU when there is one
        if is_compiled(self.model):  # int8 on CPU: compiled now, not on the first request
            log.info("compiling the served model (SWAN_SERVING_CPU_PRECISION=%s); this takes a minute or more on a few cores", precision)
            seconds = warm_up(self.model, self.spec, tuple(self.novelty.layers) if self.novelty is not None else None)
            log.info("served model compiled in %.0fs", seconds)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from swan_anomaly._errors import ImageDecodeError
        from swan_anomaly.metrics import anomaly_scores
        from swan_anomaly.modeling import predict_scores

        if INPUT_COLUMN not in model_input.columns:
            msg = f"input needs a column {INPUT_COLUMN!r} of image bytes; got columns {list(model_input.columns)}"
            raise MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)
        images = [_as_bytes(v, i) for i, v in enumerate(model_input[INPUT_COLUMN])]
        try:
            logits, novelty = predict_scores(
                self.model, self.spec, images, novelty=self.novelty, names=[f"row {i}" for i in range(len(images))]
            )
        except ImageDecodeError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        out = pd.DataFrame({"logits": [row.tolist() for row in logits], "anomaly_score": anomaly_scores(logits).tolist()})
        if novelty is not None:
            out[NOVELTY_COLUMN] = novelty.tolist()
        return out


def signature(*, novelty: bool = True):
    """Input: ``image`` binary; output: ``logits`` array of doubles, ``anomaly_score`` and ``novelty_score`` doubles."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        outputs=Schema(
            [ColSpec(Array(DataType.double), "logits"), ColSpec(DataType.double, "anomaly_score")]
            + ([ColSpec(DataType.double, NOVELTY_COLUMN)] if novelty else [])
        ),
    )
