"""bench/normalize_throughput.py: normalising decoded crops into the training set's array, in place against through a temporary.

Both sides turn chunks of ``[64, S, S, 3]`` uint8 crops into the ``[N, 3, S, S]`` float32 result,
chunk by chunk, as ``swan_anomaly.images.preprocess`` does for every image of a training job:

* ``pipeline``: ``swan_anomaly.images.normalize_into`` on each chunk's slice of the result;
* ``baseline``: what ``preprocess`` did before: ``astype(float32)`` of the chunk (a temporary of
  38 MB at 224 px), scaled and standardised in place, then copied channels-first into the slice.

They must give the same array bit for bit (checked first). Rounds alternate between the two, on
one thread; it prints each round's images/s and the median ratio pipeline / baseline.

Example:
    $ python3 bench/normalize_throughput.py                 # 224 px, 40 chunks of 64, 3 rounds: seconds
    $ python3 bench/normalize_throughput.py --size 128 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import numpy as np  # noqa: E402

from swan_anomaly.images import PREPROCESS_CHUNK, normalize_into  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def baseline(out: np.ndarray, chunk: np.ndarray) -> None:
    """The former path: a float32 temporary of the chunk, worked on in place, copied channels-first into ``out``."""
    x = chunk.astype(np.float32)
    x /= 255.0
    x -= np.asarray(MEAN, dtype=np.float32)
    x /= np.asarray(STD, dtype=np.float32)
    out[...] = x.transpose(0, 3, 1, 2)


def pipeline(out: np.ndarray, chunk: np.ndarray) -> None:
    normalize_into(out, chunk, mean=MEAN, std=STD)


def fill(step, out: np.ndarray, chunk: np.ndarray) -> float:
    """Seconds to fill every chunk's slice of ``out`` with ``step``."""
    started = time.perf_counter()
    for i in range(0, len(out), len(chunk)):
        step(out[i : i + len(chunk)], chunk)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="side of the crops (the model's input)")
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    chunk = np.random.default_rng(0).integers(0, 256, (PREPROCESS_CHUNK, args.size, args.size, 3), dtype=np.uint8)
    out = np.empty((PREPROCESS_CHUNK * args.chunks, 3, args.size, args.size), dtype=np.float32)
    fill(baseline, out, chunk)
    expected = out.copy()
    fill(pipeline, out, chunk)
    if not np.array_equal(out, expected):
        raise SystemExit("normalize_into differs from the former path")
    rates: dict[str, list[float]] = {"baseline": [], "pipeline": []}
    for r in range(args.rounds):
        for name, step in (("baseline", baseline), ("pipeline", pipeline)):
            rates[name].append(len(out) / fill(step, out, chunk))
        print(f"round {r + 1}: baseline {rates['baseline'][-1]:,.0f} img/s, pipeline {rates['pipeline'][-1]:,.0f} img/s", flush=True)
    ratio = statistics.median(p / b for p, b in zip(rates["pipeline"], rates["baseline"]))
    print(f"{len(out)} crops of {args.size} px in chunks of {PREPROCESS_CHUNK}, one thread: median ratio pipeline / baseline {ratio:.2f}")
    return {"rates": rates, "ratio": ratio}


if __name__ == "__main__":
    main()
