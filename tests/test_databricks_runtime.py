"""The jobs on the Databricks Runtime the cluster specs name, not only in this machine's environment.

``plugins/swan_airflow/clusters/runtime.txt`` lists the runtime (its ``spark_version`` strings,
its Python) and the versions of the libraries the jobs import that it ships, from its release
notes. A run installs ``run-libraries.txt`` and the project wheel on top. The slow test here builds
that environment with pip, as a cluster does, checks that installing the run's libraries replaced
nothing the runtime ships (``pip check`` clean too), and runs every job entrypoint in it on tiny
data:

- ETL and augmentation in the runtime's Python (3.12) with the runtime's PySpark 4.0.0, pandas,
  pyarrow, numpy and MLflow;
- training with the runtime's MLflow 3.0.1 and the same libraries, but on this machine's Python
  (3.11) with its PyTorch 2.13.0 CPU build instead of the runtime's 2.7.0: PyPI's Linux wheels of
  torch are CUDA builds (gigabytes), and PyTorch's CPU index is not reachable here. The torch
  APIs the jobs use exist in both.

The environments are built once per list (cached under ``SWAN_RUNTIME_ENV_CACHE``, default
``~/.cache/swan-anomaly/runtime-envs``, keyed by the lists' content); the wheel is installed
into them afresh every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import ROOT, canonical_name, pinned_versions

from swan_airflow.databricks_runs import CLUSTERS_DIR, JOB_CLUSTERS, RUN_LIBRARIES, cluster_spec, run_libraries

RUNTIME = CLUSTERS_DIR / "runtime.txt"
LOCK = pinned_versions(ROOT / "requirements.txt")
#: This machine's only CPU build of torch (the wheel cache, the lock's), standing in for the runtime's (see the module doc).
LOCAL_TORCH = LOCK["torch"]
DATASET = "20261130"


def runtime_fact(key: str) -> list[str]:
    """The values of a ``# key: values`` header line of runtime.txt."""
    for line in RUNTIME.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].split()
    raise AssertionError(f"{RUNTIME} names no {key}")


def test_every_cluster_spec_runs_the_runtime_of_the_list():
    versions = runtime_fact("spark_version")
    for job, cluster in JOB_CLUSTERS.items():
        assert cluster_spec(cluster)["spark_version"] in versions, job
    # the ML runtime on both: the ETL reads the model's preprocessing config with transformers, and
    # the training job needs PyTorch; a plain runtime has neither
    assert all("-ml-" in cluster_spec(c)["spark_version"] for c in set(JOB_CLUSTERS.values()))


def test_run_libraries_are_pinned_to_the_tested_lock_and_replace_no_library_of_the_runtime_list():
    runtime = pinned_versions(RUNTIME)
    packages = [lib["pypi"]["package"] for lib in run_libraries()]
    assert packages, "no run libraries: the runtime lacks OpenCV"
    for package in packages:
        name, version = package.split("==")
        assert LOCK[canonical_name(name)] == version, f"{package} differs from requirements.txt, which the tests run with"
        assert canonical_name(name) not in runtime, f"{package} would replace the runtime's {name}"
    # what the jobs import beyond the runtime's own libraries comes with the run
    assert {"opencv-python-headless", "transformers"} <= {canonical_name(p.split("==")[0]) for p in packages}


def test_an_unpinned_run_library_is_refused(tmp_path):
    listed = tmp_path / "run-libraries.txt"
    listed.write_text("# comment\nopencv-python-headless==4.14.0.94\ntransformers\n")
    with pytest.raises(ValueError, match="'transformers' is not pinned"):
        run_libraries(listed)


def test_a_clusters_folder_of_ones_own_brings_its_run_libraries(tmp_path, monkeypatch):
    """Specs for another runtime come with the libraries for it; a folder without its own keeps the built-in list."""
    from swan_airflow.databricks_runs import submit_run_json

    code = {"lake_root": "/lake", "wheel_uri": "/lake/code/v1/swan.whl", "job_etl": "/lake/code/v1/jobs/etl.py"}
    for name in ("cpu", "gpu"):
        (tmp_path / f"{name}.json").write_text((CLUSTERS_DIR / f"{name}.json").read_text())
    monkeypatch.setenv("SWAN_DATABRICKS_CLUSTERS_DIR", str(tmp_path))
    libraries = submit_run_json("etl", [], code=code, dataset_id="20261130")["tasks"][0]["libraries"]
    assert libraries[:-1] == run_libraries(RUN_LIBRARIES)
    (tmp_path / "run-libraries.txt").write_text("opencv-python-headless==4.10.0.84\n")
    libraries = submit_run_json("etl", [], code=code, dataset_id="20261130")["tasks"][0]["libraries"]
    assert libraries == [{"pypi": {"package": "opencv-python-headless==4.10.0.84"}}, {"whl": "/lake/code/v1/swan.whl"}]


# ---- the runtime's environment --------------------------------------------------------------


def _runtime_python() -> str | None:
    """An interpreter of the runtime's Python version (``SWAN_RUNTIME_PYTHON``, else pyenv's or PATH's)."""
    wanted = runtime_fact("python")[0]
    if os.environ.get("SWAN_RUNTIME_PYTHON"):
        return os.environ["SWAN_RUNTIME_PYTHON"]
    candidates = sorted(Path.home().glob(f".pyenv/versions/{wanted}*/bin/python{wanted}"), reverse=True)
    found = [str(c) for c in candidates] + [p for p in [shutil.which(f"python{wanted}")] if p]
    for python in found:
        if subprocess.run([python, "--version"], capture_output=True).returncode == 0:
            return python
    return None


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def runtime_env(python: str, pins: dict[str, str]) -> Path:
    """A virtual environment of ``python`` with the runtime's ``pins`` and the run libraries: built once, cached, never changed."""
    cache = Path(os.environ.get("SWAN_RUNTIME_ENV_CACHE", Path.home() / ".cache" / "swan-anomaly" / "runtime-envs"))
    version = _run([python, "-c", "import sys; print(sys.version.split()[0])"]).stdout.strip()
    key = hashlib.sha256(json.dumps(["v2", version, sorted(pins.items()), RUN_LIBRARIES.read_text()]).encode()).hexdigest()[:16]
    env = cache / f"py{version}-{key}"
    if (env / "complete").is_file():
        return env
    staging = cache / f".{env.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "venv", staging])
    pip = [staging / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, *(f"{name}=={v}" for name, v in sorted(pins.items()))])  # the runtime as it ships
    _run([*pip, *(lib["pypi"]["package"] for lib in run_libraries())])  # a cluster installs the run's libraries on top
    (staging / "complete").write_text(version)
    shutil.rmtree(env, ignore_errors=True)  # an incomplete one (an interrupted build)
    try:
        staging.rename(env)  # scripts keep the staging path in their shebangs: everything here runs `python -m`
    except OSError:  # another session's build got there first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return env


def installed(env: Path) -> dict[str, str]:
    listed = json.loads(_run([env / "bin" / "python", "-m", "pip", "list", "--format", "json"]).stdout)
    return {canonical_name(d["name"]): d["version"].split("+")[0] for d in listed}  # 2.13.0+cpu is torch 2.13.0


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:  # another filesystem, or one without hard links: the clone costs its full size
        if not getattr(_link_or_copy, "warned", False):
            _link_or_copy.warned = True
            warnings.warn(f"cloning a runtime environment by copying, not linking ({exc}); set SWAN_RUNTIME_ENV_CACHE "
                          "to a folder on the filesystem of the tests' temporary folders to save the disk", stacklevel=2)  # fmt: skip
        shutil.copy2(src, dst)


def clone_env(base: Path, target: Path) -> Path:
    """A copy of the environment ``base`` at ``target`` whose files are hard links to ``base``'s where the filesystem allows.

    The runtime environments weigh 1.6 and 2.5 GB (torch); a plain copy per run doubled the disk the
    suite needs, and CI once ran out of it. pip replaces a file by writing a new one and renaming it
    over the old name, and Python writes its bytecode the same way, so the shared files never change.
    """
    return Path(shutil.copytree(base, target, symlinks=True, copy_function=_link_or_copy))


def with_project_wheel(base: Path, wheel: Path, pins: dict[str, str], scratch: Path) -> Path:
    """A copy of the cached ``base`` with the project wheel (and whatever it requires) installed; nothing of the runtime moved."""
    env = clone_env(base, scratch / base.name)  # the cached environment stays as the runtime ships, for the next run
    pip = [env / "bin" / "python", "-m", "pip", "install", "--quiet"]
    _run([*pip, wheel])
    _run([env / "bin" / "python", "-m", "pip", "check"])
    now = installed(env)
    moved = {name: (version, now.get(name)) for name, version in pins.items() if now.get(name) != version}
    assert not moved, f"installing the run's libraries replaced libraries of the runtime: {moved}"
    return env


def test_a_runtime_environment_is_cloned_with_hard_links_not_copied(tmp_path):
    base = tmp_path / "base"
    (base / "lib" / "site-packages" / "torch").mkdir(parents=True)
    big = base / "lib" / "site-packages" / "torch" / "libtorch_cpu.so"
    big.write_bytes(b"\0" * 4096)
    (base / "bin").mkdir()
    (base / "bin" / "python").symlink_to("/usr/bin/python3")
    try:
        os.link(big, tmp_path / "probe")
    except OSError:
        pytest.skip("this filesystem has no hard links")
    (tmp_path / "probe").unlink()
    clone = clone_env(base, tmp_path / "scratch" / "env")
    copied = clone / "lib" / "site-packages" / "torch" / "libtorch_cpu.so"
    assert copied.read_bytes() == big.read_bytes()
    assert copied.stat().st_ino == big.stat().st_ino and big.stat().st_nlink == 2  # one file on disk, two names
    assert (clone / "bin" / "python").is_symlink() and os.readlink(clone / "bin" / "python") == "/usr/bin/python3"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    from swan_airflow.code_deploy import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def raw_lake(tmp_path_factory, demo_video):
    """A lake with one raw dataset (20 frames, 20 anomalies) and a micro ViT, made in this environment (the Airflow worker's part)."""
    from swan_anomaly.anomalies import synthesize_dataset
    from swan_anomaly.labels import build_manifest, write_manifest
    from swan_anomaly.lake import LocalLake
    from swan_anomaly.modeling import resolve_base_model
    from swan_anomaly.video import extract_frames

    staging = tmp_path_factory.mktemp("staging") / DATASET
    frames = [f.to_dict() for f in extract_frames(demo_video, staging / "frames", every_seconds=1.0)]
    anomalies = synthesize_dataset(frames, staging, anomaly_ratio=0.5, seed=3, families=["salt_pepper_polygons"])
    write_manifest(build_manifest(frames, anomalies, staging, block_seconds=4.0), staging / "labels.csv")
    lake = LocalLake(tmp_path_factory.mktemp("lake"))
    lake.put_dataset(staging, DATASET)
    model = resolve_base_model("vit-micro-offline", tmp_path_factory.mktemp("models"))
    return lake, model


def _job(env: Path, job: str, lake, *args: str, extra_env: dict | None = None) -> dict:
    """Run ``jobs/{job}.py`` with the environment's interpreter, as a ``spark_python_task`` does; its result JSON."""
    run_id = "manual__runtime"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "PYTHONPATH", "SWAN_", "MLFLOW_"))}
    environ |= {"SWAN_SPARK_MASTER": "local[1]", "SWAN_HOME": str(lake.root.parent / "swan-home"), **(extra_env or {})}
    cmd = [
        env / "bin" / "python",
        ROOT / "jobs" / f"{job}.py",
        "--lake-root",
        lake.root,
        "--dataset-id",
        DATASET,
        "--run-id",
        run_id,
        *args,
    ]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=environ, cwd=lake.root.parent, timeout=900)
    assert proc.returncode == 0, f"{job} failed on the runtime's libraries:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return lake.read_result(run_id, job)


@pytest.mark.slow
def test_every_job_entrypoint_runs_on_the_runtime_libraries_with_the_run_libraries_on_top(wheel, raw_lake, tmp_path):
    lake, model = raw_lake
    pins = pinned_versions(RUNTIME)
    python312 = _runtime_python()
    if python312 is None:
        pytest.fail(f"no Python {runtime_fact('python')[0]} here (the runtime's): install it or set SWAN_RUNTIME_PYTHON")

    # the Spark jobs in the runtime's own Python, without torch (the ETL needs only transformers' config reader)
    spark_pins = {k: v for k, v in pins.items() if k != "torch"}
    spark_env = with_project_wheel(runtime_env(python312, spark_pins), wheel, spark_pins, tmp_path)
    etl = _job(spark_env, "etl", lake, "--model", model)
    assert etl["silver_rows"] == 40 and not etl["quarantined"] and etl["package_path"].startswith(str(spark_env)), etl
    augment = _job(spark_env, "augment", lake, "--seed", "1")
    assert augment["gold_rows"] > etl["silver_rows"] and set(augment["rows_by_split_label"]) == {"train", "val", "test"}, augment

    # training: the runtime's MLflow 3.0.1 and libraries; torch is this machine's CPU build (module doc)
    train_pins = {**pins, "torch": LOCAL_TORCH}
    train_env = with_project_wheel(runtime_env(sys.executable, train_pins), wheel, train_pins, tmp_path)
    # a file store: the workspace's tracking server is a service, not a SQL database the job opens (MLflow 3.0.1's
    # SQLAlchemy store also fails to import beside today's SQLAlchemy 2.1, which the runtime does not ship)
    uri = (tmp_path / "mlruns").as_uri()
    mlflow_env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "SWAN_EXPERIMENT": "swan-runtime"}
    mlflow_env["SWAN_MLFLOW_ARTIFACTS"] = str(tmp_path / "artifacts")
    args = ["--model", model, "--epochs", "1", "--batch-size", "16", "--generalization", "off", "--compile", "off"]
    train = _job(train_env, "train", lake, *args, extra_env=mlflow_env)
    assert train["images"]["train"] > 0 and train["mlflow_run_id"], train

    # what the job logged is readable with the runtime's MLflow: the run, and the served pyfunc scoring an image
    probe = f"""
import json, sys, base64, mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
run = mlflow.MlflowClient().get_run({train['mlflow_run_id']!r})
model = mlflow.pyfunc.load_model({train['model_uri']!r})
image = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
out = model.predict(pd.DataFrame({{"image": [image]}}))
print(json.dumps({{"mlflow": mlflow.__version__, "status": run.info.status, "score": float(out["anomaly_score"][0])}}))
"""
    image = next(p for p in sorted(lake.raw(DATASET).rglob("frame_*")) if p.suffix in (".png", ".jpg"))
    seen = json.loads(_run([train_env / "bin" / "python", "-c", probe, image], env={**os.environ, **mlflow_env}).stdout.splitlines()[-1])
    assert seen["mlflow"] == pins["mlflow"] and seen["status"] == "FINISHED"
    assert 0.0 <= seen["score"] <= 1.0
