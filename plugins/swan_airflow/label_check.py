"""The optional label check of the staged dataset, configured by an Airflow connection.

Off by default. The DAG Param ``label_check`` has three choices (:data:`LABEL_CHECK_CHOICES`):
``"default"`` (its default) follows the environment variable ``SWAN_LABEL_CHECK``
(``1``/``true``/``yes`` turns it on); ``"on"`` and ``"off"`` decide for one run. The values it had
before, ``null``/``true``/``false`` (API and CLI triggers may still send them), mean the same three.
See :func:`label_check_enabled`.

Connection (id ``swan_label_check``, or the value of ``SWAN_LABEL_CHECK_CONN_ID``), any
``conn_type`` (``generic`` is fine):

| field      | meaning |
|------------|---------|
| host       | Azure OpenAI endpoint, ``https://<resource>.openai.azure.com`` (no scheme: ``schema``, default https, and ``port``) |
| password   | the resource's API key (sent as the ``api-key`` header; never logged or returned) |
| extra      | JSON, keys below; only ``deployment`` is required |

| extra key     | default        | meaning |
|---------------|----------------|---------|
| deployment    | (required)     | vision-capable chat deployment, e.g. ``gpt-4o-mini`` |
| api_version   | ``2024-10-21`` | Azure OpenAI data-plane API version |
| expected      | ``"swan"``     | accepted one-word answer, or a list of them (plurals count too) |
| question      | see ``swan_anomaly.label_check.DEFAULT_QUESTION`` | the question asked with each frame |
| sample_size   | ``20``         | normal frames asked about per run (seeded by the run's seed) |
| mode          | ``"warn"``     | ``warn``: log mismatches; ``fail``: fail the task, listing the first ones |
| timeout_s     | ``30``         | per-request timeout, seconds |
| max_retries   | ``3``          | retries on 429 (honouring Retry-After), 5xx, timeouts |
| max_workers   | ``4``          | concurrent requests |
| max_side      | ``512``        | frames are downscaled to at most this many pixels per side before sending |

Example (environment)::

    AIRFLOW_CONN_SWAN_LABEL_CHECK='{"conn_type": "generic", "host": "https://res.openai.azure.com",
        "password": "<key>", "extra": {"deployment": "gpt-4o-mini", "mode": "warn"}}'
    SWAN_LABEL_CHECK=1

Example:
    >>> label_check_enabled({})
    False
    >>> label_check_enabled({"label_check": "on"}), label_check_enabled({"label_check": "off"})
    (True, False)
    >>> report = run_label_check(dataset_dir, read_manifest(dataset_dir / "labels.csv"), seed=42)  # doctest: +SKIP
    >>> report["mismatched"], report["mismatches"]                                                  # doctest: +SKIP
    (0, [])
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

EXTRA_KEYS = frozenset(
    {"deployment", "api_version", "expected", "question", "sample_size", "mode", "timeout_s", "max_retries", "max_workers", "max_side"}
)

#: The choices of the ``label_check`` Param, by value: what the trigger form shows for each.
LABEL_CHECK_CHOICES = {
    "default": "Default: as SWAN_LABEL_CHECK says",
    "on": "On for this run",
    "off": "Off for this run",
}
#: The values the ``label_check`` Param took before it had named choices (a nullable boolean),
#: still accepted from API and CLI triggers, and the choice each one means.
LABEL_CHECK_LEGACY = {None: "default", True: "on", False: "off"}


def label_check_conn_id() -> str:
    """The connection id: ``SWAN_LABEL_CHECK_CONN_ID`` (default ``swan_label_check``)."""
    from swan_airflow.runtime import settings

    return settings().label_check_conn_id


def label_check_enabled(params: Mapping[str, Any] | None) -> bool:
    """Whether this run checks labels: the ``label_check`` Param's ``"on"``/``"off"``, else ``SWAN_LABEL_CHECK``.

    Args:
        params: the run's Params; ``label_check`` is one of :data:`LABEL_CHECK_CHOICES`, or one of
            the older values in :data:`LABEL_CHECK_LEGACY`; missing means ``"default"``.

    Raises:
        AirflowFailException: the Param has another value, or ``SWAN_LABEL_CHECK`` is not an on/off
            word (no task retries).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_airflow.runtime import settings

    value = (params or {}).get("label_check")
    # A bool or None is looked up by identity of type: 1 == True must not pass for "on".
    choice = LABEL_CHECK_LEGACY[value] if value is None or isinstance(value, bool) else value
    if choice == "default":
        return settings().label_check
    if choice in ("on", "off"):
        return choice == "on"
    allowed = ", ".join(json.dumps(v) for v in [*LABEL_CHECK_CHOICES, *LABEL_CHECK_LEGACY])
    raise AirflowFailException(f"the label_check Param must be one of {allowed}; got {value!r}")


def _endpoint(host: str | None, schema: str | None, port: int | None, conn_id: str) -> str:
    from swan_anomaly._errors import ConfigError

    host = (host or "").strip().rstrip("/")
    if not host:
        msg = f"Airflow connection '{conn_id}' has no host; set it to the Azure OpenAI endpoint, https://<resource>.openai.azure.com"
        raise ConfigError(msg)
    if "://" in host:
        return host
    return f"{schema or 'https'}://{host}" + (f":{port}" if port else "")


def label_check_settings(conn_id: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(AzureOpenAIConfig, check_labels knobs)`` from the Airflow connection.

    Raises:
        ConfigError: no deployment, an unknown extra key, or a malformed value.
    """
    from airflow.sdk import BaseHook

    from swan_anomaly._errors import ConfigError
    from swan_anomaly.azure_openai import DEFAULT_API_VERSION, AzureOpenAIConfig

    conn_id = conn_id or label_check_conn_id()
    conn = BaseHook.get_connection(conn_id)  # never log `conn`: its repr shows the password
    extra = dict(conn.extra_dejson or {})
    unknown = sorted(set(extra) - EXTRA_KEYS)
    if unknown:
        msg = f"Airflow connection '{conn_id}' has unknown extra key(s) {unknown}; known keys: {sorted(EXTRA_KEYS)}"
        raise ConfigError(msg)
    if not extra.get("deployment"):
        msg = f"Airflow connection '{conn_id}' needs extra.deployment, the name of a vision chat deployment (e.g. gpt-4o-mini)"
        raise ConfigError(msg)
    try:
        config = AzureOpenAIConfig(
            endpoint=_endpoint(conn.host, conn.schema, conn.port, conn_id),
            deployment=str(extra["deployment"]),
            api_key=conn.password or "",
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION),
            timeout_s=float(extra.get("timeout_s", 30)),
            max_retries=int(extra.get("max_retries", 3)),
            source=f"Airflow connection '{conn_id}'",
        )
        knobs: dict[str, Any] = {
            key: cast(extra[key])
            for key, cast in (("sample_size", int), ("max_workers", int), ("max_side", int), ("mode", str), ("question", str))
            if key in extra
        }
    except (TypeError, ValueError) as exc:
        msg = f"Airflow connection '{conn_id}' has a malformed extra value: {exc}"
        raise ConfigError(msg) from None
    if "expected" in extra:
        knobs["expected"] = extra["expected"]
    return config, knobs


def run_label_check(dataset_dir: Path, manifest: pd.DataFrame, *, seed: int, conn_id: str | None = None) -> dict[str, Any]:
    """Ask the connection's vision deployment about a seeded sample of the manifest's normal frames.

    Args:
        dataset_dir: the staged dataset; ``manifest.image_path`` is relative to it.
        manifest: the label manifest (``swan_anomaly.labels``); only rows with label 1 (normal) are sampled.
        seed: the run's seed (the same seed samples the same frames).
        conn_id: overrides :func:`label_check_conn_id`.

    Returns:
        A JSON-able report for XCom: counts, answers per sampled frame, mismatching and
        unanswered image paths, endpoint, deployment and connection id; never the key.

    Raises:
        AirflowFailException: (no task retries) the key or deployment was refused, the connection is
            unusable, or, in ``fail`` mode, frames were not recognised as expected.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from swan_anomaly._errors import ConfigError
    from swan_anomaly._errors import LabelCheckError, LabelCheckFailed
    from swan_anomaly.label_check import check_labels
    from swan_anomaly.contract import NORMAL

    conn_id = conn_id or label_check_conn_id()
    try:
        config, knobs = label_check_settings(conn_id)
        normal = [str(p) for p in manifest.loc[manifest["label"] == NORMAL, "image_path"]]
        report = check_labels(normal, lambda path: (dataset_dir / path).read_bytes(), client_config=config, seed=seed, **knobs)
    except (ConfigError, LabelCheckError, LabelCheckFailed) as exc:
        # Retrying cannot fix a wrong key, a missing deployment or a mislabelled frame.
        raise AirflowFailException(str(exc)) from exc
    return {**report.to_dict(), "conn_id": conn_id}
