"""All exceptions raised by ``swan_anomaly``, in one place to avoid import loops.

Every error says what failed, the offending value, and what to do next.

* SwanError
  x ConfigError             a setting is missing, malformed or contradicts another (also a ValueError)
      x OutdatedServer      the model server at the endpoint's URL runs swan-anomaly from before the /health proof
  x VideoError              a landing-zone video cannot be read or yields no frames
  x ImageDecodeError        image bytes are not a decodable image
  x LabelManifestError      the label manifest has the wrong schema, an unknown label or a duplicate
  x LakeError               the lake is missing a file or a partition is incomplete
  x JobError                a job entrypoint could not do its work
  x ValidationDataError     a split has no anomalies or no normals, so metrics would be meaningless
  x EndpointError           the serving endpoint did not come up, refused a config, or answered badly
      x EndpointBusy        it answered 429/502/503/504 (or nothing) for longer than the retry budget
  x LabelCheckError         the label check could not run (bad key, unknown deployment, unusable settings)
  x LabelCheckFailed        in ``fail`` mode, sampled normal frames were not what the scene should show
  x AzureOpenAIRefused      Azure OpenAI refused the key or has no such deployment: no request can succeed
  x AzureOpenAIRequestFailed one Azure OpenAI request got no reply after its retries

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


class OutdatedServer(ConfigError):
    """The model server at the endpoint's URL runs a version of swan-anomaly from before the /health proof."""


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


class EndpointBusy(EndpointError):
    """The endpoint answered 429/502/503/504 (or did not answer) for longer than the retry budget."""


class LabelCheckError(SwanError):
    """The label check could not run: bad key, unknown deployment or endpoint, unusable settings."""


class LabelCheckFailed(SwanError):
    """In ``fail`` mode, sampled normal frames were not recognised as the expected subject."""


class AzureOpenAIRefused(SwanError):
    """The service refused the API key (401/403) or has no such deployment (404): no request can succeed."""


class AzureOpenAIRequestFailed(SwanError):
    """One request got no reply: refused (400), throttled or failing (429/5xx) after the retries, or unreachable.

    Attributes:
        service_down: the service was throttling, failing or unreachable, so further requests would fail too.
    """

    def __init__(self, message: str, *, service_down: bool) -> None:
        super().__init__(message)
        self.service_down = service_down
