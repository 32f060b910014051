"""A headless Chromium page driven over the DevTools protocol, for the UI tests.

Playwright is not a dependency; Debian's ``chromium`` plus the ``websockets`` client that
Prefect already installs are enough: start the browser with ``--remote-debugging-port=0``,
read the port it chose from ``DevToolsActivePort``, attach to its page and send protocol
commands (``Page.navigate``, ``Runtime.evaluate``, ``Input.insertText``, ...)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def chromium_executable() -> str:
    """Debian's chromium, installed with apt-get when missing (skips if that fails)."""
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and apt-get could not install it")
    return exe


class Page:
    """One browser page. ``evaluate`` runs JavaScript in it; ``wait_for`` polls an expression
    until it is truthy, so tests wait for the single-page apps to render, not a fixed time."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous browser's port
        self.proc = subprocess.Popen(
            [chromium_executable(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                              open_timeout=30)
        except BaseException:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def _port(self, file: Path, timeout: float = 60) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if file.exists() and file.read_text().strip():
                return int(file.read_text().split()[0])
            time.sleep(0.2)
        raise TimeoutError(f"chromium wrote no {file.name} in {timeout} s")

    def send(self, method: str, **params: Any) -> dict:
        """One protocol command; its result (events arriving meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, timeout: float = 120, what: str = "") -> Any:
        """Poll ``expression`` until truthy; on timeout fail with what the page shows."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what or expression!r}; the page shows:\n"
                             f"{self.text()[:3000]}")

    def wait_for_text(self, needle: str, timeout: float = 120) -> None:
        self.wait_for(f"document.body && document.body.innerText.includes({json.dumps(needle)})",
                      timeout, what=f"text {needle!r}")

    def type_into(self, selector: str, text: str) -> None:
        """Replace the value of the input matching ``selector`` as a user typing would (the
        UI frameworks listen to input events, which ``Input.insertText`` produces)."""
        found = self.evaluate(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return false;
            el.scrollIntoView({{block: 'center'}}); el.focus(); el.select && el.select();
            return true; }})()""")
        assert found, f"no element matches {selector!r}"
        self.send("Input.insertText", text=text)

    def click_text(self, text: str, tags: str = "button, a, [role=button]") -> None:
        """Click the first visible element among ``tags`` whose own text is ``text``."""
        clicked = self.evaluate(f"""(() => {{
            const want = {json.dumps(text)};
            const els = [...document.querySelectorAll({json.dumps(tags)})]
                .filter(e => e.innerText && e.innerText.trim() === want && e.offsetParent);
            if (!els.length) return false;
            els[0].scrollIntoView({{block: 'center'}}); els[0].click(); return true; }})()""")
        assert clicked, f"no visible {tags} labelled {text!r}"

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Close the browser: its whole process group (Debian's ``chromium`` is a wrapper
        script, and the browser forks zygote, GPU and renderer processes)."""
        with contextlib.suppress(Exception):  # already gone: the group is signalled below
            self.send("Browser.close")
        try:
            self.ws.close()
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
