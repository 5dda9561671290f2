"""An Azure OpenAI double for tests: chat completions with image input, over real HTTP.

It speaks the wire protocol of the Azure OpenAI data plane on 127.0.0.1, so the official
``openai`` SDK (``AzureOpenAI``, wrapped by ``swan_anomaly.azure_openai.VisionChatClient``) talks to it unchanged:
``POST /openai/deployments/{deployment}/chat/completions?api-version={version}`` with an
``api-key`` header, answered with a ``chat.completion`` object (``id``, ``object``, ``created``,
``model``, ``choices[0].message.content``, ``usage``) and Azure's error bodies otherwise:
401 for a missing or wrong key, 404 for an unknown deployment, path or api-version, 400 when the
request has no ``image_url`` data URL or the image does not decode (checked with OpenCV).

Its answer depends on the pixels, so a test exercises what the client really sent: ``swan``
(or ``swan_reply``) unless most of the image has one of the ``colour_answers`` colours, then that
colour's word. Faults can be injected: ``fail_next(429, times=1, retry_after_ms=50)`` answers the
next request with that status (and Azure's ``retry-after``/``retry-after-ms`` headers for 429).

Example:
    >>> double = AzureOpenAIDouble(api_key="k", colour_answers={"dog": (150, 100, 50)}).start()  # doctest: +SKIP
    >>> monkeypatch.setenv("AIRFLOW_CONN_SWAN_LABEL_CHECK", double.connection())              # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

API_VERSIONS = frozenset({"2024-06-01", "2024-10-21", "2025-01-01-preview", "2025-04-01-preview"})
MODEL = "gpt-4o-mini-2024-07-18"
PATH = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/chat/completions$")
DATA_URL = re.compile(r"^data:image/(?P<fmt>[a-z]+);base64,(?P<data>.*)$", re.S)

UNAUTHORIZED = {
    "error": {
        "code": "401",
        "message": (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
            "active subscription and use a correct regional API endpoint for your resource."
        ),
    }
}
RESOURCE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": (
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, "
            "please wait a moment and try again."
        ),
    }
}
INVALID_IMAGE = {
    "error": {
        "message": "You uploaded an unsupported image. Please make sure your image is valid.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_image_format",
    }
}
THROTTLED = {
    "error": {
        "code": "429",
        "message": (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token "
            "rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."
        ),
    }
}
SERVER_ERROR = {"error": {"code": "InternalServerError", "message": "The server had an error while processing your request."}}


@dataclass
class Seen:
    """One request as the double saw it."""

    deployment: str
    status: int
    answer: str | None = None
    shape: tuple[int, ...] | None = None
    detail: str | None = None


class AzureOpenAIDouble:
    """Start with :meth:`start`; :meth:`connection` is an Airflow connection pointing at it.

    Args:
        api_key: the key the double accepts in the ``api-key`` header.
        deployment: the one deployment it serves.
        colour_answers: word -> RGB colour; an image mostly (``share``) within ``tolerance`` of
            that colour is answered with that word.
        swan_reply: the reply for every other image.
    """

    def __init__(
        self,
        *,
        api_key: str,
        deployment: str = "gpt-4o-mini",
        colour_answers: dict[str, tuple[int, int, int]] | None = None,
        swan_reply: str = "swan",
        share: float = 0.5,
        tolerance: int = 40,
    ) -> None:
        self.api_key = api_key
        self.deployment = deployment
        self.colour_answers = colour_answers or {}
        self.swan_reply = swan_reply
        self.share = share
        self.tolerance = tolerance
        self.seen: list[Seen] = []
        self._faults: list[list] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ---- control -------------------------------------------------------------------------
    def start(self) -> AzureOpenAIDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                double._handle(self)

            def do_GET(self):
                double._reply(self, 404, RESOURCE_NOT_FOUND)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def connection(self, *, api_key: str | None = None, **extra) -> str:
        """An Airflow connection (JSON, for ``AIRFLOW_CONN_*``): host = endpoint, password = key, extra = settings."""
        return json.dumps(
            {
                "conn_type": "generic",
                "host": self.endpoint,
                "password": api_key or self.api_key,
                "extra": {"deployment": self.deployment, "api_version": "2024-10-21", **extra},
            }
        )

    def fail_next(self, status: int, *, times: int = 1, retry_after_ms: int = 50) -> None:
        self._faults.append([status, times, retry_after_ms])

    def statuses(self) -> list[int]:
        return [s.status for s in self.seen]

    # ---- HTTP ----------------------------------------------------------------------------
    def _reply(self, handler, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("apim-request-id", f"double-{next(self._ids)}")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _handle(self, handler) -> None:
        url = urlparse(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        match = PATH.match(url.path)
        deployment = match["deployment"] if match else ""
        version = parse_qs(url.query).get("api-version", [None])[0]
        if handler.headers.get("api-key") != self.api_key:
            self._record(Seen(deployment, 401))
            return self._reply(handler, 401, UNAUTHORIZED)
        if match is None or version not in API_VERSIONS:
            self._record(Seen(deployment, 404, detail=f"path {url.path}, api-version {version}"))
            return self._reply(handler, 404, RESOURCE_NOT_FOUND)
        if deployment != self.deployment:
            self._record(Seen(deployment, 404))
            return self._reply(handler, 404, DEPLOYMENT_NOT_FOUND)
        with self._lock:
            fault = next((f for f in self._faults if f[1] > 0), None)
            if fault:
                fault[1] -= 1
        if fault:
            status, _, retry_ms = fault
            self._record(Seen(deployment, status))
            if status == 429:
                headers = {"retry-after": str(max(1, retry_ms // 1000)), "retry-after-ms": str(retry_ms)}
                return self._reply(handler, 429, THROTTLED, headers)
            return self._reply(handler, status, SERVER_ERROR)
        try:
            body = json.loads(raw)
            image = self._image(body)
        except ValueError as exc:
            self._record(Seen(deployment, 400, detail=str(exc)))
            reply = (
                INVALID_IMAGE
                if "image" in str(exc)
                else {"error": {"message": str(exc), "type": "invalid_request_error", "param": "messages", "code": None}}
            )
            return self._reply(handler, 400, reply)
        answer = self._answer(image)
        self._record(Seen(deployment, 200, answer=answer, shape=image.shape))
        return self._reply(handler, 200, self._completion(answer))

    def _image(self, body: dict) -> np.ndarray:
        """The decoded image of the last user message's ``image_url`` part, ``[H, W, 3]`` uint8 RGB."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ValueError("'messages' is a required property")
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        parts = users[-1].get("content") if users else None
        urls = [
            p["image_url"].get("url", "")
            for p in parts or []
            if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)
        ]
        if not urls:
            raise ValueError("the user message has no content part of type 'image_url'")
        match = DATA_URL.match(urls[-1])
        if match is None:
            raise ValueError("Invalid image URL: expected a base64 data URL of an image")
        try:
            data = base64.b64decode(match["data"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"Invalid base64 image data: {exc}") from None
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise ValueError("unsupported image")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

    def _answer(self, image: np.ndarray) -> str:
        pixels = image.reshape(-1, 3).astype(np.int16)
        for word, colour in self.colour_answers.items():
            near = (np.abs(pixels - np.array(colour, np.int16)) <= self.tolerance).all(axis=1).mean()
            if near >= self.share:
                return word
        return self.swan_reply

    def _completion(self, answer: str) -> dict:
        filters = {k: {"filtered": False, "severity": "safe"} for k in ("hate", "self_harm", "sexual", "violence")}
        return {
            "id": f"chatcmpl-double{next(self._ids):06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "system_fingerprint": "fp_double",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "content_filter_results": filters,
                }
            ],
            "usage": {"prompt_tokens": 121, "completion_tokens": 2, "total_tokens": 123},
        }
