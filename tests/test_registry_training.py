"""Registry idempotency and promotion (MLflow on SQLite), early stopping of the training loop."""

from __future__ import annotations

import pytest


@pytest.fixture
def registry(tmp_path, monkeypatch):
    from swan_anomaly.registry import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; monkeypatch restores the session's value.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    source = tmp_path / "model"
    source.mkdir()
    (source / "MLmodel").write_text("flavors: {}\n")
    return mlflow_client(uri), source.as_uri()


def test_register_is_idempotent_per_airflow_run(registry):
    from swan_anomaly.registry import CHALLENGER, register_challenger

    client, source = registry
    first = register_challenger(client, "swan_test", source, None, "manual__1")
    again = register_challenger(client, "swan_test", source, None, "manual__1")
    other = register_challenger(client, "swan_test", source, None, "manual__2")
    assert str(first.version) == str(again.version) == "1" and str(other.version) == "2"
    assert len(client.search_model_versions("name = 'swan_test'")) == 2
    assert CHALLENGER in client.get_model_version("swan_test", "2").aliases


def test_promote_moves_champion_keeps_previous_and_is_idempotent(registry):
    from swan_anomaly.registry import CHALLENGER, CHAMPION, PREVIOUS, aliases_of, promote, register_challenger, rollback

    client, source = registry
    register_challenger(client, "swan_test", source, None, "r1")
    assert promote(client, "swan_test", "1") is True
    register_challenger(client, "swan_test", source, None, "r2")
    assert promote(client, "swan_test", "2") is True
    assert promote(client, "swan_test", "2") is False
    assert aliases_of(client, "swan_test", "2") == [CHAMPION]
    assert aliases_of(client, "swan_test", "1") == [PREVIOUS]
    assert CHALLENGER not in aliases_of(client, "swan_test", "2")
    rollback(client, "swan_test", "1")
    assert CHAMPION in aliases_of(client, "swan_test", "1")


def test_early_stopping_fires_and_restores_the_best_epoch():
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from swan_anomaly.modeling import PRESETS
    from swan_anomaly.training import TrainConfig, _evaluate, train_classifier

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**PRESETS["vit-micro-offline"], num_labels=2))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, 32, 32, generator=gen)
    y = torch.arange(48) % 2  # labels unrelated to the pixels: validation cannot keep improving
    cfg = TrainConfig(epochs=30, patience=2, batch_size=16, learning_rate=1e-3)
    seen = []
    model, history, best_epoch = train_classifier(model, (x[:32], y[:32]), (x[32:], y[32:]), cfg, on_epoch=seen.append)
    assert len(history) < cfg.epochs, "early stopping did not fire"
    assert best_epoch == len(history) - cfg.patience
    best = history[best_epoch - 1]
    loss, _ = _evaluate(model, x[32:], y[32:], cfg.batch_size)
    assert loss == pytest.approx(best.val_loss, abs=1e-6)
