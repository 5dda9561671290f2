"""jobs/etl.py: raw frames + labels -> silver images (Spark).

Parameters: --lake-root (req), --dataset-id (req), --run-id (req), --model (default: SWAN_MODEL;
its config gives the input size), --image-size (side of the silver JPEGs; default the model's input size, at which training and serving
resize whatever the silver holds), --jpeg-quality (95), --max-image-mb (64: larger files are quarantined),
--on-label-mismatch (quarantine | fail), --partitions (Spark partitions; default as listed).
Writes runs/{run_id}/etl.json.
"""

from __future__ import annotations

from swan_anomaly.config import Settings
from swan_anomaly.contract import CROP_BIAS_X, CROP_BIAS_Y
from swan_anomaly.entrypoint import job_parser, run_entrypoint
from swan_anomaly.etl import MAX_IMAGE_BYTES, run_etl
from swan_anomaly.images import JPEG_QUALITY
from swan_anomaly.modeling import preprocess_spec, resolve_base_model


def main(argv: list[str] | None = None) -> dict:
    settings = Settings.from_env()
    parser = job_parser(__doc__)
    parser.add_argument("--model", default=settings.model, help="preset, hub id or local directory")
    parser.add_argument("--image-size", type=int, default=None, help="side of the silver JPEGs in pixels (default: the model's input size)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY)
    parser.add_argument(
        "--max-image-mb", type=float, default=MAX_IMAGE_BYTES / 2**20, help="files above this size are quarantined, not decoded"
    )
    parser.add_argument("--on-label-mismatch", choices=["quarantine", "fail"], default="quarantine")
    parser.add_argument("--partitions", type=int, default=None, help="Spark partitions for the image transform")
    args = parser.parse_args(argv)
    size = args.image_size or preprocess_spec(resolve_base_model(args.model, settings.models_dir)).size
    return run_entrypoint(
        "etl",
        args,
        lambda: run_etl(
            lake_root=args.lake_root,
            dataset_id=args.dataset_id,
            image_size=size,
            bias_x=CROP_BIAS_X,  # the served model's crop (PreprocessSpec): another one would train on what it never sees
            bias_y=CROP_BIAS_Y,
            jpeg_quality=args.jpeg_quality,
            max_bytes=int(args.max_image_mb * 1024 * 1024),
            on_label_mismatch=args.on_label_mismatch,
            partitions=args.partitions,
        ),
    )


if __name__ == "__main__":
    main()
