"""The ingest DAG: videos dropped into the inbox land in ``landing/YYYY-MM-DD/`` and trigger the pipeline.

Every ``SWAN_INGEST_SCHEDULE`` (default every 10 minutes) one task moves the settled, readable
videos of the inbox into today's landing partition and emits an event on the
``swan_landing_videos`` asset, on which ``swan_anomaly_pipeline`` is scheduled (besides its
daily timetable). Nothing landed: the task is skipped and no event is emitted.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, task

from swan_airflow.callbacks import failure_callbacks
from swan_airflow.ingest import LANDING_ASSET
from swan_anomaly.config import Settings

SETTINGS = Settings.from_env()


@dag(
    schedule=CronTriggerTimetable(SETTINGS.ingest_schedule, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "swan-anomaly",
        "retries": SETTINGS.retries,
        "retry_delay": dt.timedelta(seconds=SETTINGS.retry_delay_seconds),
        "on_failure_callback": failure_callbacks(),
    },
    tags=["swan", "ingest"],
)
def swan_ingest_videos():
    """## swan_ingest_videos

    Inbox (`SWAN_INBOX_DIR`, default `$SWAN_HOME/inbox`) -> `landing/YYYY-MM-DD/` -> asset event
    `swan_landing_videos` (extra: landing date and videos) -> a `swan_anomaly_pipeline` run for that date.
    A file modified in the last `SWAN_INGEST_SETTLE_SECONDS` (30) waits for the next run; an unreadable
    one goes to `inbox/rejected/` with its reason.
    """

    @task(outlets=[LANDING_ASSET])
    def land_videos(*, outlet_events=None) -> dict:
        """Move settled, readable inbox videos into today's landing partition; emit the asset event."""
        from airflow.sdk.exceptions import AirflowSkipException

        from swan_airflow.ingest import land_inbox
        from swan_airflow.runtime import settings

        s = settings()
        landed = land_inbox(s.inbox_dir, s.landing_dir, settle_seconds=s.ingest_settle_seconds)
        if not landed.videos:
            raise AirflowSkipException(
                f"nothing landed from {s.inbox_dir} ({len(landed.rejected)} rejected, {len(landed.waiting)} still being written)"
            )
        outlet_events[LANDING_ASSET].extra = landed.event_extra()
        return {**landed.event_extra(), "rejected": landed.rejected, "waiting": landed.waiting}

    land_videos()


swan_ingest_videos()
