"""Optional label check: ask a vision chat model what a seeded sample of *normal* frames show.

The earlier swan pipeline this project was modelled on (docs/architecture.md, "Where this design comes from")
asked GPT-4o-mini "what animal is in this frame?" for every frame, inline, and trusted the answer.
Here the model is only a sanity check of the normal class (swans on water): a small, seeded
sample of frames labelled normal is shown to an Azure OpenAI vision deployment with a strict
one-word prompt, and frames whose answer is not the expected one are
reported. It never labels anything, it is off by default, and in ``warn`` mode it never fails
the pipeline.

The HTTP client (settings, wire protocol, retries, service errors) is
:mod:`swan_anomaly.azure_openai`; this module samples the frames, asks, and judges the answers.

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

import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from swan_anomaly._errors import (
    AzureOpenAIRefused,
    AzureOpenAIRequestFailed,
    ConfigError,
    ImageDecodeError,
    LabelCheckError,
    LabelCheckFailed,
)
from swan_anomaly.azure_openai import AzureOpenAIConfig, VisionChatClient, image_data_url

log = logging.getLogger(__name__)

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


class LabelCheckMode(StrEnum):
    """What a finished check does with mismatches: ``warn`` logs them, ``fail`` raises."""

    WARN = "warn"
    FAIL = "fail"


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
    stop = threading.Event()  # set once the service is throttling or down: stop sending frames

    def ask(client: VisionChatClient, path: str) -> ImageAnswer:
        if stop.is_set():
            return ImageAnswer(path, None, error="not asked: the service was throttling or unavailable")
        try:
            url = image_data_url(by_path[path], name=path, max_side=max_side)
        except ImageDecodeError as exc:
            return ImageAnswer(path, None, error=str(exc))
        try:
            raw = client.ask_about_image(url, system=SYSTEM_PROMPT, question=question, max_tokens=5)
        except AzureOpenAIRefused as err:
            stop.set()
            raise LabelCheckError(str(err)) from None
        except AzureOpenAIRequestFailed as err:
            if err.service_down:
                stop.set()
            return ImageAnswer(path, None, error=str(err))
        answer = normalise_answer(raw)
        return ImageAnswer(path, answer, raw=raw[:80], matches=_matches(answer, accepted))

    answers: dict[str, ImageAnswer] = {}
    with (
        VisionChatClient(config) as client,
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
