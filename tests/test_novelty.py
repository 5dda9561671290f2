"""The novelty score: a bank of normal patches, its scale, its files, and its column in the served pyfunc."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from swan_anomaly.novelty import NoveltyBank, coreset, default_layers, fit_novelty, patch_features


def _normal_features(n: int, seed: int) -> torch.Tensor:
    """``[n, 16, 8]`` patches scattered around two normal 'textures'."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0] * 8, [-1.0] * 8])
    which = torch.randint(2, (n, 16), generator=gen)
    return centres[which] + 0.05 * torch.randn(n, 16, 8, generator=gen)


def test_a_patch_unlike_every_normal_patch_scores_above_one_and_normal_images_mostly_below():
    bank = fit_novelty(_normal_features(40, 0), _normal_features(50, 1), layers=(1,), target_fpr=0.02)
    normal = bank.scores(_normal_features(200, 2))
    odd = _normal_features(20, 3)
    odd[:, 5, :] = 0.0  # one patch between the two textures: nothing normal looks like it
    assert (normal >= 1).mean() <= 0.10  # a 0.98 quantile estimated on 50 images: about 2 %, with its noise
    assert np.all(bank.scores(odd) > 3 * np.median(normal))
    assert np.all(bank.scores(odd) >= 1)


def _blocks(centres: list[float], per_block: int, seed: int) -> torch.Tensor:
    """``[len(centres) * per_block, 4, 2]`` patches: a block of footage per centre, its frames close together."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.tensor([c, 0.0]) + 0.02 * torch.randn(per_block, 4, 2, generator=gen) for c in centres]
    return torch.cat(out)


def test_the_boundary_holds_on_a_new_stretch_of_footage_not_only_on_the_validation_blocks():
    """Scaled on validation frames of one block alone, every frame of a new block was a false alarm.

    The footage drifts from block to block (a camera panning over a scene), and the validation
    split holds only a few blocks. Each training block, scored without its own patches, shows
    how far a new stretch of footage lies from the rest, so the boundary covers that drift.
    """
    train = _blocks([0.0, 1.0, 2.0, 3.0, 4.0], 10, 0)
    groups = np.repeat([f"b{i}" for i in range(5)], 10)
    val = _blocks([2.0], 10, 1)  # one validation block, in the middle of the training footage
    new_block = _blocks([4.6], 20, 2)  # the test split's stretch: as far from its neighbour as the blocks are from each other
    anomaly = _blocks([2.0], 5, 3)
    anomaly[:, 1, 1] = 3.0  # one patch unlike any footage

    by_val = fit_novelty(train, val, layers=(1,))
    assert np.all(by_val.scores(new_block) >= 1), "the validation block alone sets a boundary inside the footage's drift"
    held_out = fit_novelty(train, val, layers=(1,), train_groups=groups)
    assert np.all(held_out.scores(new_block) < 1)
    assert np.all(held_out.scores(anomaly) >= 1)
    assert held_out.calibration_images == 10 + 50 and by_val.calibration_images == 10


def test_held_out_groups_are_scored_without_their_own_patches_and_a_lone_group_gives_nothing():
    from swan_anomaly.novelty import held_out_group_scores

    features = torch.tensor([[[0.0, 0.0]], [[0.0, 0.5]], [[5.0, 0.0]]])  # three one-patch images
    bank = features.reshape(3, 2)
    np.testing.assert_allclose(held_out_group_scores(features, bank, torch.arange(3), ["a", "a", "b"]), [5.0, np.hypot(5, 0.5), 5.0])
    assert held_out_group_scores(features, bank, torch.arange(3), ["a", "a", "a"]) is None
    with pytest.raises(ValueError, match="train_groups has 2 entries for 3"):
        fit_novelty(features, features, layers=(1,), train_groups=["a", "b"])


def test_the_score_is_the_worst_patch_distance_over_the_scale():
    bank = NoveltyBank(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), scale=2.0, layers=(1,))
    features = torch.tensor([[[0.0, 1.0], [10.0, 3.0]], [[9.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(bank.raw_scores(features), [3.0, 1.0])
    np.testing.assert_allclose(bank.scores(features), [1.5, 0.5])


def test_the_coreset_covers_every_cluster_and_keeps_all_rows_when_the_bank_is_big_enough():
    points = torch.cat([torch.full((50, 3), float(c)) + 0.01 * torch.randn(50, 3) for c in (0, 5, 10, 20)])
    chosen = points[coreset(points, 4, seed=3)]
    assert sorted(chosen[:, 0].round().tolist()) == [0.0, 5.0, 10.0, 20.0]
    assert len(coreset(points, 1000)) == len(points)
    bank = fit_novelty(points.reshape(20, 10, 3), points.reshape(20, 10, 3)[:4], layers=(1,), max_bank=16)
    assert len(bank.bank) == 16 and bank.patches_seen == 200


def test_patch_features_pool_each_layer_over_its_neighbourhood_and_concatenate_layers():
    grid = torch.zeros(1, 1 + 9, 2)  # CLS + a 3x3 grid, 2 dims
    grid[0, 1 + 4, :] = 9.0  # the centre patch
    other = torch.ones(1, 1 + 9, 3)
    features = patch_features((None, grid, other), (1, 2))
    assert features.shape == (1, 9, 5)
    assert features[0, 0, 0].item() == pytest.approx(9.0 / 4)  # a corner averages its 2x2 neighbourhood
    assert features[0, 4, 0].item() == pytest.approx(1.0)  # the centre averages all nine
    assert torch.all(features[0, :, 2:] == 1.0)
    assert default_layers(4) == (2, 4)


def test_a_bank_survives_its_files_and_a_model_directory_without_one_has_none(tmp_path):
    bank = fit_novelty(_normal_features(10, 0), _normal_features(10, 1), layers=(2, 4))
    bank.save(tmp_path)
    again = NoveltyBank.load(tmp_path)
    assert again.layers == (2, 4) and again.scale == pytest.approx(bank.scale) and torch.equal(again.bank, bank.bank)
    assert again.calibration_images == bank.calibration_images == 10
    assert NoveltyBank.load(tmp_path / "elsewhere") is None


def test_a_bank_needs_normal_training_and_validation_images():
    with pytest.raises(ValueError, match="normal training and validation"):
        fit_novelty(torch.zeros(0, 4, 2), torch.zeros(3, 4, 2), layers=(1,))


def test_the_served_pyfunc_returns_the_novelty_score_from_the_same_forward_as_the_logits(tmp_path):
    """The pyfunc's novelty column equals the bank's score of the training path's features."""
    import cv2

    from swan_anomaly.metrics import anomaly_scores
    from swan_anomaly.modeling import load_classifier, patch_features_of, predict_scores, preprocess_spec, resolve_base_model
    from swan_anomaly.serving.pyfunc import NOVELTY_COLUMN, SwanAnomalyModel
    from swan_anomaly.trainer import frame_tensors

    base = resolve_base_model("vit-micro-offline", tmp_path / "models")
    model, spec = load_classifier(base).eval(), preprocess_spec(base)
    rng = np.random.default_rng(0)
    images = [cv2.imencode(".png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))[1].tobytes() for _ in range(6)]
    x, _ = frame_tensors(pd.DataFrame({"content": images, "sample_id": [str(i) for i in range(6)], "label": [1] * 6}), spec)
    layers = default_layers(model.config.num_hidden_layers)
    features = patch_features_of(model, x, spec, layers)
    bank = fit_novelty(features[:3], features[3:], layers=layers)

    model_dir = tmp_path / "served"
    model.save_pretrained(model_dir)
    (model_dir / "swan_preprocess.json").write_text(spec.to_json())
    bank.save(model_dir)
    served = SwanAnomalyModel()
    served.load_context(type("Context", (), {"artifacts": {"model_dir": str(model_dir)}})())
    out = served.predict(None, pd.DataFrame({"image": images}))
    assert list(out.columns) == ["logits", "anomaly_score", NOVELTY_COLUMN]
    np.testing.assert_allclose(out[NOVELTY_COLUMN], bank.scores(features), atol=1e-5)
    np.testing.assert_allclose(out.anomaly_score, anomaly_scores(np.array(out.logits.tolist())), atol=1e-7)
    assert np.all(out[NOVELTY_COLUMN].to_numpy()[:3] < 1e-2)  # the bank's own images lie on it (cdist rounds near 0)
    logits, novelty = predict_scores(served.model, spec, images, novelty=served.novelty)
    assert novelty is not None and np.allclose(novelty, out[NOVELTY_COLUMN])

    for f in ("swan_novelty.json", "swan_novelty.safetensors"):
        (model_dir / f).unlink()
    served.load_context(type("Context", (), {"artifacts": {"model_dir": str(model_dir)}})())
    assert list(served.predict(None, pd.DataFrame({"image": images})).columns) == ["logits", "anomaly_score"]
