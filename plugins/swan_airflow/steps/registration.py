"""The registration step: register what the training job logged as the ``challenger``.

The jobs themselves (ETL, augmentation, training) run through :class:`swan_airflow.submit_run.SwanJobOperator`.

Example:
    >>> register_model(RunContext.current())   # doctest: +SKIP
    {'name': 'swan_anomaly_vit', 'version': '4', 'aliases': ['challenger'], 'mlflow_run_id': '...', ...}
"""

from __future__ import annotations

from swan_airflow.context import RunContext


def register_model(ctx: RunContext) -> dict:
    """Register the trained pyfunc as a version with alias ``challenger`` (once per training run).

    A cleared ``register_model`` reuses the version of the same training; a cleared
    ``run_training`` trained a new model, which becomes a new version.
    """
    from swan_airflow.runtime import lake, registry_client, settings
    from swan_anomaly.registry import DATA_THROUGH_TAG, DATASET_TAG, register_challenger

    s = settings()
    training = lake().read_result(ctx.run_id, "train")
    v = register_challenger(
        registry_client(),
        s.model_name,
        training["model_uri"],
        training["mlflow_run_id"],
        ctx.run_id,
        tags={
            DATASET_TAG: ctx.dataset_id,
            DATA_THROUGH_TAG: ctx.data_through.isoformat(),
            "anomaly_threshold": repr(float(training["threshold"])),
        },
    )
    return {
        "name": s.model_name,
        "version": str(v.version),
        "aliases": sorted(v.aliases),
        "mlflow_run_id": training["mlflow_run_id"],
        "val": {k: training["val"][k] for k in ("auroc", "f1", "precision", "recall")},
        "unseen_auroc": training.get("generalization_min_unseen_auroc"),
        # how its threshold was chosen: the gate chooses one the same way on half its rows to judge the other half
        "threshold_method": training.get("threshold_method") or {"method": "max_f1", "target_fpr": 0.01},
    }
