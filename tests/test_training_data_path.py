"""The training job's data path: decoding on every core in bounded memory, and batches gathered a step ahead.

Issue 17: the job decoded every JPEG of the gold window on one thread, with a peak of 3.3 times
the decoded set's size in temporaries, and each host-resident batch bound for a GPU was gathered
and pinned on the training thread between steps. Then it held the whole set as float32, four
times the bytes of its pixels, to allocate, fault in, copy to the GPU and hold there; it now
holds uint8 and normalises each batch where the model runs, to the same values bit for bit.
"""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from swan_anomaly import ImageDecodeError
from swan_anomaly import images as images_module
from swan_anomaly.images import PREPROCESS_CHUNK, crop_and_resize, decode_image, decode_pixels, encode_jpeg, preprocess

SPEC = dict(size=48, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _jpegs(n: int, *, side: int = 64, seed: int = 0) -> list[bytes]:
    """``n`` distinct noisy JPEGs, not square, so each one is cropped and resized."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (side, side + 24, 3), dtype=np.uint8)
    return [encode_jpeg(np.clip(base.astype(int) + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)) for _ in range(n)]


def test_decoding_on_threads_gives_the_same_array_as_one_thread():
    images = _jpegs(2 * PREPROCESS_CHUNK + 5)  # three chunks, the last one short
    one = preprocess(images, **SPEC, workers=1)
    many = preprocess(images, **SPEC, workers=3)
    assert one.shape == (len(images), 3, 48, 48) and one.dtype == np.float32
    assert np.array_equal(one, many)
    # each image as it comes out alone: chunking changes nothing either
    assert np.array_equal(preprocess(images[-1:], **SPEC), one[-1:])
    assert len({one[i].tobytes() for i in range(len(images))}) == len(images)


def test_decoding_runs_on_several_threads(monkeypatch):
    threads: set[str] = set()
    decode = images_module.decode_image
    barrier = threading.Barrier(2, timeout=10)

    def recording_decode(data, *, name="<bytes>"):
        threads.add(threading.current_thread().name)
        if name in ("image[0]", f"image[{PREPROCESS_CHUNK}]"):  # the first image of each chunk waits for the other chunk's
            barrier.wait()
        return decode(data, name=name)

    monkeypatch.setattr(images_module, "decode_image", recording_decode)
    preprocess(_jpegs(2 * PREPROCESS_CHUNK), **SPEC, workers=2)
    assert len(threads) == 2 and all(t.startswith("swan-preprocess") for t in threads)


@pytest.mark.parametrize("workers", [None, 2])
def test_decoding_a_large_set_needs_little_more_memory_than_its_result(workers):
    images = _jpegs(12 * PREPROCESS_CHUNK, side=40)
    result_bytes = len(images) * 3 * 48 * 48 * 4
    tracemalloc.start()
    try:
        x = preprocess(images, **SPEC) if workers is None else preprocess(images, **SPEC, workers=workers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.nbytes == result_bytes
    # before: a uint8 stack of every image and float32 temporaries of the whole set (3.3x the result); now one chunk's per thread
    assert peak < 1.5 * result_bytes, f"peak {peak / 2**20:.1f} MiB for a {result_bytes / 2**20:.1f} MiB result"


@pytest.mark.parametrize("workers", [1, 4])
def test_a_bad_image_is_named_and_it_is_the_first_bad_one(workers):
    images = _jpegs(3 * PREPROCESS_CHUNK)
    names = [f"frame_{i:04d}.jpg" for i in range(len(images))]
    images[PREPROCESS_CHUNK + 3] = b"not a jpeg"
    images[2 * PREPROCESS_CHUNK + 1] = b"\xff\xd8 truncated"
    with pytest.raises(ImageDecodeError, match=f"frame_{PREPROCESS_CHUNK + 3:04d}.jpg"):
        preprocess(images, **SPEC, names=names, workers=workers)


def test_no_images_give_an_empty_batch():
    assert preprocess([], **SPEC, workers=4).shape == (0, 3, 48, 48)


def test_threads_are_one_per_chunk_and_capped():
    from swan_anomaly.images import MAX_PREPROCESS_WORKERS, preprocess_threads

    assert preprocess_threads(PREPROCESS_CHUNK, 8) == 1
    assert preprocess_threads(PREPROCESS_CHUNK + 1, 8) == 2
    assert preprocess_threads(1000 * PREPROCESS_CHUNK, 10_000) == MAX_PREPROCESS_WORKERS
    assert preprocess_threads(0, 8) == 1 and preprocess_threads(5 * PREPROCESS_CHUNK, 0) == 1


def test_frame_tensors_decodes_with_the_sample_ids_as_names():
    from swan_anomaly.modeling import normalize_pixels
    from swan_anomaly.trainer import frame_tensors

    spec = type("Spec", (), {**SPEC, "bias_x": 0.5, "bias_y": 0.5})
    images = _jpegs(5)
    images[2] = b"garbage"
    frame = pd.DataFrame({"content": images, "sample_id": [f"s{i}" for i in range(5)], "label": [0, 1, 0, 1, 1]})
    with pytest.raises(ImageDecodeError, match="s2"):
        frame_tensors(frame, spec)
    frame.loc[2, "content"] = images[0]
    x, y = frame_tensors(frame, spec, workers=2)
    assert x.shape == (5, 3, 48, 48) and y.tolist() == [0, 1, 0, 1, 1]
    # the job holds uint8 pixels; normalised where the model runs they are what the served model computes, bit for bit
    assert x.dtype == torch.uint8 and x.nbytes == 5 * 3 * 48 * 48
    assert np.array_equal(normalize_pixels(x, spec).numpy(), preprocess(list(frame.content), **SPEC, bias_x=0.5, bias_y=0.5))


@pytest.mark.parametrize("workers", [1, 3])
def test_decoded_pixels_are_each_image_cropped_and_resized_and_normalise_to_the_served_input(workers):
    from swan_anomaly.modeling import PreprocessSpec, normalize_pixels

    images = _jpegs(2 * PREPROCESS_CHUNK + 5)  # three chunks, the last one short
    pixels = decode_pixels(images, size=48, workers=workers)
    assert pixels.shape == (len(images), 3, 48, 48) and pixels.dtype == np.uint8
    for i in (0, PREPROCESS_CHUNK, len(images) - 1):  # channel first, each image where it belongs
        assert np.array_equal(pixels[i], crop_and_resize(decode_image(images[i]), size=48).transpose(2, 0, 1))
    spec = PreprocessSpec(48, SPEC["mean"], SPEC["std"])
    served = preprocess(images, **SPEC)
    # the same float32 operations in the same order, in torch: equal bit for bit, not just close
    assert np.array_equal(normalize_pixels(torch.from_numpy(pixels), spec).numpy(), served)
    halves = [normalize_pixels(torch.from_numpy(pixels[i : i + 50]), spec) for i in range(0, len(pixels), 50)]
    assert np.array_equal(torch.cat(halves).numpy(), served)  # batch by batch, as training normalises


def test_evaluation_normalises_with_the_spec_it_is_given_to_the_served_input():
    """Training's evaluate on uint8 pixels gives the logits of the served path's float32 input, with that spec's mean and std."""
    from transformers import ViTConfig, ViTForImageClassification

    from swan_anomaly.modeling import PRESETS, PreprocessSpec, forward_logits
    from swan_anomaly.trainer import evaluate

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**PRESETS["vit-micro-offline"], num_labels=2)).eval()
    images = _jpegs(10)
    spec = PreprocessSpec(32, SPEC["mean"], SPEC["std"])
    pixels, y = torch.from_numpy(decode_pixels(images, size=32)), torch.tensor([0, 1] * 5)
    _, logits = evaluate(model, pixels, y, spec, 4)
    served = torch.from_numpy(preprocess(images, size=32, mean=spec.mean, std=spec.std))
    expected = np.concatenate([forward_logits(model, served[i : i + 4]) for i in range(0, 10, 4)])
    np.testing.assert_array_equal(logits, expected)
    _, other = evaluate(model, pixels, y, PreprocessSpec(32, (0.5,) * 3, (0.5,) * 3), 4)
    assert not np.allclose(other, expected), "the spec's mean and std made no difference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/train_data_path.py checks it on the GPU machine)")
def test_pixels_normalised_on_the_gpu_equal_the_served_input_bit_for_bit():
    from swan_anomaly.modeling import PreprocessSpec, normalize_pixels

    images = _jpegs(PREPROCESS_CHUNK)
    pixels = torch.from_numpy(decode_pixels(images, size=48)).cuda()
    normalised = normalize_pixels(pixels, PreprocessSpec(48, SPEC["mean"], SPEC["std"]))
    assert normalised.device.type == "cuda"
    assert np.array_equal(normalised.cpu().numpy(), preprocess(images, **SPEC))


def test_normalising_pixels_twice_is_refused():
    from swan_anomaly.modeling import PreprocessSpec, normalize_pixels

    with pytest.raises(TypeError, match="uint8"):
        normalize_pixels(torch.zeros(1, 3, 4, 4), PreprocessSpec(4, (0.5,) * 3, (0.5,) * 3))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_job_holds_its_decoded_set_in_a_quarter_of_the_float32_bytes(workers):
    from swan_anomaly.trainer import frame_tensors

    spec = type("Spec", (), {**SPEC, "bias_x": 0.5, "bias_y": 0.5})
    n = 24 * PREPROCESS_CHUNK
    frame = pd.DataFrame({"content": _jpegs(n, side=40), "sample_id": [f"s{i}" for i in range(n)], "label": [1] * n})
    float32_bytes = n * 3 * 48 * 48 * 4
    tracemalloc.start()
    try:
        x, _ = frame_tensors(frame, spec, workers=workers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.nbytes == float32_bytes // 4
    # before: the float32 set itself (4x its pixels) plus a chunk's temporaries per thread; now the pixels plus those
    assert peak < 1.5 * x.nbytes, f"peak {peak / 2**20:.1f} MiB for {x.nbytes / 2**20:.1f} MiB of pixels"


def test_the_decoding_log_line_counts_the_threads_used(caplog):
    import logging

    from swan_anomaly.trainer import frame_tensors

    spec = type("Spec", (), {**SPEC, "bias_x": 0.5, "bias_y": 0.5})
    n = PREPROCESS_CHUNK + 1  # two chunks: two threads, however many workers are offered
    frame = pd.DataFrame({"content": _jpegs(n), "sample_id": [f"s{i}" for i in range(n)], "label": [1] * n})
    with caplog.at_level(logging.INFO, logger="swan_anomaly.trainer"):
        frame_tensors(frame, spec, workers=8)
    assert any(f"decoded {n} images" in r.message and r.message.endswith("on 2 threads)") for r in caplog.records), caplog.text


def test_batches_gathered_ahead_are_the_batches_in_order():
    import torch

    from swan_anomaly.trainer import epoch_batches

    x, y = torch.randn(23, 3, 4, 4), torch.arange(23)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    ahead = list(epoch_batches(x, y, order, 5, "cpu", prefetch=True))
    direct = list(epoch_batches(x, y, order, 5, "cpu", prefetch=False))
    assert [len(b) for _, b in ahead] == [5, 5, 5, 5, 3]
    assert torch.cat([b for _, b in ahead]).tolist() == order.tolist()
    for (xa, ya), (xd, yd) in zip(ahead, direct, strict=True):
        assert torch.equal(xa, xd) and torch.equal(ya, yd) and torch.equal(xa, x[ya])


def test_a_set_already_on_the_device_is_gathered_without_a_thread(monkeypatch):
    import concurrent.futures

    import torch

    from swan_anomaly.trainer import epoch_batches

    def no_pool(*args, **kwargs):
        raise AssertionError("a thread pool was started")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", no_pool)
    x, y = torch.randn(7, 3, 4, 4), torch.arange(7)
    assert [b.tolist() for _, b in epoch_batches(x, y, torch.arange(7), 4, "cpu")] == [[0, 1, 2, 3], [4, 5, 6]]
    with pytest.raises(AssertionError, match="thread pool"):  # the same call gathering ahead does start one
        list(epoch_batches(x, y, torch.arange(7), 4, "cpu", prefetch=True))


def test_a_failing_gather_ahead_fails_the_epoch():
    import torch

    from swan_anomaly.trainer import epoch_batches

    x, y = torch.randn(10, 3, 4, 4), torch.arange(10)
    order = torch.tensor([0, 1, 2, 3, 99, 5])  # the second batch holds a row that does not exist
    batches = epoch_batches(x, y, order, 3, "cpu", prefetch=True)
    assert next(batches)[1].tolist() == [0, 1, 2]
    with pytest.raises(IndexError):
        next(batches)


@pytest.mark.slow
def test_the_data_path_benchmark_accounts_for_every_image_and_second(tmp_path):
    import json
    import sys
    from pathlib import Path

    from conftest import run_checked

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "data_path.json"
    command = [sys.executable, str(root / "bench" / "train_data_path.py"), "--model", "offline", "--images", "64", "--batch-size", "16"]
    done = run_checked([*command, "--epochs", "2", "--warmup", "1", "--workers", "2", "--device", "cpu", "--json", str(out)], cwd=root)
    r = json.loads(out.read_text())
    job, model_only = r["job"], r["model_only"]
    assert job["images"] == model_only["images"] == 2 * 64 and job["steps"] == 2 * 4
    assert len(job["epoch_images_per_s"]) == 2 and r["parquet_mib"] > 0 and r["image_size"] == 128
    # one model-only segment of an epoch's steps after each of the job's epochs, beside that epoch's rate
    assert [(seg["steps"], seg["job_epoch_images_per_s"]) for seg in model_only["segments"]] == [(4, e) for e in job["epoch_images_per_s"]]
    assert model_only["seconds"] == pytest.approx(sum(seg["seconds"] for seg in model_only["segments"]))
    assert 0 < job["read_s"] + job["decode_s"] + job["train_s"] <= job["seconds"] * 1.0001
    assert r["ratio_job_to_model_only"] == pytest.approx(job["images_per_s"] / model_only["images_per_s"], rel=0.01)
    assert set(r["decode_best_s"]) == {"1_workers", "2_workers"} and all(t > 0 for t in r["decode_best_s"].values())
    assert "ratio job/model-only" in done.stdout


def test_a_chunk_is_normalised_in_the_result_without_a_float_temporary():
    """One chunk of images: before, a float32 copy of the chunk and a channels-first copy of it came on top of the result."""
    images = _jpegs(PREPROCESS_CHUNK, side=48)
    result_bytes = len(images) * 3 * 48 * 48 * 4
    tracemalloc.start()
    try:
        x = preprocess(images, **SPEC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.nbytes == result_bytes
    # now the result, the chunk's uint8 crops and the decoding's own temporaries (2.3x the result); before 3.0x
    assert peak < 2.5 * result_bytes, f"peak {peak / 2**20:.2f} MiB for a {result_bytes / 2**20:.2f} MiB result"
    # the same values, bit for bit, as the uint8 stack normalised on its own in float32, as preprocess did before
    from swan_anomaly.images import crop_and_resize, decode_image

    stack = np.stack([crop_and_resize(decode_image(b, name="x"), size=SPEC["size"]) for b in images]).astype(np.float32)
    mean, std = np.asarray(SPEC["mean"], np.float32), np.asarray(SPEC["std"], np.float32)
    assert np.array_equal(x, ((stack / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2))


def test_the_normalisation_benchmark_checks_both_ways_agree_and_reports_a_ratio():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "normalize_throughput.py"
    run = subprocess.run([sys.executable, str(script), "--size", "32", "--chunks", "2", "--rounds", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "median ratio pipeline / baseline" in run.stdout
