"""swan_anomaly: the domain library of the swan-anomaly pipeline (no Airflow imports).

Modules, by concept:

* ``video``: video identity, frame extraction (OpenCV), the procedural demo video
* ``anomalies``: seeded synthetic anomaly families
* ``labels``: the label manifest (build, validate, read, write)
* ``splits``: train/val/test by source group
* ``images``: decode, center-biased crop, area resize, JPEG, normalisation (the one preprocessing path)
* ``lake``: the lake layout and idempotent dataset upload
* ``etl`` / ``augment``: the Spark jobs (import pyspark)
* ``modeling`` / ``training`` / ``metrics``: the ViT classifier, its training loop, anomaly metrics
* ``registry`` / ``gate``: MLflow registration, aliases and the promotion gate
* ``scoring``: held-out raw images through registered models and endpoints, batch by batch
* ``serving``: the MLflow pyfunc, the local model server, the endpoint client and the endpoint validation
* ``config``: settings of the embedded default

Only light names are re-exported here; heavy modules (torch, pyspark, mlflow) load on use.
"""

from swan_anomaly._errors import (
    ConfigError,
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

__all__ = [
    "ConfigError",
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
