"""docker-compose.yaml, Dockerfile and docker/ checked against the code, without a Docker engine.

The compose file is parsed with PyYAML (anchors and merge keys resolved) and its ``${VAR:-default}``
values are interpolated as ``docker compose config`` does with a .env holding only the required
variables (:data:`SHELL`), i.e. the stack as ``docker compose up`` starts it after the documented
set-up. Every value the code also defines (setting names, the
endpoint's port, Airflow's API port and options, the pins of requirements.txt, Azurite's version)
is taken from the code or the repository, not repeated here.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from functools import cache
from importlib.util import find_spec
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from conftest import canonical_name, pins_of, requires_closure
from swan_anomaly.config import Settings

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("include", "plugins", "dags", "jobs")
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
REQUIRED_SERVICES = ("postgres", *AIRFLOW_SERVICES, "mlflow", "model-server", "azurite")
#: Azurite's fixed default ports (blob, queue, table); nothing in this repository defines them.
AZURITE_PORTS = (10000, 10001, 10002)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: AIRFLOW_HOME of the official Airflow image (an ENV of the base image, not of this repository).
IMAGE_AIRFLOW_HOME = "/opt/airflow"
#: The test runners requirements.txt pins for `make test`; the image installs neither them, nor their plugins, nor what only they need.
TEST_RUNNERS = ("pytest", "hypothesis")
#: Distributions that provide a SQLAlchemy driver module (the ``+driver`` of a URL).
DRIVER_DISTRIBUTIONS = {"psycopg2": ("psycopg2", "psycopg2-binary"), "asyncpg": ("asyncpg",)}
#: The .env of a new user who followed the header of docker-compose.yaml: the required variables.
SHELL = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "from-dot-env-0123456789",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-from-dot-env",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-key-from-dot-env",
    "FERNET_KEY": "fernet-key-from-dot-env",
}


class RequiredVariableError(ValueError):
    """``${VAR:?message}`` with ``VAR`` unset or empty: ``docker compose`` refuses to start and prints the message."""


# ---------------------------------------------------------------------------- parsing helpers


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _closing_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise AssertionError(f"unclosed '${{' in {text!r}")


def interpolate(text: str, shell: Mapping[str, str]) -> tuple[str, set[str]]:
    """``text`` after Compose interpolation with ``shell``, and the variable names it refers to.

    Supports what the Compose spec does here: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, with nested defaults, and ``${VAR:?message}`` (:class:`RequiredVariableError`).
    """
    out, names, i = [], set(), 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 1)
            body = text[i + 2 : end]
            match = _NAME.match(body)
            assert match, f"unsupported interpolation {text[i : end + 1]!r}"
            name, rest = match.group(), body[match.end() :]
            names.add(name)
            if rest.startswith((":-", "-")):
                default, inner = interpolate(rest.removeprefix(":").removeprefix("-"), shell)
                names |= inner
                value = shell.get(name)
                out.append(default if value is None or (rest.startswith(":-") and not value) else value)
            elif rest.startswith((":?", "?")):
                value = shell.get(name)
                if value is None or (rest.startswith(":?") and not value):
                    raise RequiredVariableError(f"required variable {name} is missing a value: {rest.lstrip(':?')}")
                out.append(value)
            else:
                assert rest == "", f"unsupported interpolation {text[i : end + 1]!r}"
                out.append(shell.get(name, ""))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            names.add(match.group())
            out.append(shell.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out), names


def resolve(value: str) -> str:
    return interpolate(value, SHELL)[0]


def environment(service: dict) -> dict[str, str]:
    """A service's environment as written (list or mapping form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def resolved_env(name: str) -> dict[str, str]:
    return {k: resolve(v) for k, v in environment(services()[name]).items() if v is not None}


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return [resolve(part) for part in (shlex.split(cmd) if isinstance(cmd, str) else cmd)]


def option(cmd: list[str], flag: str) -> str:
    assert flag in cmd, f"{flag} missing from {cmd}"
    return cmd[cmd.index(flag) + 1]


def mounts(service: dict) -> list[tuple[str, str]]:
    """``(source, target)`` of each volume entry (short or long syntax)."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            result.append((entry["source"], entry["target"]))
        else:
            source, target = resolve(entry).split(":")[:2]
            result.append((source, target))
    return result


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def volume_targets(service: str) -> set[PurePosixPath]:
    """Where a service mounts named volumes."""
    return {PurePosixPath(t) for s, t in mounts(services()[service]) if not is_bind(s)}


def bind_target(service: str, source: str) -> PurePosixPath:
    targets = [t for s, t in mounts(services()[service]) if s.rstrip("/") == source]
    assert len(targets) == 1, f"{service} must bind-mount {source} exactly once, got {targets}"
    return PurePosixPath(targets[0])


def published(service: str) -> dict[int, int]:
    """Container port -> host port of a service's published ports."""
    result = {}
    for entry in services()[service].get("ports") or []:
        parts = resolve(str(entry)).split(":")
        assert len(parts) >= 2, f"{service}: port {entry!r} is not published on the host"
        result[int(parts[-1].split("/")[0])] = int(parts[-2])
    return result


def all_strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in all_strings(key) + all_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return []


# ---------------------------------------------------------------------------- what the code reads

_QUOTED_SETTING = re.compile(r"""["']((?:SWAN|MLFLOW)_[A-Z0-9_]+)["']""")
_LITERAL_DEFAULT = re.compile(r"""\.get\(\s*["']((?:SWAN|MLFLOW)_[A-Z0-9_]+)["']\s*,\s*["']([^"']*)["']\s*\)""")


def _code_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]


@cache
def names_read_by_code() -> frozenset[str]:
    """``SWAN_*`` / ``MLFLOW_*`` names that appear as string literals in include/, plugins/, dags/, jobs/,
    and the ``MLFLOW_*`` variables MLflow itself reads (``mlflow.environment_variables``: its clients' login,
    its auth app's configuration)."""
    import mlflow.environment_variables as mlflow_env

    mlflow_names = {v.name for v in vars(mlflow_env).values() if hasattr(v, "name") and str(v.name).startswith("MLFLOW_")}
    return frozenset(n for text in _code_texts() for n in _QUOTED_SETTING.findall(text)) | mlflow_names


@cache
def literal_defaults() -> dict[str, set[str]]:
    """Defaults the code gives a setting as a literal: ``os.environ.get("SWAN_X", "default")``."""
    found: dict[str, set[str]] = {}
    for text in _code_texts():
        for name, default in _LITERAL_DEFAULT.findall(text):
            found.setdefault(name, set()).add(default)
    return found


@cache
def airflow_config() -> dict:
    """Airflow's own option table (config_templates/config.yml), read without importing Airflow."""
    package = Path(next(iter(find_spec("airflow").submodule_search_locations)))
    return yaml.load((package / "config_templates" / "config.yml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def stack_settings() -> Settings:
    """The settings the Airflow tasks of the stack see."""
    return Settings.from_env(resolved_env("airflow-scheduler"))


def requirement_pin(package: str) -> str:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [line.split("==", 1)[1].strip() for line in lines if line.split("==", 1)[0].strip().lower() == package]
    assert len(pins) == 1, f"requirements.txt must pin {package} once"
    return pins[0]


# ---------------------------------------------------------------------------- services


def test_required_services_exist():
    missing = sorted(set(REQUIRED_SERVICES) - set(services()))
    assert not missing, f"docker-compose.yaml lacks services {missing}"


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "mlflow", "model-server"])
def test_project_services_run_the_image_built_from_the_dockerfile(name):
    service, image = services()[name], compose()["x-swan-image"]
    assert service.get("image") == image["image"], f"{name} runs {service.get('image')!r}, not the project image"
    build = service.get("build") or {}
    dockerfile_path = ROOT / build.get("context", "-") / build.get("dockerfile", "Dockerfile")
    assert dockerfile_path.is_file(), f"{name} does not build this repository's Dockerfile: {build}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_share_the_common_environment_and_mounts(name):
    common = compose()["x-airflow-common"]
    env = environment(services()[name])
    differing = sorted(k for k, v in environment(common).items() if env.get(k) != v)
    assert not differing, f"{name} lacks or overrides the shared settings {differing}"
    missing = [m for m in common["volumes"] if m not in services()[name].get("volumes", [])]
    assert not missing, f"{name} lacks the shared mounts {missing}"


def test_environment_values_are_strings():
    """Compose rejects booleans and numbers-as-YAML in ``environment``; quote them."""
    bad = [(name, k) for name, s in services().items() for k, v in environment(s).items() if v is not None and not isinstance(v, str)]
    assert not bad, f"unquoted non-string environment values: {bad}"


def test_airflow_settings_are_airflow_options():
    options = airflow_config()
    env = resolved_env("airflow-scheduler")
    unknown = []
    for key in env:
        if key.startswith("AIRFLOW__"):
            section, option_name = key.removeprefix("AIRFLOW__").lower().split("__", 1)
            if option_name not in options.get(section, {}).get("options", {}):
                unknown.append(key)
    assert not unknown, f"no such Airflow options: {unknown}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    module, _, cls = env["AIRFLOW__CORE__AUTH_MANAGER"].rpartition(".")
    source = Path(next(iter(find_spec("airflow").submodule_search_locations))).parent.joinpath(*module.split(".")).with_suffix(".py")
    assert cls == "SimpleAuthManager" and f"class {cls}(" in source.read_text(), f"no auth manager {env['AIRFLOW__CORE__AUTH_MANAGER']}"
    user = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")[0].split(":")
    assert user == [resolved_env("airflow-init")["_AIRFLOW_WWW_USER_USERNAME"], "admin"], "the init writes the password of another user"
    passwords = PurePosixPath(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert passwords.parent in volume_targets("airflow-apiserver"), "the passwords file is on no volume the api-server shares"


def test_metadata_database_is_the_postgres_service():
    pg = resolved_env("postgres")
    url = urlparse(resolved_env("airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert url.scheme == "postgresql+psycopg2" and url.hostname == "postgres"
    assert (url.username, url.password, url.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])


def test_api_server_port_url_and_healthcheck():
    port = int(airflow_config()["api"]["options"]["port"]["default"])
    assert port in published("airflow-apiserver"), f"api-server must publish Airflow's API port {port}"
    execution = urlparse(resolved_env("airflow-scheduler")["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, execution.port, execution.path) == ("airflow-apiserver", port, "/execution/")
    check = " ".join(services()["airflow-apiserver"]["healthcheck"]["test"])
    assert f"http://localhost:{port}/api/v2/version" in check


# ---------------------------------------------------------------------------- settings of the code


def test_setting_names_are_ones_the_code_reads():
    """A typo in a ``SWAN_*``/``MLFLOW_*`` name (key or ``${VAR}``) would silently do nothing."""
    written = {k for s in services().values() for k in environment(s)}
    for text in all_strings(compose()):
        written |= interpolate(text, SHELL)[1]
    ours = {n for n in written if n.startswith(("SWAN_", "MLFLOW_"))}
    assert "SWAN_HOME" in ours
    unknown = sorted(ours - names_read_by_code())
    assert not unknown, f"settings no code in {CODE_DIRS} reads: {unknown}"


def test_passed_through_settings_default_to_the_code_defaults():
    """``SWAN_X: ${SWAN_X:-d}`` must not change what an unset SWAN_X means."""
    pattern = re.compile(r"^\$\{([A-Z0-9_]+):?-(.*)\}$")
    differing = {}
    for key, raw in environment(compose()["x-airflow-common"]).items():
        match = pattern.match(raw or "")
        if match and match.group(1) == key and key in literal_defaults() and match.group(2) not in literal_defaults()[key]:
            differing[key] = (match.group(2), sorted(literal_defaults()[key]))
    assert not differing, f"compose default vs code default: {differing}"


def test_project_root_mirrors_the_repository():
    """``PROJECT_ROOT`` (runtime.py) is two folders above the plugin: jobs, include, pyproject.toml there."""
    plugins = bind_target("airflow-scheduler", "./plugins")
    root = (plugins / "swan_airflow" / "runtime.py").parents[2]
    for folder in ("dags", "include", "jobs", "pyproject.toml"):
        assert bind_target("airflow-scheduler", f"./{folder}") == root / folder, f"./{folder} is not mounted at {root / folder}"
    env = resolved_env("airflow-scheduler")
    assert PurePosixPath(env["AIRFLOW__CORE__DAGS_FOLDER"]) == root / "dags"
    assert PurePosixPath(env["AIRFLOW__CORE__PLUGINS_FOLDER"]) == plugins
    assert PurePosixPath(env["PYTHONPATH"]) == root / "include"
    assert PurePosixPath(resolved_env("model-server")["PYTHONPATH"]) == bind_target("model-server", "./include") == root / "include"


def test_swan_home_is_a_volume_and_the_inbox_the_host_folder():
    settings = stack_settings()
    home = PurePosixPath(settings.home)
    assert home in volume_targets("airflow-scheduler"), f"SWAN_HOME {home} is not a volume"
    inbox = bind_target("airflow-scheduler", "./docker/inbox")
    assert inbox == PurePosixPath(settings.inbox_dir), f"the host inbox is at {inbox}, the ingest DAG reads {settings.inbox_dir}"


# ---------------------------------------------------------------------------- model server


def _local_server_command() -> tuple[str, set[str]]:
    """Module and flags of the command ``swan_anomaly.serving.local.ensure_local_server`` starts."""
    source = (ROOT / "include" / "swan_anomaly" / "serving" / "local.py").read_text()
    cmd = re.search(r"cmd = \[(.*?)\n    \]", source, re.DOTALL)
    assert cmd, "the server command of ensure_local_server moved; update this test"
    module = re.search(r'"-m",\s*"([\w.]+)"', cmd.group(1))
    return module.group(1), set(re.findall(r'"(--[a-z-]+)"', cmd.group(1)))


def test_model_server_is_started_like_the_code_starts_it():
    cmd = command(services()["model-server"])
    module, flags = _local_server_command()
    assert cmd[:3] == ["python", "-m", module], f"model-server runs {cmd[:3]}, the code runs python -m {module}"
    assert {c for c in cmd if c.startswith("--")} == flags
    assert option(cmd, "--host") == "0.0.0.0", "bound to loopback, the server is unreachable from the other containers"


def test_endpoint_url_name_and_registry_match_the_model_server():
    settings, cmd = stack_settings(), command(services()["model-server"])
    url = urlparse(settings.endpoint_url)
    code_port = urlparse(Settings.from_env({}).endpoint_url).port
    assert url.hostname == "model-server" and url.hostname in services()
    server_port = int(option(cmd, "--port"))
    assert url.port == code_port == server_port, f"endpoint port {url.port}, code default {code_port}, server {server_port}"
    assert code_port in published("model-server")
    assert f"http://localhost:{code_port}/health" in services()["model-server"]["healthcheck"]["test"]
    assert option(cmd, "--name") == settings.endpoint_name == Settings.from_env({}).endpoint_name
    assert option(cmd, "--model-name") == settings.model_name  # the champion it serves again after a restart
    # ensure_local_server refuses a server that reads another registry than the tasks; the URIs (and any
    # password in them) go through the environment, never the command line that `ps` shows everyone.
    server = resolved_env("model-server")
    assert (server["MLFLOW_TRACKING_URI"], server["MLFLOW_REGISTRY_URI"]) == settings.mlflow_uris
    assert not any("://" in part for part in cmd)


def test_the_model_server_and_the_tasks_share_one_token_and_it_is_published_on_loopback_only():
    tasks, server = resolved_env("airflow-scheduler"), resolved_env("model-server")
    assert tasks.get("SWAN_ENDPOINT_TOKEN", "") == server.get("SWAN_ENDPOINT_TOKEN", "") == ""  # no token in the file...
    home = PurePosixPath(server["SWAN_HOME"])
    assert home == PurePosixPath(stack_settings().home) and home in volume_targets("model-server")  # ...one token file for both
    sources = {
        name: [src for src, target in mounts(services()[name]) if PurePosixPath(target) == home]
        for name in ("model-server", "airflow-scheduler")
    }
    assert sources["model-server"] == sources["airflow-scheduler"] == ["swan-data"]
    for name in ("airflow-apiserver", "model-server", "mlflow", "azurite"):
        for entry in services()[name]["ports"]:
            assert resolve(str(entry)).startswith("127.0.0.1:"), f"{name} publishes {entry} beyond this machine"
    opened = interpolate(str(services()["mlflow"]["ports"][0]), SHELL | {"PUBLISH_ADDRESS": "0.0.0.0"})[0]
    assert opened == "0.0.0.0:5000:5000"  # the documented way to open them


def test_every_named_volume_of_the_project_image_is_made_writable_in_the_image():
    """A named volume starts with the image folder's ownership; one the image lacks is root's, and MLflow (uid 50000)
    could not create its auth database in /opt/mlflow/auth."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [mkdir] = re.findall(r"RUN mkdir -p ([^\\\n]+)", dockerfile)
    made = {PurePosixPath(p) for p in mkdir.split()}
    for name in ("mlflow", "model-server", "airflow-scheduler"):
        for target in volume_targets(name):
            if target.is_relative_to("/opt/airflow"):  # the Airflow base image's own home (airflow-init prepares it)
                continue
            assert any(target == m or target in m.parents for m in made), f"{name} mounts {target}; the Dockerfile does not make it"


def test_mlflow_needs_a_login_and_the_stack_does_not_start_without_its_password():
    cmd = command(services()["mlflow"])
    assert option(cmd, "--app-name") == "basic-auth"
    server, tasks = resolved_env("mlflow"), resolved_env("airflow-scheduler")
    import configparser

    ini = PurePosixPath(server["MLFLOW_AUTH_CONFIG_PATH"])
    assert bind_target("mlflow", "./docker/mlflow") == ini.parent
    auth = configparser.ConfigParser()
    auth.read(ROOT / "docker" / "mlflow" / ini.name)
    database = PurePosixPath(auth["mlflow"]["database_uri"].removeprefix("sqlite:///"))
    assert database.parent in volume_targets("mlflow"), "the users and permissions must outlive the container"
    # the pipeline logs in as the admin the auth app creates on its first start
    assert (
        (tasks["MLFLOW_TRACKING_USERNAME"], tasks["MLFLOW_TRACKING_PASSWORD"])
        == (
            server["MLFLOW_AUTH_ADMIN_USERNAME"],
            server["MLFLOW_AUTH_ADMIN_PASSWORD"],
        )
        == ("admin", SHELL["MLFLOW_AUTH_ADMIN_PASSWORD"])
    )
    assert resolved_env("model-server")["MLFLOW_TRACKING_PASSWORD"] == SHELL["MLFLOW_AUTH_ADMIN_PASSWORD"]  # it reads the registry
    raw = environment(compose()["x-airflow-common"])["MLFLOW_TRACKING_PASSWORD"]
    with pytest.raises(RequiredVariableError, match="MLFLOW_AUTH_ADMIN_PASSWORD"):
        interpolate(raw, {})  # no well-known default password: compose refuses to start without one
    with pytest.raises(RequiredVariableError, match="MLFLOW_FLASK_SERVER_SECRET_KEY"):
        interpolate(environment(services()["mlflow"])["MLFLOW_FLASK_SERVER_SECRET_KEY"], {})


def test_airflow_signs_its_tokens_and_encrypts_its_connections_with_keys_of_this_deployment():
    """The JWT secret defaulted to `airflow_jwt_secret`: anyone who reached the API could sign an admin's token with it. The
    Fernet key defaulted to none, so connection passwords were stored in clear. Compose now refuses to start without both."""
    env = environment(compose()["x-airflow-common"])
    options = {"AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW__API_AUTH__JWT_SECRET", "FERNET_KEY": "AIRFLOW__CORE__FERNET_KEY"}
    for variable, option_name in options.items():
        with pytest.raises(RequiredVariableError, match=variable):
            interpolate(env[option_name], {})
        assert interpolate(env[option_name], SHELL)[0] == SHELL[variable]
    setup = (ROOT / "docs" / "compose.md").read_text()
    assert "AIRFLOW__API_AUTH__JWT_SECRET=$(openssl rand" in setup and "FERNET_KEY=$(openssl rand -base64 32 | tr '+/' '-_')" in setup


@pytest.mark.slow
def test_mlflow_started_as_compose_starts_it_refuses_every_request_without_the_login(tmp_path):
    """MLflow's own basic-auth app with the compose file's flags, environment and auth config (the auth
    database moved to tmp_path): no write, no read without the login; the pipeline's login writes."""
    import subprocess
    import sys
    import time

    import httpx

    cmd, env = command(services()["mlflow"]), resolved_env("mlflow")
    ini = (ROOT / "docker" / "mlflow" / "basic_auth.ini").read_text()
    database = re.search(r"^database_uri = (.+)$", ini, re.M).group(1)
    (tmp_path / "auth.ini").write_text(ini.replace(database, f"sqlite:///{tmp_path}/auth.db"))
    port = 5990 + (hash(str(tmp_path)) % 9)
    args = [sys.executable, "-m", "mlflow", "server", "--app-name", option(cmd, "--app-name")]
    args += ["--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--host", "127.0.0.1", "--port", str(port)]
    server_env = {k: v for k, v in env.items() if k.startswith("MLFLOW_")} | {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini")}
    proc = subprocess.Popen(args, env=dict(os.environ) | server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        login = (
            resolved_env("airflow-scheduler")["MLFLOW_TRACKING_USERNAME"],
            resolved_env("airflow-scheduler")["MLFLOW_TRACKING_PASSWORD"],
        )
        create = {"name": "written-by-a-stranger"}
        assert httpx.post(f"{base}/experiments/create", json=create).status_code == 401
        assert httpx.post(f"{base}/registered-models/create", json={"name": "pickled"}).status_code == 401
        assert httpx.get(f"{base}/registered-models/search").status_code == 401
        assert httpx.post(f"{base}/experiments/create", json=create, auth=(login[0], "wrong-password-1")).status_code == 401
        assert httpx.post(f"{base}/experiments/create", json={"name": "pipeline"}, auth=login).status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)


# ---------------------------------------------------------------------------- MLflow and postgres


def test_mlflow_server_is_the_tracking_uri_with_postgres_and_served_artifacts():
    cmd, tracking = command(services()["mlflow"]), urlparse(stack_settings().tracking_uri)
    assert cmd[:4] == ["python", "-m", "mlflow", "server"]
    assert tracking.hostname == "mlflow" and tracking.port == int(option(cmd, "--port"))
    assert tracking.port in published("mlflow")
    assert "--serve-artifacts" in cmd
    artifacts = PurePosixPath(option(cmd, "--artifacts-destination"))
    assert artifacts in volume_targets("mlflow"), "MLflow artifacts are not on a named volume"
    allowed = option(cmd, "--allowed-hosts").split(",")
    for host in (tracking.netloc, f"localhost:{published('mlflow')[tracking.port]}"):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), f"MLflow would answer 403 to Host {host}"
    assert f"http://localhost:{tracking.port}/health" in services()["mlflow"]["healthcheck"]["test"]


def test_mlflow_database_is_created_by_the_postgres_init_sql():
    store = urlparse(option(command(services()["mlflow"]), "--backend-store-uri"))
    assert store.scheme == "postgresql+psycopg2" and store.hostname == "postgres"
    init = [(s, t) for s, t in mounts(services()["postgres"]) if t.startswith("/docker-entrypoint-initdb.d/")]
    assert len(init) == 1 and init[0][0].endswith(".sql"), f"postgres mounts no init SQL: {init}"
    sql = (ROOT / init[0][0]).read_text()
    assert re.search(rf"CREATE\s+DATABASE\s+{re.escape(store.path.lstrip('/'))}\s+OWNER\s+{store.username}\b", sql, re.I)
    assert re.search(rf"CREATE\s+USER\s+{store.username}\s+WITH\s+PASSWORD\s+'{re.escape(store.password)}'", sql, re.I)


# ---------------------------------------------------------------------------- Azurite and the lake


def test_azurite_service():
    azurite = services()["azurite"]
    version = json.loads((ROOT / "package.json").read_text())["devDependencies"]["azurite"]
    assert azurite["image"] == f"mcr.microsoft.com/azure-storage/azurite:{version}", "not the Azurite version the tests use"
    cmd = command(azurite)
    assert "--skipApiVersionCheck" in cmd and option(cmd, "--blobHost") == "0.0.0.0" and "--blobPort" not in cmd
    assert set(AZURITE_PORTS) <= set(published("azurite"))
    assert PurePosixPath(option(cmd, "--location")) in volume_targets("azurite")


def test_lake_connection_points_at_azurite_and_the_local_lake_is_the_default():
    env = resolved_env("airflow-scheduler")
    backends = (env["SWAN_LAKE_BACKEND"], env["SWAN_COMPUTE_BACKEND"])
    assert backends == ("local", "local"), f"lake and compute {backends}: local jobs need the local lake (plugins/swan_airflow/jobs.py)"
    conn = json.loads(env[f"AIRFLOW_CONN_{env['SWAN_LAKE_CONN_ID'].upper()}"])
    assert conn["conn_type"] == "wasb"
    parts = dict(p.split("=", 1) for p in conn["extra"]["connection_string"].split(";") if p)
    blob = urlparse(parts["BlobEndpoint"])
    assert (blob.hostname, blob.port) == ("azurite", AZURITE_PORTS[0])
    assert blob.path.strip("/") == parts["AccountName"]


def test_every_airflow_connection_is_one_the_code_uses():
    env = resolved_env("airflow-scheduler")
    conn_ids = {v for k, v in env.items() if k.endswith("_CONN_ID")}
    conn_ids |= {d for k, defaults in literal_defaults().items() if k.endswith("_CONN_ID") for d in defaults}
    unused = [k for k in env if k.startswith("AIRFLOW_CONN_") and k.removeprefix("AIRFLOW_CONN_").lower() not in conn_ids]
    assert not unused, f"connections no *_CONN_ID setting names: {unused}"


# ---------------------------------------------------------------------------- volumes, dependencies, init


def test_bind_mounts_exist_and_named_volumes_are_declared():
    declared, used = set(compose().get("volumes") or {}), set()
    for name, service in services().items():
        for source, _ in mounts(service):
            if is_bind(source):
                assert source.startswith("./"), f"{name} mounts {source}, outside the repository"
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses the undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def test_dependencies_exist_and_wait_for_init():
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        for target, spec in depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends):
            assert target in services(), f"{name} depends on unknown {target}"
            condition = spec.get("condition", "service_started")
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                check = (services()[target].get("healthcheck") or {}).get("test")
                assert check, f"{name} waits for {target} to be healthy, but it has no healthcheck"
    for name in AIRFLOW_SERVICES[1:]:
        init = services()[name]["depends_on"].get("airflow-init")
        assert init == {"condition": "service_completed_successfully"}, f"{name} does not await airflow-init: {init}"
    assert services()["airflow-init"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_init_migrates_then_creates_the_training_pool():
    script = " ".join(command(services()["airflow-init"]))
    lines = [line.strip() for line in script.splitlines()]
    pools = {}
    for line in lines:
        words = shlex.split(line) if "airflow pools set" in line else []
        if words:
            at = words.index("set")
            pools[words[at + 1]] = words[at + 2]
    assert pools.get("swan_training") == "1", f"airflow-init creates pools {pools}, not swan_training with 1 slot"
    migrate = next((i for i, line in enumerate(lines) if "airflow db migrate" in line), None)
    first_pool = next(i for i, line in enumerate(lines) if "airflow pools set" in line)
    assert migrate is not None and migrate < first_pool, "the pool needs the migrated database"
    # Pools the code names: pool="..." literally, or as the default of a setting (SWAN_POOL).
    literal = re.compile(r"""\bpool\s*=\s*["']([\w.-]+)["']""")
    used = {p for d in ("dags", "plugins") for f in (ROOT / d).rglob("*.py") for p in literal.findall(f.read_text())}
    used |= {d for name, defaults in literal_defaults().items() if name.endswith("_POOL") for d in defaults}
    assert used <= set(pools), f"pools the DAGs use but nothing creates: {sorted(used - set(pools))}"


def airflow_cli_commands() -> set[str]:
    from airflow.cli.cli_config import core_commands

    return {c.name for c in core_commands}


@pytest.mark.parametrize("name", [*AIRFLOW_SERVICES, "mlflow", "model-server"])
def test_services_of_the_project_image_keep_its_entrypoint(name):
    """The Airflow image's entrypoint sets umask 0002, gives an arbitrary uid a passwd entry and a home, and waits
    for the metadata database; then it runs a command starting with ``bash`` or ``python`` as given and any other
    as ``airflow <command>`` (the docker-stack docs, "Executing commands"). So: ``command:`` only, no ``entrypoint:``."""
    service = services()[name]
    assert "entrypoint" not in service, f"{name} replaces the image's entrypoint: {service['entrypoint']!r}"
    cmd, env = command(service), resolved_env(name)
    if cmd[0] in ("bash", "python"):
        if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env:  # it would wait for a SQLite database no one uses
            assert env.get("CONNECTION_CHECK_MAX_COUNT") == "0", f"{name} has no Airflow database; turn the entrypoint's wait off"
    else:
        words = cmd[1:] if cmd[0] == "airflow" else cmd
        assert words[0] in airflow_cli_commands(), f"{name} would run `airflow {' '.join(words)}`, no Airflow command"


@pytest.mark.parametrize("uid", [None, "1000"], ids=["AIRFLOW_UID-unset", "AIRFLOW_UID-set"])
def test_init_warns_while_airflow_uid_is_unset_and_hands_the_volumes_to_the_uid_of_the_services(tmp_path, uid):
    """The init script as Compose hands it to bash (with and without AIRFLOW_UID in .env), run here with the
    container's paths under tmp_path and `airflow` and `chown` recorded instead of run."""
    shell = SHELL | ({"AIRFLOW_UID": uid} if uid else {})
    service = services()["airflow-init"]
    cmd = [interpolate(part, shell)[0] for part in service["command"]]
    assert cmd[:2] == ["bash", "-c"], f"airflow-init runs {cmd[:2]}"

    def here(path: str) -> Path:
        return tmp_path / PurePosixPath(path).relative_to("/")

    env = {k: interpolate(v, shell)[0] for k, v in environment(service).items() if v is not None}
    env = {k: str(here(v)) if v.startswith("/opt/") else v for k, v in env.items()}
    calls, stubs = tmp_path / "calls.log", tmp_path / "bin"
    stubs.mkdir()
    for program in ("airflow", "chown"):
        (stubs / program).write_text(f'#!/bin/sh\necho "{program} $*" >> "{calls}"\n')
        (stubs / program).chmod(0o755)
    env["AIRFLOW_HOME"] = str(here(IMAGE_AIRFLOW_HOME))
    env["PATH"] = os.pathsep.join([str(stubs), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    assert ("WARNING!!!: AIRFLOW_UID not set!" in done.stdout) == (uid is None), done.stdout
    if uid is None:
        assert 'echo "AIRFLOW_UID=$(id -u)" >> .env' in done.stdout, "the warning does not show how to set it"
    log = calls.read_text().splitlines()
    airflow = [line.removeprefix("airflow ") for line in log if line.startswith("airflow ")]
    assert "db migrate" in airflow and airflow.index("db migrate") < min(i for i, c in enumerate(airflow) if c.startswith("pools set"))
    owners, chowned = set(), set()
    for line in log:
        if line.startswith("chown "):
            owner, *paths = [w for w in line.split()[1:] if not w.startswith("-")]
            owners.add(owner)
            chowned |= {PurePosixPath("/") / Path(p).relative_to(tmp_path) for p in paths}
    services_user = {interpolate(services()[name]["user"], shell)[0] for name in (*AIRFLOW_SERVICES[1:], "mlflow", "model-server")}
    assert owners == services_user == {f"{uid or 50000}:0"}, f"init hands the volumes to {owners}, the services run as {services_user}"
    missing = volume_targets("airflow-scheduler") - chowned
    assert not missing, f"the volumes {sorted(map(str, missing))} stay root's, unwritable by {services_user}"
    login = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
    assert login == {env["_AIRFLOW_WWW_USER_USERNAME"]: env["_AIRFLOW_WWW_USER_PASSWORD"]}


# ---------------------------------------------------------------------------- Dockerfile


@cache
def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, args = line.strip().partition(" ")
            steps.append((instruction.upper(), " ".join(args.split())))
    return steps


def _user_at(index: int) -> str:
    users = [args for instruction, args in dockerfile()[:index] if instruction == "USER"]
    return users[-1] if users else "airflow"


def copied_source(image_path: str) -> Path:
    """The repository file a ``COPY`` of the Dockerfile put at ``image_path``."""
    target = PurePosixPath(image_path)
    for instruction, args in dockerfile():
        if instruction != "COPY":
            continue
        *sources, dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            at = PurePosixPath(dest) / PurePosixPath(source).name if dest.endswith("/") else PurePosixPath(dest)
            if target == at:
                return ROOT / source
            if target.is_relative_to(at) and (ROOT / source).is_dir():
                return ROOT / source / target.relative_to(at)
    raise AssertionError(f"the Dockerfile copies nothing to {image_path}")


@cache
def image_requirements() -> tuple[int, dict[str, str]]:
    """Step and pins of the Dockerfile's ``pip install -r``: every file it reads, made as the build makes it,
    i.e. a file copied from the repository, or the output of a ``grep`` of one, run here on the repository's file."""
    steps = [(n, a) for n, (i, a) in enumerate(dockerfile()) if i == "RUN" and re.search(r"pip install .*-r ", a)]
    assert len(steps) == 1, f"one RUN should install the requirement files, got {steps}"
    step, run = steps[0]
    pins: dict[str, str] = {}
    for target in re.findall(r"-r (\S+)", run):
        made = re.search(rf"(grep\s[^>]*?)\s(\S+)\s*>\s*{re.escape(target)}(?:\s|$)", run)
        if made:
            source = copied_source(made.group(2))
            script = f'{made.group(1)} "$1"'
            text = subprocess.run(["bash", "-c", script, "bash", str(source)], capture_output=True, text=True, check=True).stdout
        else:
            text = copied_source(target).read_text()
        twice = sorted(set(pins) & set(pins_of(text)))
        assert not twice, f"{target} pins {twice} again: one pin each, in one file"
        pins |= pins_of(text)
    return step, pins


def test_dockerfile_base_is_the_slim_image_of_the_pinned_airflow():
    """The slim image: core Airflow only; the image adds the providers and drivers it needs (tests below)."""
    args = dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)
    base = next(a for i, a in dockerfile() if i == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"].removeprefix(">=")
    assert base == f"apache/airflow:slim-{requirement_pin('apache-airflow')}-python{python}"


def test_dockerfile_keeps_the_entrypoint_of_the_base_image():
    assert not [a for i, a in dockerfile() if i == "ENTRYPOINT"], "the Airflow image's entrypoint is replaced"


def test_dockerfile_installs_torch_cpu_then_requirements_then_the_project():
    runs = [(n, a) for n, (i, a) in enumerate(dockerfile()) if i == "RUN"]
    torch = [n for n, a in runs if f"torch=={requirement_pin('torch')}" in a and f"--index-url {CPU_INDEX}" in a]
    reqs, pins = image_requirements()
    project = [n for n, a in runs if re.search(r"pip install .*--no-deps", a)]
    assert torch and project, "the Dockerfile must install torch (CPU index), requirements.txt and the project"
    assert pins["torch"] == requirement_pin("torch") and pins["apache-airflow"] == requirement_pin("apache-airflow")
    assert torch[0] < reqs < project[0], "order: torch CPU, requirements.txt, project --no-deps"
    for n, a in runs:
        if "pip install" in a:
            assert _user_at(n) == "airflow", f"pip as {_user_at(n)}: the Airflow image installs packages as airflow"
    copies = [a.split()[-2:] for i, a in dockerfile()[: project[0]] if i == "COPY"]
    assert any(src == "include" for src, _ in copies), "the project is installed before include/ is copied"


def test_dockerfile_has_java_for_local_spark():
    java = [n for n, (i, a) in enumerate(dockerfile()) if i == "RUN" and "openjdk-17-jre-headless" in a]
    assert java and _user_at(java[0]) == "root"
    assert any(i == "ENV" and a.startswith("JAVA_HOME=") for i, a in dockerfile())


def test_dockerfile_runs_pip_check_after_every_install():
    """``pip check`` over the whole environment (the slim base's distributions, the lock, the drivers, the project)
    after the last ``pip install``: a broken requirement fails the build instead of the first task."""
    steps = dockerfile()
    checks = [n for n, (i, a) in enumerate(steps) if i == "RUN" and re.search(r"(^|&&\s*)pip check(\s|$)", a)]
    installs = [n for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install" in a]
    assert checks, "no RUN step runs pip check"
    assert checks[-1] > max(installs), "pip check runs before the last pip install"
    assert _user_at(checks[-1]) == "airflow", "pip check of another user's environment"


def test_the_image_installs_the_runtime_lock_without_its_test_tools():
    """requirements.txt also pins the test runners of ``make test``: the image leaves out them, their plugins and
    what only they need, and keeps every other pin (what the kept ones need above all), at the lock's version."""
    _, image = image_requirements()
    lock, dev = pins_of((ROOT / "requirements.txt").read_text()), pins_of((ROOT / "requirements-dev.txt").read_text())
    tools = {n for n in lock | dev | image if n in TEST_RUNNERS or n.startswith(tuple(f"{r}-" for r in TEST_RUNNERS))}
    assert {"pytest", "hypothesis"} <= tools, "neither lock pins the test runners"
    assert not tools & set(image), f"the image installs the test tools {sorted(tools & set(image))}"
    kept = {n: v for n, v in image.items() if n in lock}
    assert kept == {n: lock[n] for n in kept}, "the image changes pins of requirements.txt"
    dropped = set(lock) - set(kept)
    needed = requires_closure(set(image))
    assert not dropped & needed, f"the image leaves out {sorted(dropped & needed)}, which what it installs requires"
    only_tests = requires_closure(tools) - needed
    assert dropped <= only_tests, f"the image leaves out {sorted(dropped - only_tests)}, which are not test tools"
    assert not set(dev) & set(image), f"the image installs the dev lock's {sorted(set(dev) & set(image))}"
    assert not any("requirements-dev" in a for _, a in dockerfile()), "the Dockerfile reads requirements-dev.txt"
    ignored = {p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"requirements-dev.txt", "tests"} <= ignored, "the build context carries the dev lock or the tests"


def test_the_image_has_the_database_drivers_of_the_stack():
    """The slim image has no database driver: each URL of the stack needs its own, and Airflow 3 also opens an
    async engine on a URL it derives from SQL_ALCHEMY_CONN (``AIO_LIBS_MAPPING`` in airflow/settings.py)."""
    [settings] = [p / "settings.py" for p in map(Path, find_spec("airflow").submodule_search_locations) if (p / "settings.py").is_file()]
    aio = ast.literal_eval(re.search(r"AIO_LIBS_MAPPING = (\{[^}]*\})", settings.read_text()).group(1))
    airflow_db = urlparse(resolved_env("airflow-scheduler")["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    mlflow_db = urlparse(option(command(services()["mlflow"]), "--backend-store-uri"))
    drivers = {url.scheme.partition("+")[2] for url in (airflow_db, mlflow_db)} | {aio[airflow_db.scheme.partition("+")[0]]}
    _, image = image_requirements()
    missing = sorted(d for d in drivers if not set(DRIVER_DISTRIBUTIONS.get(d, (d,))) & set(image))
    assert not missing, f"the image installs no distribution of the drivers {missing} (drivers of the stack: {sorted(drivers)})"


def _provider_info(dist: md.Distribution) -> dict:
    """What a provider distribution registers (its get_provider_info), read without importing Airflow."""
    [entry] = [e for e in dist.entry_points if e.group == "apache_airflow_provider"]
    module = entry.value.split(":")[0]
    source = Path(next(iter(find_spec("airflow").submodule_search_locations))).parent.joinpath(*module.split(".")).with_suffix(".py")
    function = next(n for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "get_provider_info")
    return ast.literal_eval(next(n for n in ast.walk(function) if isinstance(n, ast.Return)).value)


def test_the_image_installs_every_provider_the_code_uses():
    """The slim image has no provider: the ones the code imports, and the ones that register the ``@task``
    decorators the DAGs use (``@task`` is ``@task.python``), are pinned in what the image installs."""
    _, image = image_requirements()
    texts = "\n".join(_code_texts())
    missing = []
    for module in sorted(set(re.findall(r"^\s*(?:from|import)\s+airflow\.providers\.([a-z_]+(?:\.[a-z_]+)*)", texts, re.M))):
        parts = module.split(".")
        candidates = {"apache-airflow-providers-" + "-".join(parts[:k]) for k in range(1, len(parts) + 1)}
        if not {canonical_name(c) for c in candidates} & set(image):
            missing.append(f"airflow.providers.{module}")
    decorators = {name or "python" for name in re.findall(r"@task(?:\.(\w+))?\b", texts)}
    assert "python" in decorators
    for dist in md.distributions():
        if any(e.group == "apache_airflow_provider" for e in dist.entry_points):
            registered = {d["name"] for d in _provider_info(dist).get("task-decorators", [])}
            if registered & decorators and canonical_name(dist.metadata["Name"]) not in image:
                missing.append(f"{dist.metadata['Name']} (@task.{sorted(registered & decorators)[0]})")
    assert not missing, f"used by the code but not installed by the image: {missing}"


def test_dockerfile_copies_the_project_where_compose_mounts_it():
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    assert {".venv", "node_modules", ".git"} <= set(ignored), "the build context would include the venv, node_modules or .git"
    for instruction, args in dockerfile():
        if instruction != "COPY":
            continue
        *sources, dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert not any(fnmatch.fnmatch(source, p) for p in ignored), f"COPY {source}, but .dockerignore excludes it"
            target = PurePosixPath(dest) / source if dest.endswith("/") else PurePosixPath(dest)
            mounted = [t for s, t in mounts(services()["airflow-scheduler"]) if s == f"./{source}"]
            assert not mounted or PurePosixPath(mounted[0]) == target, f"image has {source} at {target}, compose mounts it at {mounted[0]}"


def test_the_task_links_open_the_published_ports_not_the_container_names():
    """The Airflow UI's task links (MLflow run, model version, endpoint) are opened by a browser outside the stack."""
    s = stack_settings()
    assert s.mlflow_ui_url == "http://127.0.0.1:5000" and s.endpoint_ui_url == "http://127.0.0.1:5055"
    assert "mlflow:" in s.tracking_uri and "model-server:" in s.endpoint_url  # what the containers themselves use
    on_databricks = Settings.from_env(
        {
            k: interpolate(v, SHELL | {"SWAN_MLFLOW_UI_URL": "", "MLFLOW_TRACKING_URI": "databricks"})[0]
            for k, v in environment(services()["airflow-scheduler"]).items()
            if v is not None
        }
    )
    assert on_databricks.mlflow_ui_url == ""  # empty: the links open the workspace of the Databricks connection
