"""Honest small data: held-out splits reach their minimums when the data allows, say so when it does not,
and short videos get shorter split blocks."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swan_anomaly import ValidationDataError
from swan_anomaly.labels import build_manifest
from swan_anomaly.splits import MIN_HELD_OUT_GROUPS, MIN_HELD_OUT_IMAGES, assign_splits, split_shortfalls

#: 12 groups of uneven sizes (142 images): two groups picked by count alone can hold 6 images or 54.
UNEVEN = {f"v{i // 4}-b{i % 4:04d}": {0: n // 2, 1: n - n // 2} for i, n in enumerate([2, 4, 4, 6, 6, 8, 10, 12, 16, 20, 24, 30])}


def _tally(split_of: dict[str, str], sizes: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for group, split in split_of.items():
        t = out.setdefault(split, {"groups": 0, "images": 0, 0: 0, 1: 0})
        t["groups"] += 1
        for label, n in sizes[group].items():
            t["images"] += n
            t[label] += n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_held_out_splits_reach_the_minimums_on_uneven_groups(seed):
    split_of = assign_splits(UNEVEN, seed=seed)
    assert set(split_of) == set(UNEVEN)  # every group in exactly one split
    tally = _tally(split_of, UNEVEN)
    for split in ("val", "test"):
        t = tally[split]
        assert t["groups"] >= MIN_HELD_OUT_GROUPS and t["images"] >= MIN_HELD_OUT_IMAGES, (split, tally)
        assert t[0] and t[1], f"{split} lacks a class: {tally}"
        assert t["images"] <= 0.25 * 142, "a held-out split takes at most a quarter of the images"
    assert tally["train"]["images"] >= 142 / 2
    assert split_shortfalls(split_of, UNEVEN) == []
    shuffled = dict(random.Random(seed).sample(sorted(UNEVEN.items()), len(UNEVEN)))
    assert assign_splits(shuffled, seed=seed) == split_of, "the same seed gives the same splits, whatever the order"


def test_both_classes_reach_a_held_out_split_even_from_single_class_groups():
    sizes = {f"g{i:02d}": ({0: 6} if i % 4 == 0 else {1: 6}) for i in range(24)}
    for seed in range(5):
        tally = _tally(assign_splits(sizes, seed=seed), sizes)
        assert all(tally[s][0] and tally[s][1] for s in ("val", "test")), tally


def test_data_too_small_for_the_minimums_is_split_anyway_and_says_what_to_add(caplog):
    sizes = {f"v-b{i:04d}": {0: 3, 1: 3} for i in range(8)}  # 48 images: a quarter is 12, short of 20
    with caplog.at_level(logging.WARNING, logger="swan_anomaly.splits"):
        split_of = assign_splits(sizes, seed=1)
    assert set(split_of.values()) == {"train", "val", "test"}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned == split_shortfalls(split_of, sizes)
    test = next(w for w in warned if w.startswith("test split"))
    assert "2 group(s), 12 image(s) (6 abnormal, 6 normal)" in test and "at least 2 groups and 20 images" in test
    assert "48 images in 8 groups" in test and "about 80 images are needed" in test and "add video" in test and "every_seconds" in test
    with pytest.raises(ValidationDataError, match=r"test split: 2 group\(s\), 12 image\(s\).*add video"):
        assign_splits(sizes, seed=1, strict=True)


def test_group_names_alone_still_work_as_before():
    assert sorted(assign_splits(["a", "b", "c"], seed=0).values()) == ["test", "train", "val"]
    with pytest.raises(ValidationDataError, match="at least 3"):
        assign_splits({"a": 5, "b": 5}, seed=0)


def _frames(tmp_path, video: str, seconds: float, every: float = 0.5) -> list[dict]:
    folder = tmp_path / "frames" / video
    folder.mkdir(parents=True)
    frames = []
    for i in range(int(round(seconds / every))):
        path = folder / f"frame_{i:05d}.png"
        path.write_bytes(f"{video} {i}".encode())
        frames.append({"path": str(path), "video_id": video, "frame_index": i, "timestamp_s": i * every})
    return frames


def test_a_short_video_gets_shorter_split_blocks(tmp_path):
    frames = _frames(tmp_path, "short", 10.0) + _frames(tmp_path, "long", 96.0) + _frames(tmp_path, "tiny", 4.0)
    table = build_manifest(frames, [], tmp_path)
    groups = table.groupby("video_id").group.nunique().to_dict()
    # 10 s: 1.25 s blocks, 8 groups (4 s blocks gave 3); 96 s keeps 4 s blocks; 4 s stops at the 1 s floor
    assert groups == {"short": 8, "long": 24, "tiny": 4}
    assert table.groupby("group").video_id.nunique().max() == 1
    short = table[table.video_id == "short"].sort_values("timestamp_s")
    assert short.group.tolist()[:4] == ["short-b0000"] * 3 + ["short-b0001"]  # 0, 0.5, 1.0 | 1.5
    fixed = build_manifest(frames, [], tmp_path, min_blocks_per_video=1)  # the old rule: 4 s for every video
    assert fixed.groupby("video_id").group.nunique().to_dict() == {"short": 3, "long": 24, "tiny": 1}


def test_a_split_too_small_to_measure_is_reported_as_such_never_as_a_precise_number():
    import numpy as np

    from swan_anomaly.metrics import MIN_MEASURABLE_PER_CLASS, evaluation_report, format_auroc

    small = evaluation_report(np.repeat([0, 1], [3, 5]), np.r_[np.full(3, 0.9), np.full(5, 0.1)], threshold=0.5)
    assert small["auroc"] == 1.0 and small["measurable"] is False and "3 abnormal, 5 normal" in small["too_small"]
    assert format_auroc(small) == "too small to measure (3 abnormal, 5 normal)"
    n = MIN_MEASURABLE_PER_CLASS * 4
    labels = np.repeat([0, 1], n)
    scores = np.r_[np.linspace(0.3, 1.0, n), np.linspace(0.0, 0.5, n)]
    big = evaluation_report(labels, scores, threshold=0.5, seed=1)
    assert big["measurable"] is True and big["too_small"] is None
    low, high = big["auroc_ci"]
    assert format_auroc(big) == f"{big['auroc']:.4f} (95% CI {low:.3f}-{high:.3f}, n={n}/{n})"
    # results written before "measurable" existed are judged by their counts
    assert format_auroc({"auroc": 0.99, "auroc_ci": [0.9, 1.0], "abnormal": 4, "normal": 40}).startswith("too small to measure")


def test_the_run_summary_shows_what_the_gate_judged_at_the_deployment_s_thresholds_and_the_decision_s_false_alarms():
    """gate.json kept the verdict at the deployment's thresholds, but the run summary an operator reads left it out."""
    from swan_airflow.steps.report import _gate

    report = {"auroc": 0.62, "auroc_ci": [0.5, 0.7], "f1": 0.7, "recall": 0.9, "decision_false_alarm_rate": 0.25, "threshold": 0.4}
    gate = {
        "mode": "enabled",
        "passed": True,
        "promote": True,
        "reasons": [],
        "measurable": True,
        "images": {"abnormal": 30, "normal": 30},
        "champion_version": "3",
        "forced": "gate thresholds below the deployment's defaults (auroc 0.6200 < 0.9000): shadow test",
        "thresholds": {"auroc": 0.6, "f1": 0.5, "images_per_class": 25},
        "passed_at_defaults": False,
        "reasons_at_defaults": ["auroc 0.6200 < 0.9000", "f1 0.7000 < 0.8000"],
        "reports": {"challenger": report | {"version": "4", "abnormal": 30, "normal": 30}},
    }
    out = _gate(gate)
    assert out["passed"] is True and out["passed_at_defaults"] is False
    assert out["reasons_at_defaults"] == ["auroc 0.6200 < 0.9000", "f1 0.7000 < 0.8000"]
    assert out["thresholds"] == {"auroc": 0.6, "f1": 0.5, "images_per_class": 25} and out["forced"].endswith("shadow test")
    assert out["reports"]["challenger"]["decision_false_alarm_rate"] == 0.25


def test_the_run_summary_shows_each_split_auroc_as_people_should_read_it():
    from swan_airflow.steps.report import _data, _training

    split = {"auroc": 1.0, "auroc_ci": [1.0, 1.0], "f1": 1.0, "precision": 1.0, "recall": 1.0, "abnormal": 5, "normal": 5}
    split |= {"measurable": False, "too_small": "5 abnormal, 5 normal: fewer than 10 images of a class"}
    training = {"val": split, "test": split | {"abnormal": 40, "normal": 40, "measurable": True, "too_small": None}}
    out = _training(training | {"best_epoch": 3, "epochs_run": 12, "threshold": 0.5, "generalization": []})
    assert out["val"]["auroc_text"] == "too small to measure (5 abnormal, 5 normal)" and out["val"]["measurable"] is False
    assert out["test"]["auroc_text"] == "1.0000 (95% CI 1.000-1.000, n=40/40)"
    decision = {"auroc": 0.9, "auroc_ci": [0.8, 1.0], "recall": 0.75, "false_alarm_rate": 0.125, "f1": 0.8}
    trained = _training(training | {"best_epoch": 3, "epochs_run": 12, "threshold": 0.5, "generalization": []})
    assert "decision" not in trained["test"]  # a result written before the novelty score existed
    training["test"] = training["test"] | {"false_alarm_rate": 0.05, "novelty": decision, "decision": decision}
    out = _training(training | {"best_epoch": 3, "epochs_run": 12, "threshold": 0.5, "generalization": []})
    # the false alarms of the served decision on the test normals: what an operator sees in the run summary
    assert out["test"]["false_alarm_rate"] == 0.05
    assert out["test"]["decision"] == {"auroc": 0.9, "auroc_ci": [0.8, 1.0], "recall": 0.75, "false_alarm_rate": 0.125}
    # the groups an interval resampled reach the summary, and its text (they were dropped on the way)
    training["test"] = training["test"] | {"auroc_ci": [0.9, 1.0], "groups": 5}
    out = _training(training | {"best_epoch": 3, "epochs_run": 12, "threshold": 0.5, "generalization": []})
    assert out["test"]["groups"] == 5 and out["test"]["auroc_text"] == "1.0000 (95% CI 0.900-1.000, n=40/40 in 5 groups)"
    augment = {"gold_rows": 10, "rows_by_split_label": {}, "split_shortfalls": ["test split: 1 group(s)"]}
    assert _data(None, None, augment)["split_shortfalls"] == ["test split: 1 group(s)"]


@pytest.mark.parametrize("seed", range(6))
def test_a_group_bigger_than_the_held_out_cap_is_not_taken_while_smaller_ones_fit(seed):
    sizes = {"big": {0: 100, 1: 100}} | {f"g{i:02d}": {0: 5, 1: 5} for i in range(20)}  # 400 images, cap 100
    split_of = assign_splits(sizes, seed=seed)
    train = sum(sum(sizes[g].values()) for g, s in split_of.items() if s == "train")
    assert split_of["big"] == "train" and train >= 200


def test_new_video_of_a_date_never_moves_a_training_group_into_a_held_out_split():
    """A date's partition is rebuilt when more video lands for it (the asset-triggered run, then the daily one, or a
    backfill). Test and val were filled by image count in a seeded order, so the added groups shifted which old groups
    they took: at seed 42, a group the champion trained on moved into val, and the gate scored the champion on it."""
    a = {f"a00c0ffee1234-b{k:04d}": {0: 8, 1: 8} for k in range(15)}
    b = {f"b00deadbeef99-b{k:04d}": {0: 8, 1: 8} for k in range(15)}
    before = assign_splits(a, seed=42)
    after = assign_splits({**a, **b}, seed=42, keep=before)
    assert {g: after[g] for g in a} == before
    for split in ("val", "test"):  # the added data still reaches the held-out splits
        assert any(after[g] == split for g in b), split
    assert split_shortfalls(after, {**a, **b}) == []


@settings(max_examples=150, deadline=None)
@given(
    old=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)).filter(lambda t: sum(t) > 0), min_size=3, max_size=40),
    new=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)).filter(lambda t: sum(t) > 0), min_size=1, max_size=40),
    seed=st.integers(0, 2**31),
)
def test_a_rebuild_keeps_every_group_where_it_was_and_places_only_the_new_ones(old, new, seed):
    a = {f"a-b{i:04d}": {0: x, 1: y} for i, (x, y) in enumerate(old)}
    b = {f"b-b{i:04d}": {0: x, 1: y} for i, (x, y) in enumerate(new)}
    before = assign_splits(a, seed=seed)
    after = assign_splits({**a, **b}, seed=seed, keep=before)
    assert {g: after[g] for g in a} == before and set(after) == set(a) | set(b)


@pytest.mark.parametrize("seed", range(6))
def test_without_an_earlier_build_a_group_s_split_depends_on_its_own_video_alone(seed):
    """Each video's groups are split by their own order; only small data's corrections look at the rest. With data that
    needs none, another video moves nothing even when the earlier splits are lost (no keep)."""
    a = {f"a-b{k:04d}": {0: 8, 1: 8} for k in range(60)}
    b = {f"b-b{k:04d}": {0: 8, 1: 8} for k in range(60)}
    before = assign_splits(a, seed=seed)
    assert split_shortfalls(before, a) == []
    after = assign_splits({**a, **b}, seed=seed)
    assert [g for g in a if before[g] == "train" and after[g] != "train"] == []


def test_many_short_clips_hold_out_their_share():
    """Each video's counts were rounded half up: a 3-block clip (about 3.5 s or less) held out nothing, so forty of them
    gave test and val only the two groups the minimum correction adds (24 of 1,440 images), under what the gate measures,
    and more such clips never helped. Rounded by each video's own draw, they hold out their shares."""
    clips = {f"c{v:02d}-b{i:04d}": {0: 6, 1: 6} for v in range(40) for i in range(3)}
    tally = _tally(assign_splits(clips, seed=0), clips)
    for split in ("test", "val"):
        assert 0.08 <= tally[split]["images"] / 1440 <= 0.25, tally
    loose = {f"g{i:03d}": {0: 6, 1: 6} for i in range(200)}  # names without a block: each a video of its own
    tally = _tally(assign_splits(loose, seed=0), loose)
    assert all(0.08 <= tally[split]["groups"] / 200 <= 0.25 for split in ("test", "val")), tally
