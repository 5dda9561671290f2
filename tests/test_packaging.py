"""What the package declares and what the lock pins: every import declared, every runtime dependency pinned."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from conftest import ROOT, canonical_name, requires_closure

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Distributions the bench and its tests use, never the product: requirements-dev.txt pins them, pyproject's `bench` extra names them.
DEV_ONLY = {"scikit-image"}


def _declared() -> dict[str, set[str]]:
    """``{"": dependencies, extra: its requirements}`` from pyproject.toml, canonical names."""
    project = PYPROJECT["project"]
    out = {"": {canonical_name(Requirement(r).name) for r in project["dependencies"]}}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        out[extra] = {canonical_name(Requirement(r).name) for r in reqs}
    return out


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions the package imports (at the top or inside functions) -> the modules importing them."""
    by_module: dict[str, set[str]] = {}
    for path in (ROOT / "include" / "swan_anomaly").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "swan_anomaly":
                    by_module.setdefault(".".join(name.split(".")[:2]), set()).add(str(path.relative_to(ROOT)))
    owners = md.packages_distributions()
    out: dict[str, set[str]] = {}
    for module, files in by_module.items():
        top = module.split(".")[0]
        assert top in owners, f"{top} (imported by {sorted(files)}) is not installed"
        dist = canonical_name(owners[top][0])
        if len(owners[top]) > 1 and "." in module:  # a namespace several distributions share (azure.*): the one holding the module
            folder = module.replace(".", "/") + "/"
            holders = [d for d in owners[top] if any(str(f).startswith(folder) for f in md.files(d) or ())]
            dist = canonical_name(holders[0]) if holders else dist
        if top == "databricks":  # a namespace several distributions share; the package uses the SDK
            dist = "databricks-sdk"
        if top == "mlflow":
            dist = "mlflow"
        out.setdefault(dist, set()).update(files)
    return out


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[canonical_name(req.name)] = str(req.specifier)
    return pins


def test_every_distribution_the_package_imports_is_declared_in_pyproject():
    declared = set().union(*_declared().values())
    missing = {d: sorted(f) for d, f in _imported_distributions().items() if d not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    # bench-only libraries stay out of the runtime dependencies
    assert not DEV_ONLY & (_declared()[""] | _declared().get("jobs", set()))


def test_the_runtime_lock_pins_every_runtime_dependency_and_nothing_of_the_dev_tools():
    """requirements.txt is the runtime lock: the closure of pyproject's runtime requirements, each pinned exactly."""
    runtime, dev = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-dev.txt")
    seen = requires_closure(_declared()[""] | _declared()["jobs"])
    # requirements.txt is the CPU lock: a CUDA build of torch (a GPU machine's) brings its own nvidia-* and triton
    seen = {n for n in seen if not (n.startswith("nvidia-") or n == "triton")}
    unpinned = sorted(n for n in seen if not runtime.get(n, "").startswith("=="))
    assert not unpinned, f"runtime dependencies missing from requirements.txt (or not pinned with ==): {unpinned}"
    assert not set(dev) & set(runtime), f"dev tools in the runtime lock: {sorted(set(dev) & set(runtime))}"
    assert "ruff" in dev and "ruff" not in runtime


def test_the_dev_lock_pins_what_the_dev_tools_need_beyond_the_runtime_lock():
    runtime, dev = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-dev.txt")
    unpinned = sorted(n for n in requires_closure(set(dev)) if not (runtime.get(n) or dev.get(n, "")).startswith("=="))
    assert not unpinned, f"needed by requirements-dev.txt but pinned nowhere: {unpinned}"


def _torch_install_line(tmp_path, **env) -> str:
    """The torch install command ``make`` would run for a fresh venv (``make -n``: printed, not run)."""
    import os
    import subprocess

    out = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), ".venv/.installed"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | env,
    ).stdout
    [line] = [ln for ln in out.splitlines() if '"torch==' in ln]
    return line


def test_make_installs_the_cpu_build_of_torch_on_linux_without_an_nvidia_driver(tmp_path):
    import os
    import platform

    cpu_index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o755)
    with_driver = _torch_install_line(tmp_path, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert cpu_index not in with_driver  # a GPU machine gets PyPI's build (CUDA)
    assert cpu_index not in _torch_install_line(tmp_path, TORCH_INDEX_URL="")  # the documented override
    if platform.system() == "Linux" and not any((p / "nvidia-smi").exists() for p in map(Path, os.environ["PATH"].split(os.pathsep))):
        assert cpu_index in _torch_install_line(tmp_path)  # this machine: Linux, no driver


def test_make_clean_never_installs_the_environment_first(tmp_path):
    """`clean` depended on `stop-endpoint`, which depends on the installed environment: on a fresh clone, or after the venv
    was removed or went stale, `make clean` first created it and installed every pinned package (about 1.5 GB)."""
    import shutil
    import subprocess

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "requirements-dev.txt", "pyproject.toml", "package.json", "package-lock.json"):
        shutil.copy(ROOT / name, tmp_path / name)
    planned = subprocess.run(["make", "-n", "clean"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "rm -rf .swan .airflow" in planned
    assert "pip install" not in planned and "-m venv" not in planned, planned
