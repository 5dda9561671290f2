"""The local model server is safe to expose: tokens, limits, no secrets shown or handed on, the champion after a restart."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ROOT
from swan_anomaly.config import ConfigError, Settings
from swan_anomaly.serving.server import EndpointState, Limits, count_rows, create_app

TOKEN = "t0k3n-for-tests"
NAME = "swan-anomaly"
INVOCATIONS = f"/serving-endpoints/{NAME}/invocations"
MANAGE = f"/api/2.0/serving-endpoints/{NAME}"


def _client(tmp_path, **kwargs):
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", **kwargs)
    return TestClient(app)


def _payload(rows: int) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [["aGVsbG8="]] * rows}}


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _restore_mlflow_uris(monkeypatch):
    """create_app sets MLflow's process-wide tracking and registry URIs (and MLflow exports them to the
    environment), as the server process should; not for the next test."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}])
def test_the_management_api_and_scoring_need_the_token(tmp_path, headers):
    client = _client(tmp_path)
    body = {"name": NAME, "config": {"served_entities": [{"entity_name": "m", "entity_version": "1"}]}}
    answers = [
        client.get(MANAGE, headers=headers),
        client.post("/api/2.0/serving-endpoints", json=body, headers=headers),
        client.put(f"{MANAGE}/config", json=body["config"], headers=headers),
        client.delete(MANAGE, headers=headers),
        client.post(INVOCATIONS, json=_payload(1), headers=headers),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert answers[0].json()["error_code"] == "UNAUTHENTICATED" and answers[0].headers["www-authenticate"] == "Bearer"
    assert client.app.state.endpoint.created is False  # nothing was created, nothing is served
    assert client.get(MANAGE, headers=AUTH).status_code == 404  # the right token reaches the API: no endpoint yet
    assert client.post(INVOCATIONS, json=_payload(1), headers=AUTH).status_code == 503  # ...and scoring: no model yet


def test_scoring_can_be_opened_while_the_management_api_stays_closed(tmp_path):
    client = _client(tmp_path, open_invocations=True)
    assert client.post(INVOCATIONS, json=_payload(1)).status_code == 503  # past the guard: serves no model yet
    assert client.put(f"{MANAGE}/config", json={}).status_code == 401


def test_a_server_never_runs_without_a_token(tmp_path):
    with pytest.raises(ValueError, match="needs a bearer token"):
        create_app(NAME, token="")
    from swan_anomaly.serving import server

    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        server.main(["--token-file", str(empty), "--port", "1"])


def test_a_body_over_the_limit_is_refused_before_it_is_read_whether_declared_or_streamed(tmp_path):
    client = _client(tmp_path, limits=Limits(max_body_bytes=1000))
    big = json.dumps(_payload(200)).encode()
    declared = client.post(INVOCATIONS, content=big, headers=AUTH | {"Content-Type": "application/json"})
    assert declared.status_code == 413 and "1,000-byte limit" in declared.json()["message"]

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    streamed = client.post(INVOCATIONS, content=chunks(), headers=AUTH | {"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert client.put(f"{MANAGE}/config", content=big, headers=AUTH).status_code == 413  # the management API is bounded too


def test_a_request_of_too_many_images_is_refused(tmp_path):
    client = _client(tmp_path, limits=Limits(max_rows=4))
    refused = client.post(INVOCATIONS, json=_payload(5), headers=AUTH)
    assert refused.status_code == 413 and "5 images in one request, over the limit of 4" in refused.json()["message"]
    records = client.post(INVOCATIONS, json={"dataframe_records": [{"image": "aGk="}] * 5}, headers=AUTH)
    assert records.status_code == 413
    assert client.post(INVOCATIONS, json=_payload(4), headers=AUTH).status_code == 503  # within the limit: on to the model


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"served_entities": 5}, "served_entities"),
        ({"served_entities": [["a", "b"]]}, "served_entities[0]"),
        ({"served_entities": [["entity_name", "entity_version"]]}, "served_entities[0]"),
        ({"served_entities": [{"entity_name": {"x": 1}, "entity_version": "1"}]}, "entity_name"),
        ({"served_entities": [{"entity_name": "m", "entity_version": [1]}]}, "entity_version"),
        ({"served_entities": "ab"}, "served_entities"),
    ],
)
def test_a_malformed_config_gets_400_and_leaves_the_endpoint_free_to_update(tmp_path, config, field):
    """Before: some bodies answered 500 after marking the update IN_PROGRESS, so every later PUT got 409 until a restart."""
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client = TestClient(app, raise_server_exceptions=False)  # a 500 is an answer here, not an error of the test
    state = app.state.endpoint
    loads: list = []
    state.load = lambda entity, *_: loads.append(entity)  # no registry here: record what would be loaded
    bad = client.put(f"{MANAGE}/config", json=config, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE" and field in bad.json()["message"]
    assert state.config_update == "NOT_UPDATING" and loads == []  # nothing started
    created = client.post("/api/2.0/serving-endpoints", json={"name": NAME, "config": config}, headers=AUTH)
    assert created.status_code == 400 and state.created is False
    assert client.post("/api/2.0/serving-endpoints", json={"name": NAME, "config": 5}, headers=AUTH).status_code == 400
    good_config = {"served_entities": [{"entity_name": "m", "entity_version": 3}]}
    good = client.post("/api/2.0/serving-endpoints", json={"name": NAME, "config": good_config}, headers=AUTH)
    assert good.status_code == 200 and good.json()["state"]["config_update"] == "IN_PROGRESS"  # before: 409 after the stuck one
    for _ in range(100):  # loaded in a thread
        if loads:
            break
        time.sleep(0.05)
    assert loads == [{"entity_name": "m", "entity_version": "3"}]


def test_a_deleted_endpoint_serves_nothing_even_when_a_load_started_before_the_delete_ends_after_it(tmp_path):
    """DELETE did not stop a model load under way (a restart loading the champion, a retried update): the load finished,
    and the endpoint that GET called deleted scored with the withdrawn version. An update of an endpoint that was never
    created loaded and served it too, where Databricks answers 404."""
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client = TestClient(app)
    state = app.state.endpoint
    release, loaded = threading.Event(), []

    def slow_load(entity, *args):  # loading a model takes a while: the DELETE comes in meanwhile
        release.wait(10)
        loaded.append(entity["entity_version"])
        EndpointState.load(state, entity, *args)

    state.load = slow_load
    import mlflow.pyfunc

    original = mlflow.pyfunc.load_model
    mlflow.pyfunc.load_model = lambda uri: _WithSchema()
    try:
        entity = {"served_entities": [{"entity_name": "m", "entity_version": "2"}]}
        assert client.put(f"{MANAGE}/config", json=entity, headers=AUTH).status_code == 404  # never created
        created = client.post("/api/2.0/serving-endpoints", json={"name": NAME, "config": entity}, headers=AUTH)
        assert created.status_code == 200
        assert client.delete(MANAGE, headers=AUTH).status_code == 200
        release.set()
        for _ in range(100):
            if loaded:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        assert loaded == ["2"]
        assert client.get(MANAGE, headers=AUTH).status_code == 404
        scored = client.post(INVOCATIONS, json=_payload(1), headers=AUTH)
        assert scored.status_code == 503 and "serves no model" in scored.json()["message"]  # before: 200, scored by v2
        assert state.model is None and state.served is None
    finally:
        mlflow.pyfunc.load_model = original


class _WithSchema:
    """What mlflow.pyfunc.load_model gives, as far as the server reads it."""

    class metadata:  # noqa: N801 - the attribute MLflow's PyFuncModel has
        @staticmethod
        def get_input_schema():
            return None

    def predict(self, frame):
        import pandas as pd

        return pd.DataFrame({"score": [0.0] * len(frame)})


def test_rows_are_counted_in_every_scoring_format():
    assert count_rows(json.dumps(_payload(3)).encode(), "application/json") == 3
    assert count_rows(b'{"dataframe_records": [{"image": "a"}, {"image": "b"}]}', "application/json") == 2
    assert count_rows(b'{"instances": [{"image": "a"}]}', "application/json") == 1
    assert count_rows(b'{"inputs": {"image": ["a", "b"]}}', "application/json") == 2
    assert count_rows(b"image\na\nb\nc\n", "text/csv; charset=utf-8") == 3
    assert count_rows(b"<html>", "application/json") is None  # MLflow's parser answers that one
    assert count_rows(b"\xff\xfe", "application/json") is None and count_rows(b"[1, 2]", "application/json") is None
    # columns as {index: value} maps, as pandas reads them: each entry a row (before: 0 rows, no limit)
    as_maps = {"dataframe_split": {"columns": ["image"], "data": {"image": {str(i): "a" for i in range(7)}}}}
    assert count_rows(json.dumps(as_maps).encode(), "application/json") == 7
    assert count_rows(json.dumps({"inputs": {"image": {"0": "a", "1": "b"}}}).encode(), "application/json") == 2


class _Recorder:
    """Stands in for a served pyfunc model: scores every image 0.0 and keeps what it was asked (or raises ``fail``)."""

    metadata = None  # MLflow's JSON parser reads it only once the body is valid JSON

    def __init__(self, fail: Exception | None = None) -> None:
        self.frames, self.fail = [], fail

    def predict(self, frame):
        import pandas as pd

        self.frames.append(frame)
        if self.fail is not None:
            raise self.fail
        return pd.DataFrame({"score": [0.0] * len(frame)})


def _serve(app, model):
    """Serve ``model`` as a finished deployment would (no registry in these tests)."""
    state = app.state.endpoint
    with state.lock:
        state.created, state.model, state.input_schema = True, model, None
    return model


@pytest.mark.parametrize(
    "split",
    [
        {"columns": ["image"], "index": [0] * 5000, "data": "aGk="},  # pandas repeats a scalar down the index
        {"columns": ["image"], "index": [0] * 5000, "data": {"image": "aGk="}},
        {"columns": ["image"], "index": list(range(5000)), "data": [["aGk="]]},
    ],
    ids=["scalar data", "a column of one scalar", "one row"],
)
@pytest.mark.parametrize("extra", [{}, {"x": 0}], ids=["plain", "with another key"])
def test_an_index_longer_than_the_data_counts_as_the_rows_pandas_builds_from_it(tmp_path, split, extra):
    """The row limit counted a split's ``data`` only: a 2 MB body of one image and a million index entries handed the model a
    million decoded images (a string or a one-value column counted 0 or 1 row)."""
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", limits=Limits(max_rows=4))
    model = _serve(app, _Recorder())
    answer = TestClient(app).post(INVOCATIONS, json={"dataframe_split": split, **extra}, headers=AUTH)
    assert answer.status_code == 413 and "5000 images in one request, over the limit of 4" in answer.json()["message"]
    assert model.frames == []


@pytest.mark.parametrize("content_type", ["application/json; charset=latin-1", "text/csv; charset=utf-16"])
def test_a_charset_other_than_utf8_is_refused_in_the_error_shape_of_every_other_answer(tmp_path, content_type):
    """MLflow's parser answered it 415 as text/plain: the one error answer not shaped {"error_code", "message"}."""
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    model = _serve(app, _Recorder())
    answer = TestClient(app).post(
        INVOCATIONS, content=b'{"dataframe_records": [{"image": "aGk="}]}', headers=AUTH | {"Content-Type": content_type}
    )
    assert answer.status_code == 415 and answer.headers["content-type"] == "application/json"
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "UTF-8" in answer.json()["message"]
    assert model.frames == []


def test_a_parquet_body_is_refused_before_it_is_decoded(tmp_path):
    """Before: the body limit counted compressed bytes and the row limit believed the footer's num_rows (which can be forged)."""
    import io

    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame({"image": [b"\0" * 2**24]}).to_parquet(buffer, compression="zstd")
    bomb = buffer.getvalue()  # about 2 KB that decode to 16 MiB
    client = _client(tmp_path, limits=Limits(max_body_bytes=64 * 2**10))
    model = _serve(client.app, _Recorder())
    assert len(bomb) < 64 * 2**10  # within the body limit as sent
    refused = client.post(INVOCATIONS, content=bomb, headers=AUTH | {"Content-Type": "application/vnd.apache.parquet"})
    assert refused.status_code == 415 and refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "application/json" in refused.json()["message"] and "text/csv" in refused.json()["message"]
    assert model.frames == []  # never decoded nor scored (before: 16 MiB decoded from a 64 KiB-limited body)
    assert count_rows(bomb, "application/vnd.apache.parquet") is None  # the footer's row count is not believed
    csv = client.post(INVOCATIONS, content=b"image\naGk=\n", headers=AUTH | {"Content-Type": "text/csv"})
    assert csv.status_code == 200 and csv.json() == {"predictions": [{"score": 0.0}]}  # the documented formats still score
    assert client.post(INVOCATIONS, json=_payload(2), headers=AUTH).json() == {"predictions": [{"score": 0.0}] * 2}


def test_an_error_answer_shows_no_stack_trace_and_no_long_echo_of_the_body(tmp_path, caplog):
    """Before: MLflow's error JSON went out as is, with the server's stack trace and the whole body echoed back."""
    client = _client(tmp_path)
    _serve(client.app, _Recorder(fail=RuntimeError("model broke in /opt/secret/site-packages/model.py")))
    with caplog.at_level("WARNING", logger="swan_anomaly.serving.server"):
        failed = client.post(INVOCATIONS, content=b"image\naGk=\n", headers=AUTH | {"Content-Type": "text/csv"})  # MLflow's own path
    assert failed.status_code == 400 and set(failed.json()) == {"error_code", "message"}
    assert "Traceback" not in failed.text and "/opt/secret" not in failed.text and "stack_trace" not in failed.text
    assert "Traceback" in caplog.text and "/opt/secret" in caplog.text  # the trace is in the server's log instead
    invalid = client.post(
        INVOCATIONS, content=b'{"dataframe_split": "' + b"x" * 20_000, headers=AUTH | {"Content-Type": "application/json"}
    )
    assert invalid.status_code == 400 and invalid.json()["error_code"] == "BAD_REQUEST"  # MLflow's code for it
    assert "valid JSON" in invalid.json()["message"] and len(invalid.json()["message"]) < 1_100  # MLflow echoes the body: capped


def test_batched_requests_take_line_wrapped_base64_as_mlflow_does():
    """MLflow's scoring server decodes a binary column with base64.decodebytes; the batched path refused wrapped base64."""
    import base64

    import pandas as pd

    from swan_anomaly.serving.server import _predict_records

    seen = []

    class Echo:
        def predict(self, frame):
            seen.extend(frame.image)
            return pd.DataFrame({"n": [len(b) for b in frame.image]})

    wrapped = base64.encodebytes(b"x" * 100).decode()  # 76-character lines, as `base64` and MIME encoders write
    assert "\n" in wrapped.strip()
    assert _predict_records(Echo(), [wrapped, "aGk="]) == [{"n": 100}, {"n": 2}] and seen == [b"x" * 100, b"hi"]
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="row 1: 'image' is not valid base64"):
        _predict_records(Echo(), ["aGk=", "a"])


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "mlflow's own path"])
def test_a_payload_that_goes_through_mlflows_parser_is_scored_batched_as_unbatched(tmp_path, batching):
    """Another top-level key next to the frame sends a request through MLflow's parser, which decodes a binary column of
    the schema itself: the batched path then base64-decoded those bytes again and answered 400, where MLflow scores them."""
    from fastapi.testclient import TestClient
    from mlflow.types.schema import ColSpec, DataType, Schema

    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", batching=batching)
    model = _serve(app, _Recorder())
    app.state.endpoint.input_schema = Schema([ColSpec(DataType.binary, "image")])
    body = {"dataframe_split": {"columns": ["image"], "data": [["aGk="], ["aG8="]]}, "client_request_id": "r-1"}
    answer = TestClient(app).post(INVOCATIONS, json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"predictions": [{"score": 0.0}, {"score": 0.0}]}
    assert list(model.frames[0]["image"]) == [b"hi", b"ho"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _uvicorn(app):
    """Run ``app`` under a real uvicorn server on a free port, in a thread; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_requests_over_the_in_flight_limit_get_429_and_the_held_one_still_completes(tmp_path):
    # the held request stays well within the default 30 s body deadline (it is released after about a second)
    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", limits=Limits(max_in_flight=1))
    with _uvicorn(app) as base:
        url = f"{base}{INVOCATIONS}"
        release = threading.Event()
        body = json.dumps(_payload(1)).encode()

        def slow_body():  # the first request stays in flight until released
            yield body[:10]
            release.wait(30)
            yield body[10:]

        held: dict = {}
        first = threading.Thread(target=lambda: held.update(r=httpx.post(url, content=slow_body(), headers=AUTH, timeout=60)))
        first.start()
        time.sleep(1.0)
        second = httpx.post(url, json=_payload(1), headers=AUTH, timeout=10)
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        release.set()
        first.join(30)
        assert held["r"].status_code == 503  # the held request was answered in full (no model served here)
        assert httpx.post(url, json=_payload(1), headers=AUTH, timeout=10).status_code == 503  # the slot is free again


def test_a_client_that_stalls_mid_body_gets_408_and_frees_its_slot(tmp_path):
    """Before: a client that sent its headers and one byte held its scoring slot forever (read_body had no deadline)."""
    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", limits=Limits(max_in_flight=1, body_timeout_s=1))
    with _uvicorn(app) as base:
        port = int(base.rsplit(":", 1)[1])
        head = f"POST {INVOCATIONS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(head.encode())  # ...and nothing more
            answer = b""
            try:
                while chunk := stalled.recv(65536):  # until the server closes the connection
                    answer += chunk
            except TimeoutError:
                pass  # no answer in 10 s
            assert answer.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout" and b"DEADLINE_EXCEEDED" in answer
            # the slot is free again while the stalled connection is still open: on to the model (none served here)
            assert httpx.post(f"{base}{INVOCATIONS}", json=_payload(1), headers=AUTH, timeout=10).status_code == 503


def test_the_server_bounds_its_connections_and_idle_keep_alives(tmp_path, monkeypatch):
    """Before: uvicorn.run got no limit_concurrency, so slow or idle clients could open connections without bound."""
    import uvicorn

    from swan_anomaly.serving import server

    ran: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.update(options))
    monkeypatch.setenv("SWAN_ENDPOINT_MAX_IN_FLIGHT", "200")
    token = tmp_path / "token"
    token.write_text("tok\n")
    server.main(["--token-file", str(token), "--no-champion-at-start"])
    assert ran.get("limit_concurrency") == 400  # twice the scoring requests in flight (at least Limits.max_connections)
    assert 0 < ran.get("timeout_keep_alive", 0) <= 30
    monkeypatch.setenv("SWAN_ENDPOINT_MAX_CONNECTIONS", "1000")  # a deployment's own bounds
    monkeypatch.setenv("SWAN_ENDPOINT_BODY_TIMEOUT_S", "120")
    built = {}
    monkeypatch.setattr(server, "create_app", lambda *args, limits, **kwargs: built.update(limits=limits))
    server.main(["--token-file", str(token), "--no-champion-at-start"])
    assert ran["limit_concurrency"] == 1000 and built["limits"].body_timeout_s == 120


def test_connections_that_never_send_their_headers_are_closed_and_free_the_server(tmp_path):
    """uvicorn's connection cap counts connections that have sent no request yet, and no timeout applied before the headers:
    a few silent sockets (256 at the defaults, no token needed) held every answer at 503, /health and deployments too."""
    import httpx
    import uvicorn

    from swan_anomaly.serving.server import uvicorn_options

    limits = Limits(max_connections=3, max_in_flight=1, header_timeout_s=1.0)
    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", limits=limits)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(limits)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    silent = []
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        for partial in (b"", b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"):  # two that send nothing, one half a request
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(partial)
            silent.append(sock)
        time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 503  # the cap is full, as the attack meant it
        answers = []
        for _ in range(100):  # they are closed once their headers are late: the server answers again
            answers.append(httpx.get(f"http://127.0.0.1:{port}/health").status_code)
            if answers[-1] == 200:
                break
            time.sleep(0.1)
        assert answers[-1] == 200, answers[-5:]
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(1024) == b""  # closed by the server
        # a request answered before its body was read (401 here) is not cut off while the client still sends the body
        upload = socket.create_connection(("127.0.0.1", port))
        silent.append(upload)
        upload.sendall(f"POST {INVOCATIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3000\r\n\r\n".encode())
        for _ in range(14):  # 1.4 s of a slow upload: more than the header timeout, within its one extra period
            upload.sendall(b" " * 100)
            time.sleep(0.1)
        upload.sendall(b" " * 2000)
        upload.settimeout(5)
        assert upload.recv(4096).startswith(b"HTTP/1.1 401")
    finally:
        for sock in silent:
            sock.close()
        server.should_exit = True
        thread.join(10)


def test_health_proves_the_token_is_held_without_showing_it(tmp_path):
    from fastapi.testclient import TestClient

    from swan_anomaly.serving.local import token_proof

    client = TestClient(create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    challenge = "a-fresh-random-challenge-0123456789"
    proof = client.get("/health", params={"challenge": challenge}).json()["proof"]
    assert proof == token_proof(TOKEN, challenge) != token_proof("another-token", challenge) and TOKEN not in proof
    assert "proof" not in client.get("/health").json()
    assert client.get("/health", params={"challenge": "short"}).status_code == 400


def test_health_shows_no_credential_of_the_registry_uri(tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(NAME, token=TOKEN, tracking_uri="postgresql://mlflow:pa55word@db:5432/mlflow")
    health = TestClient(app).get("/health")
    assert health.status_code == 200 and "pa55word" not in health.text
    assert health.json()["registry_uri"] == "postgresql://mlflow:***@db:5432/mlflow"


def test_the_token_file_is_made_once_readable_by_its_owner_only(tmp_path):
    from swan_anomaly.serving.local import endpoint_token

    s = Settings.from_env({"SWAN_HOME": str(tmp_path)})
    token = endpoint_token(s)
    assert len(token) >= 40 and endpoint_token(s) == token
    assert [p.name for p in s.serving_dir.iterdir()] == ["token"]  # nothing left aside
    assert stat.S_IMODE(os.stat(s.serving_dir / "token").st_mode) == 0o600
    assert endpoint_token(Settings.from_env({"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_TOKEN": "mine"})) == "mine"
    assert "mine" not in repr(Settings.from_env({"SWAN_ENDPOINT_TOKEN": "mine"}))


def test_the_detached_server_gets_an_allow_listed_environment_and_no_secret_on_its_command_line(tmp_path):
    from swan_anomaly.serving.local import server_env

    s = Settings.from_env({"SWAN_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "postgresql://u:pw@db/mlflow"})
    task_env = {
        "PATH": "/usr/bin",
        "DATABRICKS_TOKEN": "dapi-secret",
        "AZURE_STORAGE_KEY": "azure-secret",
        "AIRFLOW_CONN_SWAN_LAKE": "wasb://x:y@z",
        "MLFLOW_TRACKING_PASSWORD": "pw",
        "SWAN_HOME": str(tmp_path),
    }
    env = server_env(s, "tok", task_env | {"HTTPS_PROXY": "http://proxy:3128", "REQUESTS_CA_BUNDLE": "/etc/ca.pem"})
    assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["REQUESTS_CA_BUNDLE"] == "/etc/ca.pem"  # how it reaches a remote MLflow
    assert "DATABRICKS_TOKEN" not in env and "AZURE_STORAGE_KEY" not in env and "AIRFLOW_CONN_SWAN_LAKE" not in env
    assert env["MLFLOW_TRACKING_PASSWORD"] == "pw" and env["SWAN_ENDPOINT_TOKEN"] == "tok"
    assert env["MLFLOW_TRACKING_URI"] == "postgresql://u:pw@db/mlflow"  # in its environment, not on its command line
    on_databricks = Settings.from_env({"SWAN_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "databricks"})
    assert server_env(on_databricks, "tok", task_env)["DATABRICKS_TOKEN"] == "dapi-secret"  # it reads the models from there
    assert server_env(on_databricks, "tok", {**task_env, "ARM_CLIENT_SECRET": "sp"})["ARM_CLIENT_SECRET"] == "sp"  # an Azure AD login


@pytest.mark.parametrize("kind", ["json", "html", "mimic", "garbled", "older"])
def test_a_process_that_is_no_model_server_on_the_port_never_gets_the_token(tmp_path, kind):
    """Whatever answered /health with no registry was taken for this deployment's server and sent its bearer token; one that
    copies the registry the real server shows on its open /health must prove it holds the token, without being sent it."""
    from swan_anomaly.redact import redact_uri
    from swan_anomaly.serving.local import ensure_local_server

    seen, answer = [], {}

    def impostor(path, headers):
        seen.append((path, headers.get("Authorization")))
        return 200, answer["body"]

    with _answering_get(impostor) as url:
        s = Settings.from_env({"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_URL": url, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
        answer["body"] = {
            "json": b'{"status": "ok"}',
            "html": b"<html>a web app</html>",
            "mimic": json.dumps({"status": "ok", "registry_uri": redact_uri(s.registry_uri), "proof": "0" * 64}).encode(),
            "garbled": json.dumps({"status": "ok", "registry_uri": redact_uri(s.registry_uri), "proof": "\u00e9" * 64}).encode(),
            "older": json.dumps({"status": "ok", "registry_uri": redact_uri(s.registry_uri)}).encode(),  # a server before the proof
        }[kind]
        expected = {
            "mimic": "does not prove it holds this deployment's bearer token",
            "garbled": "does not prove it holds this deployment's bearer token",
            "older": r"runs an older version of swan-anomaly.*docker compose restart model-server",
        }.get(kind, "that is no swan-anomaly model server")
        with pytest.raises(ConfigError, match=expected):
            ensure_local_server(s, token="the-deployments-token")
    assert len(seen) == 1 and seen[0][0].startswith("/health") and seen[0][1] is None


def test_a_server_that_answers_503_is_busy_not_absent_and_its_pid_file_stays(tmp_path, monkeypatch):
    """A model server whose connections were full answered /health with 503, which was read as no server at all: a second one
    was started, failed to bind the port, and its dead pid replaced the running server's in server.pid (make stop-endpoint
    could no longer stop it)."""
    import subprocess

    from swan_anomaly._errors import EndpointBusy
    from swan_anomaly.serving.local import ensure_local_server

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    with _answering_get(lambda path, headers: (503, b"")) as url:  # what uvicorn answers over limit_concurrency
        s = Settings.from_env({"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_URL": url, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
        s.serving_dir.mkdir(parents=True)
        (s.serving_dir / "server.pid").write_text("4242")  # the running server's
        with pytest.raises(EndpointBusy, match=rf"the model server at {url} answers 503"):
            ensure_local_server(s, token="the-deployments-token")
    assert started == [] and (s.serving_dir / "server.pid").read_text() == "4242"


@contextlib.contextmanager
def _answering_get(answer):
    """An HTTP server on a free port (``http.server``) that answers every GET with ``answer(path, headers) -> (status, body)``;
    yields its URL. It stands in for what else may listen where the model server should."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            status, body = answer(self.path, self.headers)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_new_server_that_exits_before_answering_leaves_the_pid_file_alone(tmp_path):
    from swan_anomaly import EndpointError
    from swan_anomaly.serving.local import ensure_local_server

    s = Settings.from_env(
        {"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_URL": "http://192.0.2.1:5055", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    )
    s.serving_dir.mkdir(parents=True)
    (s.serving_dir / "server.pid").write_text("4242")
    with pytest.raises(EndpointError, match="exited with code"):  # it cannot bind that address (TEST-NET-1, not this machine's)
        ensure_local_server(s, token="the-deployments-token", timeout=60)
    assert (s.serving_dir / "server.pid").read_text() == "4242"


def test_a_server_this_deployment_started_with_an_older_version_is_restarted_with_this_one(tmp_path):
    """A server from before the /health proof (it outlives make demo) failed every run after an upgrade; one this deployment
    started (its pid file) is replaced, one it did not start is left to the operator."""
    from swan_anomaly.redact import redact_uri
    from swan_anomaly.serving.local import OutdatedServer, ensure_local_server, stop_local_server

    port = _free_port()
    s = Settings.from_env(
        {"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_URL": f"http://127.0.0.1:{port}", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    )
    body = json.dumps({"status": "ok", "registry_uri": redact_uri(s.registry_uri)})
    older = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        data = {body!r}.encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(data))); self.end_headers(); self.wfile.write(data)\n"
        "    def log_message(self, *a): pass\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", older], start_new_session=True)
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        with pytest.raises(OutdatedServer, match="runs an older version"):  # not started by this deployment: left alone
            ensure_local_server(s, token="the-deployments-token")
        assert proc.poll() is None
        s.serving_dir.mkdir(parents=True, exist_ok=True)
        (s.serving_dir / "server.pid").write_text(str(proc.pid))  # as the older version's ensure_local_server wrote it
        url = ensure_local_server(s, token="the-deployments-token")
        assert proc.wait(10) is not None
        health = httpx.get(f"{url}/health", params={"challenge": "x" * 32}).json()
        assert "proof" in health  # this version's server answers there now
    finally:
        stop_local_server(s)
        if proc.poll() is None:
            proc.kill()


def test_the_detached_server_gets_no_hub_token(tmp_path):
    from swan_anomaly.serving.local import server_env

    s = Settings.from_env({"SWAN_HOME": str(tmp_path)})
    env = server_env(s, "tok", {"PATH": "/bin", "HF_TOKEN": "hf-1", "HF_HUB_TOKEN": "hf-2", "HF_HOME": "/cache", "HF_HUB_OFFLINE": "1"})
    assert "HF_TOKEN" not in env and "HF_HUB_TOKEN" not in env and env["HF_HOME"] == "/cache" and env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.skipif(sys.platform != "linux", reason="reads the server's command line from /proc")
def test_a_started_server_takes_its_token_and_its_command_line_holds_no_uri_or_token(tmp_path):
    from swan_anomaly import ConfigError
    from swan_anomaly.serving.local import endpoint_token, ensure_local_server, stop_local_server

    port = _free_port()
    env = {"SWAN_HOME": str(tmp_path), "SWAN_ENDPOINT_URL": f"http://127.0.0.1:{port}", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    s = Settings.from_env(env)
    try:
        url = ensure_local_server(s)
        pid = int((s.serving_dir / "server.pid").read_text())
        # a task killed while its server started left no pid file: the next call, finding the server proven, writes it
        (s.serving_dir / "server.pid").unlink()
        assert ensure_local_server(s) == url and int((s.serving_dir / "server.pid").read_text()) == pid
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
        assert endpoint_token(s) not in " ".join(cmdline) and "sqlite" not in " ".join(cmdline)
        assert cmdline[cmdline.index("--host") + 1] == "127.0.0.1"
        assert httpx.get(f"{url}{MANAGE}", headers={"Authorization": f"Bearer {endpoint_token(s)}"}).status_code == 404
        with pytest.raises(ConfigError, match="does not prove it holds this deployment's bearer token"):
            ensure_local_server(s, token="another-deployments-token")
    finally:
        stop_local_server(s)


def test_a_local_job_gets_no_secret_it_does_not_need(tmp_path, monkeypatch):
    """Before, a local job subprocess inherited the task's whole environment: a Databricks token, Airflow connections."""
    from swan_airflow.jobs import run_job

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "probe.py").write_text(
        "import argparse, os, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'include')!r})\n"
        "from swan_anomaly.lake import LocalLake\n"
        "p = argparse.ArgumentParser(); [p.add_argument(a) for a in ('--lake-root', '--dataset-id', '--run-id')]\n"
        "a = p.parse_args()\n"
        "from pathlib import Path\nLocalLake(Path(a.lake_root)).write_result(a.run_id, 'probe', {'env': sorted(os.environ)})\n"
    )
    monkeypatch.setenv("SWAN_JOBS_DIR", str(jobs))
    monkeypatch.setenv("SWAN_LAKE_ROOT", str(tmp_path / "lake"))
    for name, value in {
        "DATABRICKS_TOKEN": "dapi-x",
        "AIRFLOW_CONN_SWAN_LAKE": "wasb://a:b@c",
        "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=x",
        "SWAN_ENDPOINT_TOKEN": "t",
        "MLFLOW_TRACKING_PASSWORD": "the-training-job-logs-in",
    }.items():
        monkeypatch.setenv(name, value)
    env = set(run_job("probe", dataset_id="20260101", run_id="manual__probe")["env"])
    assert not env & {"DATABRICKS_TOKEN", "AIRFLOW_CONN_SWAN_LAKE", "AZURE_STORAGE_CONNECTION_STRING", "SWAN_ENDPOINT_TOKEN"}
    assert "MLFLOW_TRACKING_PASSWORD" not in env  # only the training job logs to MLflow (test_operations: each job's secrets)
    assert {"PATH", "SWAN_LAKE_ROOT"} <= env


def test_make_airflow_serves_the_ui_and_api_on_this_machine_only(tmp_path):
    """`make airflow` ran `airflow standalone` with Airflow's own [api] host, 0.0.0.0: the UI and API on every interface."""
    probe = tmp_path / "Makefile"
    probe.write_text(f"include {ROOT / 'Makefile'}\nshow-api-host:\n\t@{sys.executable} -c \"$(API_HOST)\"\n")
    api_host = "from airflow.configuration import conf; print(conf.get('api', 'host'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__API__")}
    shown = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "-f", str(probe), "show-api-host", f"API_HOST={api_host}"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert shown.stdout.strip() == "127.0.0.1", shown.stderr


def test_secrets_named_otherwise_or_held_in_a_uri_stay_out_of_the_jobs_that_do_not_need_them(monkeypatch):
    """The filter went by a few whole words: PGPASSWORD, MYSQL_PWD, SSHPASS, DB_PASS and a passphrase reached every local job
    (and the wheel build), and so did a password inside a URI (a database-backed MLflow store, a Redis URL)."""
    from swan_airflow.jobs import local_job_env

    secrets = {
        "PGPASSWORD": "p",
        "MYSQL_PWD": "p",
        "SSHPASS": "p",
        "DB_PASS": "p",
        "GPG_PASSPHRASE": "p",
        "REDIS_URL": "redis://:pw@cache:6379/0",
        "MLFLOW_TRACKING_URI": "postgresql://mlflow:s3cret@db/mlflow",
    }
    harmless = {"PATH": "/usr/bin", "PWD": "/work", "OLDPWD": "/", "SWAN_ENDPOINT_URL": "http://127.0.0.1:5055", "PASSENGER": "x"}
    # the route out, login and all: the training and ETL jobs reach the model hub through it
    harmless |= {"HTTPS_PROXY": "http://u:p@proxy:3128", "http_proxy": "http://u:p@proxy:3128", "HF_ENDPOINT": "https://u:t@hf-mirror"}
    environ = {**secrets, **harmless}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cret@db/mlflow")
    for job in ("etl", "augment"):
        assert local_job_env(job, environ) == harmless
    # the training job logs to that store: its URI is the one secret of these it gets
    assert local_job_env("train", environ) == {**harmless, "MLFLOW_TRACKING_URI": "postgresql://mlflow:s3cret@db/mlflow"}


def test_mlflow_credentials_in_an_http_uri_are_refused_and_never_sent_in_a_job_payload(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.databricks_runs import cluster_env_vars
    from swan_anomaly import ConfigError

    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_URI carries credentials \(https://u:\*\*\*@mlflow.example.com\)") as caught:
        Settings.from_env({"MLFLOW_TRACKING_URI": "https://u:s3cret@mlflow.example.com"})
    assert "s3cret" not in str(caught.value)
    from swan_airflow.databricks_runs import check_cluster_env

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cret@db/mlflow")  # a database store: allowed here...
    # ...the DAG still parses (the payload is built then) with the password masked in it...
    assert cluster_env_vars()["MLFLOW_TRACKING_URI"] == "postgresql://mlflow:***@db/mlflow"
    with pytest.raises(AirflowFailException, match="would show in the Databricks run's payload") as refused:
        check_cluster_env()  # ...and a Databricks run is refused when it is submitted
    assert "s3cret" not in str(refused.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    assert cluster_env_vars()["MLFLOW_TRACKING_URI"] == "databricks"


def test_a_databricks_run_is_refused_when_the_cluster_could_not_reach_the_mlflow_store_or_the_lake(tmp_path, monkeypatch):
    """The default deployment's sqlite MLflow and lake folder went into the payload when a run chose backend 'databricks':
    on a real cluster the runs were lost with it, and the files it was told to open do not exist there."""
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.databricks_runs import check_cluster_env

    monkeypatch.setenv("SWAN_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("SWAN_JOB_LAKE_ROOT", raising=False)
    with pytest.raises(AirflowFailException, match=r"MLFLOW_TRACKING_URI \(sqlite:///.*\) is an MLflow store on this worker's disk"):
        check_cluster_env()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    with pytest.raises(AirflowFailException, match=r"cannot open this worker's lake folder \(.*lake\)"):
        check_cluster_env()
    monkeypatch.setenv("SWAN_JOB_LAKE_ROOT", "/Volumes/main/swan/lake")  # where the clusters see it
    check_cluster_env()
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/registry.db")  # only Airflow's tasks use the registry
    check_cluster_env()


def test_the_jobs_lake_root_is_a_path_their_file_io_can_open():
    with pytest.raises(ConfigError, match=r"SWAN_JOB_LAKE_ROOT='abfss://swan@acct.dfs.core.windows.net/lake': .* is not a path"):
        Settings.from_env({"SWAN_JOB_LAKE_ROOT": "abfss://swan@acct.dfs.core.windows.net/lake"})
    assert Settings.from_env({"SWAN_JOB_LAKE_ROOT": "/Volumes/main/swan/lake"}).job_lake_root == "/Volumes/main/swan/lake"


def test_a_local_job_keeps_the_workspace_login_when_mlflow_is_the_workspaces(monkeypatch):
    from swan_airflow.jobs import local_job_env

    task_env = {"PATH": "/bin", "DATABRICKS_HOST": "https://adb-1.azuredatabricks.net", "DATABRICKS_TOKEN": "dapi-x"}
    task_env |= {"HF_TOKEN": "hf", "TOKENIZERS_PARALLELISM": "false", "AWS_SECRET_ACCESS_KEY": "k", "ARM_CLIENT_SECRET": "sp-secret"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = local_job_env("train", task_env)
    assert "DATABRICKS_TOKEN" not in local and "AWS_SECRET_ACCESS_KEY" not in local and "ARM_CLIENT_SECRET" not in local
    assert local["HF_TOKEN"] == "hf" and local["TOKENIZERS_PARALLELISM"] == "false"  # a base model's download; not a secret
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")  # the training job logs to the workspace: it needs the login
    assert local_job_env("train", task_env)["DATABRICKS_TOKEN"] == "dapi-x"
    # an Azure AD service principal's login (registry_client sets it)
    assert local_job_env("train", task_env)["ARM_CLIENT_SECRET"] == "sp-secret"
    assert "DATABRICKS_TOKEN" not in local_job_env("etl", task_env)  # the ETL job logs nothing to MLflow


def test_a_link_base_with_credentials_is_refused():
    """The task links are shown to everyone who can see the task: no login in them."""
    with pytest.raises(ConfigError, match=r"SWAN_MLFLOW_UI_URL carries credentials \(https://u:\*\*\*@mlflow.example.com\)"):
        Settings.from_env({"SWAN_MLFLOW_UI_URL": "https://u:p@mlflow.example.com"})
    with pytest.raises(ConfigError, match="SWAN_ENDPOINT_UI_URL carries credentials"):
        Settings.from_env({"SWAN_ENDPOINT_UI_URL": "http://admin:pw@127.0.0.1:5055"})
