"""What every job entrypoint shares: the common arguments and writing the result JSON.

Example:
    >>> parser = job_parser("ETL job")
    >>> parser.parse_args(["--lake-root", "/tmp/lake", "--dataset-id", "20261126", "--run-id", "r1"]).dataset_id
    '20261126'
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from swan_anomaly.lake import LocalLake


def job_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--lake-root``, ``--dataset-id`` and ``--run-id`` (all required)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--lake-root", required=True, type=Path, help="root of the lake (local path)")
    parser.add_argument("--dataset-id", required=True, help="dataset partition, e.g. 20261126")
    parser.add_argument("--run-id", required=True, help="Airflow run id; results go to runs/{run_id}/")
    return parser


def run_entrypoint(job: str, args: argparse.Namespace, work) -> dict:
    """Run ``work()``, time it, and write its result to ``runs/{run_id}/{job}.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    started = time.perf_counter()
    result = work()
    import swan_anomaly

    result = {
        "job": job,
        "run_id": args.run_id,
        "dataset_id": args.dataset_id,
        "seconds": round(time.perf_counter() - started, 2),
        "package_path": str(Path(swan_anomaly.__file__).parent),  # which code ran: the installed wheel or a checkout
        **result,
    }
    path = LocalLake(args.lake_root).write_result(args.run_id, job, result)
    logging.getLogger(job).info("%s finished in %.1fs; result: %s", job, result["seconds"], path)
    return result
