"""The lake on Azure Data Lake Storage Gen2 (or Blob Storage, or Azurite) through the Azure provider.

Uses ``WasbHook`` of apache-airflow-providers-microsoft-azure: it talks to the Blob endpoint,
which ADLS Gen2 (hierarchical namespace) accounts also serve, and which Azurite emulates in
tests. The layout is the one of :class:`swan_anomaly.lake.LocalLake`, under an optional prefix
of a container; Spark on Databricks reads it as ``abfss://{container}@{account}.dfs.core.windows.net/``.

Uploads are idempotent: each blob carries its sha256 in its metadata, unchanged files are
skipped, files no longer staged are deleted, ``manifest.json`` and ``_SUCCESS`` are written last,
and the files themselves go up in parallel.

Example:
    >>> lake = WasbLake(conn_id="swan_lake", container="swan")         # doctest: +SKIP
    >>> lake.put_dataset(Path("/tmp/staging/20261126"), "20261126")     # doctest: +SKIP
    UploadReport(uri='abfss://swan@acct.dfs.core.windows.net/raw/20261126', written=387, ...)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from swan_anomaly.lake import (
    GOLD_FILES,
    MANIFEST,
    SUCCESS,
    UploadReport,
    committed,
    manifest_json,
    partition_value,
    plan_upload,
    safe_run_id,
    sha256_text,
)

log = logging.getLogger(__name__)


class WasbLake:
    """A lake in an Azure Storage container, reached through an Airflow ``wasb`` connection (a :class:`swan_anomaly.lake.Lake`).

    Args:
        conn_id: Airflow connection id (type ``wasb``); credentials stay in the connection.
        container: container (ADLS Gen2 file system) name.
        prefix: optional folder inside the container, e.g. ``swan/``.
        max_workers: parallel uploads.
    """

    def __init__(self, conn_id: str = "swan_lake", container: str = "swan", *, prefix: str = "", max_workers: int = 8) -> None:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        self.hook = WasbHook(wasb_conn_id=conn_id)
        self.conn_id = conn_id
        self.container = container
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.max_workers = max_workers

    def _name(self, *parts: str) -> str:
        return self.prefix + "/".join(p.strip("/") for p in parts)

    @property
    def account(self) -> str:
        return self.hook.blob_service_client.account_name

    def uri(self, path: str = "") -> str:
        """``abfss://`` URI of a path in the lake (what Spark on Databricks reads)."""
        return f"abfss://{self.container}@{self.account}.dfs.core.windows.net/{self._name(path)}"

    def raw_prefix(self, dataset_id: str) -> str:
        return self._name("raw", dataset_id) + "/"

    def _existing(self, prefix: str) -> dict[str, str | None]:
        """The files under ``prefix`` and their stored sha256; directory entries of a hierarchical-namespace account
        (``hdi_isfolder``) are not files, and the Blob API cannot delete them (an upload that tried failed every retry)."""
        container = self.hook.blob_service_client.get_container_client(self.container)
        return {
            blob.name[len(prefix) :]: metadata.get("sha256")
            for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"])
            if (metadata := blob.metadata or {}).get("hdi_isfolder") != "true"
        }

    def put_dataset(self, local_dir: Path, dataset_id: str, *, set_aside: Sequence[tuple[str, str | None]] = ()) -> UploadReport:
        """Upload a staged dataset to ``raw/{dataset_id}/`` (idempotent, parallel, ``_SUCCESS`` last).

        Raises:
            LakeError: the staging folder is missing, empty or disagrees with its labels, or the
                upload would delete the frames of a video the run set aside
                (:func:`swan_anomaly.lake.plan_upload`); no blob is then written or deleted.
        """
        self.hook.create_container(self.container)
        prefix = self.raw_prefix(dataset_id)
        plan = plan_upload(local_dir, self._existing(prefix), set_aside=set_aside)  # refuses a bad staging folder before anything changes
        self.hook.delete_file(self.container, prefix + SUCCESS, ignore_if_missing=True)

        def upload(rel: str) -> None:
            with (local_dir / rel).open("rb") as fh:
                self.hook.upload(self.container, prefix + rel, fh, overwrite=True, metadata={"sha256": plan.hashes[rel]})

        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            list(pool.map(upload, plan.write))  # list() re-raises the first failed upload
        for start in range(0, len(plan.remove), 256):
            self.hook.delete_blobs(self.container, *[prefix + rel for rel in plan.remove[start : start + 256]])
        manifest = manifest_json(dataset_id, plan.hashes)
        self.hook.upload(self.container, prefix + MANIFEST, manifest, overwrite=True)
        self.hook.upload(self.container, prefix + SUCCESS, b"", overwrite=True)
        report = UploadReport(self.uri(f"raw/{dataset_id}"), len(plan.write), plan.unchanged, len(plan.remove), sha256_text(manifest))
        log.info("lake %s: %d written, %d unchanged, %d removed", report.uri, report.written, report.unchanged, report.removed)
        return report

    def is_complete(self, dataset_id: str) -> bool:
        """True when ``raw/{dataset_id}/_SUCCESS`` exists."""
        return self.hook.check_for_blob(self.container, self.raw_prefix(dataset_id) + SUCCESS)

    def read_raw(self, dataset_id: str, rel: str) -> bytes:
        """Bytes of a file in ``raw/{dataset_id}/``.

        Raises:
            FileNotFoundError: no such blob, as the local lake raises for a missing file.
        """
        from azure.core.exceptions import ResourceNotFoundError

        name = self.raw_prefix(dataset_id) + rel
        try:
            return self.hook.download(self.container, name).readall()
        except ResourceNotFoundError as exc:
            msg = f"no blob {name} in container {self.container}"
            raise FileNotFoundError(msg) from exc

    def gold_partitions(self) -> list[str]:
        """The dataset ids of the gold partitions, sorted (one hierarchical listing, not every file)."""
        prefix = self._name("gold", "training") + "/"
        container = self.hook.blob_service_client.get_container_client(self.container)
        names = (item.name[len(prefix) :].rstrip("/") for item in container.walk_blobs(name_starts_with=prefix, delimiter="/"))
        return sorted({v for name in names if (v := partition_value(name)) is not None})

    def gold_files(self, dataset_ids: Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """The data files of some gold partitions, as :meth:`swan_anomaly.lake.LocalLake.gold_files` lists a folder.

        Directory entries of a hierarchical-namespace account (``hdi_isfolder``) are not files.
        """
        container = self.hook.blob_service_client.get_container_client(self.container)
        files = {}
        for dataset_id in dataset_ids:
            prefix = self._gold_prefix(dataset_id)
            blobs = container.list_blobs(name_starts_with=prefix, include=["metadata"])
            sizes = {b.name[len(prefix) :]: b.size for b in blobs if (b.metadata or {}).get("hdi_isfolder") != "true"}
            files[dataset_id] = [(rel, sizes[rel]) for rel in committed(sizes, self._gold_listing(prefix))]
        return files

    def _gold_prefix(self, dataset_id: str) -> str:
        return self._name("gold", "training", f"dataset_id={dataset_id}") + "/"

    def _gold_listing(self, prefix: str) -> list[str] | None:
        """The partition's ``GOLD_FILES`` list, or None (as :meth:`swan_anomaly.lake.LocalLake.gold_listing`)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return json.loads(self.hook.download(self.container, prefix + GOLD_FILES).readall())["files"]
        except ResourceNotFoundError:
            return None

    def read_gold(self, dataset_id: str, columns: list[str] | None = None):
        """The gold rows of one dataset (its Parquet files) as a pandas DataFrame."""
        import io

        import pandas as pd

        prefix = self._gold_prefix(dataset_id)
        names = [prefix + rel for rel, _ in self.gold_files([dataset_id])[dataset_id] if rel.endswith(".parquet")]
        parts = [pd.read_parquet(io.BytesIO(self.hook.download(self.container, name).readall()), columns=columns) for name in names]
        if not parts:
            msg = f"{self.uri(prefix)}: no gold Parquet files for dataset {dataset_id!r}"
            raise FileNotFoundError(msg)
        return pd.concat(parts, ignore_index=True)

    def has_code(self, version: str) -> bool:
        """True when ``code/{version}/_SUCCESS`` exists."""
        return self.hook.check_for_blob(self.container, self._name("code", version, SUCCESS))

    def put_code(self, version: str, files: Mapping[str, Path]) -> None:
        """Upload ``{relative name: local file}`` to ``code/{version}/``; ``_SUCCESS`` last."""
        self.hook.create_container(self.container)
        for rel, src in files.items():
            with src.open("rb") as fh:
                self.hook.upload(self.container, self._name("code", version, rel), fh, overwrite=True)
        self.hook.upload(self.container, self._name("code", version, SUCCESS), b"", overwrite=True)

    def write_result(self, run_id: str, job: str, result: dict) -> str:
        """Write ``runs/{run_id}/{job}.json``; returns its blob name."""
        name = self._name("runs", safe_run_id(run_id), f"{job}.json")
        self.hook.upload(self.container, name, json.dumps(result, indent=2, sort_keys=True, default=str), overwrite=True)
        return name

    def delete_result(self, run_id: str, job: str) -> None:
        """Remove ``runs/{run_id}/{job}.json`` if it exists."""
        self.hook.delete_file(self.container, self._name("runs", safe_run_id(run_id), f"{job}.json"), ignore_if_missing=True)

    def read_result(self, run_id: str, job: str) -> dict:
        """Read ``runs/{run_id}/{job}.json``.

        Raises:
            LakeError: there is no such result (as :meth:`swan_anomaly.lake.LocalLake.read_result`).
        """
        from azure.core.exceptions import ResourceNotFoundError

        from swan_anomaly import LakeError

        name = self._name("runs", safe_run_id(run_id), f"{job}.json")
        try:
            return json.loads(self.hook.download(self.container, name).readall())
        except ResourceNotFoundError as exc:
            msg = f"{self.uri(name[len(self.prefix):])}: job {job!r} wrote no result for run {run_id!r}; did the job finish?"
            raise LakeError(msg) from exc
