"""jobs/augment.py: silver images -> gold training set with a split column (Spark pandas UDF).

Parameters: --lake-root (req), --dataset-id (req), --run-id (req), --seed (default 42),
--jpeg-quality (95).
Writes runs/{run_id}/augment.json.
"""

from __future__ import annotations

from swan_anomaly.augment import run_augmentation
from swan_anomaly.entrypoint import job_parser, run_entrypoint


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jpeg-quality", type=int, default=95)
    args = parser.parse_args(argv)
    return run_entrypoint(
        "augment", args, lambda: run_augmentation(lake_root=args.lake_root, dataset_id=args.dataset_id, seed=args.seed, jpeg_quality=args.jpeg_quality)
    )


if __name__ == "__main__":
    main()
