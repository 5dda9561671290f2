"""bench/quality.py: detection quality on footage of real photographs, seen families and anomaly kinds never trained on.

The demo video is procedural and easy. This renders one video per photograph bundled in the
scikit-image wheel (``swan_anomaly.quality.render_photo_footage``: a hand-held camera panning
across the photo, with jitter, zoom drift, flicker, sensor noise and mp4 compression) and runs
the pipeline's own code path on them, without Airflow, in a temporary ``SWAN_HOME`` (its own
lake, local Spark, MLflow on SQLite), in the order of the DAG's tasks:

    render videos -> swan_anomaly.video.extract_frames -> anomalies.synthesize_dataset
    -> labels.build_manifest / write_manifest -> LocalLake.put_dataset -> etl.run_etl
    -> augment.run_augmentation -> training.run_training

The logged pyfunc is then loaded with ``mlflow.pyfunc.load_model`` and scores, from the raw
lake, the test split the training listed (``held_out``):

* each seen family: that family's test anomalies against every test normal frame;
* each unseen kind (``swan_anomaly.quality.UNSEEN_KINDS``, never trained on) applied, seeded,
  to every test normal frame, against those normal frames.

Each AUROC comes with its 95 % stratified bootstrap interval (``swan_anomaly.metrics.auroc_interval``)
and its class counts; a set with fewer than 10 images of a class is flagged ``small``. Scores:
``anomaly_score``; ``novelty_score`` when the served pyfunc returns that column; and
``swan_anomaly.metrics.decision_score`` (``max(anomaly / threshold, novelty)``, the served
decision). The leave-one-family-out table of the training comes last, then the goals:

    seen families: worst family's test AUROC (anomaly_score)      >= 0.97
    unseen kinds:  mean AUROC (decision_score)                    >= 0.90
    leave-one-family-out: worst unseen-family AUROC               >= 0.85

Parameters: --model (vit-tiny-offline; a preset, hub id or directory), --epochs (the
pipeline's default), --photos (comma-separated, default the benchmark's scenes), --seconds (per
video, 120), --every-seconds (0.5), --families (comma-separated, default all six),
--anomaly-ratio (0.5), --generalization (auto | off), --device (auto), --training-precision (auto |
float8 | float8-emulated: the training job's FP8 GEMMs, as SWAN_TRAINING_PRECISION sets them; emulated
on a CPU), --seed (42), --json OUT,
--keep DIR (use DIR, empty or new, as SWAN_HOME and keep it), --compare-cpu-precision
bfloat16|int8 (score the same images again with the pyfunc in that precision on CPU, as
SWAN_SERVING_CPU_PRECISION serves it, and print the score differences and every AUROC both
ways), --compare-served VARIANT (repeatable; the same with the loaded served model changed, a probe
and not a served path: gelu-tanh replaces its exact GELU by the tanh approximation that cuBLASLt's
GEMM epilogue computes; float8-emulated rounds every linear layer's input and weight to e4m3 with
one dynamic scale per tensor, as FP8 serving's GEMMs would, emulated by torchao), --smoke (vit-micro-offline, 2
epochs, 3 videos of 16 s at one frame a second, anomaly ratio 0.75, no leave-one-family-out
report: a minute or two on a laptop, for tests). Explicit options win over --smoke's.

Needs scikit-image (``requirements-dev.txt``) for the photos, plus the pipeline's jobs stack
(pyspark with Java, torch, transformers, mlflow). Results go to stdout, progress to stderr.

Example:
    $ .venv/bin/python bench/quality.py --smoke --json /tmp/quality.json
    $ .venv/bin/python bench/quality.py --epochs 40 --json /tmp/quality-full.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

import numpy as np  # noqa: E402

from swan_anomaly.contract import ABNORMAL, FAMILY_NAMES, NORMAL, NORMAL_FAMILY  # noqa: E402
from swan_anomaly.quality import PHOTOS, UNSEEN_KINDS  # noqa: E402

#: A set with fewer images than this of either class is flagged ``small``.
SMALL = 10
#: The goals: (key, text, target).
GOALS = (
    ("seen", "seen families: worst family's test AUROC (anomaly_score)", 0.97),
    ("unseen", "unseen kinds: mean AUROC (decision_score)", 0.90),
    ("lofo", "leave-one-family-out: worst unseen-family AUROC", 0.85),
)


def _gelu_tanh(model) -> str:
    """Each exact GELU of ``model`` as its tanh approximation (what cuBLASLt's GEMM epilogue computes)."""
    import torch

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "GELUActivation" or (isinstance(child, torch.nn.GELU) and child.approximate == "none"):
                setattr(parent, name, torch.nn.GELU(approximate="tanh"))
                swapped += 1
    if not swapped:
        raise SystemExit(f"--compare-served gelu-tanh: the served model has no exact GELU to replace ({type(model).__name__})")
    return f"GELU -> tanh approximation in {swapped} layers"


def _float8_emulated(model) -> str:
    """``model``'s linear layers (not the 2-class head) with e4m3 inputs and weights, one dynamic scale per tensor (torchao, emulated)."""
    from swan_anomaly.trainer import use_float8_training

    converted = use_float8_training(model, next(model.parameters()).device, emulate=True)
    return f"FP8 GEMMs (emulated) in {converted} linear layers"


#: ``--compare-served`` variants: name -> function changing the loaded served model in place (returns what it did).
SERVED_VARIANTS = {"gelu-tanh": _gelu_tanh, "float8-emulated": _float8_emulated}
DATASET_ID = "20260101"
RUN_ID = "quality_bench"
SMOKE = {"model": "vit-micro-offline", "epochs": 2, "seconds": 16.0, "every_seconds": 1.0, "anomaly_ratio": 0.75, "generalization": "off"}
DEFAULTS = {
    "model": "vit-tiny-offline",
    "epochs": None,
    "seconds": 120.0,
    "every_seconds": 0.5,
    "anomaly_ratio": 0.5,
    "generalization": "auto",
}
SCORE_BATCH = 64

_STARTED = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"offline preset, hub id or directory (default {DEFAULTS['model']}; --smoke: {SMOKE['model']})")
    parser.add_argument("--epochs", type=int, help="most training epochs (default: the pipeline's, SWAN_EPOCHS or 40; --smoke: 2)")
    parser.add_argument(
        "--photos", type=_names, default=list(PHOTOS), help=f"comma-separated bundled photos, one video each ({','.join(PHOTOS)})"
    )
    parser.add_argument("--seconds", type=float, help="length of each video (default 120; --smoke: 16)")
    parser.add_argument("--every-seconds", type=float, help="frame interval (default 0.5; --smoke: 1.0)")
    parser.add_argument("--families", type=_names, default=list(FAMILY_NAMES), help="comma-separated training families (default: all six)")
    parser.add_argument("--anomaly-ratio", type=float, help="share of abnormal images (default 0.5, the pipeline's; --smoke: 0.75)")
    parser.add_argument("--generalization", choices=["auto", "off"], help="the leave-one-family-out report (default auto; --smoke: off)")
    parser.add_argument("--device", default="auto", help="training device: auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--training-precision",
        choices=["auto", "float8", "float8-emulated"],
        default="auto",
        help="the training job's GEMMs (SWAN_TRAINING_PRECISION): float8 = torchao's FP8 GEMMs on a GPU with them; "
        "float8-emulated = their emulation, on a CPU too",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--keep", type=Path, help="use this folder (empty or new) as SWAN_HOME and keep it")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: for tests, not for figures")
    parser.add_argument(
        "--compare-served",
        choices=list(SERVED_VARIANTS),
        action="append",
        default=[],
        help="score the same images again with the served model changed so (a probe, not a served path), and compare; repeatable",
    )
    parser.add_argument(
        "--compare-cpu-precision",
        choices=["bfloat16", "int8"],
        help="score the same images again with the pyfunc loaded under SWAN_SERVING_CPU_PRECISION=this, and compare",
    )
    return parser


def resolve_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, fill what was not given from --smoke's or the normal defaults, check ranges."""
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs is None:  # the default of the DAG's `epochs` Param
        from swan_anomaly.config import Settings

        args.epochs = Settings.from_env().epochs
    from swan_anomaly.quality import BUNDLED_PHOTOS

    unknown = [p for p in args.photos if p not in BUNDLED_PHOTOS]
    if unknown or not args.photos:
        parser.error(f"--photos: unknown {unknown}; bundled photos: {sorted(BUNDLED_PHOTOS)}")
    if len(set(args.photos)) != len(args.photos):
        parser.error("--photos: each photo once")
    if args.compare_cpu_precision or args.compare_served:
        import torch

        if torch.cuda.is_available():  # there the served model is bfloat16 with GELU's tanh approximation already
            parser.error(
                "--compare-cpu-precision and --compare-served compare with the float32 model served on CPU; "
                "the pyfunc serves on the GPU here"
            )
    bad = [f for f in args.families if f not in FAMILY_NAMES]
    if bad or not args.families or len(set(args.families)) != len(args.families):
        parser.error(f"--families: distinct names from {list(FAMILY_NAMES)}, got {args.families}")
    if args.epochs < 1 or args.seconds <= 0 or args.every_seconds <= 0 or not 0 < args.anomaly_ratio < 1:
        parser.error("--epochs must be at least 1, --seconds and --every-seconds above 0, --anomaly-ratio in (0, 1)")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: the folder must be empty or new (results of another run would mix in)")
    return args


def use_home(home: Path) -> None:
    """Point every setting of the pipeline at ``home`` (lake, staging, MLflow on SQLite), whatever the environment said."""
    for name in ("SWAN_LAKE_ROOT", "SWAN_STAGING_DIR", "SWAN_LANDING_DIR", "SWAN_INBOX_DIR", "SWAN_MLFLOW_ARTIFACTS", "SWAN_LAKE_BACKEND"):
        os.environ.pop(name, None)
    os.environ["SWAN_HOME"] = str(home)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = uri
    (home / "mlflow").mkdir(parents=True, exist_ok=True)


def build_dataset(args: argparse.Namespace, settings) -> dict:
    """Videos -> frames -> anomalies -> labels -> the raw lake partition, as the DAG's data steps do."""
    from swan_anomaly.anomalies import stable_seed, synthesize_dataset
    from swan_anomaly.labels import build_manifest, write_manifest
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.quality import render_photo_footage
    from swan_anomaly.video import extract_frames

    landing = settings.landing_dir / f"{DATASET_ID[:4]}-{DATASET_ID[4:6]}-{DATASET_ID[6:]}"
    staging = settings.staging_dir / DATASET_ID / RUN_ID
    frames: list[dict] = []
    for photo in args.photos:
        video = render_photo_footage(
            landing / f"{photo}.mp4", photo, seconds=args.seconds, seed=stable_seed(args.seed, "footage", photo) % 2**32
        )
        records = extract_frames(video, staging / "frames", every_seconds=args.every_seconds)
        frames += [r.to_dict() for r in records]
        progress(f"rendered {photo}: {args.seconds:g} s -> {len(records)} frames")
    anomalies = synthesize_dataset(frames, staging, anomaly_ratio=args.anomaly_ratio, seed=args.seed, families=args.families)
    table = build_manifest(frames, anomalies, staging)
    write_manifest(table, staging / "labels.csv")
    LocalLake(settings.lake_root).put_dataset(staging, DATASET_ID)
    counts = table.label.value_counts().to_dict()
    progress(f"dataset {DATASET_ID}: {int(counts.get(NORMAL, 0))} normal, {int(counts.get(ABNORMAL, 0))} abnormal images in the lake")
    return {
        "videos": len(args.photos),
        "frames": len(frames),
        "anomalies": len(anomalies),
        "groups": int(table.group.nunique()),
        "families": {str(k): int(v) for k, v in table[table.label == ABNORMAL].family.value_counts().sort_index().items()},
    }


def run_spark_jobs(args: argparse.Namespace, settings) -> dict:
    """The ETL and augmentation jobs on one local Spark session."""
    from swan_anomaly.augment import run_augmentation
    from swan_anomaly.etl import run_etl
    from swan_anomaly.modeling import preprocess_spec, resolve_base_model
    from swan_anomaly.spark import build_spark

    size = preprocess_spec(resolve_base_model(args.model, settings.models_dir, seed=args.seed)).size
    spark = build_spark("swan-quality-bench")
    try:
        etl = run_etl(lake_root=settings.lake_root, dataset_id=DATASET_ID, image_size=size, spark=spark)
        progress(f"etl: {etl.get('silver_rows', '?')} silver rows at {size} px, {len(etl.get('quarantined', []))} quarantined")
        augment = run_augmentation(lake_root=settings.lake_root, dataset_id=DATASET_ID, seed=args.seed, spark=spark)
        progress(f"augmentation: {augment.get('gold_rows', '?')} gold rows {augment.get('rows_by_split_label', '')}")
    finally:
        spark.stop()
    keep = {
        "etl": ("silver_rows", "rows_by_label", "image_size", "quarantined"),
        "augment": ("gold_rows", "rows_by_split_label", "augmentations"),
    }
    return {name: {k: report[k] for k in keep[name] if k in report} for name, report in (("etl", etl), ("augment", augment))}


class Scorer:
    """The logged pyfunc, loaded once: every score column it returns, plus the decision score."""

    def __init__(self, model_uri: str, threshold: float, *, variant: str | None = None) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(model_uri)
        if variant:  # a probe of this benchmark, not a served path: the loaded model, changed in place
            changed = SERVED_VARIANTS[variant](self.model.unwrap_python_model().model)
            progress(f"served model changed for --compare-served {variant}: {changed}")
        self.threshold = threshold
        self.anomaly_scores: list[np.ndarray] = []  # every call's anomaly_score, in call order
        self.novelty_scores: list[np.ndarray] = []  # and novelty_score (empty for a model without a novelty bank)

    def __call__(self, images: list[bytes]) -> dict[str, np.ndarray]:
        import pandas as pd

        from swan_anomaly.metrics import decision_score

        parts: dict[str, list[np.ndarray]] = {"anomaly_score": [], "novelty_score": []}
        for start in range(0, len(images), SCORE_BATCH):
            out = self.model.predict(pd.DataFrame({"image": images[start : start + SCORE_BATCH]}))
            parts["anomaly_score"].append(out["anomaly_score"].to_numpy(dtype=np.float64))
            if "novelty_score" in out.columns:
                parts["novelty_score"].append(out["novelty_score"].to_numpy(dtype=np.float64))
        cols = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items() if p or name == "anomaly_score"}
        cols["decision_score"] = decision_score(cols["anomaly_score"], cols.get("novelty_score"), threshold=self.threshold)
        self.anomaly_scores.append(cols["anomaly_score"])
        if "novelty_score" in cols:
            self.novelty_scores.append(cols["novelty_score"])
        return cols

    @property
    def boundaries(self) -> dict[str, float]:
        """Where each column calls an image abnormal (score at or above it)."""
        return {"anomaly_score": self.threshold, "novelty_score": 1.0, "decision_score": 1.0}


def measure(abnormal: dict[str, np.ndarray], normal: dict[str, np.ndarray], boundaries: dict[str, float], *, seed: int) -> dict:
    """AUROC, its bootstrap interval and recall at the column's boundary for each score column; the class counts.

    Each column is :func:`swan_anomaly.metrics.evaluation_report` at its boundary (None without both classes).
    """
    from swan_anomaly.metrics import evaluation_report

    n_abnormal, n_normal = len(abnormal["anomaly_score"]), len(normal["anomaly_score"])
    labels = np.array([ABNORMAL] * n_abnormal + [NORMAL] * n_normal)
    scores = {}
    for col in abnormal:
        if n_abnormal and n_normal:
            report = evaluation_report(labels, np.concatenate([abnormal[col], normal[col]]), threshold=boundaries[col], seed=seed)
            scores[col] = {k: report[k] for k in ("auroc", "auroc_ci", "recall")}
        else:
            scores[col] = {
                "auroc": None,
                "auroc_ci": None,
                "recall": float((abnormal[col] >= boundaries[col]).mean()) if n_abnormal else None,
            }
    return {"abnormal": n_abnormal, "normal": n_normal, "small": min(n_abnormal, n_normal) < SMALL, "scores": scores}


def score_test_split(args: argparse.Namespace, settings, result: dict, *, variant: str | None = None) -> dict:
    """Seen families and unseen kinds on the test split, from the raw lake, with the logged pyfunc.

    ``all_anomaly_scores`` is every anomaly score it computed, in order (the same order for the same result).
    """
    from swan_anomaly.anomalies import stable_seed
    from swan_anomaly.images import decode_image, encode_png
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.scoring import score_rows

    lake = LocalLake(settings.lake_root)
    scorer = Scorer(result["model_uri"], float(result["threshold"]), variant=variant)
    rows = result["held_out"]["test"]
    extra: list[dict[str, np.ndarray]] = []

    def anomaly_only(images: list[bytes]) -> np.ndarray:  # score_rows checks each image's sha256 against the training's
        cols = scorer(images)
        extra.append(cols)
        return cols["anomaly_score"]

    score_rows(lake, rows, {"model": anomaly_only})  # the training refuses a test split without both classes: never empty
    test = {col: np.concatenate([e[col] for e in extra]) for col in extra[0]}
    labels = np.array([int(r[2]) for r in rows])
    families = np.array([str(r[3]) for r in rows])
    normal = {col: v[labels == NORMAL] for col, v in test.items()}
    progress(f"scored the test split: {int((labels == ABNORMAL).sum())} abnormal, {int((labels == NORMAL).sum())} normal images")
    seen = {}
    for family in args.families:
        pick = (labels == ABNORMAL) & (families == family)
        seen[family] = measure({col: v[pick] for col, v in test.items()}, normal, scorer.boundaries, seed=args.seed)
    every = measure({col: v[labels == ABNORMAL] for col, v in test.items()}, normal, scorer.boundaries, seed=args.seed)

    normal_rows = [r for r in rows if int(r[2]) == NORMAL and str(r[3]) == NORMAL_FAMILY]
    originals = [decode_image(lake.read_raw(r[0], r[1]), name=r[1]) for r in normal_rows]
    unseen = {}
    for kind, fn in UNSEEN_KINDS.items():
        images = [
            encode_png(fn(image, np.random.default_rng(stable_seed(args.seed, "unseen", kind, r[0], r[1])))[0])
            for image, r in zip(originals, normal_rows)
        ]
        unseen[kind] = measure(scorer(images), normal, scorer.boundaries, seed=args.seed)
        progress(f"scored unseen kind {kind} on {len(images)} normal test frames")
    false_alarms = {
        col: float((normal[col] >= b).mean()) if len(normal[col]) else None for col, b in scorer.boundaries.items() if col in normal
    }
    # the same boundaries on the validation normals they were fitted on: how far they carry to other stretches of footage
    val_rows = [r for r in result["held_out"]["val"] if int(r[2]) == NORMAL]
    val = scorer([lake.read_raw(r[0], r[1]) for r in val_rows]) if val_rows else {}
    val_false_alarms = {col: float((val[col] >= b).mean()) for col, b in scorer.boundaries.items() if col in val}
    return {
        "score_columns": list(test),
        "novelty_score_present": "novelty_score" in test,
        "boundaries": {col: b for col, b in scorer.boundaries.items() if col in test},
        "normal_false_alarm_rate": false_alarms,
        "val_normal_false_alarm_rate": val_false_alarms,
        "seen_all": every,
        "seen": seen,
        "unseen": unseen,
        "all_anomaly_scores": np.concatenate(scorer.anomaly_scores),
        "all_novelty_scores": np.concatenate(scorer.novelty_scores) if scorer.novelty_scores else None,
    }


def compare_precision(args: argparse.Namespace, settings, result: dict, reference: dict) -> dict:
    """Score everything ``score_test_split`` scored again, with the pyfunc loaded under ``SWAN_SERVING_CPU_PRECISION``;
    :func:`compare_scores` against ``reference`` (the float32 scores)."""
    before = os.environ.get("SWAN_SERVING_CPU_PRECISION")
    os.environ["SWAN_SERVING_CPU_PRECISION"] = args.compare_cpu_precision
    try:
        other = score_test_split(args, settings, result)
    finally:
        if before is None:
            os.environ.pop("SWAN_SERVING_CPU_PRECISION", None)
        else:
            os.environ["SWAN_SERVING_CPU_PRECISION"] = before
    return {"precision": args.compare_cpu_precision} | compare_scores(result, reference, other, label=args.compare_cpu_precision)


def compare_served(args: argparse.Namespace, settings, result: dict, reference: dict, variant: str) -> dict:
    """Score everything again with the served model changed as ``--compare-served variant`` says (:data:`SERVED_VARIANTS`);
    :func:`compare_scores` against ``reference`` (the model as served)."""
    other = score_test_split(args, settings, result, variant=variant)
    return compare_scores(result, reference, other, label=variant)


def compare_scores(result: dict, reference: dict, other: dict, *, label: str) -> dict:
    """The largest and mean ``anomaly_score`` difference of ``other`` from ``reference`` (two ``score_test_split`` results
    over the same images), how many images change side of the threshold, and each AUROC both ways; for the
    ``novelty_score``, its largest difference relative to ``max(1, |reference|)`` (what the endpoint validation's parity
    check holds to its tolerance) and how many images change side of its boundary, 1."""
    a, b = reference["all_anomaly_scores"], other["all_anomaly_scores"]
    novelty = {}
    if reference.get("all_novelty_scores") is not None and other.get("all_novelty_scores") is not None:
        na, nb = reference["all_novelty_scores"], other["all_novelty_scores"]
        relative = np.abs(na - nb) / np.maximum(1.0, np.abs(na))
        novelty = {
            "novelty_max_relative_difference": float(relative.max()),
            "novelty_mean_relative_difference": float(relative.mean()),
            "novelty_boundary_flips": int(((na >= 1.0) != (nb >= 1.0)).sum()),
        }
    threshold = float(result["threshold"])
    rows = (
        {"(all seen families)": ("seen_all", None)}
        | {f: ("seen", f) for f in reference["seen"]}
        | {k: ("unseen", k) for k in reference["unseen"]}
    )
    auroc = {}
    for name, (group, key) in rows.items():
        ref = reference[group] if key is None else reference[group][key]
        new = other[group] if key is None else other[group][key]
        auroc[name] = {
            col: (ref["scores"][col]["auroc"], new["scores"][col]["auroc"])
            for col in ("anomaly_score", "novelty_score", "decision_score")
            if col in ref["scores"] and col in new["scores"]
        }
    return {
        "label": label,
        "images": len(a),
        "max_abs_score_difference": float(np.abs(a - b).max()),
        "mean_abs_score_difference": float(np.abs(a - b).mean()),
        "threshold_flips": int(((a >= threshold) != (b >= threshold)).sum()),
        **novelty,
        "auroc": auroc,
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known and len(known) == len(values) else None


def goals(scores: dict, result: dict) -> list[dict]:
    """The three goal lines: value, target, PASS / FAIL (n/a without a value)."""
    seen = [s["scores"]["anomaly_score"]["auroc"] for s in scores["seen"].values()]
    unseen = [s["scores"]["decision_score"]["auroc"] for s in scores["unseen"].values()]
    values = {
        "seen": min(seen) if seen and None not in seen else None,
        "unseen": _mean(unseen),
        "lofo": result.get("generalization_min_unseen_auroc"),
    }
    out = []
    for key, text, target in GOALS:
        value = values[key]
        status = "n/a" if value is None else "PASS" if value >= target else "FAIL"
        out.append({"goal": key, "text": text, "value": value, "target": target, "status": status})
    return out


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt(score: dict) -> str:
    from swan_anomaly.metrics import format_interval

    if score["auroc"] is None:
        return f"{'n/a':<24}"
    return f"{score['auroc']:.4f} [{format_interval(score['auroc_ci'])}]".ljust(24)


def report(args: argparse.Namespace, figures: dict) -> None:
    """The results as text on stdout."""
    from swan_anomaly.generalization import format_table

    import pandas as pd

    m, t, s = figures["machine"], figures["training"], figures["scores"]
    print(f"quality benchmark: {figures['command']}")
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, python {m['python']}, torch {m['torch']}, device {m['device']}")
    d = figures["data"]
    print(
        f"data: {d['videos']} videos ({', '.join(args.photos)}; {args.seconds:g} s, a frame every {args.every_seconds:g} s), "
        f"{d['frames']} frames, {d['anomalies']} anomalies of {len(args.families)} families, {d['groups']} split groups; "
        f"images train/val/test {t['images']}"
    )
    print(
        f"model: {t['model']}, training precision {args.training_precision}, {t['epochs_run']} epochs run (best {t['best_epoch']}), "
        f"threshold {t['threshold']:.4f}; val AUROC {t['val_auroc']:.4f}, test AUROC {t['test_auroc']:.4f}"
    )
    cols = s["score_columns"]
    if not s["novelty_score_present"]:
        print("(the pyfunc returns no novelty_score column: decision_score = anomaly_score / threshold)")
    short = {"anomaly_score": "anomaly", "novelty_score": "novelty", "decision_score": "decision"}
    header = (
        f"{'':<22} {'abn':>4} {'norm':>4}  "
        + "  ".join(f"{c + ' AUROC [95% CI]':<24}" for c in cols)
        + "  recall "
        + "/".join(short.get(c, c) for c in cols)
    )

    def line(name: str, r: dict) -> str:
        recall = "/".join("n/a" if r["scores"][c]["recall"] is None else f"{r['scores'][c]['recall']:.2f}" for c in cols)
        flag = "  small" if r["small"] else ""
        return f"{name:<22} {r['abnormal']:>4} {r['normal']:>4}  " + "  ".join(_fmt(r["scores"][c]) for c in cols) + f"  {recall}{flag}"

    print("\nseen families (test split: each family's anomalies against every normal test frame)")
    print(header)
    for name, r in s["seen"].items():
        print(line(name, r))
    print(line("(all seen families)", s["seen_all"]))
    print("\nunseen kinds (never trained on; each applied to every normal test frame, against those frames)")
    print(header)
    for name, r in s["unseen"].items():
        print(line(name, r))
    alarms = ", ".join(f"{short.get(c, c)} {v:.3f}" for c, v in s["normal_false_alarm_rate"].items() if v is not None)
    bounds = ", ".join(f"{short.get(c, c)} >= {b:.4g}" for c, b in s["boundaries"].items())
    val_alarms = ", ".join(f"{short.get(c, c)} {v:.3f}" for c, v in s.get("val_normal_false_alarm_rate", {}).items())
    print(
        f"recall: share of the abnormal images at or above the column's boundary ({bounds}); normal test frames called abnormal: {alarms}"
    )
    print(f"normal validation frames called abnormal (the boundaries were fitted on them): {val_alarms or 'n/a'}")
    print("\nleave-one-family-out (from the training run)")
    print(
        format_table(pd.DataFrame(figures["lofo"]["table"]))
        if figures["lofo"]["table"]
        else "(not run: --generalization off or fewer than two families)"
    )
    worst = figures["lofo"]["worst_unseen_auroc"]
    print(f"worst unseen-family AUROC: {'n/a' if worst is None else f'{worst:.4f}'}")
    comparisons = [("CPU serving in {}", "float32", figures.get("cpu_precision_comparison"))]
    comparisons += [("the served model changed: {}", "the model as served", c) for c in figures.get("served_comparisons", {}).values()]
    for what, against, c in comparisons:
        if not c:
            continue
        print(
            f"\n{what.format(c['label'])} against {against}, the same {c['images']} images: anomaly_score differs "
            f"by at most {c['max_abs_score_difference']:.2e} (mean {c['mean_abs_score_difference']:.2e}); "
            f"{c['threshold_flips']} change side of the threshold"
        )
        if "novelty_max_relative_difference" in c:
            print(
                f"novelty_score differs by at most {c['novelty_max_relative_difference']:.2e} relative to max(1, |score|) "
                f"(mean {c['novelty_mean_relative_difference']:.2e}); {c['novelty_boundary_flips']} change side of its boundary, 1"
            )
        columns = [("anomaly", "anomaly_score"), ("novelty", "novelty_score"), ("decision", "decision_score")]
        columns = [(short, col) for short, col in columns if all(col in cols for cols in c["auroc"].values())]
        print(f"{'':<22}" + "".join(f" {short + ' AUROC before':>21} {c['label']:>13}" for short, _ in columns))
        for name, cols in c["auroc"].items():
            print(f"{name:<22}" + "".join(f" {_num(cols[col][0]):>21} {_num(cols[col][1]):>13}" for _, col in columns))
    print("\ngoals")
    for g in figures["goals"]:
        value = "n/a" if g["value"] is None else f"{g['value']:.4f}"
        print(f"  {g['status']:<4}  {g['text']}: {value} (target >= {g['target']})")
    small = [n for n, r in [*s["seen"].items(), *s["unseen"].items()] if r["small"]]
    if small:
        print(f"  small sets (fewer than {SMALL} images of a class; wide intervals): {', '.join(small)}")
    print(f"\nwall time {figures['wall_s']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in figures["stage_s"].items()) + ")")


def machine(device: str) -> dict:
    import torch

    from swan_anomaly.modeling import resolve_device

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(resolve_device(device)),
    }


def run(args: argparse.Namespace, home: Path, command: str) -> dict:
    from swan_anomaly.config import Settings
    from swan_anomaly.trainer import TrainConfig
    from swan_anomaly.training import run_training

    use_home(home)
    settings = Settings.from_env()
    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        stages[name] = round(now - mark, 2)
        mark = now

    progress(f"SWAN_HOME {home}; {len(args.photos)} videos, model {args.model}, {args.epochs} epochs")
    data = build_dataset(args, settings)
    stage("data")
    jobs = run_spark_jobs(args, settings)
    stage("spark")
    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        seed=args.seed,
        generalization=args.generalization,
        device=args.device,
        precision=args.training_precision,
    )
    progress(
        f"training {args.model} (at most {args.epochs} epochs, leave-one-family-out {args.generalization}, "
        f"precision {args.training_precision})"
    )
    result = run_training(lake_root=settings.lake_root, dataset_id=DATASET_ID, run_id=RUN_ID, config=config, settings=settings)
    stage("training")
    progress(f"trained: {result['epochs_run']} epochs, threshold {result['threshold']:.4f}; scoring with {result['model_uri']}")
    if args.compare_cpu_precision or args.compare_served:
        os.environ["SWAN_SERVING_CPU_PRECISION"] = "float32"  # the reference of the comparison, whatever the environment said
    scores = score_test_split(args, settings, result)
    stage("scoring")
    precision = compare_precision(args, settings, result, scores) if args.compare_cpu_precision else None
    if precision:
        stage("scoring_" + args.compare_cpu_precision)
    served = {}
    for variant in dict.fromkeys(args.compare_served):
        served[variant] = compare_served(args, settings, result, scores, variant)
        stage("scoring_" + variant)
    scores.pop("all_anomaly_scores")
    scores.pop("all_novelty_scores")
    import mlflow

    base = mlflow.get_run(result["mlflow_run_id"]).data.params.get("base_model", args.model)
    figures = {
        "benchmark": "quality",
        "command": command,
        "machine": machine(args.device),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": data,
        "spark": {"etl": jobs["etl"], "augment": jobs["augment"]},
        "training": {
            "model": args.model,
            "base_model": base,
            "mlflow_run_id": result["mlflow_run_id"],
            "model_uri": result["model_uri"],
            "epochs_run": result["epochs_run"],
            "best_epoch": result["best_epoch"],
            "threshold": result["threshold"],
            "images": result["images"],
            "val_auroc": result["val"]["auroc"],
            "test_auroc": result["test"]["auroc"],
            "test_auroc_ci": result["test"].get("auroc_ci"),
        },
        "scores": scores,
        "cpu_precision_comparison": precision,
        "served_comparisons": served,
        "lofo": {"table": result["generalization"], "worst_unseen_auroc": result["generalization_min_unseen_auroc"]},
    }
    figures["goals"] = goals(scores, result)
    figures["stage_s"] = stages
    return figures


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("swan_anomaly").setLevel(logging.INFO)
    parser = build_parser()
    args = resolve_args(parser, argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv])
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        figures = run(args, args.keep.resolve(), command)
    else:
        with tempfile.TemporaryDirectory(prefix="swan-quality-") as tmp:
            figures = run(args, Path(tmp), command)
    figures["wall_s"] = round(time.perf_counter() - _STARTED, 2)
    report(args, figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        progress(f"wrote {args.json}")
    return figures


if __name__ == "__main__":
    main()
