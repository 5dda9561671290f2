"""Early stopping needs a minimum improvement (``TrainConfig.min_delta``), with Lightning's EarlyStopping semantics."""

from __future__ import annotations

import pytest


def _creeping_run(monkeypatch, losses: list[float], **config):
    """Train a micro ViT while the validation loss is scripted (``losses``, one per epoch); the weights still train."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from swan_anomaly import trainer
    from swan_anomaly.modeling import PRESETS, PreprocessSpec

    real_evaluate = trainer.evaluate
    scripted = iter(losses)

    def evaluate(model, x, y, spec, batch_size):
        _, logits = real_evaluate(model, x, y, spec, batch_size)
        return next(scripted), logits

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**PRESETS["vit-micro-offline"], num_labels=2))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(16) % 2
    cfg = trainer.TrainConfig(epochs=len(losses), batch_size=8, learning_rate=1e-3, device="cpu", **config)
    spec = PreprocessSpec(32, (0.5,) * 3, (0.5,) * 3)
    _, history, best_epoch = trainer.train_classifier(model, (x[:8], y[:8]), (x[8:], y[8:]), spec, cfg)
    return cfg, history, best_epoch


def test_a_validation_loss_creeping_down_by_less_than_min_delta_stops_training(monkeypatch):
    losses = [0.7 - 1e-4 * i for i in range(40)]  # better every epoch, by a tenth of the default min_delta
    cfg, history, best_epoch = _creeping_run(monkeypatch, losses)
    # epoch 1 sets the reference; 8 epochs of sub-min_delta gains later, patience runs out
    assert len(history) == 1 + cfg.patience, "early stopping did not fire on a creeping loss"
    assert cfg.min_delta == 1e-3 and cfg.patience == 8
    assert [h.val_loss for h in history] == losses[: len(history)]
    assert best_epoch == len(history), "the best weights are still the lowest loss seen, however small the gain"


def test_small_gains_that_add_up_to_min_delta_reset_patience(monkeypatch):
    # 4e-4 per epoch: every third epoch is 1.2e-3 below the reference, so patience 3 never runs out
    cfg, history, best_epoch = _creeping_run(monkeypatch, [0.7 - 4e-4 * i for i in range(12)], patience=3)
    assert len(history) == 12 and best_epoch == 12


@pytest.mark.parametrize(("min_delta", "epochs_run"), [(0.0, 12), (1e-3, 4)])
def test_min_delta_zero_keeps_the_plain_better_than_best_rule(monkeypatch, min_delta, epochs_run):
    _, history, best_epoch = _creeping_run(monkeypatch, [0.7 - 1e-5 * i for i in range(12)], patience=3, min_delta=min_delta)
    assert len(history) == epochs_run and best_epoch == epochs_run


def test_with_val_auroc_the_loss_still_breaks_ties_with_the_same_min_delta(monkeypatch):
    # the scripted loss creeps; AUROC of the (untrained, fixed-data) model moves little: stop once neither gains min_delta
    cfg, history, _ = _creeping_run(monkeypatch, [0.7 - 1e-4 * i for i in range(30)], patience=4, monitor="val_auroc")
    assert len(history) < 30
