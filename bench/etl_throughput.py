"""bench/etl_throughput.py: the Spark ETL job against a plain single-process OpenCV loop, images/s per core.

Both do the same work on the same files: read each PNG frame from the lake's raw partition,
decode it, crop it around the biased centre, resize it with area interpolation, encode it as
JPEG and write the rows as Parquet. The Spark side is ``swan_anomaly.etl.run_etl`` as the job
runs it (``binaryFile`` listing, label join, ``mapInPandas`` transform, partitioned write) on
a local session with one task slot per core; the baseline is a ``for`` loop over the same
functions (``decode_image``, ``crop_and_resize``, ``encode_jpeg``) in this process, with
OpenCV held to one thread. Spark gets one untimed warm-up run (JVM, Python workers).

Parameters: --images (default 3000), --width (1280), --height (720), --size (model input, 224),
--cores (Spark task slots; default: all cores), --rounds (3), --spark-conf KEY=VALUE (repeatable:
Spark SQL settings of the timed runs), --glibc-malloc-defaults (Spark's Python workers without
``swan_anomaly.spark.PYTHON_WORKER_ENV``, to measure what it is worth), --json PATH.

A second baseline runs one copy of the plain loop per core side by side (each over its share of
the frames): the per-core rate of the loop when every core is busy, as during the Spark job.
The contenders take turns, one after the other in each round, and the ratios are the medians of
the rounds' ratios: this machine's speed drifts by up to 10 % within minutes, more than the gap
being measured. Each round also prints, per image, the CPU time (user and kernel) and minor page
faults of the plain loop, of the Spark JVM and of Spark's Python workers (from /proc).

Example (2 cores, 2026-11-26; docs/benchmarks/cpu/etl.log):
    $ .venv/bin/python bench/etl_throughput.py
    round 1: plain 82.7 | plain on every core 81.9 per core | spark 71.9 per core | ratio 0.87 (every core busy: 0.88)
        per image, plain loop: 11.94 ms user + 0.14 ms kernel, 1 page faults
        per image, spark jvm: 1.35 ms user + 0.13 ms kernel, 15 page faults
        per image, spark python workers: 12.11 ms user + 0.07 ms kernel, 1 page faults
    ...
    ratio (spark / lone plain loop, per core; median of the rounds): 0.86  (target >= 0.8)
    ratio (spark / plain loops on every core, per core; median of the rounds): 0.88
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from swan_anomaly.images import crop_and_resize, decode_image, encode_jpeg, encode_png  # noqa: E402
from swan_anomaly.labels import NORMAL, write_manifest  # noqa: E402
from swan_anomaly.lake import SUCCESS, LocalLake, sha256_file  # noqa: E402

DATASET = "20260101"


def make_dataset(raw_dir: Path, n: int, width: int, height: int, *, unique: int = 100) -> Path:
    """A complete raw partition of ``n`` camera-like PNG frames and their labels.

    ``unique`` distinct frames (smooth scene, moving blobs, sensor noise) are rendered; the rest
    are hard links to them under their own names, so a large set costs little time and disk.
    Both contenders read every file, so the page cache favours neither.
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([90 + 60 * yy / height, 120 + 50 * yy / height, 150 + 40 * xx / width], axis=2)
    folder = raw_dir / "frames" / "bench"
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        path = folder / f"frame_{i:05d}.png"
        if i < unique:
            frame = sky.copy()
            for _ in range(6):
                cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 90)
                cv2.circle(frame, (int(cx), int(cy)), int(r), tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)
            path.write_bytes(encode_png(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)))
        else:
            os.link(folder / f"frame_{i % unique:05d}.png", path)
        rows.append(
            {
                "image_path": path.relative_to(raw_dir).as_posix(),
                "label": NORMAL,
                "video_id": "bench",
                "frame_index": i,
                "timestamp_s": i / 2,
                "family": "none",
                "family_params": "{}",
                "group": f"bench-b{i // 8:04d}",
                "sha256": sha256_file(folder / f"frame_{i % unique:05d}.png") if i < unique else rows[i % unique]["sha256"],
            }
        )
    write_manifest(pd.DataFrame(rows), raw_dir / "labels.csv")
    (raw_dir / SUCCESS).write_text("")
    return raw_dir


def cpu_and_faults(pids: list[int]) -> dict[int, np.ndarray]:
    """User seconds, kernel seconds and minor page faults of each process (its own plus its reaped children's), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not Linux
            continue
        minflt, cminflt, utime, stime, cutime, cstime = (int(fields[i]) for i in (7, 8, 11, 12, 13, 14))
        usage[pid] = np.array([(utime + cutime) / ticks, (stime + cstime) / ticks, minflt + cminflt])
    return usage


def spark_processes() -> dict[str, list[int]]:
    """The pids of this process's Spark children: the JVM and the Python daemon with its workers."""
    import psutil

    found: dict[str, list[int]] = {"jvm": [], "python workers": []}
    for child in psutil.Process().children(recursive=True):
        try:
            found["jvm" if "java" in child.name() else "python workers"].append(child.pid)
        except psutil.Error:
            continue
    return found


def usage_per_image(before: dict[int, np.ndarray], after: dict[int, np.ndarray], n: int) -> dict[str, float]:
    total = sum((after[pid] - before.get(pid, 0) for pid in after), np.zeros(3))
    return {"user_ms": round(total[0] * 1000 / n, 2), "kernel_ms": round(total[1] * 1000 / n, 2), "page_faults": round(total[2] / n)}


def plain_loop(raw_dir: Path, out: Path, size: int, shard: int = 0, shards: int = 1) -> float:
    """Seconds for the single-process loop over every labelled frame (or over every ``shards``-th one from ``shard``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cv2.setNumThreads(1)
    started = time.perf_counter()
    manifest = pd.read_csv(raw_dir / "labels.csv").iloc[shard::shards]
    contents = []
    for rel in manifest.image_path:
        image = decode_image((raw_dir / rel).read_bytes(), name=rel)
        contents.append(encode_jpeg(crop_and_resize(image, size=size), quality=95))
    table = pa.table({"image_path": manifest.image_path.tolist(), "content": contents, "label": manifest.label.tolist()})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / f"part-{shard}.parquet")
    return time.perf_counter() - started


def plain_loops_on_every_core(raw_dir: Path, out: Path, size: int, cores: int) -> float:
    """Wall seconds for ``cores`` copies of the plain loop side by side, each over its own share of the frames.

    The per-core rate of a loop when every core is busy, as they are during the Spark job: on a
    small machine a lone loop also profits from the idle cores (shared cache, memory bandwidth,
    clock boost), which no job that uses every core gets.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with ctx.Pool(cores) as pool:
        pool.starmap(plain_loop, [(raw_dir, out, size, i, cores) for i in range(cores)])
    return time.perf_counter() - started


def spark_session(lake_root: Path, size: int, cores: int, *, worker_env: bool = True):
    """A local session with one task slot per core, warmed up by one untimed ``run_etl`` (JVM, Python workers).

    ``worker_env=False`` leaves out the allocator settings the pipeline gives its Python workers
    (``swan_anomaly.spark.PYTHON_WORKER_ENV``), to measure what they are worth.
    """
    os.environ["SWAN_SPARK_MASTER"] = f"local[{cores}]"
    os.environ["SWAN_SPARK_SHUFFLE_PARTITIONS"] = str(cores)
    from swan_anomaly import spark as spark_module
    from swan_anomaly.etl import run_etl
    from swan_anomaly.spark import build_spark

    if not worker_env:
        spark_module.PYTHON_WORKER_ENV = {}

    spark = build_spark("swan-etl-bench")
    run_etl(lake_root=lake_root, dataset_id=DATASET, image_size=size, spark=spark)
    return spark


def spark_etl(spark, lake_root: Path, size: int) -> float:
    """Seconds of one ``run_etl`` of the benchmark partition on ``spark``."""
    from swan_anomaly.etl import run_etl

    started = time.perf_counter()
    report = run_etl(lake_root=lake_root, dataset_id=DATASET, image_size=size, spark=spark)
    elapsed = time.perf_counter() - started
    assert not report["quarantined"], report["quarantined"]
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three contenders, one after the other in each")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--glibc-malloc-defaults",
        action="store_true",
        help="run the Spark Python workers without swan_anomaly.spark.PYTHON_WORKER_ENV (to measure what it is worth)",
    )
    parser.add_argument(
        "--spark-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark SQL setting for the timed Spark runs (repeatable), to compare knobs",
    )
    args = parser.parse_args(argv)
    conf = dict(item.split("=", 1) for item in args.spark_conf)
    n, cores = args.images, args.cores

    rounds = []
    with tempfile.TemporaryDirectory(prefix="swan-etl-bench-") as tmp:
        tmp_path = Path(tmp)
        lake = LocalLake(tmp_path / "lake")
        raw_dir = make_dataset(lake.raw(DATASET), n, args.width, args.height)
        spark = spark_session(lake.root, args.size, cores, worker_env=not args.glibc_malloc_defaults)
        for key, value in conf.items():
            spark.conf.set(key, value)
        for i in range(args.rounds):
            me = [os.getpid()]
            before = cpu_and_faults(me)
            plain = n / plain_loop(raw_dir, tmp_path / f"plain{i}", args.size)
            plain_usage = usage_per_image(before, cpu_and_faults(me), n)
            loaded = n / plain_loops_on_every_core(raw_dir, tmp_path / f"loaded{i}", args.size, cores) / cores
            pids = spark_processes()
            before = {name: cpu_and_faults(found) for name, found in pids.items()}
            per_core = n / spark_etl(spark, lake.root, args.size) / cores
            now = spark_processes()
            pids = {name: sorted(set(found) | set(now[name])) for name, found in pids.items()}
            spark_usage = {name: usage_per_image(before[name], cpu_and_faults(found), n) for name, found in pids.items()}
            rounds.append(
                {
                    "plain": plain,
                    "plain_every_core": loaded,
                    "spark_per_core": per_core,
                    "ratio": per_core / plain,
                    "ratio_every_core_busy": per_core / loaded,
                    "per_image": {"plain loop": plain_usage, **{f"spark {name}": u for name, u in spark_usage.items()}},
                }
            )
            print(
                f"round {i + 1}: plain {plain:.1f} | plain on every core {loaded:.1f} per core | spark {per_core:.1f} per core"
                f" | ratio {per_core / plain:.2f} (every core busy: {per_core / loaded:.2f})",
                flush=True,
            )
            for name, u in rounds[-1]["per_image"].items():
                print(f"    per image, {name}: {u['user_ms']:.2f} ms user + {u['kernel_ms']:.2f} ms kernel, {u['page_faults']} page faults")
        spark.stop()

    best = {key: max(r[key] for r in rounds) for key in ("plain", "plain_every_core", "spark_per_core")}
    result = {
        "images": n,
        "frame": f"{args.width}x{args.height}",
        "size": args.size,
        "cores": cores,
        "rounds": len(rounds),
        "plain_images_per_s": round(best["plain"], 2),
        "plain_images_per_s_per_core": round(best["plain"], 2),
        "plain_every_core_images_per_s_per_core": round(best["plain_every_core"], 2),
        "spark_images_per_s": round(best["spark_per_core"] * cores, 2),
        "spark_images_per_s_per_core": round(best["spark_per_core"], 2),
        "ratio_per_core": round(statistics.median(r["ratio"] for r in rounds), 3),
        "ratio_per_core_every_core_busy": round(statistics.median(r["ratio_every_core_busy"] for r in rounds), 3),
        "ratio_per_core_of_bests": round(best["spark_per_core"] / best["plain"], 3),
        "per_round": [{k: v if k == "per_image" else round(v, 3) for k, v in r.items()} for r in rounds],
    }
    print(f"plain loop : {best['plain']:.1f} img/s on 1 core  -> {best['plain']:.1f} img/s per core (the other cores idle)")
    print(f"plain loops: one per core, {cores} side by side -> {best['plain_every_core']:.1f} img/s per core")
    print(f"spark ETL  : {best['spark_per_core'] * cores:.1f} img/s on {cores} cores -> {best['spark_per_core']:.1f} img/s per core")
    print(f"ratio (spark / lone plain loop, per core; median of the rounds): {result['ratio_per_core']:.2f}  (target >= 0.8)")
    print(f"ratio (spark / plain loops on every core, per core; median of the rounds): {result['ratio_per_core_every_core_busy']:.2f}")
    print(f"ratio of the best rates: {result['ratio_per_core_of_bests']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
