"""The local model server: the embedded default's stand-in for Databricks Model Serving.

Same REST contract as a Databricks serving endpoint, so the same clients (databricks-sdk's
``serving_endpoints`` for the config, plain HTTP for invocations) talk to both:

* ``POST /serving-endpoints/{name}/invocations``: MLflow scoring protocol as JSON
  (``dataframe_split``/``dataframe_records``/``instances``/``inputs``, the formats Databricks
  documents) or CSV, answered by MLflow's own scoring code as ``{"predictions": [...]}``.
* ``GET /api/2.0/serving-endpoints/{name}``: endpoint state and the served entity.
* ``POST /api/2.0/serving-endpoints``: create the endpoint with its first served entity.
* ``PUT /api/2.0/serving-endpoints/{name}/config``: serve another registered model version.
  The new version is loaded in the background and swapped in atomically once ready; the old
  one answers meanwhile, and stays if loading fails (``config_update: UPDATE_FAILED``).
* ``DELETE /api/2.0/serving-endpoints/{name}``: delete the endpoint; it serves nothing until
  it is created again.
* ``GET /health``: liveness and readiness, open to all (no secret in it: credentials in the
  registry URI are redacted).

Safe to expose by default:

* **Authentication.** Every management call (``/api/2.0/...``) needs ``Authorization: Bearer
  <token>``, as on Databricks; scoring needs it too unless the server runs with
  ``--open-invocations`` (``SWAN_ENDPOINT_INVOCATIONS_AUTH=none``). The token comes from
  ``--token-file``, else ``SWAN_ENDPOINT_TOKEN``, else ``$SWAN_HOME/serving/token`` (made once,
  mode 600: :func:`swan_anomaly.serving.local.endpoint_token`), never from the command line.
  A wrong or missing token gets 401 ``UNAUTHENTICATED``.
* **Limits** (:class:`Limits`): a body over ``max_body_bytes`` gets 413 before it is read in
  full, a body that has not arrived within ``body_timeout_s`` 408 ``DEADLINE_EXCEEDED``, a
  request of more than ``max_rows`` images 413, more than ``max_in_flight`` scoring requests at
  once 429 ``REQUEST_LIMIT_EXCEEDED`` with ``Retry-After`` (the clients retry it). uvicorn holds
  at most ``max(max_connections, 2 * max_in_flight)`` connections (503 above), closes idle
  keep-alive connections after :data:`KEEP_ALIVE_S` and connections that send no request
  headers within ``header_timeout_s`` (:func:`uvicorn_options`). Each image's decoded size is bounded by
  :data:`swan_anomaly.images.MAX_PIXELS`.
* **Only JSON and CSV bodies** (:data:`ACCEPTED_CONTENT_TYPES`); anything else, Parquet included,
  gets 415 before its body is read: a compressed Parquet body decodes to far more than its size
  and its footer's row count can be forged, so neither limit would hold.
* **Error answers** are ``{"error_code", "message"}`` only: no stack trace, and the message
  capped at :data:`MAX_ERROR_MESSAGE_CHARS` (MLflow echoes a malformed body in it); the full
  trace goes to the server's log.
* **Dynamic batching.** Concurrent scoring requests are scored together in one forward pass
  (:class:`MicroBatcher`), by one model thread; a lone request is scored at once.
* **Binds to 127.0.0.1** unless ``--host`` says otherwise.
* **Restart.** Given ``--model-name``, the server serves that model's ``champion`` version from
  the registry as soon as it starts, so a restart does not leave the endpoint empty.

Run it: ``python -m swan_anomaly.serving.server --port 5055 --name swan-anomaly``
(the tracking and registry URIs come from ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``).

Example:
    >>> app = create_app("swan-anomaly", token="s3cret", tracking_uri="sqlite:///.swan/mlflow/mlflow.db")  # doctest: +SKIP
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the route annotations
# (``Request``) at definition time, and they are local to ``create_app``.
import argparse
import asyncio
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from swan_anomaly.redact import redact_uri
from swan_anomaly.serving.local import token_proof

log = logging.getLogger(__name__)


ACCEPTED_CONTENT_TYPES = ("application/json", "text/csv")
"""Scoring request bodies the server reads: the JSON formats Databricks Model Serving documents, and CSV (415 otherwise)."""
MAX_ERROR_MESSAGE_CHARS = 1_000
"""Longest error message sent back (and logged): MLflow echoes a malformed body, up to ``max_body_bytes``, in its message."""
KEEP_ALIVE_S = 5
"""Seconds uvicorn keeps an idle keep-alive connection open."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (each breach answered with a clear 408, 413 or 429).

    ``body_timeout_s`` bounds the time from the start of reading a body to its last byte, so a
    client that stalls mid-body frees its scoring slot (408). ``max_connections`` bounds the
    connections uvicorn holds at once, idle or slow ones included (its ``limit_concurrency``, 503
    above; raised to twice ``max_in_flight`` where that is more, so that 429 still comes first).
    ``header_timeout_s`` closes a connection that has not sent a whole request's headers that long
    after it opened or after its last answer: silent or trickling sockets cannot hold the
    connection cap, and with it every answer, at 503.
    """

    max_body_bytes: int = 16 * 2**20
    max_rows: int = 256
    max_in_flight: int = 64
    body_timeout_s: float = 30.0
    max_connections: int = 256
    header_timeout_s: float = 10.0

    @property
    def connection_limit(self) -> int:
        """uvicorn's ``limit_concurrency``: connections (idle keep-alives and slow clients too) held before it answers 503.

        Example:
            >>> Limits().connection_limit, Limits(max_in_flight=200).connection_limit
            (256, 400)
        """
        return max(self.max_connections, 2 * self.max_in_flight)


def uvicorn_options(limits: Limits) -> dict:
    """uvicorn's options for ``limits``: the connection cap, the idle keep-alive and the header timeout.

    uvicorn's own timeouts start once a request has been answered; a connection that never sends its
    headers would be held, and counted against ``limit_concurrency``, for ever. The HTTP protocol
    uvicorn would pick (httptools when installed, else h11), with a timer armed when a connection opens
    and after each answer (:attr:`Limits.header_timeout_s`), closes such a connection. A request
    answered before its body was read (401, 413, 429) keeps its connection for one more period while
    the client finishes sending the body, so that it reads the answer rather than a reset.
    """
    import importlib.util

    if importlib.util.find_spec("httptools") is not None:  # what uvicorn's "auto" picks first, when installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Protocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Protocol

    seconds = limits.header_timeout_s

    class HeaderTimeoutProtocol(Protocol):
        _headers_timer = None
        _graced = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._wait_for_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._graced = False
            self._wait_for_headers()

        def connection_lost(self, exc) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            super().connection_lost(exc)

        def _wait_for_headers(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            self._headers_timer = self.loop.call_later(seconds, self._headers_late)

        def _headers_late(self) -> None:
            cycle = self.cycle
            if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
                return  # closed, or a request under way: its body has its own timeout
            if cycle is not None and cycle.more_body and not self._graced:  # answered early; the body is still coming
                self._graced = True
                self._wait_for_headers()
                return
            log.info("closing a connection from %s: no request headers within %.0fs", self.client, seconds)
            self.transport.close()

    return {"limit_concurrency": limits.connection_limit, "timeout_keep_alive": KEEP_ALIVE_S, "http": HeaderTimeoutProtocol}


def count_rows(body: bytes, content_type: str) -> int | None:
    """Rows of a JSON or CSV scoring request, or None when the body is not one (MLflow's parser then says why).

    Other content types are refused (415) before their body is read, so they count nothing here:
    a Parquet footer's ``num_rows`` is whatever the sender wrote, not the rows it holds.

    Example:
        >>> count_rows(b'{"dataframe_split": {"columns": ["image"], "data": [["a"], ["b"]]}}', "application/json")
        2
        >>> count_rows(b'{"inputs": {"image": ["a", "b", "c"]}}', "application/json"), count_rows(b"image\\na\\n", "text/csv")
        (3, 1)
        >>> count_rows(b"PAR1...PAR1", "application/vnd.apache.parquet") is None
        True
    """
    if _mime(content_type) == "text/csv":
        return max(0, len(body.strip().splitlines()) - 1)
    if _mime(content_type) != "application/json":
        return None
    return rows_of(_json_or_none(body))


def _mime(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def rows_of(payload) -> int | None:
    """Rows of a decoded JSON scoring payload, or None when it is not one.

    A ``dataframe_split``'s ``index`` counts too: pandas repeats a scalar (or a one-value column) down an
    index, so a body of one image and a long index would be that many images.

    Example:
        >>> rows_of({"dataframe_split": {"columns": ["image"], "index": [0, 0, 0], "data": "aGk="}})
        3
    """
    if not isinstance(payload, dict):
        return None
    for key in ("dataframe_split", "dataframe_records", "instances", "inputs"):
        value, index = payload.get(key), None
        if isinstance(value, dict) and key == "dataframe_split":
            value, index = value.get("data"), value.get("index")
        if isinstance(value, dict):  # columns (lists, or {index: value} maps as pandas reads them): the longest
            value = max((v for v in value.values() if isinstance(v, (list, dict))), key=len, default=value)
        rows = len(value) if isinstance(value, (list, dict)) else None
        if isinstance(index, (list, dict)):
            rows = max(rows or 0, len(index))
        if rows is not None:
            return rows
    return None


def batchable(payload, content_type: str, schema) -> list | None:
    """The request's ``image`` values for :class:`MicroBatcher`, or None for MLflow's own path.

    Only plain JSON scoring requests in UTF-8 without ``params``, whose one column is ``image``,
    are batched. ``dataframe_split`` and ``dataframe_records`` are read directly (the common
    case, without a DataFrame per request); the other JSON formats through MLflow's parser
    (``infer_and_parse_data``). Anything else goes the classic way, so that any error answer is
    MLflow's own.

    Example:
        >>> batchable({"dataframe_split": {"columns": ["image"], "data": [["aGk="], ["aG8="]]}}, "application/json", None)
        ['aGk=', 'aG8=']
        >>> batchable({"dataframe_records": [{"image": "aGk="}]}, "application/json; charset=utf-8", None)
        ['aGk=']
        >>> batchable({"dataframe_split": {"columns": ["img"], "data": [["aGk="]]}}, "application/json", None) is None
        True
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    parameters = [p.strip().lower() for p in content_type.split(";")[1:] if p.strip()]
    if not isinstance(payload, dict) or "params" in payload or any(p != "charset=utf-8" for p in parameters):
        return None
    keys = set(payload)
    split, records = payload.get("dataframe_split"), payload.get("dataframe_records")
    plain_split = isinstance(split, dict) and split.get("columns") == ["image"] and set(split) <= {"columns", "data", "index"}
    if keys == {"dataframe_split"} and plain_split:
        data = split.get("data")
        if isinstance(data, list) and all(isinstance(r, list) and len(r) == 1 and isinstance(r[0], str) for r in data):
            return [r[0] for r in data]
        return None
    if keys == {"dataframe_records"} and isinstance(records, list):
        if all(isinstance(r, dict) and set(r) == {"image"} and isinstance(r["image"], str) for r in records):
            return [r["image"] for r in records]
        return None
    try:
        frame = scoring_server.infer_and_parse_data(payload, schema)
    except (MlflowException, ValueError, TypeError, KeyError):
        return None
    return frame["image"].tolist() if list(getattr(frame, "columns", [])) == ["image"] else None


class _Pending:
    """One scoring request waiting for its batch: its ``image`` values and the future its answer goes to."""

    __slots__ = ("future", "model", "values")

    def __init__(self, model, values: list, future) -> None:
        self.model, self.values, self.future = model, values, future


class MicroBatcher:
    """Scores concurrent requests together: one forward pass for many small requests (dynamic batching).

    Requests queue while the model is busy; when it is free, every queued request of the same
    model (up to ``max_rows`` images) is scored in one ``predict`` call, and each request gets
    its own rows back. A lone request never waits for company: with the model idle it is scored
    at once, so batching adds no latency, only throughput. One thread runs the model, so
    concurrent requests do not fight over the cores. If a combined batch fails (one bad image,
    say), each of its requests is scored alone, so only the bad one gets the error.
    """

    def __init__(self, *, max_rows: int = 256) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.max_rows = max_rows
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swan-model")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.carry: _Pending | None = None
        self.batches = 0
        self.requests = 0

    async def score(self, model, values: list) -> list[dict]:
        """The model's output rows (records) for the ``image`` ``values``, scored in a batch with other requests."""
        loop = asyncio.get_running_loop()
        if self.queue is None or self.loop is not loop:  # first use, or another event loop (a test client's)
            self.loop, self.queue, self.carry = loop, asyncio.Queue(), None
            self.worker = loop.create_task(self._run())
        elif self.worker.done():
            self.worker = loop.create_task(self._run())
        future = loop.create_future()
        await self.queue.put(_Pending(model, values, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = self.carry or await self.queue.get()
            self.carry = None
            batch, rows = [first], len(first.values)
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item.model is not first.model or rows + len(item.values) > self.max_rows:
                    self.carry = item  # the next batch's first
                    break
                batch.append(item)
                rows += len(item.values)
            await self._score(batch)

    async def _score(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        model = batch[0].model
        live = [p for p in batch if not p.future.done()]  # a client that went away needs no answer
        if not live:
            return
        self.batches += 1
        self.requests += len(live)
        values = [v for p in live for v in p.values]
        try:
            records = await loop.run_in_executor(self.executor, _predict_records, model, values)
        except BaseException as exc:  # no request may wait forever: SystemExit, cancellation... reach them too
            if not isinstance(exc, Exception):
                for p in live:
                    _settle(p.future, error=RuntimeError(f"scoring stopped: {type(exc).__name__}"))
                raise
            if len(live) == 1:
                _settle(live[0].future, error=exc)
                return
            for p in live:  # one bad request must not fail the others: score each alone
                try:
                    _settle(p.future, result=await loop.run_in_executor(self.executor, _predict_records, model, p.values))
                except Exception as single:  # noqa: BLE001
                    _settle(p.future, error=single)
            return
        start = 0
        for p in live:
            stop = start + len(p.values)
            _settle(p.future, result=records[start:stop])
            start = stop


def _predict_records(model, values: list) -> list[dict]:
    """One ``predict`` over the ``image`` values, as JSON-ready records.

    The base64 strings are decoded as MLflow's scoring server decodes a binary column
    (``base64.decodebytes``: line-wrapped base64 is fine), so batched and unbatched requests
    accept the same payloads; bytes (what MLflow's parser gives for a binary column of the
    schema, :func:`batchable`) are taken as they are.
    """
    import base64
    import binascii

    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    images = []
    for row, value in enumerate(values):
        if isinstance(value, bytes):  # MLflow's parser decoded the schema's binary column already
            images.append(value)
            continue
        try:
            images.append(base64.decodebytes(value.encode("ascii")))
        except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
            msg = f"row {row}: 'image' is not valid base64 ({exc})"
            raise MlflowException(msg, error_code=INVALID_PARAMETER_VALUE) from exc
    out = model.predict(pd.DataFrame({"image": images}))
    records = out.to_dict(orient="records") if hasattr(out, "to_dict") else list(out)
    if len(records) != len(values):
        msg = f"the model returned {len(records)} rows for {len(values)} images"
        raise MlflowException(msg)
    return records


def _settle(future, *, result=None, error: BaseException | None = None) -> None:
    """Give a request its answer, unless it is gone (its client disconnected and the handler was cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def served_entity(config) -> tuple[dict | None, str]:
    """The one served entity of an endpoint ``config`` body (``entity_version`` as a string), or why it is not one.

    Example:
        >>> served_entity({"served_entities": [{"name": "x", "entity_name": "m", "entity_version": 3}]})
        ({'entity_name': 'm', 'entity_version': '3'}, '')
        >>> served_entity({"served_entities": [["entity_name", "entity_version"]]})[1]
        'served_entities[0] must be an object with entity_name and entity_version'
    """
    need = "need exactly one served entity with entity_name and entity_version"
    if not isinstance(config, dict):
        return None, f"config must be an object: {need}"
    entities = config.get("served_entities")
    if not isinstance(entities, list) or len(entities) != 1:
        return None, f"served_entities must be a list of one entity: {need}"
    entity = entities[0]
    if not isinstance(entity, dict) or not {"entity_name", "entity_version"} <= set(entity):
        return None, "served_entities[0] must be an object with entity_name and entity_version"
    name, version = entity["entity_name"], entity["entity_version"]
    if not isinstance(name, str) or not name.strip():
        return None, "served_entities[0].entity_name must be a non-empty string (the registered model's name)"
    if isinstance(version, bool) or not isinstance(version, (str, int)) or not str(version).strip():
        return None, "served_entities[0].entity_version must be a version number (a string or an integer)"
    return {**{k: v for k, v in entity.items() if k != "name"}, "entity_version": str(version)}, ""


class EndpointState:
    """The served model and the endpoint's Databricks-shaped state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False
        self.model = None
        self.input_schema = None
        self.served: dict | None = None
        self.config_update = "NOT_UPDATING"
        self.message = ""
        self.lock = threading.Lock()
        #: Counts updates and deletions: a load that finishes after a later one began (a DELETE, another update) is dropped.
        self.generation = 0

    def describe(self) -> dict:
        served = [self.served] if self.served else []
        return {
            "name": self.name,
            "state": {"ready": "READY" if self.model is not None else "NOT_READY", "config_update": self.config_update},
            "config": {"served_entities": served},
            "message": self.message,
        }

    def start_update(self, body, *, must_exist: bool = False):
        """Validate a config body and start loading its entity; returns an error response or None.

        ``must_exist``: an update of the endpoint's config, which (as on Databricks) does not create it: 404 when
        it was never created or was deleted.

        The whole body is checked before the state changes, so a malformed one leaves the endpoint
        as it was (before, a body that failed past the check left ``config_update`` at IN_PROGRESS
        and every later update got 409).
        """
        from fastapi.responses import JSONResponse

        entity, problem = served_entity(body)
        if problem:
            return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": problem}, 400)
        with self.lock:
            if must_exist and not self.created:
                return JSONResponse(
                    {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{self.name}' does not exist."}, 404
                )
            if self.config_update == "IN_PROGRESS":
                return JSONResponse({"error_code": "RESOURCE_CONFLICT", "message": f"Endpoint '{self.name}' is already updating"}, 409)
            self.config_update = "IN_PROGRESS"
            self.generation += 1
            generation = self.generation
        threading.Thread(target=self.load, args=(entity, generation), daemon=True).start()
        return None

    def load(self, entity: dict, generation: int | None = None) -> None:
        """Load ``entity`` and serve it, unless the endpoint was deleted or updated again meanwhile (``generation``)."""
        import mlflow.pyfunc

        uri = f"models:/{entity['entity_name']}/{entity['entity_version']}"
        started = time.perf_counter()
        try:
            model = mlflow.pyfunc.load_model(uri)
        except Exception as exc:  # noqa: BLE001 - reported in the endpoint state
            with self.lock:
                if generation is None or generation == self.generation:
                    self.config_update = "UPDATE_FAILED"
                    self.message = f"loading {uri} failed: {type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s: %s", uri, type(exc).__name__, exc)
            return
        with self.lock:
            if generation is not None and generation != self.generation:
                log.warning("loaded %s after the endpoint was deleted or updated again: not served", uri)
                return
            self.model, self.input_schema = model, model.metadata.get_input_schema()
            self.served = {"name": f"{entity['entity_name']}-{entity['entity_version']}", **entity}
            self.config_update = "NOT_UPDATING"
            self.message = f"serving {uri} (loaded in {time.perf_counter() - started:.1f}s)"
        log.info(self.message)


def create_app(
    name: str,
    *,
    token: str,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    open_invocations: bool = False,
    limits: Limits = Limits(),  # noqa: B008 - frozen
    model_name: str | None = None,
    batching: bool = True,
):
    """The FastAPI app of a local endpoint called ``name``, guarded by the bearer ``token``.

    Args:
        name: the endpoint's name.
        token: the bearer token every management call (and scoring, unless ``open_invocations``) needs.
        tracking_uri: MLflow tracking URI (default: MLflow's, from ``MLFLOW_TRACKING_URI``).
        registry_uri: MLflow registry URI (default: the tracking URI).
        open_invocations: let anyone who reaches the server score images without the token.
        limits: body size, rows and requests in flight (:class:`Limits`).
        model_name: when given, serve this registered model's ``champion`` version at start-up.
        batching: score concurrent JSON requests together (:class:`MicroBatcher`); False scores each
            request alone through MLflow's scoring code (the load benchmark's baseline).

    Raises:
        ValueError: an empty token.
    """
    import mlflow
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
    from mlflow.pyfunc import scoring_server
    from mlflow.utils.proto_json_utils import NumpyEncoder

    if not token:
        msg = "the local model server needs a bearer token (SWAN_ENDPOINT_TOKEN or --token-file): its API changes what is served"
        raise ValueError(msg)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if registry_uri or tracking_uri:
        mlflow.set_registry_uri(registry_uri or tracking_uri)
    state = EndpointState(name)
    app = FastAPI(title=f"swan-anomaly local endpoint {name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.endpoint = state
    in_flight = {"now": 0}
    expected = token.encode()
    batcher = MicroBatcher(max_rows=limits.max_rows)
    app.state.batcher = batcher

    @app.exception_handler(HTTPException)
    async def databricks_shaped_error(request: Request, exc: HTTPException):
        # Databricks answers errors as {"error_code": ..., "message": ...}; databricks-sdk maps them.
        body = exc.detail if isinstance(exc.detail, dict) else {"error_code": "BAD_REQUEST", "message": str(exc.detail)}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    def authorize(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
            raise HTTPException(
                401,
                detail={"error_code": "UNAUTHENTICATED", "message": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    def management_body(data: bytes) -> dict:
        payload = _json_or_none(data) if data else {}
        if not isinstance(payload, dict):
            raise HTTPException(400, detail={"error_code": "MALFORMED_REQUEST", "message": "the body must be a JSON object"})
        return payload

    def too_large(message: str) -> HTTPException:
        return HTTPException(413, detail={"error_code": "INVALID_PARAMETER_VALUE", "message": message})

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit (declared or streamed),
        and with 408 when it has not arrived in full within ``limits.body_timeout_s``."""
        limit = limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(f"request body of {int(declared):,} bytes exceeds the {limit:,}-byte limit; send fewer or smaller images")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_large(f"request body exceeds the {limit:,}-byte limit; send fewer or smaller images")
                    chunks.append(chunk)
        except TimeoutError:
            log.warning("request body not received within %gs (%d bytes so far): answered 408", limits.body_timeout_s, size)
            raise HTTPException(
                408,
                detail={
                    "error_code": "DEADLINE_EXCEEDED",
                    "message": f"the request body did not arrive within {limits.body_timeout_s:g} s ({size:,} bytes received)",
                },
                headers={"Connection": "close"},  # the rest of the body is never read: this connection is done
            ) from None
        return b"".join(chunks)

    def error_answer(exc: MlflowException, *, trace: str | None = None) -> Response:
        """MLflow's error as Databricks shapes it, ``{"error_code", "message"}``: no stack trace, the message capped.

        The full trace (MLflow's own, of the model's code, or ``trace``) is logged instead.
        """
        status = exc.get_http_status_code()
        message = exc.message
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = f"{message[:MAX_ERROR_MESSAGE_CHARS]}... ({len(message) - MAX_ERROR_MESSAGE_CHARS:,} more characters)"
        trace = trace or exc.json_kwargs.get("stack_trace")
        level = logging.ERROR if status >= 500 else logging.WARNING
        log.log(level, "scoring answered %d %s: %s%s", status, exc.error_code, message, f"\n{trace}" if trace else "")
        return Response(json.dumps({"error_code": exc.error_code, "message": message}), status_code=status, media_type="application/json")

    def check(endpoint: str) -> None:
        if endpoint != name:
            raise HTTPException(
                404,
                detail={
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": f"Endpoint '{endpoint}' does not exist; this server hosts '{name}'",
                },
            )

    @app.get("/health")
    async def health(challenge: str | None = None):
        """Open to all: status, the registry (credentials masked), and, given a challenge, the proof that this server holds
        the token (:func:`swan_anomaly.serving.local.token_proof`), so that a client never sends its token to an impostor."""
        body = {"status": "ok", "registry_uri": redact_uri(mlflow.get_registry_uri()), "pid": os.getpid(), **state.describe()["state"]}
        if challenge is not None:
            if not 16 <= len(challenge) <= 256:
                return JSONResponse({"error_code": "INVALID_PARAMETER_VALUE", "message": "challenge must be 16 to 256 characters"}, 400)
            body["proof"] = token_proof(token, challenge)
        return body

    @app.get("/api/2.0/serving-endpoints/{endpoint}")
    async def get_endpoint(endpoint: str, request: Request):
        authorize(request)
        check(endpoint)
        if not state.created:
            return JSONResponse(
                {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{endpoint}' does not exist."}, 404
            )
        return state.describe()

    @app.post("/api/2.0/serving-endpoints")
    async def create_endpoint(request: Request):
        authorize(request)
        body = management_body(await read_body(request))
        check(body.get("name", ""))
        if state.created:
            return JSONResponse({"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"Endpoint with name '{name}' already exists"}, 400)
        error = state.start_update(body.get("config") or {})
        if error is not None:
            return error
        state.created = True
        return state.describe()

    @app.put("/api/2.0/serving-endpoints/{endpoint}/config")
    async def update_config(endpoint: str, request: Request):
        authorize(request)
        check(endpoint)
        # as on Databricks, an update does not create the endpoint: 404 when it was never created, or deleted
        return state.start_update(management_body(await read_body(request)), must_exist=True) or state.describe()

    @app.delete("/api/2.0/serving-endpoints/{endpoint}")
    async def delete_endpoint(endpoint: str, request: Request):
        authorize(request)
        check(endpoint)
        with state.lock:
            if not state.created:
                return JSONResponse(
                    {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{endpoint}' does not exist."}, 404
                )
            state.created, state.model, state.input_schema, state.served = False, None, None, None
            state.config_update, state.message = "NOT_UPDATING", "deleted"
            state.generation += 1  # a load under way is not served when it ends
        log.warning("endpoint %s deleted: it serves nothing now", endpoint)
        return {}

    @app.post("/serving-endpoints/{endpoint}/invocations")
    async def invocations(endpoint: str, request: Request):
        if not open_invocations:
            authorize(request)
        check(endpoint)
        content_type = request.headers.get("content-type", "application/json")
        if _mime(content_type) not in ACCEPTED_CONTENT_TYPES:  # refused before the body is read
            accepted = " or ".join(ACCEPTED_CONTENT_TYPES)
            return JSONResponse(
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    "message": f"Content-Type '{_mime(content_type)}' is not accepted; send {accepted} "
                    "(JSON as dataframe_split, dataframe_records, instances or inputs)",
                },
                415,
            )
        charsets = [p.strip().lower() for p in content_type.split(";")[1:] if p.strip().lower().startswith("charset=")]
        if any(c != "charset=utf-8" for c in charsets):  # refused before the body is read, as MLflow refuses it
            return JSONResponse(
                {"error_code": "INVALID_PARAMETER_VALUE", "message": f"'{content_type[:100]}': send the body in UTF-8 (charset=utf-8)"},
                415,
            )
        if in_flight["now"] >= limits.max_in_flight:
            return JSONResponse(
                {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": f"over {limits.max_in_flight} scoring requests in flight; retry later"},
                429,
                headers={"Retry-After": "1"},
            )
        in_flight["now"] += 1  # one event loop: no lock needed between the check and the count
        try:
            return await score(request)
        finally:
            in_flight["now"] -= 1

    async def score(request: Request):
        data = await read_body(request)
        content_type = request.headers.get("content-type", "application/json")
        payload = _json_or_none(data) if _mime(content_type) == "application/json" else None
        rows = rows_of(payload) if payload is not None else count_rows(data, content_type)
        if rows is not None and rows > limits.max_rows:
            raise too_large(f"{rows} images in one request, over the limit of {limits.max_rows}; split it into smaller requests")
        with state.lock:
            model, schema = state.model, state.input_schema
        if model is None:
            return JSONResponse({"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"Endpoint '{name}' serves no model yet"}, 503)
        values = batchable(payload, content_type, schema) if batching else None
        try:
            if values is None:  # CSV, params, a payload MLflow's parser must answer: MLflow's own path, alone
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(batcher.executor, scoring_server.invocations, data, content_type, model, schema)
                return Response(result.response, status_code=result.status, media_type=result.mimetype)
            records = await batcher.score(model, values)
        except MlflowException as exc:
            return error_answer(exc)
        except Exception:  # noqa: BLE001 - what MLflow's scoring server answers for an unexpected model error
            import traceback

            error = MlflowException("Encountered an unexpected error while evaluating the model.", error_code=BAD_REQUEST)
            return error_answer(error, trace=traceback.format_exc())
        return Response(json.dumps({"predictions": records}, cls=NumpyEncoder), status_code=200, media_type="application/json")

    if model_name:
        serve_champion(state, model_name)
    return app


def serve_champion(state: EndpointState, model_name: str) -> bool:
    """Start loading ``model_name``'s ``champion`` version (the registry's choice), as a restarted endpoint should.

    Returns False, with a log line, when the registry has no such model or alias (nothing served
    yet: the pipeline's next run deploys one) or cannot be reached.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from swan_anomaly.registry import CHAMPION

    try:
        version = MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        log.info("no %s version of %s to serve at start-up (%s): serving nothing until a deployment", CHAMPION, model_name, exc)
        return False
    except Exception as exc:  # noqa: BLE001 - the registry unreachable or misconfigured: serve nothing, but listen
        log.warning("could not ask the registry for %s's %s at start-up (%s): serving nothing yet", model_name, CHAMPION, exc)
        return False
    log.info("serving %s v%s, the registry's %s, at start-up", model_name, version.version, CHAMPION)
    state.created = True
    return state.start_update({"served_entities": [{"entity_name": model_name, "entity_version": str(version.version)}]}) is None


def main(argv: list[str] | None = None) -> None:
    """Run the server. Settings (token, limits, model name) come from the environment (:class:`swan_anomaly.config.Settings`)."""
    from pathlib import Path

    import uvicorn

    from swan_anomaly.config import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description="Local model server with the Databricks Model Serving REST contract")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--name", default=settings.endpoint_name, help="endpoint name")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the bearer token (default: SWAN_ENDPOINT_TOKEN, else $SWAN_HOME/serving/token)"
    )
    parser.add_argument("--model-name", default=settings.model_name, help="registered model whose champion is served at start-up")
    parser.add_argument("--no-champion-at-start", action="store_true", help="serve nothing until a deployment")
    parser.add_argument(
        "--no-batching", action="store_true", help="score each request alone (no dynamic batching; the load benchmark's baseline)"
    )
    parser.add_argument(
        "--open-invocations",
        action="store_true",
        default=settings.endpoint_invocations_auth == "none",
        help="score without a token (SWAN_ENDPOINT_INVOCATIONS_AUTH=none); the management API always needs it",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default, and better: MLFLOW_TRACKING_URI)")
    parser.add_argument("--registry-uri", default=None, help="MLflow registry URI (default: MLFLOW_REGISTRY_URI, else the tracking URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from swan_anomaly.serving.local import endpoint_token

    token = args.token_file.read_text().strip() if args.token_file else endpoint_token(settings)
    if not token:
        parser.error(f"{args.token_file} is empty: it must hold the bearer token (the management API changes what is served)")
    limits = Limits(
        max_body_bytes=int(settings.endpoint_max_body_mb * 2**20),
        max_rows=settings.endpoint_max_rows,
        max_in_flight=settings.endpoint_max_in_flight,
        body_timeout_s=settings.endpoint_body_timeout_s,
        max_connections=settings.endpoint_max_connections,
    )
    app = create_app(
        args.name,
        token=token,
        tracking_uri=args.tracking_uri,
        registry_uri=args.registry_uri,
        open_invocations=args.open_invocations,
        limits=limits,
        model_name=None if args.no_champion_at_start else args.model_name,
        batching=not args.no_batching,
    )
    log.info(
        "endpoint %s on %s:%d; invocations %s; %s; limits %s",
        args.name,
        args.host,
        args.port,
        "open to all" if args.open_invocations else "need the token",
        "dynamic batching" if not args.no_batching else "no batching",
        limits,
    )
    # limit_concurrency bounds the connections slow or idle clients can hold (503 above); idle keep-alives close after
    # KEEP_ALIVE_S, and connections that send no headers after Limits.header_timeout_s
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", **uvicorn_options(limits))


if __name__ == "__main__":
    main()
