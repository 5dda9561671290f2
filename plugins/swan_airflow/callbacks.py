"""Failure callbacks: one clear summary line per failed task, and an Airflow notifier when one is configured.

``SWAN_FAILURE_NOTIFIER`` names any Airflow notifier class (a ``BaseNotifier``, e.g.
``airflow.providers.slack.notifications.slack.SlackNotifier`` or
``airflow.providers.smtp.notifications.smtp.SmtpNotifier`` once that provider is installed) as
``module:Class`` or ``module.Class``; ``SWAN_FAILURE_NOTIFIER_KWARGS`` holds its keyword
arguments as a JSON object (Jinja templates allowed; put credentials in the Airflow connection
the notifier uses, never here). Unset: only the log line.

Example:
    >>> default_args = {"on_failure_callback": failure_callbacks()}   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("swan_airflow.failures")


def log_failure(context) -> None:
    """Log dag, task, run, try and the exception of a failed task in one line."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    log.error(
        "swan-anomaly task failed: dag=%s task=%s run=%s try=%s error=%s: %s",
        getattr(ti, "dag_id", "?"),
        getattr(ti, "task_id", "?"),
        getattr(ti, "run_id", "?"),
        getattr(ti, "try_number", "?"),
        type(exc).__name__ if exc else None,
        exc,
    )


def configured_notifier(env=None):
    """The notifier of ``SWAN_FAILURE_NOTIFIER`` / ``SWAN_FAILURE_NOTIFIER_KWARGS``, or ``None``.

    Raises:
        ValueError: the class cannot be imported, is not an Airflow notifier, or the keyword
            arguments are not a JSON object (a broken setting fails DAG parsing loudly rather
            than swallowing every later failure).
    """
    from airflow.sdk import BaseNotifier
    from airflow.sdk.module_loading import import_string

    from swan_anomaly.config import Settings

    settings = Settings.from_env(env)
    spec = settings.failure_notifier
    if not spec:
        return None
    try:
        cls = import_string(spec.replace(":", "."))
    except ImportError as exc:
        msg = f"SWAN_FAILURE_NOTIFIER={spec!r}: cannot import it ({exc})"
        raise ValueError(msg) from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        msg = f"SWAN_FAILURE_NOTIFIER={spec!r} is not an Airflow notifier (a subclass of airflow.sdk.BaseNotifier)"
        raise ValueError(msg)
    try:
        kwargs = json.loads(settings.failure_notifier_kwargs or "{}")
    except json.JSONDecodeError as exc:
        msg = f"SWAN_FAILURE_NOTIFIER_KWARGS is not valid JSON: {exc}"
        raise ValueError(msg) from exc
    if not isinstance(kwargs, dict):
        msg = "SWAN_FAILURE_NOTIFIER_KWARGS must be a JSON object of the notifier's keyword arguments"
        raise ValueError(msg)
    return cls(**kwargs)


def notify(context, message: str, env=None) -> None:
    """Log ``message`` as a warning and send it through the configured notifier (see the module docs).

    For what needs an operator's eye without failing a task, e.g. drift of the served model.
    The notifier renders its templates against ``context`` with ``exception`` set to ``message``,
    as for a failure. A notifier that itself fails is logged, never raised.
    """
    log.warning("swan-anomaly: %s", message)
    notifier = configured_notifier(env)
    if notifier is None:
        return
    try:
        notifier({**(context or {}), "exception": message})
    except Exception:  # noqa: BLE001 - a broken notifier must not turn a warning into a failed task
        log.exception("the notifier %s failed to send: %s", type(notifier).__name__, message)


def failure_callbacks(env=None) -> list:
    """``[log_failure]``, plus the configured notifier (see the module docs)."""
    notifier = configured_notifier(env)
    return [log_failure] if notifier is None else [log_failure, notifier]
