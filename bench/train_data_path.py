"""bench/train_data_path.py: the training job's data path, end to end, against the model-only training benchmark.

Both sides train the same model (the same random weights) at the same batch size for the same
number of optimizer steps, on the same device:

job: what ``swan_anomaly.training.run_training`` does with the gold window, minus MLflow: read a
gold-like Parquet file (JPEG bytes of camera-like views of real photographs, encoded at the
model's input size as the ETL job writes them), decode every image to uint8 with
``swan_anomaly.trainer.frame_tensors`` on ``--workers`` threads, then
``swan_anomaly.trainer.train_classifier`` for ``--epochs`` epochs (batches gathered from a
shuffled order, on CUDA the set moved to the GPU when it fits or gathered a step ahead into
pinned memory; each batch normalised on the device; one batch of validation per epoch, the best
epoch's weights kept). The clock
runs from opening the file to the trained model back on the CPU, less the model-only segments.

model-only: ``bench/train_throughput.py``'s pipeline loop: ``train_step`` on random batches
already on the device, on a second copy of the model, ``--warmup`` untimed steps before the
job, then one timed segment of an epoch's steps after each of the job's epochs (from
``train_classifier``'s ``on_epoch``): the two take turns, because this machine's speed drifts
within a minute.

It prints both rates, their ratio (job / model-only; the goal on a GPU is >= 0.8), where the
job's time went and each epoch's rate beside its model-only segment's; then the decoding rates
on one thread and on ``--workers`` threads, best of ``--decode-rounds`` taken in turns (not part
of the job's time); and whether the batches normalised on the device equal the served pyfunc's
float32 input bit for bit. Needs torch, transformers, pandas, pyarrow, OpenCV and scikit-image (the photographs;
``requirements-dev.txt``); no MLflow, Spark or Airflow; downloads nothing.

Parameters: --model {offline,vit-b16} (default offline), --batch-size (default TrainConfig's, 32),
--images (default 1024), --epochs (default 5), --warmup (default 3), --device {auto,cuda,cpu},
--workers (decoding threads; default every usable core), --decode-rounds (of the decoding-alone
comparison, default 3), --host-batches (keep the training set
on the host even when it fits on the GPU: the pinned, gathered-ahead path), --compile, --json PATH.

Example:
    $ python3 bench/train_data_path.py --model offline --images 1024 --epochs 5
    $ python3 bench/train_data_path.py --model vit-b16 --device cuda --batch-size 256 --images 8192 --epochs 3 --json out/data_path.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import _harness  # noqa: E402  (needs include/ on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from swan_anomaly import trainer  # noqa: E402
from swan_anomaly.images import preprocess_threads  # noqa: E402
from swan_anomaly.modeling import load_classifier, preprocess_spec  # noqa: E402

#: The photographs the views are cut from (bundled in scikit-image's wheel).
PHOTOS = ("coffee", "rocket", "motorcycle_left", "astronaut")
#: Distinct views rendered; a larger file repeats them (rendering is slower than decoding).
UNIQUE_IMAGES = 512


def gold_like_parquet(path: Path, *, images: int, size: int, seed: int = 0) -> int:
    """Write ``images`` rows of ``content`` (JPEG, ``size`` px), ``sample_id`` and ``label`` to ``path``; returns its bytes.

    Each image is a 320x240 view at a random place of a photograph with Gaussian noise (sigma
    2.5 levels), cropped and resized by ``swan_anomaly.images.crop_and_resize`` and encoded at
    quality 95, as the ETL job writes gold; past :data:`UNIQUE_IMAGES` the views repeat. Half the
    labels are 0.
    """
    import pandas as pd

    from swan_anomaly.images import crop_and_resize, encode_jpeg
    from swan_anomaly.quality.footage import load_photo

    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name in PHOTOS]
    unique = []
    for i in range(min(images, UNIQUE_IMAGES)):
        photo = photos[i % len(photos)]
        y0, x0 = rng.integers(0, photo.shape[0] - 240 + 1), rng.integers(0, photo.shape[1] - 320 + 1)
        view = photo[y0 : y0 + 240, x0 : x0 + 320].astype(np.float32) + rng.normal(0, 2.5, (240, 320, 3))
        unique.append(encode_jpeg(crop_and_resize(np.clip(view, 0, 255).astype(np.uint8), size=size), quality=95))
    content = [unique[i % len(unique)] for i in range(images)]  # each decoded on its own all the same
    frame = pd.DataFrame({"content": content, "sample_id": [f"img-{i:06d}" for i in range(images)], "label": np.arange(images) % 2})
    frame.to_parquet(path, index=False)
    return path.stat().st_size


def job_loop(model_dir: str, parquet: Path, args, device, model_only: ModelOnly) -> dict:
    """Time the job's path: read, decode on ``args.workers`` threads, ``train_classifier``.

    After each epoch (``on_epoch``) ``model_only`` trains as many steps as the epoch had; that
    time is taken out of the job's.
    """
    import pandas as pd

    spec = preprocess_spec(model_dir)
    model = load_classifier(model_dir)
    compile_mode = "on" if args.compile else "off"
    cfg = trainer.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs + 1, device=args.device, compile=compile_mode
    )
    if args.host_batches:
        trainer.GPU_DATA_SHARE = 0.0  # the set stays on the host: batches are gathered ahead into pinned memory
    b = args.batch_size
    aside = 0.0  # seconds spent in the model-only segments between epochs

    def between_epochs(result) -> None:
        nonlocal aside
        _sync(device)  # the job's own work is done before the clock for the aside starts
        started = time.perf_counter()
        model_only.run(-(-args.images // b), epoch_images_per_s=result.images_per_s)
        aside += time.perf_counter() - started

    _sync(device)
    started = time.perf_counter()
    gold = pd.read_parquet(parquet)
    read = time.perf_counter()
    x, y = trainer.frame_tensors(gold, spec, workers=args.workers)
    decoded = time.perf_counter()
    _, history, _ = trainer.train_classifier(model, (x, y), (x[:b], y[:b]), spec, cfg, on_epoch=between_epochs)
    _sync(device)
    done = time.perf_counter()
    return {
        "seconds": done - started - aside,
        "read_s": read - started,
        "decode_s": decoded - read,
        "train_s": done - decoded - aside,
        "epoch_images_per_s": [round(h.images_per_s, 2) for h in history],
        "steps": args.epochs * -(-len(x) // b),
        "images": args.epochs * len(x),
    }


class ModelOnly:
    """``bench/train_throughput.py``'s pipeline loop (:class:`_harness.PipelineTraining`) on random batches on the device, in segments.

    Built and warmed up (``args.warmup`` steps) before the job; :meth:`run` times one segment.
    """

    def __init__(self, model_dir: str, args, device) -> None:
        x, y = _harness.random_batches(_harness.vit_config(args.model), args.batch_size, device)
        steps = args.warmup + args.epochs * -(-args.images // args.batch_size)
        self.loop = _harness.PipelineTraining(model_dir, x, y, device=args.device, total_steps=steps, compile=args.compile)
        self.batch_size, self.segments = args.batch_size, []
        _harness.time_loop(self.loop.step, steps=0, warmup=args.warmup, device=device)

    def run(self, steps: int, *, epoch_images_per_s: float) -> None:
        seconds = _harness.time_loop(self.loop.step, steps=steps, warmup=0, device=self.loop.device)["seconds"]
        rate = steps * self.batch_size / seconds
        self.segments.append(
            {"steps": steps, "seconds": seconds, "images_per_s": round(rate, 2), "job_epoch_images_per_s": round(epoch_images_per_s, 2)}
        )

    def result(self) -> dict:
        seconds = sum(seg["seconds"] for seg in self.segments)
        images = sum(seg["steps"] for seg in self.segments) * self.batch_size
        return {"seconds": seconds, "images": images, "segments": self.segments}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rates(parquet: Path, spec, workers: int, *, rounds: int) -> dict[int, float]:
    """Best seconds to decode the file's images on one thread and on ``workers`` threads, taken in turns (not part of the job's time)."""
    import pandas as pd

    gold = pd.read_parquet(parquet)
    best = {1: float("inf"), workers: float("inf")}
    for _ in range(rounds):
        for n in best:
            started = time.perf_counter()
            trainer.frame_tensors(gold, spec, workers=n)
            best[n] = min(best[n], time.perf_counter() - started)
    return best


def normalized_on_device_as_served(parquet: Path, spec, device) -> bool:
    """Whether the job's normalisation on ``device`` gives the served pyfunc's float32 input bit for bit (first 64 images)."""
    import pandas as pd

    from swan_anomaly.images import decode_pixels, preprocess
    from swan_anomaly.modeling import normalize_pixels

    content = list(pd.read_parquet(parquet).content[:64])
    pixels = torch.from_numpy(decode_pixels(content, size=spec.size, bias_x=spec.bias_x, bias_y=spec.bias_y)).to(device)
    served = preprocess(content, size=spec.size, mean=spec.mean, std=spec.std, bias_x=spec.bias_x, bias_y=spec.bias_y)
    return bool(np.array_equal(normalize_pixels(pixels, spec).cpu().numpy(), served))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(_harness.MODELS), default="offline")
    parser.add_argument("--batch-size", type=int, default=trainer.TrainConfig().batch_size)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed model-only steps first")
    parser.add_argument("--decode-rounds", type=int, default=3, help="rounds of the decoding-alone comparison (best of)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--workers", type=int, default=trainer.usable_cores(), help="decoding threads of the job")
    parser.add_argument("--host-batches", action="store_true", help="keep the training set on the host (CUDA)")
    parser.add_argument("--compile", action="store_true", help="compile the training step on both sides")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for name in ("batch_size", "images", "epochs", "workers", "decode_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.images < 2 * args.batch_size:
        parser.error("--images must be at least twice --batch-size (the model-only side cycles through two batches)")
    device, cfg = _harness.setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _harness.save_random_model(args.model, Path(tmp) / args.model)
        from transformers import ViTImageProcessor

        side = {"height": cfg.image_size, "width": cfg.image_size}  # google/vit-base-patch16-224's normalisation
        ViTImageProcessor(size=side, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(model_dir)
        parquet = Path(tmp) / "gold.parquet"
        file_bytes = gold_like_parquet(parquet, images=args.images, size=cfg.image_size)
        # model-only runs a segment after each of the job's epochs: this machine's speed drifts within a minute
        runner = ModelOnly(model_dir, args, device)
        job = job_loop(model_dir, parquet, args, device, runner)
        model_only = runner.result()
        spec = preprocess_spec(model_dir)
        decode = decode_rates(parquet, spec, args.workers, rounds=args.decode_rounds)
        bit_identical = normalized_on_device_as_served(parquet, spec, device)
    rates = {name: loop["images"] / loop["seconds"] for name, loop in (("job", job), ("model_only", model_only))}
    job["images_per_s"], model_only["images_per_s"] = round(rates["job"], 2), round(rates["model_only"], 2)
    ratio = rates["job"] / rates["model_only"]
    # the job's own decoding time scaled by the measured one-thread slowdown: what the job took before it decoded on threads
    one_thread_s = job["seconds"] + job["decode_s"] * (decode[1] / decode[args.workers] - 1)
    one_thread_ratio = job["images"] / one_thread_s / rates["model_only"]
    result = {
        "benchmark": "train_data_path",
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "images": args.images,
        "epochs": args.epochs,
        "warmup": args.warmup,
        "image_size": cfg.image_size,
        "parquet_mib": round(file_bytes / 2**20, 2),
        "decode_workers": args.workers,
        "decode_threads": preprocess_threads(args.images, args.workers),
        "host_batches": args.host_batches,
        "compile": args.compile,
        "torch": torch.__version__,
        "job": job,
        "model_only": model_only,
        "ratio_job_to_model_only": round(ratio, 3),
        "decode_best_s": {f"{n}_workers": round(t, 4) for n, t in decode.items()},  # workers asked for (see decode_threads)
        "ratio_if_decoding_on_one_thread": round(one_thread_ratio, 3),
        "normalized_on_device_as_served": bit_identical,
    }
    where = result["device_name"] if device.type == "cuda" else f"cpu, {result['cpu_threads']} threads"
    print(
        f"train data path: {args.model} on {where}; {args.images} images of {cfg.image_size}px "
        f"({result['parquet_mib']} MiB of Parquet), batch {args.batch_size}, {args.epochs} epochs ({job['steps']} steps)"
    )
    segments = model_only["segments"]
    print(
        f"  model-only {rates['model_only']:>10.2f} img/s  (train_step on random batches on the device, one segment after each "
        f"of the job's epochs: {[seg['images_per_s'] for seg in segments]} img/s)"
    )
    print(
        f"  job        {rates['job']:>10.2f} img/s  (read {job['read_s']:.2f}s, decode {job['decode_s']:.2f}s on "
        f"{result['decode_threads']} threads, train {job['train_s']:.2f}s; epochs at {job['epoch_images_per_s']} img/s)"
    )
    print(f"  ratio job/model-only {ratio:.3f}")
    print(
        f"  decoding alone, best of {args.decode_rounds} in turns: one thread {args.images / decode[1]:.0f} img/s, "
        f"{result['decode_threads']} threads {args.images / decode[args.workers]:.0f} img/s; "
        f"with the job decoding on one thread the ratio would be {one_thread_ratio:.3f}"
    )
    print(f"  batches normalised on {device.type} equal the served float32 input bit for bit: {bit_identical}")
    _harness.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
