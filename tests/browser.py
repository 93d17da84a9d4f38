"""Headless Chromium driven over the DevTools protocol (websockets), for the dashboard tests:
set the window width, open a page, evaluate JavaScript in it, take full-page screenshots."""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
import time
from base64 import b64decode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import free_port

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
]


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (`make test` installs it: apt-get install chromium)")
    return found


class Page:
    """One browser tab."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive between answers; only the answer to this call matters
            reply = json.loads(self._socket.recv(timeout=30))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, width: int, height: int = 900) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"page never satisfied {expression!r}")

    def screenshot(self, path: Path) -> tuple[int, int]:
        """The whole page (not only the window) as PNG; returns the image's (width, height)."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        data = b64decode(shot["data"])
        path.write_bytes(data)
        return png_size(data)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """A headless Chromium with one blank tab, closed on exit."""
    port = free_port()
    process = subprocess.Popen(
        [
            chromium_binary(),
            *FLAGS,
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        targets = wait_for_targets(f"http://127.0.0.1:{port}/json/list", process)
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as socket:
            page = Page(socket)
            page.send("Page.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_targets(url: str, process: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode} before listening")
        try:
            targets: list[dict[str, Any]] = httpx.get(url, timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if any(t["type"] == "page" for t in targets):
            return targets
        time.sleep(0.1)
    raise RuntimeError("chromium never opened its DevTools port")
