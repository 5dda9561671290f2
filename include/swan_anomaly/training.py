"""Training job: fine-tune a ViT on the gold set, log to MLflow, log the served pyfunc.

Trains on a window of gold partitions: the ``window_days`` landing days ending with the run's
dataset, a group that landed twice kept only from its newest partition (:func:`swan_anomaly.lake.load_gold`).

The loop is :mod:`swan_anomaly.trainer`, the MLflow helpers :mod:`swan_anomaly.tracking`, the
leave-one-family-out report :mod:`swan_anomaly.generalization`; this module is the job that
ties them together and returns what ``runs/{run_id}/train.json`` records.

Example:
    >>> result = run_training(lake_root=Path(".swan/lake"), dataset_id="20261126", run_id="manual__x",
    ...                       config=TrainConfig(model="vit-tiny-offline"), settings=Settings.from_env(), window_days=7)  # doctest: +SKIP
    >>> result["val"]["auroc"]                                                                             # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from swan_anomaly._errors import JobError
from swan_anomaly.config import Settings
from swan_anomaly.evaluation import curves_figure, histogram_figure, worst_grid
from swan_anomaly.generalization import COLUMNS as LOFO_COLUMNS
from swan_anomaly.generalization import format_table, leave_one_family_out, min_unseen_auroc
from swan_anomaly.contract import LABEL_NAMES
from swan_anomaly.lake import LocalLake, load_gold
from swan_anomaly.metrics import anomaly_scores, choose_threshold, decision_score, evaluation_report, recall_by_family
from swan_anomaly.splits import Split
from swan_anomaly.tracking import confusion_figure, ensure_experiment, family_grid_of, gold_dataset, log_served_model
from swan_anomaly.trainer import TrainConfig, check_precision, epoch_metrics, evaluate, frame_tensors, train_classifier

log = logging.getLogger(__name__)


def held_out_rows(part: pd.DataFrame, hashes: dict[tuple[str, str], str] | None = None) -> list[list]:
    """The images of a validation or test split as ``[dataset_id, image_path, label, family, sha256, group]`` rows
    (:class:`swan_anomaly.scoring.HeldOutRow`).

    What the gate and the endpoint validation score again, from the raw partition: the very
    rows the model was validated or tested on, after the training window's overlap rule. The
    sha256 lets them check that the raw image is still the one the model was tested on: the
    gold row's ``source_sha256`` (the label manifest's hash when the ETL read the partition),
    else, for gold written before it carried one, ``hashes`` (the manifest now), else None.
    """
    hashes = hashes or {}
    originals = part[part.aug == "none"] if "aug" in part else part
    if "source_sha256" not in originals:
        originals = originals.assign(source_sha256=None)
    columns = ["dataset_id", "image_path", "label", "family", "source_sha256", "group"]
    rows = originals[columns].drop_duplicates(["dataset_id", "image_path"])
    return [
        [str(d), str(p), int(lab), str(f), sha if isinstance(sha, str) and sha else hashes.get((str(d), str(p))), str(g)]
        for d, p, lab, f, sha, g in rows.sort_values(["dataset_id", "image_path"]).itertuples(index=False)
    ]


def raw_image_hashes(lake: LocalLake, dataset_ids: list[str]) -> dict[tuple[str, str], str]:
    """``{(dataset_id, image_path): sha256}`` from the label manifests of the raw partitions that have one."""
    from swan_anomaly.labels import read_manifest

    hashes = {}
    for dataset_id in dataset_ids:
        path = lake.raw(dataset_id) / "labels.csv"
        if path.is_file():
            manifest = read_manifest(path)
            hashes.update({(dataset_id, str(p)): str(h) for p, h in zip(manifest.image_path, manifest.sha256)})
    return hashes


def fit_novelty_bank(model, train_part: pd.DataFrame, train_pixels, val_part: pd.DataFrame, val_features, *, spec, config: TrainConfig):
    """The novelty bank of a trained model: its normal training originals' patches, scaled on held-out normals
    (the validation normals, and each training block's normals scored without that block's patches).

    ``train_pixels`` are the uint8 pixels of ``train_part``'s rows (normalised with ``spec``).
    ``val_features`` are the patch features of every validation row (computed once: the run scores
    the validation split with the bank afterwards). Augmented copies stay out of the bank (they add
    time, not kinds of normal). See :mod:`swan_anomaly.novelty`.
    """
    from swan_anomaly.contract import NORMAL
    from swan_anomaly.modeling import patch_features_of
    from swan_anomaly.novelty import MAX_BANK_IMAGES, default_layers, fit_novelty

    layers = default_layers(model.config.num_hidden_layers)
    is_original = (train_part.aug == "none").to_numpy() if "aug" in train_part else True
    originals = np.flatnonzero((train_part.label == NORMAL).to_numpy() & is_original)
    if len(originals) > MAX_BANK_IMAGES:  # an even, seeded sample bounds memory and the coreset's time
        originals = np.sort(np.random.default_rng(config.seed).choice(originals, MAX_BANK_IMAGES, replace=False))
    normal_val = np.flatnonzero((val_part.label == NORMAL).to_numpy())
    if len(originals) == 0 or len(normal_val) == 0:
        msg = f"the novelty bank needs normal images in train and val; the splits have {len(originals)} and {len(normal_val)}"
        raise JobError(msg)
    train_features = patch_features_of(model, train_pixels[originals], spec, layers, config.batch_size)
    groups = train_part.group.to_numpy()[originals] if "group" in train_part else None
    return fit_novelty(
        train_features, val_features[normal_val], layers=layers, train_groups=groups, target_fpr=config.target_fpr, seed=config.seed
    )


def run_training(
    *,
    lake_root: Path,
    dataset_id: str,
    run_id: str,
    config: TrainConfig,
    settings: Settings,
    tags: dict | None = None,
    window_days: int = 1,
) -> dict:
    """Train on the gold window of ``dataset_id``, log everything to MLflow and return the job result.

    ``window_days`` days of gold partitions ending with ``dataset_id`` are trained on, validated
    and tested on together (:func:`load_gold`; 1: that dataset only). Every partition used is an
    MLflow input of the run and is named in the param and tag ``training_dataset_ids`` and in the
    result's ``dataset_ids``.
    """
    import mlflow
    import torch

    from swan_anomaly.modeling import load_classifier, patch_features_of, preprocess_spec, resolve_base_model, resolve_device
    from swan_anomaly.novelty import default_layers

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    check_precision(config.precision, device)  # before the data: FP8 on a GPU without it, or without torchao, fails at once
    lake = LocalLake(lake_root)
    gold = load_gold(lake, dataset_id, window_days)
    dataset_ids = sorted(gold.dataset_id.unique())
    base = resolve_base_model(config.model, settings.models_dir, seed=config.seed)
    spec = preprocess_spec(base, bias_x=config.bias_x, bias_y=config.bias_y)
    model = load_classifier(base)
    parts = {s: gold[gold.split == s.value] for s in Split}
    for s, part in parts.items():
        if s is not Split.TRAIN and part.label.nunique() < 2:
            msg = (
                f"{s.value} split of datasets {dataset_ids} has labels "
                f"{sorted(part.label.unique())}; it needs both abnormal and normal images"
            )
            raise JobError(msg)
    images = frame_tensors(gold, spec)  # every image decoded once (uint8); the splits and the LOFO report take rows of it
    train, val, test = (
        tuple(t[parts[s].index.to_numpy()] for t in images) for s in (Split.TRAIN, Split.VAL, Split.TEST)
    )  # gold's index is 0..n-1
    if config.generalization == "off":
        images = None  # only the leave-one-family-out report needs every row again
    log.info(
        "training %s on %d images (val %d, test %d) of datasets %s, input %dpx, on %s",
        config.model,
        len(train[0]),
        len(val[0]),
        len(test[0]),
        ",".join(dataset_ids),
        spec.size,
        device,
    )

    experiment_id = ensure_experiment(settings)
    run_tags = {"airflow_run_id": run_id, "dataset_id": dataset_id, "training_dataset_ids": ",".join(dataset_ids), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{dataset_id}", tags=run_tags) as run:
        mlflow.log_params(
            {
                **asdict(config),
                "base_model": base,
                "image_size": spec.size,
                "train_images": len(train[0]),
                "dataset_id": dataset_id,
                "device_used": str(device),
                "window_days": window_days,
                "training_dataset_ids": ",".join(dataset_ids),
            }
        )
        for used in dataset_ids:  # one input per partition, its digest over the rows that trained
            mlflow.log_input(gold_dataset(lake, used, gold[gold.dataset_id == used]), context="training")
        model, history, best_epoch = train_classifier(
            model,
            train,
            val,
            spec,
            config,
            on_epoch=lambda r: mlflow.log_metrics(epoch_metrics(r), step=r.epoch),
        )
        model.to(device)  # evaluate where it trained; back to the CPU below, before saving
        scored = {}
        for name, (x, y) in (("val", val), ("test", test)):
            loss, logits = evaluate(model, x, y, spec, config.batch_size)
            scored[name] = (y.numpy(), anomaly_scores(logits), loss)
        layers = default_layers(model.config.num_hidden_layers)  # patch features of val and test, once: the bank's fit and scores
        features = {name: patch_features_of(model, x, spec, layers, config.batch_size) for name, x in (("val", val[0]), ("test", test[0]))}
        novelty = fit_novelty_bank(model, parts[Split.TRAIN], train[0], parts[Split.VAL], features["val"], spec=spec, config=config)
        novel = {name: novelty.scores(f) for name, f in features.items()}
        model.to("cpu")
        threshold = choose_threshold(scored["val"][0], scored["val"][1], method=config.threshold_method, target_fpr=config.target_fpr)
        results = {}
        for name, (labels, scores, loss) in scored.items():
            part = parts[Split.VAL if name == "val" else Split.TEST]
            groups = part.group.to_numpy()  # the AUROC intervals resample whole groups (near-duplicate frames of one time block)
            metrics = evaluation_report(labels, scores, threshold=threshold, seed=config.seed, groups=groups)  # interval, class counts
            metrics["recall_by_family"] = recall_by_family(labels, scores, part.family.to_numpy(), threshold=threshold)
            results[name] = {**metrics, "loss": loss}
            for kind, values in (("novelty", novel[name]), ("decision", decision_score(scores, novel[name], threshold=threshold))):
                # both are 1 at their decision boundary (swan_anomaly.novelty, metrics.decision_score)
                extra = evaluation_report(labels, values, threshold=1.0, seed=config.seed, groups=groups)
                keys = ("auroc", "auroc_ci", "average_precision", "precision", "recall", "f1", "false_alarm_rate")
                results[name][kind] = {k: extra[k] for k in keys}
                ci = dict(zip((f"{name}_{kind}_auroc_ci_low", f"{name}_{kind}_auroc_ci_high"), extra["auroc_ci"] or ()))
                logged = {f"{name}_{kind}_{k}": extra[k] for k in ("auroc", "recall", "false_alarm_rate")}
                mlflow.log_metrics(logged | ci)
            interval = dict(zip((f"{name}_auroc_ci_low", f"{name}_auroc_ci_high"), metrics["auroc_ci"])) if metrics["auroc_ci"] else {}
            mlflow.log_metrics({f"{name}_{k}": v for k, v in metrics.items() if isinstance(v, float)} | {f"{name}_loss": loss} | interval)
            mlflow.log_metrics({f"{name}_recall_{family}": r for family, r in metrics["recall_by_family"].items()})
            mlflow.log_figure(
                confusion_figure(metrics["confusion_matrix"], f"{name} (anomaly = positive)"), f"plots/confusion_matrix_{name}.png"
            )
            mlflow.log_figure(curves_figure(labels, scores, title=name), f"plots/roc_pr_{name}.png")
            mlflow.log_figure(histogram_figure(labels, scores, threshold=threshold, title=name), f"plots/score_histogram_{name}.png")
            mlflow.log_image(
                worst_grid(list(part.content.map(bytes)), labels, scores, list(part.sample_id)), f"plots/worst_scored_{name}.png"
            )
        mlflow.log_metric("threshold", threshold)
        generalization = pd.DataFrame(columns=list(LOFO_COLUMNS))
        if config.generalization != "off":
            lofo_config = replace(config, epochs=min(config.epochs, config.lofo_epochs))
            generalization = leave_one_family_out(gold, base, spec, lofo_config, images=images)
            if not generalization.empty:
                mlflow.log_table(generalization, "generalization/leave_one_family_out.json")
                if (worst := min_unseen_auroc(generalization)) is not None:  # None: no family had enough test images to measure
                    mlflow.log_metric("lofo_min_unseen_auroc", worst)
                log.info("leave-one-family-out report:\n%s", format_table(generalization))
        mlflow.log_metric("best_epoch", best_epoch)
        grid = family_grid_of(lake, dataset_id, seed=config.seed)
        if grid is not None:
            mlflow.log_image(grid, "plots/anomaly_families.png")
        mlflow.log_dict(
            {"history": [asdict(h) for h in history], "best_epoch": best_epoch, "threshold": threshold, **results}, "metrics/summary.json"
        )

        example = list(gold[gold.split == Split.TEST.value].content.iloc[:1].map(bytes))
        info = log_served_model(
            model, spec, threshold=threshold, threshold_method=config.threshold_method, example=example, novelty=novelty
        )
    # gold written before it carried source_sha256: what its raw partition's manifest says now
    unhashed = dataset_ids if "source_sha256" not in gold else sorted(set(gold.dataset_id[gold.source_sha256.isna()]))
    hashes = raw_image_hashes(lake, unhashed)
    result = {
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment_id": experiment_id,
        "model_uri": info.model_uri,
        "run_model_uri": f"runs:/{run.info.run_id}/model",
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "threshold": threshold,
        "threshold_method": {"method": config.threshold_method, "target_fpr": config.target_fpr},
        "generalization": generalization.to_dict("records"),
        "generalization_min_unseen_auroc": min_unseen_auroc(generalization),
        "val": results["val"],
        "test": results["test"],
        "images": {s.value: int(len(p)) for s, p in parts.items()},
        "held_out": {name: held_out_rows(parts[split], hashes) for name, split in (("val", Split.VAL), ("test", Split.TEST))},
        "dataset_ids": dataset_ids,
        "window_days": window_days,
        "labels": {str(label): name for label, name in LABEL_NAMES.items()},
        "config": asdict(config),
    }
    log.info(
        "trained: best epoch %d, threshold %.4f (%s on val), val AUROC %.4f F1 %.4f, test "
        "AUROC %.4f AP %.4f F1 %.4f, test recall by family %s",
        best_epoch,
        threshold,
        config.threshold_method,
        results["val"]["auroc"],
        results["val"]["f1"],
        results["test"]["auroc"],
        results["test"]["average_precision"],
        results["test"]["f1"],
        results["test"]["recall_by_family"],
    )
    log.info(
        "novelty score: test AUROC %.4f alone, %.4f with the classifier (decision recall %.4f: novelty >= 1 or score >= threshold)",
        results["test"]["novelty"]["auroc"],
        results["test"]["decision"]["auroc"],
        results["test"]["decision"]["recall"],
    )
    log.info(
        "test normals called abnormal: %.1f %% by the classifier, %.1f %% by the novelty score, %.1f %% by the decision",
        *(100.0 * r["false_alarm_rate"] for r in (results["test"], results["test"]["novelty"], results["test"]["decision"])),
    )
    return result
