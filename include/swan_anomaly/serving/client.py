"""Invocations of a serving endpoint over REST: the local endpoint and Databricks Model Serving alike.

The endpoint's config is changed through databricks-sdk (:mod:`swan_anomaly.serving.deploy`);
this client only scores images, so validation is one client with two base URLs.

Example:
    >>> client = EndpointClient("http://127.0.0.1:5055", "swan-anomaly")           # doctest: +SKIP
    >>> client.score([open("frame.png", "rb").read()])[0]["anomaly_score"]        # doctest: +SKIP
    0.0132
"""

from __future__ import annotations

import base64
import logging

import httpx

from swan_anomaly._errors import EndpointError

log = logging.getLogger(__name__)


class EndpointClient:
    """Posts images to ``{base_url}/serving-endpoints/{name}/invocations``.

    Args:
        base_url: ``http://127.0.0.1:5055`` locally, the workspace URL on Databricks.
        name: endpoint name.
        token: bearer token (Databricks); never logged.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, name: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def invocations_url(self) -> str:
        return f"{self.base_url}/serving-endpoints/{self.name}/invocations"

    def _check(self, response: httpx.Response, what: str) -> dict:
        if response.status_code >= 400:
            msg = f"{what} at {response.request.url} answered {response.status_code}: {response.text[:500]}"
            raise EndpointError(msg)
        return response.json()

    def score(self, images: list[bytes], *, batch_size: int = 16) -> list[dict]:
        """``[{"logits": [l0, l1], "anomaly_score": s}, ...]`` for encoded images."""
        out: list[dict] = []
        for i in range(0, len(images), batch_size):
            rows = [[base64.b64encode(b).decode()] for b in images[i : i + batch_size]]
            payload = {"dataframe_split": {"columns": ["image"], "data": rows}}
            out.extend(self._check(self._http.post(f"/serving-endpoints/{self.name}/invocations", json=payload), "invocations")["predictions"])
        return out

    def close(self) -> None:
        self._http.close()


def score_table(rows: list[tuple[str, int, float]]) -> str:
    """A fixed-width table of ``(image, label, anomaly_score)`` rows, most anomalous first."""
    width = max([len("image"), *(len(r[0]) for r in rows)])
    lines = [f"{'image':<{width}} {'label':<9} {'anomaly_score':>13}", "-" * (width + 24)]
    for name, label, score in sorted(rows, key=lambda r: -r[2]):
        lines.append(f"{name:<{width}} {('abnormal' if label == 0 else 'normal'):<9} {score:>13.6f}")
    return "\n".join(lines)
