"""Splits by source group (video + time block), never by random row.

The frames of one time block share a group, so they always land in the same split. The last
frame of a block and the first of the next are one frame interval apart, so a training frame next
to a held-out one is left out of training (:func:`frames_beside_held_out`): a held-out frame's
nearest training frame is then at least two intervals away.

Each video's groups are split by its own seeded order, so adding video never moves a group that
was there, and the augmentation job pins the groups of the partition it rebuilds to their earlier
splits (``keep``). Held-out minimums: validation and test should each hold at least
:data:`MIN_HELD_OUT_GROUPS` groups and :data:`MIN_HELD_OUT_IMAGES` images, with both classes, and
at most :data:`MAX_HELD_OUT_SHARE` of the images; small data is corrected towards them. When the
data cannot give that, the splits are still assigned and every shortfall is logged as a warning
naming the counts and what to add (:func:`split_shortfalls`; ``strict=True`` raises instead).

Example:
    >>> assign_splits([f"v-b{i:04d}" for i in range(10)], seed=0)["v-b0000"] in {"train", "val", "test"}
    True
    >>> sizes = {f"v-b{i:04d}": {0: 5, 1: 5} for i in range(12)}  # 12 groups of 10 images
    >>> split_of = assign_splits(sizes, seed=0)
    >>> sorted(sum(n for g, s in split_of.items() if s == split for n in sizes[g].values()) for split in ("test", "val"))
    [20, 20]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from enum import StrEnum

from swan_anomaly._errors import ValidationDataError
from swan_anomaly.anomalies import stable_seed
from swan_anomaly.contract import ABNORMAL, LABEL_NAMES, NORMAL

log = logging.getLogger(__name__)

#: Fewest groups a held-out split (validation, test) should have.
MIN_HELD_OUT_GROUPS = 2
#: Fewest images a held-out split should have (both classes among them).
MIN_HELD_OUT_IMAGES = 20
#: Most of the images one held-out split may take to reach its minimums: train keeps at least half.
MAX_HELD_OUT_SHARE = 0.25

#: The seed of the pipeline's splits: fixed, not the run's seed, so a run with another seed Param splits as the
#: champion's run did (a run seeded otherwise would hold out groups the champion trained on).
SPLIT_SEED = 0

#: What :func:`assign_splits` accepts: group names, ``{group: images}`` or ``{group: {label: images}}``.
Groups = Iterable[str] | Mapping[str, int] | Mapping[str, Mapping[int, int]]


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


def _sizes(groups: Groups) -> tuple[dict[str, dict[int, int]], bool, bool]:
    """``({group: {label: images}}, sizes known, labels known)``; a bare name counts as one image of unknown class (-1)."""
    if not isinstance(groups, Mapping):
        return {g: {-1: 1} for g in groups}, False, False
    out: dict[str, dict[int, int]] = {}
    labelled = True
    for g, size in groups.items():
        if isinstance(size, Mapping):
            out[g] = {int(label): int(n) for label, n in size.items() if int(n) > 0}
        else:
            out[g], labelled = {-1: int(size)}, False
        if sum(out[g].values()) < 1:
            msg = f"split group {g!r} has no images ({size!r}); leave empty groups out"
            raise ValueError(msg)
    return out, True, labelled


def assign_splits(
    groups: Groups,
    *,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    min_groups: int = MIN_HELD_OUT_GROUPS,
    min_images: int = MIN_HELD_OUT_IMAGES,
    max_share: float = MAX_HELD_OUT_SHARE,
    strict: bool = False,
    keep: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Deterministically assign each group to train, val or test; a group never spans splits.

    Each video's groups (names ``<video>-b<block>``; any other name is a video of its own) are
    ordered by a seeded hash of their names, and the first ``test_fraction`` of them are test's,
    the next ``val_fraction`` val's, the rest train's (counts rounded by the video's own draw). So a group's split depends on its own
    video alone, and more video for a date never moves one that was there: a model is never judged
    on rows it trained on because data was added. Small data then gets two corrections, test first,
    then val:

    * a held-out split over ``max_share`` of the images gives its biggest groups back to train;
    * a held-out split short of ``min_groups`` groups, ``min_images`` images or a class takes
      train's groups in draw order, one that fits under ``max_share`` first (a missing class
      before the cap, and a first group even when none fits). Train keeps at least one group;
      when it has no more to give, the other held-out split gives one of its own beyond its first.

    ``keep`` (the splits of an earlier build of the same data) pins its groups: the corrections
    move only the others, so a rebuild never moves a group, whatever its sizes or the seed.

    Args:
        groups: the split groups: names only (each counts as one image, classes unknown: only the
            group minimum applies), ``{group: images}``, or ``{group: {label: images}}`` (labels
            0 abnormal, 1 normal; the class minimum applies too).
        seed: seeds the draws; the same seed and groups give the same splits (the pipeline uses
            :data:`SPLIT_SEED`, whatever the run's seed).
        val_fraction, test_fraction: wanted shares of each video's groups (rounded per video by the
            video's own draw, so that many short videos hold out their shares too).
        min_groups, min_images: minimums of each held-out split (:data:`MIN_HELD_OUT_GROUPS`,
            :data:`MIN_HELD_OUT_IMAGES`).
        max_share: most of the images one held-out split may take (:data:`MAX_HELD_OUT_SHARE`).
        strict: raise when a minimum is not met instead of logging a warning.
        keep: ``{group: split}`` that stays as it is for every group it names that ``groups`` holds.

    Returns:
        ``{group: split}``.

    Raises:
        ValueError: a group without images.
        ValidationDataError: fewer than 3 groups (a day of footage too short to split: the jobs
            fail at once, not retried), or ``strict`` and a held-out split misses a minimum (the
            message names the counts and what to add).
    """
    sizes, sized, labelled = _sizes(groups)
    n = len(sizes)
    if n < 3:  # the data's: a retry of the job meets the same rows
        msg = f"need at least 3 split groups (video x time block) for train/val/test, got {n}; add video or shorten the time block"
        raise ValidationDataError(msg)
    draw = {g: stable_seed(seed, g) / 2.0**64 for g in sizes}  # each group's own draw in [0, 1): its place in its video
    out = {}
    by_video: dict[str, list[str]] = {}
    for g in sizes:
        by_video.setdefault(video_of(g), []).append(g)
    for video, groups_of_video in by_video.items():  # each video's share on its own: another video's groups never move its own
        order = sorted(groups_of_video, key=lambda g: (draw[g], g))
        # rounded by the video's own draw: a 3-block clip gives a block to test with probability 0.45 (and to val too), so forty clips hold
        # out their share (rounding half up held out none of them), and the expected share is the fraction at any length
        u = stable_seed(seed, "video", video) / 2.0**64
        n_test = math.floor(test_fraction * len(order) + u)
        n_held = math.floor((test_fraction + val_fraction) * len(order) + u)
        for i, g in enumerate(order):
            out[g] = Split.TEST.value if i < n_test else Split.VAL.value if i < n_held else Split.TRAIN.value
    pinned = {g: Split(s).value for g, s in (keep or {}).items() if g in sizes}
    out |= pinned
    total = sum(sum(s.values()) for s in sizes.values())
    cap = max_share * total
    classes = {ABNORMAL, NORMAL} if labelled else set()

    def images_of(members) -> int:
        return sum(sum(sizes[g].values()) for g in members)

    def members(split: Split) -> list[str]:  # in the order of the draws, the same whatever else the data holds
        return sorted((g for g, s in out.items() if s == split.value), key=lambda g: (draw[g], g))

    for split in (Split.TEST, Split.VAL):
        # over the cap, a held-out split gives its biggest groups back to train (what it then lacks, it takes below)
        for g in sorted(members(split), key=lambda g: (-images_of([g]), draw[g], g)):
            if images_of(members(split)) <= cap:
                break
            if g not in pinned:
                out[g] = Split.TRAIN.value
        # short of a minimum (small data): train's groups in draw order, one that fits under the cap first; a missing
        # class before the cap (a split without one measures nothing), and a first group even when none fits
        other = Split.VAL if split is Split.TEST else Split.TEST
        for _ in range(n):
            held, train = members(split), [g for g in members(Split.TRAIN) if g not in pinned]
            if len(members(Split.TRAIN)) <= 1:  # train keeps one group: the other held-out split gives of its spare ones
                train = [g for g in members(other) if g not in pinned] if len(members(other)) > 1 else []
            seen = set().union(*(sizes[g] for g in held))
            missing = classes - seen
            short = len(held) < min_groups or (sized and images_of(held) < min_images)
            if not (short or missing) or not train:
                break
            wanted = train if short else [g for g in train if missing & set(sizes[g])]
            fitting = [g for g in wanted if images_of(held) + images_of([g]) <= cap]
            if not fitting and held and not (missing and wanted):
                break
            taken = (fitting or sorted(wanted, key=lambda g: (images_of([g]), draw[g], g)))[0]
            out[taken] = split.value
    problems = _shortfalls(out, sizes, sized, labelled, min_groups=min_groups, min_images=min_images, max_share=max_share)
    if problems and strict:
        raise ValidationDataError("; ".join(problems))
    for problem in problems:
        log.warning("%s", problem)
    return dict(sorted(out.items()))


def frames_beside_held_out(frames: Iterable[tuple[str, int, str]]) -> set[tuple[str, int]]:
    """``(video_id, frame_index)`` of the training frames whose neighbour in their video is held out.

    ``frames``: ``(video_id, frame_index, split)`` of every extracted frame. Neighbours are the
    previous and next frame extracted from the same video: across a block boundary they are one
    frame interval apart, near-duplicates, so training on one and testing on the other leaks.

    Example:
        >>> sorted(frames_beside_held_out([("v", 0, "train"), ("v", 10, "train"), ("v", 20, "test"), ("v", 30, "train")]))
        [('v', 10), ('v', 30)]
    """
    by_video: dict[str, dict[int, str]] = {}
    for video, index, split in frames:
        by_video.setdefault(video, {})[int(index)] = split
    beside = set()
    for video, split_at in by_video.items():
        order = sorted(split_at)
        for i, index in enumerate(order):
            neighbours = order[max(i - 1, 0) : i] + order[i + 1 : i + 2]
            if split_at[index] == Split.TRAIN.value and any(split_at[n] != Split.TRAIN.value for n in neighbours):
                beside.add((video, index))
    return beside


def video_of(group: str) -> str:
    """The video of a split group named ``<video>-b<block>`` (:func:`swan_anomaly.labels.group_of`); else the name itself.

    Example:
        >>> video_of("6fff96f08ddec053-b0012"), video_of("g07")
        ('6fff96f08ddec053', 'g07')
    """
    video, sep, block = group.rpartition("-b")
    return video if sep and video and block.isdigit() else group


def split_shortfalls(
    split_of: Mapping[str, str],
    groups: Groups,
    *,
    min_groups: int = MIN_HELD_OUT_GROUPS,
    min_images: int = MIN_HELD_OUT_IMAGES,
    max_share: float = MAX_HELD_OUT_SHARE,
) -> list[str]:
    """What each held-out split lacks of its minimums (and a train split without a class), as messages; empty when all is well.

    Each message names the split's counts, the minimums, the whole data and what to do.

    Example:
        >>> [test] = split_shortfalls({"a": "train", "b": "val", "c": "val", "d": "test"}, {"a": 30, "b": 10, "c": 10, "d": 3})
        >>> test.split(";")[0]
        'test split: 1 group(s), 3 image(s)'
    """
    sizes, sized, labelled = _sizes(groups)
    return _shortfalls(split_of, sizes, sized, labelled, min_groups=min_groups, min_images=min_images, max_share=max_share)


def _shortfalls(
    split_of: Mapping[str, str],
    sizes: dict[str, dict[int, int]],
    sized: bool,
    labelled: bool,
    *,
    min_groups: int,
    min_images: int,
    max_share: float,
) -> list[str]:
    total = sum(sum(s.values()) for s in sizes.values())
    problems = []
    for split in (Split.TEST, Split.VAL, Split.TRAIN):
        members = [g for g, s in split_of.items() if s == split.value]
        counts = {label: sum(sizes[g].get(label, 0) for g in members) for label in (ABNORMAL, NORMAL)}
        images = sum(sum(sizes[g].values()) for g in members)
        lacks_class = labelled and min(counts.values()) == 0
        if split is Split.TRAIN:
            if lacks_class:
                problems.append(f"train split lacks a class ({counts[ABNORMAL]} abnormal, {counts[NORMAL]} normal); add video")
            continue
        if len(members) >= min_groups and (not sized or images >= min_images) and not lacks_class:
            continue
        have = f"{len(members)} group(s)"
        if sized:
            have += f", {images} image(s)"
        if labelled:
            have += " (" + ", ".join(f"{counts[label]} {LABEL_NAMES[label]}" for label in (ABNORMAL, NORMAL)) + ")"
        want = f"at least {min_groups} groups" + (f" and {min_images} images" if sized else "") + (" with both classes" if labelled else "")
        data = f"{total} images in {len(sizes)} groups" if sized else f"{len(sizes)} groups"
        if sized:
            biggest = max(sum(n.values()) for n in sizes.values())
            data += (
                f" and a held-out split takes at most {max_share:.0%} of them ({math.floor(total * max_share)}), in whole groups "
                f"of up to {biggest} images: about {math.ceil(max(min_images, min_groups * biggest) / max_share)} images are needed"
            )
        problems.append(
            f"{split.value} split: {have}; wanted {want}. The data has {data}: add video (more or longer clips) or extract "
            f"more frames (smaller every_seconds); until then this split is too small to measure"
        )
    return problems
