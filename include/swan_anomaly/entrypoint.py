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

from swan_anomaly._errors import ConfigError, JobError, LabelManifestError, ValidationDataError
from swan_anomaly.lake import LocalLake

#: Exit status of a job that failed for a reason a retry cannot fix (bad input data or
#: configuration); the Airflow task then fails at once instead of retrying. argparse's usage
#: errors (exit status 2) are final too. Anything else (a crash, a kill, a lost connection) is
#: worth a retry.
EXIT_PERMANENT = 3
#: Exit statuses after which the Airflow task fails without retries.
PERMANENT_EXIT_CODES = (2, EXIT_PERMANENT)
PERMANENT_ERRORS = (ConfigError, JobError, LabelManifestError, ValidationDataError)


def failure_record(job: str) -> str:
    """The result name (``runs/{run_id}/{name}.json``) under which a job records a failure a retry cannot fix.

    Example:
        >>> failure_record("train")
        'train.failed'
    """
    return f"{job}.failed"


def job_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--lake-root``, ``--dataset-id`` and ``--run-id`` (all required)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--lake-root", required=True, type=Path, help="root of the lake (local path)")
    parser.add_argument("--dataset-id", required=True, help="dataset partition, e.g. 20261126")
    parser.add_argument("--run-id", required=True, help="Airflow run id; results go to runs/{run_id}/")
    return parser


def run_entrypoint(job: str, args: argparse.Namespace, work) -> dict:
    """Run ``work()``, time it, and write its result to ``runs/{run_id}/{job}.json``.

    Raises:
        SystemExit: with :data:`EXIT_PERMANENT` when ``work()`` raises one of
            :data:`PERMANENT_ERRORS` (logged with its message first, and recorded as
            ``runs/{run_id}/{job}.failed.json``: on Databricks the run's state does not carry the
            exit status).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        result = work()
    except PERMANENT_ERRORS as exc:
        logging.getLogger(job).error("%s failed, and a retry would fail the same way: %s: %s", job, type(exc).__name__, exc)
        # Databricks reports only FAILED, not the exit status: this record tells Airflow not to retry
        failure = {"job": job, "run_id": args.run_id, "dataset_id": args.dataset_id, "error": f"{type(exc).__name__}: {exc}"}
        LocalLake(args.lake_root).write_result(args.run_id, failure_record(job), failure)
        raise SystemExit(EXIT_PERMANENT) from exc
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
