"""The optional label check, through the Airflow-facing function, against the Azure OpenAI double."""

from __future__ import annotations

import logging
import traceback

import cv2
import numpy as np
import pandas as pd
import pytest

from azure_openai_double import AzureOpenAIDouble

KEY = "azure-openai-KEY-0123456789abcdef"
WRONG_KEY = "wrong-KEY-fedcba9876543210"
WATER, SWAN, MUD = (40, 110, 170), (245, 245, 240), (150, 100, 50)  # RGB


def _frame(path, colour, *, size=(240, 320), swan=True, suffix=".png"):
    """A water scene with a white swan, or a frame mostly of ``colour``."""
    image = np.zeros((*size, 3), np.uint8)
    image[:] = colour
    if swan:
        cv2.ellipse(image, (size[1] // 2, size[0] // 2), (size[1] // 6, size[0] // 8), 0, 0, 360, SWAN, -1)
    image = np.clip(image.astype(int) + np.random.default_rng(len(str(path))).integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def dataset(tmp_path):
    """6 normal swan frames (one large JPEG), plus one abnormal frame of mud that must never be sampled."""
    rows = []
    for i in range(6):
        big = i == 0
        p = _frame(
            tmp_path / "frames" / "v1" / f"frame_{i:05d}", WATER, size=(600, 800) if big else (240, 320), suffix=".jpg" if big else ".png"
        )
        rows.append((str(p.relative_to(tmp_path)), 1))
    p = _frame(tmp_path / "anomalies" / "v1" / "frame_00003_poly", MUD, swan=False)
    rows.append((str(p.relative_to(tmp_path)), 0))
    return tmp_path, pd.DataFrame(rows, columns=["image_path", "label"])


def _plant_mud(dataset_dir, manifest, n=2):
    paths = []
    for i in range(n):
        p = _frame(dataset_dir / "frames" / "v2" / f"frame_{i:05d}", MUD, swan=False)
        paths.append(str(p.relative_to(dataset_dir)))
    return pd.concat([manifest, pd.DataFrame({"image_path": paths, "label": 1})], ignore_index=True), paths


@pytest.fixture
def double(monkeypatch):
    d = AzureOpenAIDouble(api_key=KEY, colour_answers={"dog": MUD}).start()
    monkeypatch.delenv("SWAN_LABEL_CHECK_CONN_ID", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_SWAN_LABEL_CHECK", d.connection())
    yield d
    d.stop()


def _use(monkeypatch, double, **extra):
    monkeypatch.setenv("AIRFLOW_CONN_SWAN_LABEL_CHECK", double.connection(**extra))


def test_all_swan_frames_pass_and_only_normal_frames_are_sent(double, dataset):
    from swan_airflow.label_check import run_label_check

    dataset_dir, manifest = dataset
    report = run_label_check(dataset_dir, manifest, seed=42)
    normal = sorted(manifest[manifest.label == 1].image_path)
    assert report["sampled"] == report["answered"] == report["candidates"] == 6
    assert report["mismatched"] == 0 and report["mismatches"] == [] and report["errors"] == {}
    assert report["answers"] == {p: "swan" for p in normal}
    assert report["deployment"] == "gpt-4o-mini" and report["endpoint"] == double.endpoint and report["conn_id"] == "swan_label_check"
    assert double.statuses() == [200] * 6
    # the 800x600 frame was downscaled to at most 512 pixels per side before it was sent
    assert sorted(s.shape for s in double.seen)[-1] == (384, 512, 3)
    assert KEY not in repr(report)


def test_planted_non_swan_frames_are_reported_by_path(double, dataset, monkeypatch):
    from swan_airflow.label_check import run_label_check

    double.swan_reply = " Swan."  # chatty replies are normalised to one lowercase word
    dataset_dir, manifest = dataset
    manifest, planted = _plant_mud(dataset_dir, manifest)
    report = run_label_check(dataset_dir, manifest, seed=7)
    assert report["mismatches"] == planted and report["mismatched"] == 2
    assert {report["answers"][p] for p in planted} == {"dog"}
    assert report["answer_counts"] == {"swan": 6, "dog": 2}
    assert "anomalies/v1/frame_00003_poly.png" not in report["answers"]


def test_sample_is_seeded_and_sized(double, dataset, monkeypatch):
    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, sample_size=3)
    dataset_dir, manifest = dataset
    first = run_label_check(dataset_dir, manifest, seed=1)
    again = run_label_check(dataset_dir, manifest.sample(frac=1, random_state=0), seed=1)
    assert first["sampled"] == 3 and first["candidates"] == 6
    assert list(first["answers"]) == list(again["answers"])


def test_throttling_is_retried_after_retry_after(double, dataset):
    from swan_airflow.label_check import run_label_check

    double.fail_next(429, times=1, retry_after_ms=50)
    double.fail_next(503, times=1)
    dataset_dir, manifest = dataset
    report = run_label_check(dataset_dir, manifest, seed=42)
    assert double.statuses().count(429) == 1 and double.statuses().count(503) == 1
    assert double.statuses().count(200) == 6
    assert report["answered"] == 6 and report["errored"] == 0 and report["mismatched"] == 0


def test_wrong_key_is_a_clear_error_that_never_shows_a_key(double, dataset, monkeypatch, caplog, capsys):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, api_key=WRONG_KEY)
    caplog.set_level(logging.DEBUG)
    dataset_dir, manifest = dataset
    with pytest.raises(AirflowFailException) as err:
        run_label_check(dataset_dir, manifest, seed=42)
    message = str(err.value)
    assert "401" in message and "'gpt-4o-mini'" in message and double.endpoint in message
    assert "Airflow connection 'swan_label_check'" in message
    assert 401 in double.statuses() and 200 not in double.statuses()
    logging.getLogger("test").error("task failed", exc_info=err.value)
    shown = "".join(traceback.format_exception(err.value)) + caplog.text + "".join(capsys.readouterr())
    for key in (KEY, WRONG_KEY):
        assert key not in shown


def test_unknown_deployment_names_it(double, dataset, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, deployment="gpt-4o-typo")
    with pytest.raises(AirflowFailException, match=r"404.*DeploymentNotFound|no deployment 'gpt-4o-typo'"):
        run_label_check(*dataset, seed=42)


def test_fail_mode_raises_naming_the_files(double, dataset, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, mode="fail")
    dataset_dir, manifest = dataset
    manifest, planted = _plant_mud(dataset_dir, manifest)
    with pytest.raises(AirflowFailException) as err:
        run_label_check(dataset_dir, manifest, seed=42)
    message = str(err.value)
    assert "2 of 8 sampled normal frames are not swan" in message
    assert all(f"{p} ('dog')" in message for p in planted)


def test_warn_mode_logs_mismatches_and_does_not_fail(double, dataset, caplog):
    from swan_airflow.label_check import run_label_check

    dataset_dir, manifest = dataset
    manifest, planted = _plant_mud(dataset_dir, manifest, n=1)
    with caplog.at_level(logging.WARNING, logger="swan_anomaly.label_check"):
        report = run_label_check(dataset_dir, manifest, seed=42)
    assert report["mismatches"] == planted
    assert planted[0] in caplog.text and "1 of 7 sampled normal frames are not swan" in caplog.text


def test_connection_typos_are_refused(double, dataset, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, sample_sise=5)
    with pytest.raises(AirflowFailException, match=r"unknown extra key\(s\) \['sample_sise'\]"):
        run_label_check(*dataset, seed=42)


def test_the_double_refuses_what_is_not_an_image(double):
    import httpx

    url = f"{double.endpoint}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    content = [
        {"type": "text", "text": "what animal?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
    ]
    reply = httpx.post(url, headers={"api-key": KEY}, json={"messages": [{"role": "user", "content": content}]})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_image_format"
    reply = httpx.post(url.replace("2024-10-21", "1999-01-01"), headers={"api-key": KEY}, json={})
    assert reply.status_code == 404


def test_disabled_by_default(monkeypatch):
    from swan_airflow.label_check import label_check_enabled

    monkeypatch.delenv("SWAN_LABEL_CHECK", raising=False)
    assert label_check_enabled({}) is False
    assert label_check_enabled({"label_check": None}) is False
    assert label_check_enabled({"label_check": True}) is True
    monkeypatch.setenv("SWAN_LABEL_CHECK", "true")
    assert label_check_enabled({}) is True
    assert label_check_enabled({"label_check": False}) is False  # a run can opt out
    monkeypatch.setenv("SWAN_LABEL_CHECK", "0")
    assert label_check_enabled(None) is False
    monkeypatch.setenv("SWAN_LABEL_CHECK", "ture")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="SWAN_LABEL_CHECK must be one of"):  # a typo is an error, not a silent "off"
        label_check_enabled({})


def test_an_unavailable_service_is_reported_not_fatal_in_warn_mode(double, dataset, monkeypatch):
    from swan_airflow.label_check import run_label_check

    _use(monkeypatch, double, max_retries=0, max_workers=1)
    double.fail_next(429, times=100)
    report = run_label_check(*dataset, seed=42)
    assert double.statuses() == [429]  # after a throttled answer no further frames are sent
    assert report["errored"] == 6 and report["answered"] == 0 and report["mismatches"] == []
    assert sum(e.startswith("429") for e in report["errors"].values()) == 1


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("http://myresource.openai.azure.com", True),
        ("http://10.0.0.5:8080", True),
        ("https://myresource.openai.azure.com", False),
        ("http://127.0.0.1:8443", False),
        ("http://localhost:8443", False),
    ],
)
def test_the_api_key_is_never_sent_in_plain_http_beyond_this_machine(endpoint, refused):
    from swan_anomaly._errors import ConfigError
    from swan_anomaly.azure_openai import AzureOpenAIConfig

    config = AzureOpenAIConfig(endpoint=endpoint, deployment="gpt-4o-mini", api_key="k3y", source="Airflow connection 'swan_label_check'")
    if refused:
        with pytest.raises(ConfigError, match="is plain http: every request carries the API key") as caught:
            config.validate()
        assert "k3y" not in str(caught.value)
    else:
        config.validate()
