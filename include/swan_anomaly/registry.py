"""MLflow model registry: register a challenger once per Airflow run, promote by alias.

Aliases: a new version gets ``challenger``; promotion moves ``champion`` to it and records
the previous champion in the ``previous_champion`` alias for rollback (only a :data:`RESTORABLE`
one: it passed its endpoint validation, or served with parity unmeasured while none that passed
holds the alias). Every function is
idempotent: registering the same training again (a cleared ``register_model``) finds the
version whose source run is that training's MLflow run instead of creating a duplicate, while
a retrained model (a cleared ``run_training``: a new MLflow run) always becomes a new version,
so the weights the gate judged are the weights that get promoted.

Example:
    >>> client = MlflowClient(tracking_uri)                                           # doctest: +SKIP
    >>> v = register_challenger(client, "swan_anomaly_vit", "models:/m-1", "run-1", "manual__x")  # doctest: +SKIP
    >>> promote(client, "swan_anomaly_vit", v.version)                                # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous_champion"
#: A model version's status (``ModelVersionStatus``): only a ready one has its files; one still pending may never get them.
READY, PENDING = "READY", "PENDING_REGISTRATION"
#: How long a retried registration waits for a version of its training run that is still being registered (seconds):
#: MLflow's own wait for a new version (``DEFAULT_AWAIT_MAX_SLEEP_SECONDS``).
PENDING_WAIT_S = 300.0
#: The model-version tag that records the endpoint validation: ``passed: ...``, ``failed: ...``, ``incomplete: ...`` or
#: ``unmeasured: ...`` (see :func:`verdict`).
ENDPOINT_VALIDATION = "endpoint_validation"
#: The verdicts of :data:`ENDPOINT_VALIDATION`.
PASSED, FAILED, INCOMPLETE, UNMEASURED = "passed", "failed", "incomplete", "unmeasured"
#: The verdicts of a version a failed one may go back to, best first: one that passed, else one served with parity on a
#: test split too small to measure (it passed the gate, and served what the registry holds).
RESTORABLE = (PASSED, UNMEASURED)
#: The model-version tag naming the dataset partition a version was trained up to (set at registration).
DATASET_TAG = "dataset_id"
#: The model-version tag with the newest day of data a version was trained on (ISO date, set at registration).
DATA_THROUGH_TAG = "data_through"
#: The model-version tag naming, per gated metric, the version the gate also holds a challenger to once this version
#: is champion: JSON ``{"auroc": "3", "f1": "5"}``, the best of its line in that metric. See swan_anomaly.gate.
GATE_REFERENCE_TAG = "gate_reference"


def mlflow_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """A client for the tracking server and registry; also sets them process-wide.

    MLflow 3 resolves ``models:/m-...`` (logged model) URIs through the global tracking URI
    while registering, so the client and the process must agree.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    return MlflowClient(tracking_uri, registry_uri or tracking_uri)


def find_version_for_run(
    client: MlflowClient, name: str, mlflow_run_id: str, *, pending_wait_s: float = PENDING_WAIT_S, poll_s: float = 5.0
) -> ModelVersion | None:
    """The ready version of ``name`` registered from the training run ``mlflow_run_id``, if any.

    Only the source run identifies a model's weights: an Airflow run that trains twice (its
    ``run_training`` cleared) has two MLflow runs and two versions, and the version of the
    second must never be mistaken for the first. ``run_id = '...'`` is also the one filter
    that Unity Catalog's version search supports.

    Only a ``READY`` version counts. Unity Catalog creates a version, uploads its files and then
    finalizes it, so an attempt lost during the upload leaves a version ``PENDING_REGISTRATION``
    (or ``FAILED_REGISTRATION``) with no files to load. A pending one is waited for up to
    ``pending_wait_s`` (its upload may still be under way), then passed over with a warning.
    """
    versions = client.search_model_versions(f"run_id = '{mlflow_run_id}'")
    same_run = [v for v in versions if v.name.casefold() == name.casefold() and v.run_id == mlflow_run_id]  # UC: lower case
    deadline = time.monotonic() + pending_wait_s
    for v in sorted(same_run, key=lambda v: int(v.version)):
        while v.status == PENDING and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            v = client.get_model_version(v.name, str(v.version))
        if v.status == READY:
            return v
        log.warning(
            "version %s of %s from training run %s is %s, not %s: its registration never finished (no model files to load); "
            "registering the run's model again. Delete that version once nothing is uploading to it",
            v.version,
            name,
            mlflow_run_id,
            v.status,
            READY,
        )
    return None


def register_challenger(
    client: MlflowClient,
    name: str,
    model_uri: str,
    mlflow_run_id: str,
    airflow_run_id: str,
    tags: dict | None = None,
    *,
    pending_wait_s: float = PENDING_WAIT_S,
    poll_s: float = 5.0,
) -> ModelVersion:
    """Register ``model_uri`` as a new version with alias ``challenger`` (once per training run).

    Args:
        mlflow_run_id: the training's MLflow run; a ready version registered from it is reused
            (:func:`find_version_for_run`, which waits ``pending_wait_s`` for one still registering).
        airflow_run_id: stored as the version's ``airflow_run_id`` tag (lineage only).
    """
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Swan scene anomaly scorer (ViT). 0 = abnormal, 1 = normal; anomaly_score = softmax(logits)[0]."
        )
    existing = find_version_for_run(client, name, mlflow_run_id, pending_wait_s=pending_wait_s, poll_s=poll_s)
    if existing is not None:
        log.info("reusing version %s of %s registered from training run %s", existing.version, name, mlflow_run_id)
        version = existing
    else:
        version = client.create_model_version(
            name,
            model_uri,
            run_id=mlflow_run_id,
            tags={"airflow_run_id": airflow_run_id, **(tags or {})},
            model_id=logged_model_id(model_uri),  # a tracking server refuses a models:/<id> source without it
        )
        log.info("registered %s version %s from %s", name, version.version, model_uri)
    client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    return client.get_model_version(name, str(version.version))


def logged_model_id(model_uri: str) -> str | None:
    """The logged model's id in an MLflow 3 model URI (``models:/<model_id>``), as ``mlflow.register_model`` reads it.

    A tracking server (REST) refuses to register such a source unless the id comes with it; a
    registered version's URI (``models:/<name>/<version>``) or any other URI has none.

    Example:
        >>> logged_model_id("models:/m-42502967692b4e6e"), logged_model_id("models:/swan/3"), logged_model_id("models:/swan@champion")
        ('m-42502967692b4e6e', None, None)
    """
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest and "/" not in rest and "@" not in rest else None


def get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(client: MlflowClient, name: str, version: str) -> bool:
    """Move ``champion`` to ``version``; keep the old champion as ``previous_champion`` if it is :data:`RESTORABLE` (see below).

    ``previous_champion`` is what a failed validation rolls back to, so it only ever names a version
    that served and is :data:`RESTORABLE`: one that passed, or, while no version that passed holds
    it, one served with parity whose quality its test split was too small to measure. A champion
    that never served (its endpoint update failed for good, or its validation never completed)
    leaves it where it was.

    Returns:
        False when ``version`` already is the champion (a rerun), True otherwise.
    """
    current = get_alias(client, name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        log.info("%s version %s already is the champion", name, version)
        return False
    kept = get_alias(client, name, PREVIOUS) if current is not None else None
    judged = verdict(current.tags.get(ENDPOINT_VALIDATION)) if current is not None else None
    if judged == PASSED or (judged == UNMEASURED and (kept is None or verdict(kept.tags.get(ENDPOINT_VALIDATION)) != PASSED)):
        client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    elif current is not None:
        log.warning(
            "%s champion v%s is no version to go back to (endpoint validation: %s): previous_champion stays %s",
            name,
            current.version,
            judged or "none",
            f"v{kept.version}" if kept is not None else "unset (nothing validated to roll back to)",
        )
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if (ch := get_alias(client, name, CHALLENGER)) is not None and str(ch.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    log.info("promoted %s version %s to champion (previous: %s)", name, version, current.version if current else None)
    return True


def move_champion_back(client: MlflowClient, name: str, version: str) -> None:
    """Make ``version`` the champion again (after a failed endpoint validation): the alias only, the endpoint is
    :func:`swan_airflow.serving_target.restore_endpoint`'s."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    log.warning("rolled %s champion back to version %s", name, version)


def stored_threshold(client: MlflowClient, name: str, version: str) -> float:
    """The anomaly-score threshold a version was validated with (its ``anomaly_threshold`` tag, set at registration).

    Falls back to the logged model's metadata, where the training job also stores it.

    Raises:
        MlflowException: the version does not exist.
        ValueError: neither place holds a threshold.
    """
    v = client.get_model_version(name, str(version))
    if "anomaly_threshold" in v.tags:
        return float(v.tags["anomaly_threshold"])
    import mlflow.models

    metadata = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {}
    if "anomaly_threshold" not in metadata:
        msg = f"{name} v{version} has no stored anomaly threshold (tag or model metadata 'anomaly_threshold'); register it again"
        raise ValueError(msg)
    return float(metadata["anomaly_threshold"])


def endpoint_validation(client: MlflowClient, name: str, version: str) -> str | None:
    """The version's :data:`ENDPOINT_VALIDATION` tag, or None when never validated (its :func:`verdict` says what it means)."""
    return client.get_model_version(name, str(version)).tags.get(ENDPOINT_VALIDATION)


def verdict(tag: str | None) -> str | None:
    """The verdict an :data:`ENDPOINT_VALIDATION` tag starts with, or None for no tag.

    ``passed``, ``failed`` (never promoted again), ``incomplete`` (the validation could not
    complete) or ``unmeasured`` (parity held on a test split too small to measure its quality).
    A failed version goes back only to a :data:`RESTORABLE` one (:func:`restorable`).

    Example:
        >>> verdict("unmeasured: run manual__1, dataset 20261130: ..."), verdict(None)
        ('unmeasured', None)
    """
    return tag.split(":", 1)[0] if tag else None


def restorable(tag: str | None) -> bool:
    """Whether a version whose :data:`ENDPOINT_VALIDATION` tag is ``tag`` may serve again in place of a failed one.

    Example:
        >>> restorable("passed: run scheduled__3"), restorable("unmeasured: too small"), restorable("failed: AUROC"), restorable(None)
        (True, True, False, False)
    """
    return verdict(tag) in RESTORABLE


def data_through(client: MlflowClient, name: str, version: str) -> date | None:
    """The newest day of data ``version`` was trained on: its :data:`DATA_THROUGH_TAG`, else the date of its dataset
    id (:data:`DATASET_TAG`, versions registered before the tag), else None."""
    from swan_anomaly.lake import dataset_date

    tags = client.get_model_version(name, str(version)).tags
    if DATA_THROUGH_TAG in tags:
        return date.fromisoformat(tags[DATA_THROUGH_TAG])
    return dataset_date(tags.get(DATASET_TAG) or "")


def gate_references(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """Metric -> the version the gate holds challengers of champion ``version`` to besides it (its :data:`GATE_REFERENCE_TAG`).

    Leaves out a metric whose reference is ``version`` itself, or a version that is gone from the
    registry or failed an endpoint validation (no bar). Empty for a version gated before the tag.
    """
    raw = client.get_model_version(name, str(version)).tags.get(GATE_REFERENCE_TAG)
    if not raw:
        return {}
    from swan_anomaly.gate import LINE_METRICS

    named = json.loads(raw)
    usable: dict[str, bool] = {}

    def usable_reference(other: str) -> bool:
        if other not in usable:
            try:
                usable[other] = verdict(client.get_model_version(name, other).tags.get(ENDPOINT_VALIDATION)) != FAILED
            except MlflowException:
                log.warning("%s v%s names v%s as a gate reference, which is gone from the registry: no bar", name, version, other)
                usable[other] = False
        return usable[other]

    return {m: str(v) for m, v in named.items() if m in LINE_METRICS and str(v) != str(version) and usable_reference(str(v))}


def tag_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Set tags on a model version (what the gate and the endpoint validation decided about it)."""
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value)[:5000])


def drop_champion_alias(client: MlflowClient, name: str, version: str) -> None:
    """Take ``champion`` (and ``challenger``) off ``version`` when nothing older can serve in its place: the aliases only,
    the endpoint is :func:`swan_airflow.serving_target.withdraw_endpoint`'s."""
    for alias in (CHAMPION, CHALLENGER):
        if (holder := get_alias(client, name, alias)) is not None and str(holder.version) == str(version):
            client.delete_registered_model_alias(name, alias)
    log.warning("withdrew %s version %s: it holds no champion alias now", name, version)


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    """The aliases currently held by a version."""
    return sorted(client.get_model_version(name, str(version)).aliases)
