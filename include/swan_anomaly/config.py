"""Settings of the embedded default, read from the environment.

Every path has a default under ``SWAN_HOME`` (``./.swan``), so one machine runs the whole
pipeline with no set-up. Airflow maps its connections, Variables and Params onto these
names; this module knows nothing of Airflow.

| variable                 | default                                  |
|--------------------------|------------------------------------------|
| ``SWAN_HOME``            | ``./.swan``                               |
| ``SWAN_LANDING_DIR``     | ``$SWAN_HOME/landing``                    |
| ``SWAN_LAKE_ROOT``       | ``$SWAN_HOME/lake``                       |
| ``SWAN_STAGING_DIR``     | ``$SWAN_HOME/staging``                    |
| ``MLFLOW_TRACKING_URI``  | ``sqlite:///$SWAN_HOME/mlflow/mlflow.db`` |
| ``SWAN_MLFLOW_ARTIFACTS``| ``$SWAN_HOME/mlflow/artifacts``           |
| ``MLFLOW_REGISTRY_URI``  | the tracking URI (``databricks-uc`` for Unity Catalog) |
| ``SWAN_EXPERIMENT``      | ``swan-anomaly`` (on Databricks a workspace path, e.g. ``/Shared/swan-anomaly``) |
| ``SWAN_MODEL_NAME``      | ``swan_anomaly_vit`` (registered model; in Unity Catalog ``catalog.schema.model``) |
| ``SWAN_MODEL``           | ``vit-tiny-offline`` (preset, hub id or directory) |
| ``SWAN_ENDPOINT_URL``    | ``http://127.0.0.1:5055``                 |
| ``SWAN_ENDPOINT_NAME``   | ``swan-anomaly``                          |

Example:
    >>> settings = Settings.from_env({"SWAN_HOME": "/tmp/swan"})
    >>> str(settings.lake_root)
    '/tmp/swan/lake'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from swan_anomaly._errors import ConfigError

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def env_flag(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    """A boolean setting from the environment: unset or empty gives ``default``.

    Raises:
        ConfigError: the value is none of ``1/true/yes/on`` or ``0/false/no/off`` (any case),
            so a typo never silently flips a switch.

    Example:
        >>> env_flag("SWAN_LABEL_CHECK", False, {"SWAN_LABEL_CHECK": "Yes"})
        True
    """
    value = (os.environ if env is None else env).get(name, "").strip()
    if not value:
        return default
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    msg = f"{name} must be one of {sorted(TRUE_WORDS)} or {sorted(FALSE_WORDS)}, got {value!r}"
    raise ConfigError(msg)


@dataclass(frozen=True)
class Settings:
    """Where things live and what they are called."""

    home: Path
    inbox_dir: Path
    landing_dir: Path
    lake_root: Path
    staging_dir: Path
    tracking_uri: str
    registry_uri: str
    artifact_root: Path
    experiment: str
    model_name: str
    model: str
    endpoint_url: str
    endpoint_name: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("SWAN_HOME", ".swan")).absolute()
        tracking_uri = env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
        registry_uri = env.get("MLFLOW_REGISTRY_URI", tracking_uri)
        model_name = env.get("SWAN_MODEL_NAME", "swan_anomaly_vit")
        if registry_uri.startswith("databricks-uc") and len([p for p in model_name.split(".") if p]) != 3:
            msg = (
                f"SWAN_MODEL_NAME={model_name!r}: the Unity Catalog registry (MLFLOW_REGISTRY_URI={registry_uri!r}) "
                "needs a three-level name, catalog.schema.model (e.g. main.swan.swan_anomaly_vit)"
            )
            raise ConfigError(msg)
        return cls(
            home=home,
            inbox_dir=Path(env.get("SWAN_INBOX_DIR", home / "inbox")).absolute(),
            landing_dir=Path(env.get("SWAN_LANDING_DIR", home / "landing")).absolute(),
            lake_root=Path(env.get("SWAN_LAKE_ROOT", home / "lake")).absolute(),
            staging_dir=Path(env.get("SWAN_STAGING_DIR", home / "staging")).absolute(),
            tracking_uri=tracking_uri,
            registry_uri=registry_uri,
            artifact_root=Path(env.get("SWAN_MLFLOW_ARTIFACTS", home / "mlflow" / "artifacts")).absolute(),
            experiment=env.get("SWAN_EXPERIMENT", "swan-anomaly"),
            model_name=model_name,
            model=env.get("SWAN_MODEL", "vit-tiny-offline"),
            endpoint_url=env.get("SWAN_ENDPOINT_URL", "http://127.0.0.1:5055").rstrip("/"),
            endpoint_name=env.get("SWAN_ENDPOINT_NAME", "swan-anomaly"),
        )

    @property
    def mlflow_uris(self) -> tuple[str, str]:
        """``(tracking URI, registry URI)``, e.g. ``("databricks", "databricks-uc")``."""
        return self.tracking_uri, self.registry_uri

    @property
    def serving_dir(self) -> Path:
        """State of the local model server (pid file, log)."""
        return self.home / "serving"

    @property
    def models_dir(self) -> Path:
        """Base models built from offline presets."""
        return self.home / "models"
