"""The endpoint client sizes its requests to the endpoint's body limit: camera frames at full resolution are megabytes each."""

from __future__ import annotations

import base64
import socket
import threading
import time

import numpy as np
import pytest

NAME = "swan-anomaly"
TOKEN = "t0k3n-for-client-tests"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def small_server(tmp_path, monkeypatch):
    """The real local model server under uvicorn, with a 256 KiB body limit and no model served (it answers 503 to a request it reads)."""
    import mlflow
    import uvicorn

    from swan_anomaly.serving.server import Limits, create_app

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    app = create_app(NAME, token=TOKEN, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", limits=Limits(max_body_bytes=256 * 2**10))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", 256 * 2**10
    finally:
        server.should_exit = True
        thread.join(10)
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


def _frames(n: int, nbytes: int) -> list[bytes]:
    """``n`` incompressible images of ``nbytes`` each (the client sends bytes as they are)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes() for _ in range(n)]


def test_large_frames_are_sent_in_requests_the_endpoint_reads(small_server):
    """16 frames of 40 KB make a 0.9 MB request: the server answered 413 and validation blamed the model.

    The server reads every request now; with no model served it answers 503, which the client
    reports as busy after its retries (none here).
    """
    from swan_anomaly._errors import EndpointBusy
    from swan_anomaly.serving.client import EndpointClient

    url, limit = small_server
    client = EndpointClient(url, NAME, token=TOKEN, retry_seconds=0, max_request_bytes=limit)
    with pytest.raises(EndpointBusy, match="503"):
        client.score(_frames(16, 40_000))


def test_a_frame_too_large_for_any_request_is_named():
    from swan_anomaly import EndpointError
    from swan_anomaly.serving.client import EndpointClient

    client = EndpointClient("http://127.0.0.1:9", NAME, token=TOKEN, retry_seconds=0, max_request_bytes=100_000)
    with pytest.raises(EndpointError, match=r"image 2 is 133,336 bytes as base64: a request of it alone exceeds the endpoint's 100,000"):
        client.score(_frames(2, 1_000) + _frames(1, 100_000))


@pytest.mark.parametrize("sizes", [[10] * 40, [50_000, 10, 90_000, 10, 10, 120_000, 30_000], [1] * 3])
def test_batches_cover_every_image_in_order_within_both_limits(sizes):
    import json

    from swan_anomaly.serving.client import request_batches

    encoded = [base64.b64encode(b"x" * n).decode() for n in sizes]
    limit = 200_000
    batches = request_batches(encoded, max_rows=16, max_bytes=limit)
    assert [i for b in batches for i in range(len(encoded))[b]] == list(range(len(encoded)))
    for b in batches:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[t] for t in encoded[b]]}})
        assert 1 <= len(encoded[b]) <= 16 and len(body) <= limit
    # and it does not split more than it must: a batch with the next image would have been over a limit
    for first, second in zip(batches, batches[1:], strict=False):
        together = encoded[first.start : second.start + 1]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[t] for t in together]}})
        assert len(together) > 16 or len(body) > limit


def test_an_endpoint_serving_another_model_or_a_traffic_split_serves_no_version_of_ours(caplog):
    """Only the first entity's version was read: another model's v3 on the endpoint passed for our v3 ("already serves")."""
    import types

    from databricks.sdk.service.serving import EndpointCoreConfigOutput, ServedEntityOutput, ServingEndpointDetailed

    from swan_anomaly.serving.deploy import served_version

    def workspace(*entities):
        detail = ServingEndpointDetailed(name="swan-anomaly", config=EndpointCoreConfigOutput(served_entities=list(entities)))
        return types.SimpleNamespace(serving_endpoints=types.SimpleNamespace(get=lambda name: detail))

    ours, theirs = ServedEntityOutput(entity_name="swan", entity_version="3"), ServedEntityOutput(entity_name="other", entity_version="3")
    assert served_version(workspace(ours), "swan-anomaly", "swan") == "3"
    assert served_version(workspace(theirs), "swan-anomaly", "swan") is None
    assert "serves other v3, not one version of swan" in caplog.text
    assert served_version(workspace(ours, ServedEntityOutput(entity_name="swan", entity_version="2")), "swan-anomaly", "swan") is None
    assert served_version(workspace(), "swan-anomaly", "swan") is None
    assert served_version(workspace(theirs), "swan-anomaly") == "3"  # no name asked: whatever one entity it serves
    uc = ServedEntityOutput(entity_name="main.vision.swan_anomaly_vit", entity_version="4")  # Unity Catalog answers in lower case
    assert served_version(workspace(uc), "swan-anomaly", "main.vision.Swan_Anomaly_ViT") == "4"


def test_new_serving_settings_reach_an_endpoint_that_serves_the_version_already():
    """deploy_version returned "already serves" on the version alone: a changed SWAN_SERVING_CPU_PRECISION, workload size or
    type, or scale to zero never reached the endpoint until another version became champion (an endpoint could go on
    computing in int8 while the validation's tolerance was set for float32)."""
    import datetime as dt
    import types

    from databricks.sdk.service.serving import EndpointCoreConfigOutput, ServedEntityOutput, ServingEndpointDetailed

    from swan_anomaly.serving.deploy import ServingConfig, deploy_version

    updates = []
    served = ServedEntityOutput(entity_name="swan", entity_version="3", workload_size="Small", scale_to_zero_enabled=True)
    detail = ServingEndpointDetailed(name="swan-anomaly", config=EndpointCoreConfigOutput(served_entities=[served]))
    endpoints = types.SimpleNamespace(
        get=lambda name: detail, update_config_and_wait=lambda name, served_entities, timeout: updates.append(served_entities)
    )
    w = types.SimpleNamespace(serving_endpoints=endpoints)
    timeout = dt.timedelta(seconds=5)
    same = deploy_version(w, "swan-anomaly", "swan", "3", ServingConfig(workload_size="Small", scale_to_zero=True, timeout=timeout))
    assert not same.changed and updates == []
    for config in (
        ServingConfig(workload_size="Small", scale_to_zero=True, cpu_precision="int8", timeout=timeout),
        ServingConfig(workload_size="Medium", scale_to_zero=True, timeout=timeout),
        ServingConfig(workload_size="Small", scale_to_zero=False, timeout=timeout),
    ):
        result = deploy_version(w, "swan-anomaly", "swan", "3", config)
        assert result.changed and result.version == "3"
        [entity] = updates.pop()
        sent = (entity.entity_version, entity.workload_size, entity.scale_to_zero_enabled)
        assert sent == ("3", config.workload_size, config.scale_to_zero)
        assert entity.environment_vars == config.environment_vars()
