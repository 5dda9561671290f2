"""All exceptions raised by ``swan_anomaly``, in one place to avoid import loops.

Every error says what failed, the offending value, and what to do next.

* SwanError
  x VideoError              a landing-zone video cannot be read or yields no frames
  x ImageDecodeError        image bytes are not a decodable image
  x LabelManifestError      the label manifest has the wrong schema, an unknown label or a duplicate
  x LakeError               the lake is missing a file or a partition is incomplete
  x JobError                a job entrypoint could not do its work
  x ValidationDataError     a split has no anomalies or no normals, so metrics would be meaningless
  x EndpointError           the serving endpoint did not come up, refused a config, or answered badly

(A gate that refuses or an endpoint validation that fails is a decision, not an error of this
package: the Airflow steps record it and fail their task without retries.)

Example:
    >>> from swan_anomaly import SwanError, VideoError
    >>> issubclass(VideoError, SwanError)
    True
"""

from __future__ import annotations


class SwanError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SwanError, ValueError):
    """A setting is missing, malformed, or contradicts another."""


class VideoError(SwanError):
    """A video cannot be opened, decoded, or yields no frames."""


class ImageDecodeError(SwanError):
    """Bytes that should be an image cannot be decoded."""


class LabelManifestError(SwanError):
    """The label manifest breaks its contract (schema, label values, uniqueness)."""


class LakeError(SwanError):
    """The lake is missing data or a partition is incomplete."""


class JobError(SwanError):
    """A job entrypoint failed."""


class ValidationDataError(SwanError):
    """The evaluation data cannot support the metric (e.g. no anomalies in a split)."""


class EndpointError(SwanError):
    """The serving endpoint misbehaved."""
