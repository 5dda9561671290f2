"""The architecture holds: layers import one way, no import cycles, one place for settings.

``include/`` (the domain library) imports no Airflow; ``jobs/`` (what Databricks runs) imports
neither ``plugins/`` nor ``dags/``; the modules of ``include/`` import each other without a cycle,
lazy imports inside functions included; only ``swan_anomaly.config`` reads a ``SWAN_*`` variable,
and every such variable the code or the docs name is a field of ``Settings``, documented in
``docs/configuration.md`` by a table generated from those fields.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "include"


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(INCLUDE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _module_name(path).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_the_domain_library_imports_no_airflow():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in {"airflow", "swan_airflow"})
        for p in _sources("include")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_jobs_import_neither_plugins_nor_dags():
    dag_modules = {p.stem for p in (ROOT / "dags").glob("*.py")}
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in {"airflow", "swan_airflow", *dag_modules})
        for p in _sources("jobs")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_domain_library_has_no_import_cycle():
    modules = {_module_name(p): p for p in _sources("include")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    assert len(modules) > 20 and any(graph.values())  # the scan sees the library and its imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _env_reads(path: Path) -> list[str]:
    """``SWAN_*`` names that ``path`` reads from the environment itself (os.environ.get, [], getenv)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in {"get", "getenv", "pop"}:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("SWAN_"):
                names.append(first.value)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value.startswith("SWAN_"):
                names.append(key.value)
    return names


def test_only_the_settings_read_swan_variables():
    readers = {
        str(p.relative_to(ROOT)): _env_reads(p)
        for p in _sources("include", "plugins", "dags", "jobs", "scripts")
        if p != INCLUDE / "swan_anomaly" / "config.py"
    }
    assert {k: v for k, v in readers.items() if v} == {}
    assert _env_reads(INCLUDE / "swan_anomaly" / "config.py") == []  # it reads through from_env's mapping, by field


def test_every_swan_variable_named_in_code_or_docs_is_a_setting():
    from swan_anomaly.config import Settings

    declared = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    texts = [*_sources("include", "plugins", "dags", "jobs", "scripts"), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts += [ROOT / "docker-compose.yaml", ROOT / "Makefile"]
    named = {name: str(p.relative_to(ROOT)) for p in texts for name in re.findall(r"\bSWAN_[A-Z0-9_]*[A-Z0-9]\b", p.read_text())}
    assert {name: where for name, where in named.items() if name not in declared} == {}
    assert len(declared) >= 50


def test_the_configuration_docs_table_is_generated_from_the_settings():
    from swan_anomaly.config import settings_table

    text = (ROOT / "docs" / "configuration.md").read_text()
    table = re.search(r"<!-- settings-table:begin -->\n(.*?)<!-- settings-table:end -->", text, re.S)
    assert table, "docs/configuration.md has no settings-table markers"
    assert table.group(1) == settings_table(), "regenerate it: python scripts/settings_table.py --write"


def test_the_settings_have_their_documented_defaults(tmp_path):
    from swan_anomaly.config import Settings

    s = Settings.from_env({"SWAN_HOME": str(tmp_path)})
    assert (s.lake_root, s.staging_dir, s.artifact_root) == (tmp_path / "lake", tmp_path / "staging", tmp_path / "mlflow" / "artifacts")
    assert s.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db" == s.registry_uri
    assert (s.schedule, s.retries, s.pool, s.model, s.endpoint_url) == (
        "@daily",
        2,
        "swan_training",
        "vit-tiny-offline",
        "http://127.0.0.1:5055",
    )
    assert (s.lake_backend, s.drift_action, s.allow_force_promote, s.label_check) == ("local", "warn", True, False)
    assert Settings.from_env({"SWAN_HOME": str(tmp_path), "SWAN_LAKE_ROOT": "/data/lake"}).lake_root == Path("/data/lake")
    assert Settings.from_env({"SWAN_DRIFT_ACTION": "FAIL", "SWAN_ENDPOINT_URL": "http://h:1/"}).drift_action == "fail"
    assert Settings.from_env({"SWAN_ENDPOINT_URL": "http://h:1/"}).endpoint_url == "http://h:1"


def _bad_value(field: dataclasses.Field, kind: type) -> str | None:
    if field.metadata["choices"]:
        return "bogus"
    return {bool: "ture", int: "2.5", float: "lots"}.get(kind)


def test_every_typed_setting_refuses_a_malformed_value_naming_the_variable():
    from swan_anomaly import ConfigError
    from swan_anomaly.config import Settings, field_kind

    checked = 0
    for field in dataclasses.fields(Settings):
        bad = _bad_value(field, field_kind(field))
        if bad is None:
            continue
        with pytest.raises(ConfigError, match=re.escape(field.metadata["env"]) + ".*" + re.escape(repr(bad))):
            Settings.from_env({field.metadata["env"]: bad})
        checked += 1
    assert checked >= 20
    with pytest.raises(ConfigError, match=r"SWAN_ENDPOINT_MIN_AUROC must be a number in \[0, 1\], got '1.5'"):
        Settings.from_env({"SWAN_ENDPOINT_MIN_AUROC": "1.5"})
    with pytest.raises(ConfigError, match="SWAN_RETRIES must be a whole number, at least 0, got '-1'"):
        Settings.from_env({"SWAN_RETRIES": "-1"})


def test_the_code_cites_only_documents_of_the_repository():
    """A docstring or comment that points at a document points at one that exists here (once: DESIGN.md, which did not)."""
    cited = {}
    for path in _sources("include", "plugins", "dags", "jobs", "scripts", "bench"):
        for name in re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", path.read_text()):
            cited.setdefault(name, str(path.relative_to(ROOT)))
    assert "docs/architecture.md" in cited  # the scan sees the citations
    missing = {name: where for name, where in cited.items() if not (ROOT / name).is_file() and not (ROOT / "docs" / name).is_file()}
    assert missing == {}
