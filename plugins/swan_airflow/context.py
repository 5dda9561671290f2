"""What a task knows about its DAG run: ids, the dataset it processes, its Params, its staging folder.

One object instead of tuples pulled apart in every task. Built from the task context
(:meth:`RunContext.current`) or directly in tests.

Example:
    >>> ctx = RunContext(dag_id="swan_anomaly_pipeline", run_id="manual__1", dataset_id="20261126", params={"seed": 42})
    >>> ctx.staging_dir.parts[-2:]
    ('20261126', 'manual__1')
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunContext:
    """The facts of one DAG run that its tasks share.

    Attributes:
        dag_id: the DAG.
        run_id: the DAG run.
        dataset_id: the lake partition the run writes: ``YYYYMMDD`` of its landing date, or
            ``YYYYMMDD-videos-<digest>`` for a run that names its videos (:func:`~swan_anomaly.lake.dataset_id_for`).
        params: the run's Params.
        landing_date: the landing date it processes, when a Param or an asset event named one.
        interval: ``(start, end)`` of its data interval, when it has one.
        run_after: when the run was due (a manual run without a logical date has only this).
        task: the Airflow task context, for the few steps that need more (task states, XCom).
    """

    dag_id: str
    run_id: str
    dataset_id: str
    params: dict[str, Any]
    landing_date: str | None = None
    interval: tuple[Any, Any] = (None, None)
    run_after: Any = None
    task: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def current(cls) -> RunContext:
        """The context of the running task."""
        from airflow.sdk import get_current_context

        from swan_airflow.ingest import landing_date_from_events
        from swan_anomaly.lake import dataset_id_for

        ctx = get_current_context()
        params = dict(ctx["params"])
        dag_run = ctx["dag_run"]
        landing_date = params.get("landing_date") or landing_date_from_events(ctx.get("triggering_asset_events"))
        run_after = getattr(dag_run, "run_after", None)
        interval = (ctx.get("data_interval_start"), ctx.get("data_interval_end"))
        dataset_id = dataset_id_for(landing_date=landing_date, interval_start=interval[0], run_after=run_after, videos=params.get("videos"))
        return cls(ctx["dag"].dag_id, dag_run.run_id, dataset_id, params, landing_date, interval, run_after, ctx)

    @property
    def data_through(self) -> dt.date:
        """The newest day of data this run brings: the last day of its landing window, or, for a run that names its
        videos, the day it was triggered (they are new whatever date their partition carries).

        The gate never lets a model of older data replace one of newer data (:func:`swan_anomaly.gate.decide`).

        Example:
            >>> RunContext("d", "manual__1", "20261126", {}, landing_date="2026-11-26").data_through
            datetime.date(2026, 11, 26)
        """
        from swan_anomaly.lake import landing_window

        if self.params.get("videos") and self.run_after is not None:
            return self.run_after.date()
        start, end = self.interval
        _, end = landing_window(landing_date=self.landing_date, interval_start=start, interval_end=end, run_after=self.run_after)
        return end - dt.timedelta(days=1)

    @property
    def staging_dir(self) -> Path:
        """This run's scratch folder, ``$SWAN_STAGING_DIR/{dataset_id}/{run_id}``.

        Per run, not per date: two runs of one date (a backfill beside a manual run) never
        share, clear or upload each other's staged frames.
        """
        from swan_airflow.runtime import settings
        from swan_anomaly.lake import safe_run_id

        return settings().staging_dir / self.dataset_id / safe_run_id(self.run_id)
