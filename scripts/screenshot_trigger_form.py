"""Screenshot the Airflow UI's trigger form of ``swan_anomaly_pipeline`` (the Params form) for the docs (README, docs/operations.md).

Usage::

    .venv/bin/python scripts/screenshot_trigger_form.py [--out docs/images/trigger_form.png]

1. creates a throw-away Airflow home (SQLite) in a temporary directory, with this project's dags/
   and plugins/, no example DAGs and the simple auth manager's "all admins" mode (no login page);
2. runs ``airflow db migrate``, then starts ``airflow api-server`` on a free local port and
   ``airflow dag-processor``, and waits until ``GET /api/v2/dags`` lists ``swan_anomaly_pipeline``
   (DAG import errors are printed if it never does);
3. starts headless Chromium and drives it over the Chrome DevTools Protocol: a websocket to the
   page target, with the ``websockets`` package that Airflow's API server already brings into the
   venv (no Selenium, Playwright or chromedriver); it opens the DAG page, clicks "Trigger" (real
   mouse events) and, since the form's accordion keeps one Params section open at a time, writes
   three PNGs at 1x device scale:

   - ``trigger_form.png`` (``--out``): the whole dialog with the **Data** section open;
   - ``trigger_form_2.png``: the Params form with **Training** open;
   - ``trigger_form_3.png``: the Params form with **Promotion** open;
4. stops every process it started (process groups) and removes the temporary directory.

Steps 1-3 and 4 are :func:`trigger_form`, a context manager that yields the page with the form
open; ``tests/test_trigger_form.py`` uses it to check the real form in Chromium.

Needs Chromium (Debian: ``apt-get install chromium``; another binary: ``--chromium PATH`` or
env ``CHROMIUM``) and the project venv. Takes about a minute, most of it Airflow starting.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "swan_anomaly_pipeline"
SECTIONS = ("Data", "Training", "Promotion")


class StepError(RuntimeError):
    """A step of the screenshot failed; the message names it."""


def log(msg: str) -> None:
    print(f"[screenshot] {msg}", flush=True)


def step_failed(step: str, exc: Exception) -> int:
    """Say which step failed and why (a StepError's message says it all); the exit status 1."""
    print(f"[screenshot] {StepFailed(step, exc)}", file=sys.stderr)
    return 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium(explicit: str | None) -> str:
    if explicit := explicit or os.environ.get("CHROMIUM"):
        if path := shutil.which(explicit):
            return path
        raise StepError(f"chromium: {explicit!r} (--chromium or env CHROMIUM) is not an executable")
    for cand in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(cand):
            return path
    raise StepError("chromium: no Chromium binary found; install it (Debian: `apt-get install chromium`) or pass --chromium PATH")


class Processes:
    """Child processes, each in its own process group, stopped together at the end."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise StepError(f"{name} exited early with code {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group may hold workers that outlive their leader: kill whatever is left of it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def airflow_env(tmp: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    pythonpath = [str(ROOT / "plugins"), str(ROOT / "include")]
    if env.get("PYTHONPATH"):
        pythonpath.append(env["PYTHONPATH"])
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        SWAN_HOME=str(tmp / "swan"),
        PYTHONPATH=os.pathsep.join(pythonpath),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        AIRFLOW__API__SECRET_KEY=secrets.token_urlsafe(32),
        AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
    )
    # A DATABASE connection of the caller's own deployment must not leak into the throw-away home.
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_AIRFLOW_DB"):
        env.pop(key, None)
    return env


def http_json(url: str, token: str | None = None, timeout: float = 5) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_for_dag(base: str, procs: Processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    token = None
    last = "api-server not answering"
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if token is None:
                token = http_json(f"{base}/auth/token")["access_token"]
            dags = http_json(f"{base}/api/v2/dags?dag_id_pattern={DAG_ID}", token)
            if any(d["dag_id"] == DAG_ID for d in dags.get("dags", [])):
                return
            last = "api-server up, DAG not parsed yet"
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            last = f"api-server not ready ({exc})"
        time.sleep(1)
    errors = ""
    with contextlib.suppress(Exception):
        errors = json.dumps(http_json(f"{base}/api/v2/importErrors", token), indent=2)
    raise StepError(
        f"wait for DAG: {DAG_ID} not listed by {base}/api/v2/dags after {timeout:.0f}s ({last}).\n"
        f"Import errors: {errors or '(unavailable)'}\n"
        f"dag-processor log:\n{procs.tail('dag-processor')}\napi-server log:\n{procs.tail('api-server')}"
    )


class CDP:
    """A minimal Chrome DevTools Protocol client over one websocket (``websockets`` sync client)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(ws_url, max_size=None, open_timeout=10))
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:  # events (no id) are ignored
                if "error" in msg:
                    raise StepError(f"chromium: {method} failed: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str, timeout: float = 30):
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            raise StepError(f"chromium: script failed: {details.get('exception', {}).get('description', details)}")
        return res.get("result", {}).get("value")

    def wait_js(self, expression: str, what: str, timeout: float = 60, interval: float = 0.3):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(interval)
        text = self.js("document.body ? document.body.innerText.slice(0, 1500) : '(no body)'")
        raise StepError(f"browser: timed out after {timeout:.0f}s waiting for {what}; page {self.js('location.href')} shows:\n{text}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.close()


def start_chromium(binary: str, tmp: Path, procs: Processes, width: int, height: int) -> CDP:
    profile = tmp / "chromium-profile"
    profile.mkdir()
    cmd = [
        binary,
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--remote-allow-origins=*",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")
    proc = procs.start("chromium", cmd)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StepError(f"chromium: did not open its DevTools port ({binary}):\n{procs.tail('chromium')}")
        time.sleep(0.2)
    port = int(port_file.read_text().splitlines()[0])
    deadline = time.monotonic() + 15
    while True:
        try:
            pages = [t for t in http_json(f"http://127.0.0.1:{port}/json/list") if t.get("type") == "page"]
            if pages:
                return CDP(pages[0]["webSocketDebuggerUrl"])
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise StepError(f"chromium: no page target on DevTools port {port}")
        time.sleep(0.2)


# --- browser steps (JavaScript run in the page, real mouse clicks through CDP) -------------------

JS_TRIGGER_BUTTON = """
(() => {
  const btns = [...document.querySelectorAll('button')].filter(b => b.getClientRects().length && !b.closest('[role=dialog]'));
  return btns.find(b => b.innerText.trim() === 'Trigger')
      || btns.find(b => /^trigger/i.test((b.getAttribute('aria-label') || b.innerText).trim()))
      || null;
})()
"""

JS_DIALOG = "([...document.querySelectorAll('[role=dialog]')].filter(d => d.getClientRects().length).pop() || null)"
JS_PARAMS_FORM = f"({JS_DIALOG}?.querySelector('[data-testid=config-form]') || null)"


def js_section_trigger(section: str) -> str:
    return f"({JS_DIALOG}?.querySelector('[data-scope=accordion][data-part=item-trigger][id$=\":trigger:{section}\"]') || null)"


def js_section_content(section: str) -> str:
    return f"({JS_DIALOG}?.querySelector('[data-scope=accordion][data-part=item-content][id$=\":content:{section}\"]') || null)"


def click(cdp: CDP, element_js: str, what: str) -> None:
    """A real left click (mouse events at the element's centre), as the UI's widgets expect."""
    pos = cdp.js(f"""
    (() => {{
      const el = {element_js};
      if (!el) return null;
      el.scrollIntoView({{block: 'center'}});
      const r = el.getBoundingClientRect();
      return [r.left + r.width / 2, r.top + r.height / 2];
    }})()
    """)
    if not pos:
        raise StepError(f"browser: no {what} to click")
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        cdp.call("Input.dispatchMouseEvent", type=kind, x=pos[0], y=pos[1], button="left", clickCount=1)
    # No hover or focus styles in the picture.
    cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)
    cdp.js("document.activeElement && document.activeElement.blur && document.activeElement.blur(); true")


def open_trigger_form(cdp: CDP) -> None:
    cdp.wait_js(f"!!{JS_TRIGGER_BUTTON}", "the DAG page's Trigger button", timeout=90)
    click(cdp, JS_TRIGGER_BUTTON, "Trigger button")
    cdp.wait_js(f"!!{JS_PARAMS_FORM}", "the trigger dialog with its Params form", timeout=30)
    missing = cdp.js(f'{json.dumps(list(SECTIONS))}.filter(s => !{JS_DIALOG}.querySelector(`[id$=":trigger:${{s}}"]`))')
    if missing:
        text = cdp.js(f"{JS_DIALOG}.innerText.slice(0, 2000)")
        raise StepError(f"browser: the trigger form lacks the Params sections {missing}; it shows:\n{text}")


def open_section(cdp: CDP, section: str, expect: str) -> None:
    """Expand one Params section (Airflow's accordion keeps one open at a time) and wait until it is still."""
    if not cdp.js(f"{js_section_trigger(section)}?.getAttribute('aria-expanded') === 'true'"):
        click(cdp, js_section_trigger(section), f"'{section}' section header")
    cdp.wait_js(f"{js_section_content(section)}?.getAttribute('data-state') === 'open'", f"the '{section}' section to open", timeout=15)
    # Wait for the expand animation: the dialog's height unchanged over a few polls, no running animations.
    last, still = None, 0
    deadline = time.monotonic() + 10
    while still < 3 and time.monotonic() < deadline:
        h = cdp.js(
            f"{JS_DIALOG}.getBoundingClientRect().height + ':' + document.getAnimations().filter(a => a.playState === 'running').length"
        )
        still = still + 1 if (h == last and h.endswith(":0")) else 0
        last = h
        time.sleep(0.2)
    text = cdp.js(f"{js_section_content(section)}.innerText")
    if expect not in text:
        raise StepError(f"browser: the '{section}' section does not show '{expect}'; it shows:\n{text[:1500]}")


def unclip_dialog(cdp: CDP, element_js: str) -> dict:
    """Let the dialog grow to its full height (no inner scrolling); return the element's page box."""
    return cdp.js(f"""
    (() => {{
      const dlg = {JS_DIALOG};
      for (const el of [dlg, ...dlg.querySelectorAll('*')]) {{
        const cs = getComputedStyle(el);
        if (/(auto|scroll)/.test(cs.overflowY) && el.scrollHeight > el.clientHeight + 1) {{
          el.style.overflowY = 'visible'; el.style.maxHeight = 'none'; el.style.height = 'auto';
        }}
      }}
      for (let el = dlg; el && el !== document.documentElement; el = el.parentElement) el.style.maxHeight = 'none';
      const r = {element_js}.getBoundingClientRect();
      return {{x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}};
    }})()
    """)


def screenshot(cdp: CDP, element_js: str, out: Path, width: int, height: int, margin: int) -> tuple[int, int]:
    """PNG of one element of the dialog (plus a margin), at 1x; a taller viewport if it does not fit."""
    box = unclip_dialog(cdp, JS_DIALOG)
    if box["y"] + box["height"] + 32 > height:
        taller = int(box["y"] + box["height"] + 64)
        cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=taller, deviceScaleFactor=1, mobile=False)
        time.sleep(0.8)
    box = unclip_dialog(cdp, element_js)
    x, y = max(0, box["x"] - margin), max(0, box["y"] - margin)
    clip = {"x": x, "y": y, "width": box["width"] + 2 * margin, "height": box["height"] + 2 * margin, "scale": 1}
    data = cdp.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True, timeout=60)["data"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(data))
    return round(clip["width"]), round(clip["height"])


#: (section, a title it must show, element, margin in px) for each picture: the whole dialog (no margin,
#: so none of the dimmed page behind it) with Data open, then only the Params form with Training,
#: then with Promotion open (a margin of the dialog's own white).
SHOTS = (
    ("Data", "Landing date", JS_DIALOG, 0),
    ("Training", "Compute backend", JS_PARAMS_FORM, 16),
    ("Promotion", "Force-promote reason", JS_PARAMS_FORM, 16),
)


def output_paths(out: Path) -> list[Path]:
    """``trigger_form.png``, ``trigger_form_2.png``, ``trigger_form_3.png`` (Data, Training, Promotion)."""
    return [out] + [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(2, len(SHOTS) + 1)]


class OpenForm(NamedTuple):
    """What :func:`trigger_form` yields: the page, and the throw-away Airflow's base URL (its REST API: ``/api/v2``)."""

    cdp: CDP
    base: str


class StepFailed(RuntimeError):
    """A step of :func:`trigger_form`'s set-up failed; ``step`` names it."""

    def __init__(self, step: str, exc: Exception):
        why = str(exc) if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
        super().__init__(f"step '{step}' failed: {why}")
        self.step = step


@contextlib.contextmanager
def trigger_form(
    chromium: str | None = None, *, width: int = 1400, height: int = 1800, timeout: float = 240, keep_tmp: bool = False
) -> Iterator[OpenForm]:
    """Steps 1-3 and 4 around the caller's: a throw-away Airflow and headless Chromium showing the trigger form.

    Args:
        chromium: the Chromium binary (default: env ``CHROMIUM``, else ``chromium`` on PATH).
        width, height: the viewport in CSS px.
        timeout: seconds to wait for the DAG to be parsed.
        keep_tmp: keep the temporary Airflow home and its logs.

    Yields:
        :class:`OpenForm`: the page, with the trigger dialog of the DAG open, and the base URL.

    Raises:
        StepFailed: a step of the set-up failed; the message names it and says why.
    """
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="swan-trigger-form-"))
    (tmp / "logs").mkdir()
    procs = Processes(tmp / "logs")
    cdp: CDP | None = None
    step = "setup"
    try:
        try:
            step = "find chromium"
            binary = find_chromium(chromium)
            port = free_port()
            env = airflow_env(tmp, port)
            base = f"http://127.0.0.1:{port}"

            step = "airflow db migrate"
            log(f"{step} (AIRFLOW_HOME={env['AIRFLOW_HOME']})")
            res = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True)
            if res.returncode:
                raise StepError(f"airflow db migrate failed ({res.returncode}):\n{(res.stdout + res.stderr)[-3000:]}")

            step = "start airflow"
            log(f"starting api-server on {base} and dag-processor")
            api_server = ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            procs.start("api-server", [sys.executable, "-m", "airflow", *api_server], env)
            procs.start("dag-processor", [sys.executable, "-m", "airflow", "dag-processor"], env)

            step = "wait for DAG"
            wait_for_dag(base, procs, timeout)
            log(f"{DAG_ID} is listed ({time.monotonic() - started:.0f}s)")

            step = "start chromium"
            cdp = start_chromium(binary, tmp, procs, width, height)
            cdp.call("Page.enable")
            cdp.call("Runtime.enable")
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
            cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])

            step = "open DAG page"
            # /auth/token/login sets the "all admins" session cookie, then redirects to the DAG page.
            cdp.call("Page.navigate", url=f"{base}/auth/token/login?next={base}/dags/{DAG_ID}")
            cdp.wait_js(f"location.pathname.endsWith('/dags/{DAG_ID}') && document.readyState === 'complete'", "the DAG page", timeout=60)

            step = "open trigger form"
            open_trigger_form(cdp)
        except Exception as exc:  # noqa: BLE001 - name the step of anything that fails
            raise StepFailed(step, exc) from exc
        yield OpenForm(cdp, base)
    finally:
        if cdp is not None:
            cdp.close()
        procs.stop_all()
        if keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "images" / "trigger_form.png",
        help="first PNG (default: docs/images/trigger_form.png); the others get _2 and _3 before the suffix",
    )
    parser.add_argument("--chromium", help="Chromium/Chrome binary (default: env CHROMIUM, else chromium on PATH)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS px (default 1400)")
    parser.add_argument("--height", type=int, default=1800, help="initial viewport height in CSS px (default 1800)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for the DAG to be parsed (default 240)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temporary Airflow home and logs (for debugging)")
    args = parser.parse_args(argv)
    outs = output_paths(args.out.resolve())

    started = time.monotonic()
    step = "setup"
    try:
        with trigger_form(args.chromium, width=args.width, height=args.height, timeout=args.timeout, keep_tmp=args.keep_tmp) as (cdp, _):
            for (section, expect, element_js, margin), out in zip(SHOTS, outs):
                step = f"screenshot of section {section}"
                open_section(cdp, section, expect)
                w, h = screenshot(cdp, element_js, out, args.width, args.height, margin)
                log(f"wrote {out} ({section}; {w}x{h} px, {out.stat().st_size // 1024} KiB)")
        log(f"done in {time.monotonic() - started:.0f}s")
        return 0
    except StepFailed as exc:
        return step_failed(exc.step, exc.__cause__)
    except Exception as exc:  # noqa: BLE001 - name the step of anything that fails
        return step_failed(step, exc)


if __name__ == "__main__":
    sys.exit(main())
