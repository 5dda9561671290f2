"""jobs/augment.py: silver images -> gold training set with a split column (Spark pandas UDF).

Parameters: --lake-root (req), --dataset-id (req), --run-id (req), --seed (default 42),
--jpeg-quality (95), --augmentations (comma-separated, default none,hflip,rot180,affine,color),
--target-abnormal-share (default: keep the ratio), --partitions (Spark partitions).
Writes runs/{run_id}/augment.json.
"""

from __future__ import annotations

from swan_anomaly.augment import TRAIN_AUGMENTATIONS, run_augmentation
from swan_anomaly.entrypoint import job_parser, run_entrypoint
from swan_anomaly.images import JPEG_QUALITY


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
    parser.add_argument("--augmentations", default=",".join(TRAIN_AUGMENTATIONS), help="comma-separated operations; must include none")
    parser.add_argument(
        "--target-abnormal-share", type=float, default=None, help="oversample the train minority class to this abnormal share"
    )
    parser.add_argument("--partitions", type=int, default=None)
    args = parser.parse_args(argv)
    return run_entrypoint(
        "augment",
        args,
        lambda: run_augmentation(
            lake_root=args.lake_root,
            dataset_id=args.dataset_id,
            seed=args.seed,
            jpeg_quality=args.jpeg_quality,
            augmentations=tuple(a.strip() for a in args.augmentations.split(",") if a.strip()),
            target_abnormal_share=args.target_abnormal_share,
            partitions=args.partitions,
        ),
    )


if __name__ == "__main__":
    main()
