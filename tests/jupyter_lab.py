"""A JupyterLab server on the loopback address and Debian's Chromium, for the browser tests
(Playwright from PyPI drives the system browser: no browser download)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from shoelib.paths import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
NEEDS_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason=f"{CHROMIUM} is absent (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def lab_server(folder: Path, tmp_path: Path):
    """JupyterLab on 127.0.0.1 serving `folder`; yields (url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    env.pop("SHOELIB_WIDGETS", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         # nothing reaches the network: no news, no update check, no extension index
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "lab.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a loaded machine can take minutes to start it
        while time.monotonic() < deadline and server.poll() is None:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=120)


KERNEL_READY = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.sessionContext && widget.sessionContext.session
        && widget.sessionContext.session.kernel;
    return Boolean(kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle');
}"""


def run_all(page) -> None:
    """Run every cell, as the Run menu does (through JupyterLab's own command)."""
    page.wait_for_function(KERNEL_READY, timeout=180_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def open_and_run(playwright, url: str, token: str, notebook: str):
    """Launch the system Chromium, open `notebook` in the Lab at `url` and run all its cells.
    Returns (browser, page); the caller closes the browser."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.set_default_timeout(180_000)  # a loaded machine serves JupyterLab slowly
    page.goto(f"{url}/lab/tree/{notebook}?token={token}")
    run_all(page)
    return browser, page
