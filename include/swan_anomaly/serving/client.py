"""Invocations of a serving endpoint over REST: the local endpoint and Databricks Model Serving alike.

The endpoint's config is changed through databricks-sdk (:mod:`swan_anomaly.serving.deploy`);
this client only scores images, so validation is one client with two base URLs. Given a
databricks-sdk ``WorkspaceClient`` (the Databricks backend), it scores through
``serving_endpoints.query``, so it inherits the SDK's authentication (personal access tokens,
OAuth machine-to-machine, Azure AD) and its retries; otherwise (the local model server) it posts
with httpx and the bearer token.

Answers that say "busy or not ready yet" (408, 429, 502, 503, 504), timeouts and refused connections
are retried with exponential backoff (tenacity) for up to ``retry_seconds`` (an endpoint scaled to
zero takes minutes to come back); any other error answer fails at once with :class:`EndpointError`.

Example:
    >>> client = EndpointClient("http://127.0.0.1:5055", "swan-anomaly")           # doctest: +SKIP
    >>> client.score([open("frame.png", "rb").read()])[0]["anomaly_score"]        # doctest: +SKIP
    0.0132
"""

from __future__ import annotations

import base64
import logging

import httpx
import tenacity

from swan_anomaly._errors import EndpointBusy, EndpointError

log = logging.getLogger(__name__)

#: Answers that mean "try again later", not "this model is broken" (408: the server's deadline for a body that came slowly).
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})

#: The largest request body Databricks Model Serving takes: 16 MB, read as 16,000,000 bytes (the local model
#: server's limit, ``SWAN_ENDPOINT_MAX_BODY_MB``, is given to its client instead).
MAX_REQUEST_BYTES = 16_000_000

#: What a ``dataframe_split`` request of no rows takes, and what each row adds besides its base64 text:
#: ``["..."]`` and the separator (a generous bound for any JSON encoder's spacing).
_ENVELOPE_BYTES, _ROW_BYTES = 128, 8


def request_batches(encoded: list[str], *, max_rows: int, max_bytes: int) -> list[slice]:
    """Consecutive slices of ``encoded`` (base64 images) that each make one request of at most ``max_rows`` rows and ``max_bytes``.

    Camera frames at full resolution are megabytes each as PNG: a fixed number of them per request
    can exceed the endpoint's body limit, which answers 413 (not a fault of the model).

    Raises:
        EndpointError: one image alone makes a request over ``max_bytes`` (its position and size named).

    Example:
        >>> request_batches(["a" * 100] * 5, max_rows=2, max_bytes=10_000)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
        >>> request_batches(["a" * 100] * 5, max_rows=16, max_bytes=_ENVELOPE_BYTES + 2 * (100 + _ROW_BYTES))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    batches, start, size = [], 0, _ENVELOPE_BYTES
    for i, text in enumerate(encoded):
        row = len(text) + _ROW_BYTES
        if _ENVELOPE_BYTES + row > max_bytes:
            msg = (
                f"image {i} is {len(text):,} bytes as base64: a request of it alone exceeds the endpoint's "
                f"{max_bytes:,}-byte limit (SWAN_ENDPOINT_MAX_BODY_MB; Databricks Model Serving takes 16 MB)"
            )
            raise EndpointError(msg)
        if i > start and (i - start >= max_rows or size + row > max_bytes):
            batches.append(slice(start, i))
            start, size = i, _ENVELOPE_BYTES
        size += row
    if start < len(encoded):
        batches.append(slice(start, len(encoded)))
    return batches


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError)) or (
        isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in RETRY_STATUSES
    )


class EndpointClient:
    """Posts images to ``{base_url}/serving-endpoints/{name}/invocations``.

    Args:
        base_url: ``http://127.0.0.1:5055`` locally, the workspace URL on Databricks.
        name: endpoint name.
        token: bearer token (Databricks); never logged.
        timeout: seconds per request.
        retry_seconds: how long transient failures are retried before :class:`EndpointBusy`.
        max_request_bytes: the largest request body the endpoint takes; images are batched under it.
    """

    def __init__(
        self,
        base_url: str,
        name: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        retry_seconds: float = 300.0,
        workspace=None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.retry_seconds = retry_seconds
        self.max_request_bytes = max_request_bytes
        self.workspace = workspace  # a databricks-sdk WorkspaceClient: score through serving_endpoints.query
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/serving-endpoints/{self.name}/invocations"

    def _check(self, response: httpx.Response, what: str) -> dict:
        if response.status_code >= 400:
            msg = f"{what} at {response.request.url} answered {response.status_code}: {response.text[:500]}"
            raise EndpointError(msg)
        return response.json()

    def _post(self, payload: dict) -> httpx.Response:
        response = self._http.post(f"/serving-endpoints/{self.name}/invocations", json=payload)
        if response.status_code in RETRY_STATUSES:
            response.raise_for_status()  # an HTTPStatusError, retried
        return response

    def score(self, images: list[bytes], *, batch_size: int = 16) -> list[dict]:
        """``[{"logits": [l0, l1], "anomaly_score": s, "novelty_score": n}, ...]`` for encoded images (``novelty_score``
        only from a model version that carries a novelty bank).

        Each request holds at most ``batch_size`` images and ``max_request_bytes``.

        Raises:
            EndpointBusy: transient failures outlasted ``retry_seconds``.
            EndpointError: any other error answer, or an image too large for any request.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_transient),
            wait=tenacity.wait_exponential(multiplier=1, max=30),
            stop=tenacity.stop_after_delay(self.retry_seconds),
            before_sleep=lambda state: log.warning("invocations at %s: %s; retrying", self.invocations_url, state.outcome.exception()),
            reraise=True,
        )
        out: list[dict] = []
        encoded = [base64.b64encode(b).decode() for b in images]
        for batch in request_batches(encoded, max_rows=batch_size, max_bytes=self.max_request_bytes):
            rows = [[text] for text in encoded[batch]]
            if self.workspace is not None:
                out.extend(self._query(rows))
                continue
            payload = {"dataframe_split": {"columns": ["image"], "data": rows}}
            try:
                response = retrying(self._post, payload)
            except (httpx.HTTPStatusError, httpx.TimeoutException, httpx.NetworkError) as exc:
                msg = f"invocations at {self.invocations_url} still failing after {self.retry_seconds:.0f}s of retries: {exc}"
                raise EndpointBusy(msg) from exc
            out.extend(self._check(response, "invocations")["predictions"])
        return out

    def _query(self, rows: list[list[str]]) -> list[dict]:
        """One request through databricks-sdk (its own retries of 429/503 and its authentication)."""
        from databricks.sdk.errors import DatabricksError, DeadlineExceeded, TemporarilyUnavailable, TooManyRequests
        from databricks.sdk.service.serving import DataframeSplitInput

        def query():
            return self.workspace.serving_endpoints.query(self.name, dataframe_split=DataframeSplitInput(columns=["image"], data=rows))

        def busy(exc: BaseException) -> bool:  # the answers the httpx path retries too (408, 429, 502, 503, 504) and timeouts
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return isinstance(exc, (TooManyRequests, TemporarilyUnavailable, DeadlineExceeded, TimeoutError)) or status in RETRY_STATUSES

        retrying = tenacity.Retrying(  # on top of the SDK's own retries: the same budget as the httpx path
            retry=tenacity.retry_if_exception(busy),
            wait=tenacity.wait_exponential(multiplier=1, max=30),
            stop=tenacity.stop_after_delay(self.retry_seconds),
            reraise=True,
        )
        try:
            response = retrying(query)
        except DatabricksError as exc:
            if busy(exc):
                msg = f"invocations of endpoint {self.name} still failing after {self.retry_seconds:.0f}s of retries: {exc}"
                raise EndpointBusy(msg) from exc
            msg = f"invocations of endpoint {self.name} at {self.base_url} failed: {exc}"
            raise EndpointError(msg) from exc
        except TimeoutError as exc:
            msg = f"invocations of endpoint {self.name} timed out after {self.retry_seconds:.0f}s of retries: {exc}"
            raise EndpointBusy(msg) from exc
        return list(response.predictions or [])

    def close(self) -> None:
        self._http.close()


def score_table(rows: list[tuple[str, int, float]]) -> str:
    """A fixed-width table of ``(image, label, anomaly_score)`` rows, most anomalous first."""
    width = max([len("image"), *(len(r[0]) for r in rows)])
    lines = [f"{'image':<{width}} {'label':<9} {'anomaly_score':>13}", "-" * (width + 24)]
    for name, label, score in sorted(rows, key=lambda r: -r[2]):
        lines.append(f"{name:<{width}} {('abnormal' if label == 0 else 'normal'):<9} {score:>13.6f}")
    return "\n".join(lines)
