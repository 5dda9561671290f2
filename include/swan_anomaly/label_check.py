"""Optional label check: ask a vision chat model what a seeded sample of *normal* frames show.

The inspiring project asked GPT-4o-mini "what animal is in this frame?" for every frame, inline,
and trusted the answer. Here the model is only a sanity check of the normal class (swans on
water): a small, seeded sample of frames labelled normal is shown to an Azure OpenAI vision
deployment with a strict one-word prompt, and frames whose answer is not the expected one are
reported. It never labels anything, it is off by default, and in ``warn`` mode it never fails
the pipeline.

Wire protocol: the official ``openai`` SDK's ``AzureOpenAI`` client (pinned in requirements.txt),
i.e. ``POST {endpoint}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``
with an ``api-key`` header; each image goes as a ``data:image/jpeg;base64,...`` URL in an
``image_url`` content part (``detail: low``: the frame is downscaled to at most ``max_side`` pixels
first, so a request costs a fixed, small number of tokens). Throttling (429, honouring
``Retry-After``) and 5xx answers are retried with exponential backoff by the SDK
(``max_retries``); every request has a timeout.

Outcomes:

* a rejected key (401/403) or a missing deployment (404) raises :class:`LabelCheckError` naming the
  endpoint and deployment (never the key), in every mode: nothing can be checked;
* a frame the service refuses (400, e.g. content filter) or cannot answer after the retries is
  reported under ``errors``; after a throttled/unavailable answer no further frames are sent;
* frames whose answer is not an expected one are ``mismatches``: ``warn`` logs them,
  ``fail`` raises :class:`LabelCheckFailed` listing the first ones (and also when frames errored).

Example:
    >>> config = AzureOpenAIConfig(endpoint="https://res.openai.azure.com", deployment="gpt-4o-mini", api_key=key)  # doctest: +SKIP
    >>> report = check_labels(["frames/v1/frame_00000.png"], read_frame, client_config=config, seed=42)        # doctest: +SKIP
    >>> report.mismatches, report.to_dict()["answers"]                                                          # doctest: +SKIP
    ([], {'frames/v1/frame_00000.png': 'swan'})
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from swan_anomaly._errors import ConfigError, ImageDecodeError, SwanError

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "2024-10-21"
DEFAULT_EXPECTED = ("swan",)
SYSTEM_PROMPT = (
    "You check the labels of an image dataset. Reply with exactly one lowercase English word, "
    "singular, with no punctuation and nothing else."
)
DEFAULT_QUESTION = (
    "What animal is the main subject of this image? Name it as specifically as you can "
    "(its common name). If no animal is visible, reply: none."
)
#: How many mismatching files an error or warning message lists.
LISTED = 10


class LabelCheckError(SwanError):
    """The label check could not run: bad key, unknown deployment or endpoint, unusable settings."""


class LabelCheckFailed(SwanError):
    """In ``fail`` mode, sampled normal frames were not recognised as the expected subject."""


class LabelCheckMode(StrEnum):
    """What a finished check does with mismatches: ``warn`` logs them, ``fail`` raises."""

    WARN = "warn"
    FAIL = "fail"


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
        if not self.deployment:
            msg = f"label check needs the name of an Azure OpenAI deployment{where}"
            raise ConfigError(msg)
        if not self.api_key:
            msg = f"label check has no API key for {self.endpoint}{where}; set the key of the Azure OpenAI resource"
            raise ConfigError(msg)
        if self.timeout_s <= 0 or self.max_retries < 0:
            msg = f"label check needs timeout_s > 0 and max_retries >= 0, got {self.timeout_s} and {self.max_retries}{where}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class ImageAnswer:
    """The model's answer for one frame.

    Attributes:
        path: the frame's path as given (relative to the dataset).
        answer: the normalised one-word answer, ``None`` when there is none (see ``error``).
        raw: the model's reply as received (at most 80 characters).
        matches: whether ``answer`` is an expected one.
        error: why the frame has no answer (refused, unreadable, service unavailable).
    """

    path: str
    answer: str | None
    raw: str | None = None
    matches: bool = False
    error: str | None = None


@dataclass(frozen=True)
class LabelCheckReport:
    """What the label check found. ``to_dict()`` is small and JSON-able (for XCom)."""

    endpoint: str
    deployment: str
    expected: tuple[str, ...]
    mode: LabelCheckMode
    candidates: int
    answers: tuple[ImageAnswer, ...]

    @property
    def mismatches(self) -> list[str]:
        """Paths of frames answered with something other than an expected word."""
        return [a.path for a in self.answers if a.error is None and not a.matches]

    @property
    def errors(self) -> list[str]:
        """Paths of frames left without an answer."""
        return [a.path for a in self.answers if a.error is not None]

    def to_dict(self) -> dict[str, Any]:
        answered = [a for a in self.answers if a.error is None]
        return {
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "expected": list(self.expected),
            "mode": str(self.mode),
            "candidates": self.candidates,
            "sampled": len(self.answers),
            "answered": len(answered),
            "mismatched": len(self.mismatches),
            "errored": len(self.errors),
            "answer_counts": dict(Counter(a.answer for a in answered).most_common()),
            "mismatches": self.mismatches,
            "errors": {a.path: a.error for a in self.answers if a.error is not None},
            "answers": {a.path: a.answer for a in answered},
        }

    def summary(self) -> str:
        """One line: counts, and the first mismatching frames with their answers."""
        by_path = {a.path: a.answer for a in self.answers}
        listed = ", ".join(f"{p} ({by_path[p]!r})" for p in self.mismatches[:LISTED])
        more = f" and {len(self.mismatches) - LISTED} more" if len(self.mismatches) > LISTED else ""
        text = (
            f"label check via deployment '{self.deployment}' at {self.endpoint}: {len(self.mismatches)} of "
            f"{len(self.answers)} sampled normal frames are not {'/'.join(self.expected)}"
        )
        if self.mismatches:
            text += f": {listed}{more}"
        errored = [a for a in self.answers if a.error is not None]
        if errored:
            text += f"; {len(errored)} frame(s) without an answer, e.g. {errored[0].path}: {errored[0].error}"
        return text


def choose_sample(keys: Sequence[str], *, sample_size: int, seed: int) -> list[str]:
    """A seeded sample of ``keys``, sorted.

    Each key is ranked by ``sha256(seed, key)``, so the choice depends neither on the input order
    nor on the process, and sampling a sample again returns it unchanged.
    """
    ranked = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}\x00{k}".encode()).digest())
    return sorted(ranked[:sample_size])


def normalise_answer(text: str | None) -> str | None:
    """The first word of a reply, lowercased, without punctuation (``" Swan."`` -> ``"swan"``)."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", (text or "").lower())
    return words[0] if words else None


def _matches(answer: str | None, expected: tuple[str, ...]) -> bool:
    if answer is None:
        return False
    return answer in expected or (answer.endswith("s") and answer[:-1] in expected)


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


def check_labels(
    paths: Sequence[str],
    read: Callable[[str], bytes],
    *,
    client_config: AzureOpenAIConfig,
    seed: int,
    expected: str | Sequence[str] = DEFAULT_EXPECTED,
    question: str = DEFAULT_QUESTION,
    sample_size: int = 20,
    mode: LabelCheckMode | str = LabelCheckMode.WARN,
    max_side: int = 512,
    max_workers: int = 4,
) -> LabelCheckReport:
    """Ask the vision deployment what a seeded sample of normal frames show.

    Args:
        paths: the frames labelled normal; the sample is drawn from them with :func:`choose_sample`.
        read: the encoded bytes of a frame, given its path; called for the sampled frames only.
        client_config: endpoint, deployment, key, API version, timeout and retries.
        seed: seed of the sample (the run's seed).
        expected: accepted one-word answer(s), lowercase; a plural (``swans``) counts too.
        question: the question shown with each image; the system prompt demands one lowercase word.
        sample_size: how many frames to ask about (at least 1).
        mode: ``warn`` logs mismatches; ``fail`` raises :class:`LabelCheckFailed`.
        max_side: frames are downscaled to at most this many pixels per side before sending.
        max_workers: concurrent requests.

    Returns:
        The report: per-frame answers, mismatches and errors.

    Raises:
        ConfigError: unusable settings.
        LabelCheckError: the service refused the key (401/403) or has no such deployment (404).
        LabelCheckFailed: in ``fail`` mode, frames mismatched or got no answer.
    """
    accepted = tuple(e.strip().lower() for e in ([expected] if isinstance(expected, str) else expected) if e.strip())
    try:
        mode = LabelCheckMode(mode)
    except ValueError:
        msg = f"label check mode must be one of {[m.value for m in LabelCheckMode]}, got {mode!r}"
        raise ConfigError(msg) from None
    if not accepted:
        msg = f"label check needs at least one expected answer, got {expected!r}"
        raise ConfigError(msg)
    if sample_size < 1 or max_workers < 1 or max_side < 32:
        msg = f"label check needs sample_size >= 1, max_workers >= 1 and max_side >= 32, got {sample_size}, {max_workers}, {max_side}"
        raise ConfigError(msg)
    client_config.validate()

    sample = choose_sample(list(paths), sample_size=sample_size, seed=seed)
    by_path = {path: read(path) for path in sample}
    asked = _ask_all(sample, by_path, client_config, question=question, accepted=accepted, max_side=max_side, max_workers=max_workers)
    report = LabelCheckReport(
        endpoint=client_config.endpoint,
        deployment=client_config.deployment,
        expected=accepted,
        mode=mode,
        candidates=len(paths),
        answers=tuple(asked[p] for p in sample),
    )
    if not sample:
        log.warning("label check: no normal frames to check")
    elif report.mismatches or report.errors:
        if mode is LabelCheckMode.FAIL:
            msg = report.summary() + ". Inspect these frames; set the label check mode to 'warn' to only log this."
            raise LabelCheckFailed(msg)
        log.warning(report.summary())
    else:
        log.info(report.summary())
    return report


def _ask_all(
    sample: list[str],
    by_path: dict[str, bytes],
    config: AzureOpenAIConfig,
    *,
    question: str,
    accepted: tuple[str, ...],
    max_side: int,
    max_workers: int,
) -> dict[str, ImageAnswer]:
    import openai

    stop = threading.Event()  # set once the service is throttling or down: stop sending frames
    key = config.api_key
    where = f"deployment '{config.deployment}' at {config.endpoint} (api-version {config.api_version})"
    hint = f" in {config.source}" if config.source else ""

    def ask(client: openai.AzureOpenAI, path: str) -> ImageAnswer:
        if stop.is_set():
            return ImageAnswer(path, None, error="not asked: the service was throttling or unavailable")
        try:
            url = image_data_url(by_path[path], name=path, max_side=max_side)
        except ImageDecodeError as exc:
            return ImageAnswer(path, None, error=str(exc))
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            },
        ]
        try:
            completion = client.chat.completions.create(model=config.deployment, messages=messages, max_tokens=5, temperature=0)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            stop.set()
            msg = (
                f"Azure OpenAI refused the API key ({err.status_code}: {_service_message(err, key)}) for {where}. "
                f"Set a valid key of this resource{hint} (Azure portal: the resource's 'Keys and Endpoint')."
            )
            raise LabelCheckError(msg) from None
        except openai.NotFoundError as err:
            stop.set()
            msg = (
                f"Azure OpenAI has no {where} (404: {_service_message(err, key)}). "
                f"Check the endpoint, the deployment name and the api_version{hint}."
            )
            raise LabelCheckError(msg) from None
        except openai.APIStatusError as err:
            if err.status_code == 429 or err.status_code >= 500:
                stop.set()
            return ImageAnswer(path, None, error=f"{err.status_code}: {_service_message(err, key)}")
        except openai.APIConnectionError as err:  # timeouts included, after the SDK's retries
            stop.set()
            return ImageAnswer(path, None, error=f"{type(err).__name__}: cannot reach {config.endpoint}")
        choices = completion.choices
        raw = (choices[0].message.content or "") if choices else ""
        answer = normalise_answer(raw)
        return ImageAnswer(path, answer, raw=raw[:80], matches=_matches(answer, accepted))

    answers: dict[str, ImageAnswer] = {}
    with (
        openai.AzureOpenAI(
            azure_endpoint=config.endpoint,
            azure_deployment=config.deployment,
            api_version=config.api_version,
            api_key=key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        ) as client,
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="label-check") as pool,
    ):
        futures = {path: pool.submit(ask, client, path) for path in sample}
        try:
            for path, future in futures.items():
                answers[path] = future.result()
        except LabelCheckError:
            pool.shutdown(cancel_futures=True)
            raise
    return answers
