"""swan_anomaly: the domain library of the swan-anomaly pipeline (no Airflow imports).

Modules, by concept:

* ``video``: video identity and probing (``video.probe``), frame extraction with OpenCV (``video.frames``), the
  procedural demo video (``video.demo``)
* ``contract``: the names every layer shares (class ids, family names, crop bias), no heavy imports
* ``anomalies``: seeded synthetic anomaly families (geometry, textures, the families, planning, preview grid)
* ``labels``: the label manifest (build, validate, read, write)
* ``splits``: train/val/test by source group
* ``images``: decode, center-biased crop, area resize, JPEG, normalisation (the one preprocessing path)
* ``lake``: the lake layout, idempotent dataset upload, training windows (``load_gold``), and the ``Lake``
  protocol both lakes satisfy; ``digests``: the sha256 of a file
* ``etl`` / ``augment``: the Spark jobs (import pyspark)
* ``modeling``: the ViT classifier; ``trainer``: its training loop; ``tracking``: MLflow for the training job;
  ``training``: the training job; ``generalization``: the leave-one-family-out report
* ``metrics`` / ``evaluation``: anomaly metrics with intervals, evaluation figures
* ``novelty``: the novelty score, a memory bank of normal training patches served beside ``anomaly_score``
* ``registry`` / ``gate``: MLflow registration, aliases and the promotion gate
* ``scoring``: held-out raw images through registered models and endpoints, batch by batch
* ``label_check`` / ``azure_openai``: the optional label check by a vision model, and its Azure OpenAI client
* ``serving``: the MLflow pyfunc, the local model server, the endpoint client and the endpoint validation
* ``config``: every setting, typed, read from the environment (``Settings``); ``redact``: credentials masked in
  what people and logs see
* ``quality``: the quality benchmark's footage and unseen anomaly kinds (``bench/quality.py``; not the pipeline)

Only light names are re-exported here; heavy modules (torch, pyspark, mlflow) load on use.
"""

import logging as _logging

from swan_anomaly._errors import (
    ConfigError,
    EndpointBusy,
    EndpointError,
    ImageDecodeError,
    JobError,
    LabelManifestError,
    LakeError,
    SwanError,
    ValidationDataError,
    VideoError,
)
from swan_anomaly.config import Settings

# torchao (pinned for FP8 training) is imported by transformers wherever it is installed, so by every job, server and
# task that loads a model. Its import warns that optional C++ kernels built for another Python or GPU (MX formats,
# CUTLASS for sm90a) did not load, and torch warns about its pytree registrations: nothing this package uses. Errors
# still show.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__all__ = [
    "ConfigError",
    "EndpointBusy",
    "EndpointError",
    "ImageDecodeError",
    "JobError",
    "LabelManifestError",
    "LakeError",
    "Settings",
    "SwanError",
    "ValidationDataError",
    "VideoError",
]
