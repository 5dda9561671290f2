"""jobs/train.py: fine-tune the ViT on the gold set, log to MLflow, log the served pyfunc.

Parameters: --lake-root (req), --dataset-id (req), --run-id (req), --model (default: SWAN_MODEL
or vit-tiny-offline; a hub id such as google/vit-base-patch16-224 or a local directory),
--epochs, --batch-size, --learning-rate, --patience, --monitor (val_loss | val_auroc), --threshold-method (max_f1 | target_fpr),
--target-fpr (0.01), --generalization (auto | off: the leave-one-family-out report),
--lofo-epochs (15), --compile (auto | on | off: torch.compile the training step; auto = on CUDA for
runs of at least 500 optimizer steps, where the ~30 s of compilation pays back),
--precision (default: SWAN_TRAINING_PRECISION or auto; float8: FP8 GEMMs through torchao, on a GPU of
compute capability 8.9 or later; float8-emulated: torchao's emulation of them, anywhere, slower),
--window-days (1: days of gold partitions to train on, ending with --dataset-id's date; the
partitions of those days, YYYYMMDD and YYYYMMDD-videos-<digest>, none of a later day; a group that
landed twice is kept from its newest partition; at least 1), --seed, --git-sha, --dag-id.
MLflow settings come from the environment (MLFLOW_TRACKING_URI, SWAN_EXPERIMENT).
Writes runs/{run_id}/train.json (``dataset_ids``: the partitions trained on).
"""

from __future__ import annotations

import argparse

from swan_anomaly.config import Settings
from swan_anomaly.entrypoint import job_parser, run_entrypoint
from swan_anomaly.metrics import THRESHOLD_METHODS
from swan_anomaly.trainer import MONITORS, PRECISIONS, TrainConfig
from swan_anomaly.training import run_training

DEFAULTS = TrainConfig()


def window_days(text: str) -> int:
    """``--window-days``: a whole number of days, at least 1."""
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days < 1:
        msg = f"must be a whole number of days, at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return days


def main(argv: list[str] | None = None) -> dict:
    settings = Settings.from_env()
    parser = job_parser(__doc__)
    parser.add_argument("--model", default=settings.model)
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--patience", type=int, default=DEFAULTS.patience)
    parser.add_argument(
        "--min-delta", type=float, default=DEFAULTS.min_delta, help="smallest change of the monitored metric that counts as an improvement"
    )
    parser.add_argument("--monitor", choices=MONITORS, default=DEFAULTS.monitor, help="early-stopping metric")
    parser.add_argument(
        "--threshold-method",
        choices=THRESHOLD_METHODS,
        default=DEFAULTS.threshold_method,
        help="how the validation split picks the threshold",
    )
    parser.add_argument(
        "--target-fpr", type=float, default=DEFAULTS.target_fpr, help="false-positive rate for --threshold-method target_fpr"
    )
    parser.add_argument(
        "--generalization",
        choices=["auto", "off"],
        default=DEFAULTS.generalization,
        help="leave-one-family-out report (auto: with 2+ families)",
    )
    parser.add_argument("--lofo-epochs", type=int, default=DEFAULTS.lofo_epochs, help="epoch budget of each leave-one-family-out model")
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default=DEFAULTS.compile,
        help="torch.compile the training step (auto: on CUDA, runs of 500+ steps)",
    )
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=settings.training_precision,
        help="auto: bfloat16 autocast on a GPU, float32 on CPU; float8: also FP8 GEMMs (torchao); float8-emulated: their emulation",
    )
    parser.add_argument("--window-days", type=window_days, default=1, help="days of gold partitions to train on, ending with --dataset-id")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--git-sha", default="unknown")
    parser.add_argument("--dag-id", default="")
    args = parser.parse_args(argv)
    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        min_delta=args.min_delta,
        monitor=args.monitor,
        threshold_method=args.threshold_method,
        target_fpr=args.target_fpr,
        generalization=args.generalization,
        lofo_epochs=args.lofo_epochs,
        compile=args.compile,
        precision=args.precision,
        seed=args.seed,
    )
    tags = {"git_sha": args.git_sha, "dag_id": args.dag_id}
    return run_entrypoint(
        "train",
        args,
        lambda: run_training(
            lake_root=args.lake_root,
            dataset_id=args.dataset_id,
            run_id=args.run_id,
            config=config,
            settings=settings,
            tags=tags,
            window_days=args.window_days,
        ),
    )


if __name__ == "__main__":
    main()
