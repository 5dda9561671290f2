"""A client of one Azure OpenAI vision chat deployment: settings, requests, errors and retries.

Wire protocol: the official ``openai`` SDK's ``AzureOpenAI`` client (pinned in requirements.txt),
i.e. ``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``
with an ``api-key`` header; each image goes as a ``data:image/jpeg;base64,...`` URL in an
``image_url`` content part (``detail: low``: the image is downscaled to at most ``max_side`` pixels
first by :func:`image_data_url`, so a request costs a fixed, small number of tokens). Throttling
(429, honouring ``Retry-After``) and 5xx answers are retried with exponential backoff by the SDK
(``max_retries``); every request has a timeout.

Errors, never showing the key:

* a rejected key (401/403) or a missing deployment (404) raises :class:`AzureOpenAIRefused`
  naming the endpoint and deployment: no request can succeed;
* any other answer without a reply (400, e.g. content filter; 429 or 5xx after the retries; a
  timeout or a dropped connection) raises :class:`AzureOpenAIRequestFailed`, whose
  ``service_down`` says whether further requests would fail the same way (throttled or unavailable).

Example:
    >>> config = AzureOpenAIConfig(endpoint="https://res.openai.azure.com", deployment="gpt-4o-mini", api_key=key)  # doctest: +SKIP
    >>> with VisionChatClient(config) as client:                                                               # doctest: +SKIP
    ...     client.ask_about_image(image_data_url(png, name="f.png"), system="One word.", question="Animal?", max_tokens=5)
    'Swan'
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from typing import Any

from swan_anomaly._errors import AzureOpenAIRefused, AzureOpenAIRequestFailed, ConfigError

DEFAULT_API_VERSION = "2024-10-21"
#: Hosts a plain-http endpoint may name: the key never leaves this machine (a local proxy or test double).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class AzureOpenAIConfig:
    """Where and how to reach the Azure OpenAI deployment.

    Args:
        endpoint: resource endpoint, ``https://<resource>.openai.azure.com``.
        deployment: name of a vision-capable chat deployment (e.g. ``gpt-4o-mini``).
        api_key: the resource key; kept out of ``repr`` and of every message.
        api_version: Azure OpenAI data-plane API version.
        timeout_s: per-request timeout in seconds.
        max_retries: retries of throttled (429), 5xx, timed-out and dropped requests.
        source: where these settings come from, named in error messages
            (e.g. ``"Airflow connection 'swan_label_check'"``).
    """

    endpoint: str
    deployment: str
    api_key: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    timeout_s: float = 30.0
    max_retries: int = 3
    source: str = ""

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting that cannot work."""
        where = f" ({self.source})" if self.source else ""
        if not re.match(r"^https?://[^/\s]+", self.endpoint or ""):
            msg = f"label check endpoint must be an http(s) URL such as https://<resource>.openai.azure.com, got {self.endpoint!r}{where}"
            raise ConfigError(msg)
        if self.endpoint.lower().startswith("http://") and urlsplit(self.endpoint).hostname not in LOOPBACK_HOSTS:
            msg = (
                f"label check endpoint {self.endpoint!r}{where} is plain http: every request carries the API key, so it must be "
                "https://<resource>.openai.azure.com (http:// is accepted for this machine only: localhost, 127.0.0.1, ::1)"
            )
            raise ConfigError(msg)
        if not self.deployment:
            msg = f"label check needs the name of an Azure OpenAI deployment{where}"
            raise ConfigError(msg)
        if not self.api_key:
            msg = f"label check has no API key for {self.endpoint}{where}; set the key of the Azure OpenAI resource"
            raise ConfigError(msg)
        if self.timeout_s <= 0 or self.max_retries < 0:
            msg = f"label check needs timeout_s > 0 and max_retries >= 0, got {self.timeout_s} and {self.max_retries}{where}"
            raise ConfigError(msg)


def image_data_url(data: bytes, *, name: str, max_side: int = 512) -> str:
    """A ``data:image/jpeg;base64,...`` URL of the image, downscaled to at most ``max_side`` pixels.

    Raises:
        ImageDecodeError: the bytes are not a decodable image.
    """
    import cv2

    from swan_anomaly.images import decode_image, encode_jpeg

    image = decode_image(data, name=name)  # [H, W, 3] uint8 RGB
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality=90)).decode("ascii")


class VisionChatClient:
    """Chat completions with one image of an Azure OpenAI deployment; a context manager (closes its HTTP client).

    One client may be shared by threads. The ``openai`` SDK is imported on first use.
    """

    def __init__(self, config: AzureOpenAIConfig) -> None:
        import openai

        self.config = config
        self._client = openai.AzureOpenAI(
            azure_endpoint=config.endpoint,
            azure_deployment=config.deployment,
            api_version=config.api_version,
            api_key=config.api_key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    def __enter__(self) -> VisionChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the SDK's HTTP client."""
        self._client.close()

    def ask_about_image(self, image_url: str, *, system: str, question: str, max_tokens: int) -> str:
        """The model's reply (``""`` when it has none) to ``question`` about one image, at temperature 0.

        Args:
            image_url: the image as a data URL (:func:`image_data_url`), sent with ``detail: low``.
            system: the system prompt.
            question: the user's text, sent with the image.
            max_tokens: the longest reply, in tokens.

        Raises:
            AzureOpenAIRefused: the key was refused (401/403) or there is no such deployment (404).
            AzureOpenAIRequestFailed: no reply to this request (see the module's docstring).
        """
        import openai

        config, key = self.config, self.config.api_key
        where = f"deployment '{config.deployment}' at {config.endpoint} (api-version {config.api_version})"
        hint = f" in {config.source}" if config.source else ""
        messages = [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": image_url, "detail": "low"}},
                ],
            },
        ]
        try:
            completion = self._client.chat.completions.create(
                model=config.deployment, messages=messages, max_tokens=max_tokens, temperature=0
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            msg = (
                f"Azure OpenAI refused the API key ({err.status_code}: {_service_message(err, key)}) for {where}. "
                f"Set a valid key of this resource{hint} (Azure portal: the resource's 'Keys and Endpoint')."
            )
            raise AzureOpenAIRefused(msg) from None
        except openai.NotFoundError as err:
            msg = (
                f"Azure OpenAI has no {where} (404: {_service_message(err, key)}). "
                f"Check the endpoint, the deployment name and the api_version{hint}."
            )
            raise AzureOpenAIRefused(msg) from None
        except openai.APIStatusError as err:
            msg = f"{err.status_code}: {_service_message(err, key)}"
            raise AzureOpenAIRequestFailed(msg, service_down=err.status_code == 429 or err.status_code >= 500) from None
        except openai.APIConnectionError as err:  # timeouts included, after the SDK's retries
            msg = f"{type(err).__name__}: cannot reach {config.endpoint}"
            raise AzureOpenAIRequestFailed(msg, service_down=True) from None
        choices = completion.choices
        return (choices[0].message.content or "") if choices else ""


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _service_message(err: Any, secret: str) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        code = inner.get("code") if isinstance(inner, dict) else None
        text = f"{code}: {message}" if code and message else str(message or body)
    else:
        text = type(err).__name__
    return _redact(text, secret)[:300]
