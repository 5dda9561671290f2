"""Registry idempotency and promotion (MLflow on SQLite), early stopping of the training loop."""

from __future__ import annotations

import numpy as np
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


def _training_runs(client, n: int) -> list[str]:
    """``n`` MLflow runs standing in for trainings (a version's source run)."""
    experiment = client.create_experiment(f"trainings-{n}")
    return [client.create_run(experiment).info.run_id for _ in range(n)]


def test_registering_the_same_training_again_reuses_its_version(registry):
    from swan_anomaly.registry import CHALLENGER, register_challenger

    client, source = registry
    run_1, run_2 = _training_runs(client, 2)
    first = register_challenger(client, "swan_test", source, run_1, "manual__1")
    again = register_challenger(client, "swan_test", source, run_1, "manual__1")  # register_model cleared
    other = register_challenger(client, "swan_test", source, run_2, "manual__2")
    assert str(first.version) == str(again.version) == "1" and str(other.version) == "2"
    assert len(client.search_model_versions("name = 'swan_test'")) == 2
    assert CHALLENGER in client.get_model_version("swan_test", "2").aliases


def test_a_retrained_model_of_the_same_airflow_run_becomes_a_new_version(registry):
    """Clearing run_training trains a new model (a new MLflow run): its weights, not the old ones, are registered."""
    from swan_anomaly.registry import CHALLENGER, register_challenger

    client, source = registry
    old_training, new_training = _training_runs(client, 2)
    old = register_challenger(client, "swan_test", source, old_training, "manual__1")
    retrained = register_challenger(client, "swan_test", source, new_training, "manual__1")
    assert str(old.version) == "1" and str(retrained.version) == "2"
    assert retrained.run_id == new_training and CHALLENGER in retrained.aliases
    assert register_challenger(client, "swan_test", source, new_training, "manual__1").version == retrained.version


def _set_status(tracking_uri: str, name: str, version: str, status: str) -> None:
    """Leave a version in ``status`` as Unity Catalog does when its files never finished uploading (create, upload, finalize)."""
    import sqlite3

    with sqlite3.connect(tracking_uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE model_versions SET status = ? WHERE name = ? AND version = ?", (status, name, int(version)))


@pytest.mark.parametrize("status", ["PENDING_REGISTRATION", "FAILED_REGISTRATION"])
def test_a_retried_registration_does_not_reuse_a_version_that_never_became_ready(registry, status):
    """Unity Catalog creates a version, uploads its files, then finalizes it: a worker lost during the upload leaves the
    version PENDING_REGISTRATION (or FAILED_REGISTRATION), with no files. The retry reused it by its run id, so every try put
    `challenger` on a version nobody can load, and only a new training could get the run past it."""
    from swan_anomaly.registry import CHALLENGER, register_challenger

    client, source = registry
    (run,) = _training_runs(client, 1)
    broken = register_challenger(client, "swan_test", source, run, "manual__1")
    _set_status(client._registry_uri, "swan_test", broken.version, status)
    retried = register_challenger(client, "swan_test", source, run, "manual__1", pending_wait_s=0)
    assert str(retried.version) == "2" and retried.status == "READY" and CHALLENGER in retried.aliases
    assert CHALLENGER not in client.get_model_version("swan_test", "1").aliases
    # the retry after that reuses the version that is ready
    assert str(register_challenger(client, "swan_test", source, run, "manual__1", pending_wait_s=0).version) == "2"


def test_a_registration_still_under_way_is_waited_for_and_reused(registry):
    """A version that becomes READY while the retry waits is the training's version: no second copy of the same weights."""
    import threading

    from swan_anomaly.registry import register_challenger

    client, source = registry
    (run,) = _training_runs(client, 1)
    first = register_challenger(client, "swan_test", source, run, "manual__1")
    _set_status(client._registry_uri, "swan_test", first.version, "PENDING_REGISTRATION")
    finish = threading.Timer(0.5, _set_status, (client._registry_uri, "swan_test", first.version, "READY"))
    finish.start()
    try:
        again = register_challenger(client, "swan_test", source, run, "manual__1", pending_wait_s=60, poll_s=0.1)
    finally:
        finish.cancel()
    assert str(again.version) == "1" and again.status == "READY"
    assert len(client.search_model_versions("name = 'swan_test'")) == 1


def test_promote_moves_champion_keeps_previous_and_is_idempotent(registry):
    from swan_anomaly.registry import (
        CHALLENGER,
        CHAMPION,
        ENDPOINT_VALIDATION,
        PREVIOUS,
        aliases_of,
        promote,
        register_challenger,
        move_champion_back,
        tag_version,
    )

    client, source = registry
    run_1, run_2, run_3 = _training_runs(client, 3)
    register_challenger(client, "swan_test", source, run_1, "r1")
    assert promote(client, "swan_test", "1") is True
    tag_version(client, "swan_test", "1", {ENDPOINT_VALIDATION: "passed: run r1"})  # as its run's validate_endpoint did
    register_challenger(client, "swan_test", source, run_2, "r2")
    assert promote(client, "swan_test", "2") is True
    assert promote(client, "swan_test", "2") is False
    assert aliases_of(client, "swan_test", "2") == [CHAMPION]
    assert aliases_of(client, "swan_test", "1") == [PREVIOUS]
    assert CHALLENGER not in aliases_of(client, "swan_test", "2")
    # v2 never passed an endpoint validation: promoting v3 over it leaves previous_champion on v1, the last that did
    register_challenger(client, "swan_test", source, run_3, "r3")
    assert promote(client, "swan_test", "3") is True
    assert aliases_of(client, "swan_test", "1") == [PREVIOUS] and aliases_of(client, "swan_test", "2") == []
    move_champion_back(client, "swan_test", "1")
    assert CHAMPION in aliases_of(client, "swan_test", "1")


def test_early_stopping_fires_and_restores_the_best_epoch():
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from swan_anomaly.modeling import PRESETS, PreprocessSpec
    from swan_anomaly.trainer import TrainConfig, evaluate, train_classifier

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**PRESETS["vit-micro-offline"], num_labels=2))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=gen)
    spec = PreprocessSpec(32, (0.5,) * 3, (0.5,) * 3)
    y = torch.arange(48) % 2  # labels unrelated to the pixels: validation cannot keep improving
    cfg = TrainConfig(epochs=30, patience=2, batch_size=16, learning_rate=1e-3)
    seen = []
    model, history, best_epoch = train_classifier(model, (x[:32], y[:32]), (x[32:], y[32:]), spec, cfg, on_epoch=seen.append)
    assert len(history) < cfg.epochs, "early stopping did not fire"
    assert best_epoch == len(history) - cfg.patience
    best = history[best_epoch - 1]
    loss, _ = evaluate(model, x[32:], y[32:], spec, cfg.batch_size)
    assert loss == pytest.approx(best.val_loss, abs=1e-6)


def _tiny_gold(families: list[str]):
    """A gold-shaped table: 32 px JPEGs of smooth frames, anomalies of ``families``, three splits."""
    import numpy as np
    import pandas as pd

    from swan_anomaly.anomalies import FAMILIES
    from swan_anomaly.images import crop_and_resize, encode_jpeg

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        yy, xx = np.mgrid[0:96, 0:128]
        frame = np.stack([60 + 40 * np.sin(xx / 9 + i), 110 + 30 * np.cos(yy / 7), 160 + 0 * xx], axis=2)
        frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
        split = ("train", "train", "train", "val", "test")[i % 5]
        rows.append((f"n{i}", encode_jpeg(crop_and_resize(frame, size=32)), 1, "none", split))
        family = families[i % len(families)]
        out, _, _ = FAMILIES[family](frame, np.random.default_rng(i))
        rows.append((f"a{i}", encode_jpeg(crop_and_resize(out, size=32)), 0, family, split))
    return pd.DataFrame(rows, columns=["sample_id", "content", "label", "family", "split"])


def test_leave_one_family_out_tests_each_family_on_a_model_that_never_saw_it(tmp_path, monkeypatch):
    import pandas as pd

    from swan_anomaly import generalization
    from swan_anomaly.modeling import preprocess_spec, resolve_base_model
    from swan_anomaly.trainer import TrainConfig

    gold = _tiny_gold(["salt_pepper_polygons", "color_shift"])
    base = resolve_base_model("vit-micro-offline", tmp_path / "models")
    spec = preprocess_spec(base)
    config = TrainConfig(model="vit-micro-offline", epochs=3, batch_size=16, learning_rate=1e-3, patience=3)
    trained_on = []
    from swan_anomaly import trainer

    original = trainer.train_classifier

    def spy(model, train, val, spec, cfg, **kwargs):
        trained_on.append(len(train[0]))
        return original(model, train, val, spec, cfg, **kwargs)

    monkeypatch.setattr(trainer, "train_classifier", spy)
    table = generalization.leave_one_family_out(gold, base, spec, config)
    assert list(table.held_out) == ["color_shift", "salt_pepper_polygons"]
    assert list(table.trained_on) == ["salt_pepper_polygons", "color_shift"]
    # each model trained on the normal train images plus only the other family's anomalies
    train = gold[gold.split == "train"]
    assert trained_on == [
        int((train.label == 1).sum() + (train.family == other).sum()) for other in ("salt_pepper_polygons", "color_shift")
    ]
    assert table[["unseen_auroc", "seen_auroc", "unseen_recall"]].apply(lambda c: c.between(0, 1)).all().all()
    again = generalization.leave_one_family_out(gold, base, spec, config)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same report twice
    # 6 test anomalies of a family: too few to measure, so no family counts towards the worst unseen AUROC
    assert list(table.unseen_abnormal) == [6, 6] and list(table.normal) == [12, 12] and not table.measurable.any()
    assert generalization.min_unseen_auroc(table) is None
    assert generalization.min_unseen_auroc(table.assign(measurable=True)) == table.unseen_auroc.min()
    text = generalization.format_table(table)
    assert "held-out family" in text and text.count("too small to measure") == 2 and "6/12" in text
    assert generalization.leave_one_family_out(gold[gold.family != "color_shift"], base, spec, config).empty


def test_families_sharing_a_mechanism_leave_training_together(tmp_path, monkeypatch):
    """A textured occlusion pastes the procedural textures perlin_texture blends in: the model "that never saw"
    perlin_texture had trained on its textures through occlusion, and the report overstated how it catches the unseen."""
    from swan_anomaly import generalization, trainer
    from swan_anomaly.modeling import preprocess_spec, resolve_base_model
    from swan_anomaly.trainer import TrainConfig

    gold = _tiny_gold(["perlin_texture", "occlusion", "color_shift"])
    base = resolve_base_model("vit-micro-offline", tmp_path / "models")
    config = TrainConfig(model="vit-micro-offline", epochs=1, batch_size=16, learning_rate=1e-3, patience=3)
    trained_sizes = []
    original = trainer.train_classifier

    def spy(model, train, val, spec, cfg, **kwargs):
        trained_sizes.append(len(train[0]))
        return original(model, train, val, spec, cfg, **kwargs)

    monkeypatch.setattr(trainer, "train_classifier", spy)
    table = generalization.leave_one_family_out(gold, base, preprocess_spec(base), config).set_index("held_out")
    assert table.trained_on.to_dict() == {
        "color_shift": "occlusion,perlin_texture",
        "occlusion": "color_shift",
        "perlin_texture": "color_shift",
    }
    train = gold[gold.split == "train"]
    normals, color = int((train.label == 1).sum()), int((train.family == "color_shift").sum())
    assert trained_sizes[1:] == [normals + color, normals + color]  # occlusion, then perlin_texture: neither saw the other
    # two families of one mechanism alone: no model could train on anomalies without both, so no row (it crashed)
    trained_sizes.clear()
    assert generalization.leave_one_family_out(gold[gold.family != "color_shift"], base, preprocess_spec(base), config).empty
    assert trained_sizes == []


def test_compile_model_matches_eager_and_a_compiled_training_run_equals_an_eager_one():
    """compile_model's eager SDPA island: same logits as eager; a compiled training run equals an eager one."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from swan_anomaly.modeling import ATTENTION_ISLAND, PRESETS, PreprocessSpec, compile_model, normalize_pixels
    from swan_anomaly.trainer import TrainConfig, evaluate, train_classifier

    def micro():
        torch.manual_seed(0)
        return ViTForImageClassification(ViTConfig(**PRESETS["vit-micro-offline"], num_labels=2, attn_implementation="sdpa"))

    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 200, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    spec = PreprocessSpec(32, (0.5,) * 3, (0.25,) * 3)
    y = (torch.arange(40) % 2 == 0).long()
    x[y == 0, :, 8:16, 8:16] = 255  # a learnable "anomaly"
    model = micro().eval()
    with torch.no_grad():
        eager = model(pixel_values=normalize_pixels(x[:8], spec)).logits
        compiled = compile_model(model)
        assert model.config._attn_implementation == ATTENTION_ISLAND
        torch.testing.assert_close(compiled(pixel_values=normalize_pixels(x[:8], spec)).logits, eager, rtol=1e-5, atol=1e-5)

    cfg = dict(epochs=2, patience=5, batch_size=12, learning_rate=1e-3)  # 24 train images: a last batch of 12, then none odd
    results = {}
    for mode in ("off", "on"):
        trained, history, best_epoch = train_classifier(micro(), (x[:24], y[:24]), (x[24:], y[24:]), spec, TrainConfig(compile=mode, **cfg))
        assert trained.config._attn_implementation == "sdpa", "the saved model must ask for plain SDPA"
        results[mode] = (evaluate(trained, x[24:], y[24:], spec, 16)[1], [h.train_loss for h in history], best_epoch)
    np.testing.assert_allclose(results["on"][0], results["off"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results["on"][1], results["off"][1], rtol=1e-4)
    assert results["on"][2] == results["off"][2]
    with pytest.raises(ValueError, match="compile must be"):
        train_classifier(micro(), (x[:24], y[:24]), (x[24:], y[24:]), spec, TrainConfig(compile="yes", **cfg))


def test_an_offline_preset_built_with_other_shapes_is_built_again(tmp_path):
    """A SWAN_HOME from a release whose preset had other shapes must not keep training the old shapes."""
    import json

    from swan_anomaly.modeling import PRESETS, preprocess_spec, resolve_base_model

    built = resolve_base_model("vit-micro-offline", tmp_path)
    config = json.loads((tmp_path / "vit-micro-offline" / "config.json").read_text())
    config["image_size"] = 16  # as an older release would have built it
    (tmp_path / "vit-micro-offline" / "config.json").write_text(json.dumps(config))
    resolve_base_model("vit-micro-offline", tmp_path)
    rebuilt = json.loads((tmp_path / "vit-micro-offline" / "config.json").read_text())
    assert rebuilt["image_size"] == PRESETS["vit-micro-offline"]["image_size"] == preprocess_spec(built).size

    processor = tmp_path / "vit-micro-offline" / "preprocessor_config.json"  # weights right, preprocessing of another size
    processor.write_text(json.dumps(json.loads(processor.read_text()) | {"size": {"height": 16, "width": 16}}))
    assert preprocess_spec(resolve_base_model("vit-micro-offline", tmp_path)).size == PRESETS["vit-micro-offline"]["image_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit-micro-offline"]  # no staging folder left behind
