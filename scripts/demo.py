"""Run the whole pipeline once on the embedded default and print a summary (``make demo``).

1. prepares a local Airflow home (``.airflow``, SQLite) with this project's dags/ and plugins/;
2. renders the procedural swan video into today's landing partition (once; reused afterwards);
3. runs ``swan_anomaly_pipeline`` with ``dag.test()`` for today's landing date;
4. prints frames and anomalies (all six families mixed), ETL and training rows, validation metrics,
   the leave-one-family-out table, the registered version and its aliases, the endpoint URL
   and the endpoint's score table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from swan_anomaly.contract import FAMILY_NAMES

ROOT = Path(__file__).resolve().parents[1]


def airflow_env() -> None:
    os.environ.setdefault("SWAN_HOME", str(ROOT / ".swan"))
    os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("SWAN_GIT_SHA", _git_sha())
    for sub in ("plugins", "dags"):
        if str(ROOT / sub) not in sys.path:
            sys.path.insert(0, str(ROOT / sub))


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def migrate_db() -> None:
    """Migrate the metadata DB and create the training pool (as `make airflow` does)."""
    from swan_anomaly.config import Settings

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "pools",
            "set",
            Settings.from_env().pool,
            "1",
            "one run trains at a time",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ensure_demo_video(landing_date: dt.date) -> tuple[Path, bool]:
    from swan_anomaly.config import Settings
    from swan_anomaly.video import render_demo_video

    path = Settings.from_env().landing_dir / landing_date.isoformat() / "swans_demo.mp4"
    if path.is_file():
        return path, True
    return render_demo_video(path, seconds=96.0), False


#: The demo mixes all six anomaly families, as the pipeline does by default: diverse synthetic
#: anomalies are what generalizes (docs/data-and-metrics.md). ``SWAN_DEMO_FAMILIES`` (comma-separated,
#: or ``all``) chooses others, e.g. ``salt_pepper_polygons`` alone for a quicker run.
DEMO_FAMILIES = FAMILY_NAMES


def demo_families() -> list[str]:
    """The anomaly families of this demo run (``SWAN_DEMO_FAMILIES``, default :data:`DEMO_FAMILIES`)."""
    from swan_anomaly.config import Settings

    chosen = Settings.from_env().demo_families or ",".join(DEMO_FAMILIES)
    if chosen == "all":
        from swan_anomaly.anomalies import FAMILIES

        return list(FAMILIES)
    return [f.strip() for f in chosen.split(",") if f.strip()]


def run_pipeline(landing_date: dt.date, conf: dict | None = None):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag("swan_anomaly_pipeline")
    logical = dt.datetime.combine(landing_date, dt.time(), tzinfo=dt.UTC)
    return dag.test(logical_date=logical, run_conf={"landing_date": landing_date.isoformat(), **(conf or {})})


def print_summary(summary: dict, reused_video: bool, seconds: float) -> None:
    img, up = summary["images"], summary["upload"]
    print("\n" + "=" * 84)
    print(f"swan-anomaly demo: dataset {summary['dataset_id']}  (run {summary['run_id']}, {seconds:.0f}s)")
    print("=" * 84)
    video = "reused the demo video already in the landing zone" if reused_video else "rendered a new demo video into the landing zone"
    print(f"video          : {video}")
    print(f"frames         : {img['normal']} normal frames, {img['abnormal']} synthetic anomalies, {img['groups']} split groups")
    print(f"anomalies      : {', '.join(f'{n} {family}' for family, n in summary['families'].items())}")
    for rejected in summary["rejected_videos"]:
        print(f"REJECTED video : {rejected['reason']}")
    print(f"lake upload    : {up['written']} files written, {up['unchanged']} unchanged (reused), {up['removed']} removed -> {up['uri']}")
    print(f"ETL            : {summary['etl_rows']} silver rows ({summary['quarantined']} quarantined); partition replaced on rerun")
    print(f"training set   : {summary['training_rows']} gold rows {json.dumps(summary['rows_by_split'])}")
    for problem in summary.get("split_shortfalls", []):
        print(f"SPLIT too small: {problem}")
    from swan_anomaly.metrics import format_auroc, is_measurable

    v, t = summary["val"], summary["test"]

    def measured(split: dict) -> str:
        """AUROC with its interval and class counts, then F1; a split too small to measure shows no precise number."""
        return f"AUROC {format_auroc(split)}  F1 {split['f1']:.4f}" if is_measurable(split) else f"AUROC {format_auroc(split)}"

    print(f"validation     : {measured(v)}  (anomaly class positive; best epoch {summary['best_epoch']} of {summary['epochs_run']})")
    print(f"held-out test  : {measured(t)}")
    import pandas as pd

    from swan_anomaly.generalization import COLUMNS, format_table

    print("\nleave-one-family-out (a model per family, trained without it, tested on it):")
    print(format_table(pd.DataFrame(summary["generalization"], columns=list(COLUMNS))))
    g = summary["gate"]
    champion = g["reports"].get("champion")
    against = (
        f"champion v{champion['version']} AUROC {format_auroc(champion)} on the same rows" if champion else "no champion to compare with"
    )
    verdict = "passed" if g["passed"] else f"refused: {'; '.join(g['reasons'] or ['no reason recorded'])}"
    print(
        f"gate           : {verdict} ({g['mode']}; challenger AUROC {format_auroc(g['reports']['challenger'])}, {against})"
        if "challenger" in g["reports"]
        else f"gate           : {verdict} ({g['mode']}; no model scored)"
    )
    m = summary["model"]
    print(f"registered     : {m['name']} version {m['version']}, aliases {m['aliases'] or '[] (not promoted)'}")
    e, serving = summary["endpoint"], summary["serving"]
    if e is None:  # nothing was validated: no champion to serve (the gate refused the first model), or the section failed
        print(f"endpoint       : {serving['endpoint']} serves v{serving['version']} (champion: {serving['champion']}); not validated")
        return
    print(f"endpoint       : {e['url']} serves version {serving['version']} (champion: {serving['champion']})")
    print(f"validation     : {e['outcome']}: {e['message']}")
    from swan_anomaly.config import Settings
    from swan_anomaly.serving.client import score_table

    print("\nscores from the endpoint (held-out raw frames, up to 8 of each class):")
    print(score_table([tuple(r) for r in summary["scores"]]))
    print("\nMLflow UI : .venv/bin/mlflow ui --backend-store-uri " + Settings.from_env().tracking_uri)
    print("Airflow UI: make airflow")


def main() -> int:
    airflow_env()
    started = time.perf_counter()
    migrate_db()
    today = dt.datetime.now(dt.UTC).date()
    video, reused = ensure_demo_video(today)
    print(f"landing zone video: {video} ({'reused' if reused else 'rendered'})")
    dag_run = run_pipeline(today, conf={"anomaly_families": demo_families()})
    state = str(getattr(dag_run, "state", "unknown"))
    if state != "success":
        print(f"pipeline run ended in state {state!r}; see the task logs above", file=sys.stderr)
        return 1
    from swan_anomaly.config import Settings
    from swan_anomaly.lake import LocalLake

    summary = LocalLake(Settings.from_env().lake_root).read_result(dag_run.run_id, "summary")
    print_summary(summary, reused, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
