"""Where do the decision boundaries hold? A kept ``bench/quality.py`` run's pyfunc on raw frames and their gold copies.

For the validation and test originals of the run's gold partition, the share of images at or above
each boundary (the classifier's stored threshold; ``novelty_score >= 1``), scored once from the raw
frames (what the endpoint sees) and once from their gold copies (after the ETL's crop, resize and
JPEG encode): tells a boundary that does not carry over to other stretches of footage from one that
the ETL shifted.

    .venv/bin/python bench/quality.py --seconds 60 --keep /tmp/q --json /tmp/q.json
    .venv/bin/python bench/quality_calibration.py --home /tmp/q --json /tmp/q.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

import pandas as pd  # noqa: E402

from quality import DATASET_ID  # noqa: E402  (bench/ is sys.path[0] when this script runs)
from swan_anomaly.contract import NORMAL, NOVELTY_COLUMN  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the SWAN_HOME that bench/quality.py --keep kept")
    parser.add_argument("--json", type=Path, required=True, help="that run's --json figures (model URI, threshold, dataset)")
    args = parser.parse_args(argv)

    import mlflow
    import mlflow.pyfunc

    from swan_anomaly.lake import LocalLake, load_gold

    figures = json.loads(args.json.read_text())
    training, dataset_id = figures["training"], DATASET_ID
    mlflow.set_tracking_uri(f"sqlite:///{args.home}/mlflow/mlflow.db")
    model = mlflow.pyfunc.load_model(training["model_uri"])
    threshold = float(training["threshold"])
    lake = LocalLake(args.home / "lake")
    gold = load_gold(lake, dataset_id, 1)
    out = {}
    print(f"threshold {threshold:.4f}; share of images at or above each boundary")
    for split in ("val", "test"):
        part = gold[(gold.split == split) & (gold.aug == "none")]
        for label, name in ((NORMAL, "normal"), (1 - NORMAL, "abnormal")):
            rows = part[part.label == label]
            sources = {"raw": [lake.read_raw(dataset_id, p) for p in rows.image_path], "gold": [bytes(c) for c in rows.content]}
            for source, images in sources.items():
                scored = model.predict(pd.DataFrame({"image": images}))
                rates = {"anomaly_score": float((scored.anomaly_score >= threshold).mean())}
                if NOVELTY_COLUMN in scored:
                    rates[NOVELTY_COLUMN] = float((scored[NOVELTY_COLUMN] >= 1.0).mean())
                out[f"{split}/{name}/{source}"] = {"images": len(rows), **rates}
                print(f"{split:<4} {name:<8} {len(rows):>4} {source:<4} " + "  ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    return out


if __name__ == "__main__":
    main()
