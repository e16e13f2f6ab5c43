"""A headless Chromium driven by selenium, for the tests of the console proxy's web pages.

Debian's chromium and chromium-driver (tests/setup.sh installs them) and PyPI's selenium.
selenium's calls block, and the console proxy and the agents run in the test's own event
loop, so every call to the browser runs in a thread (asyncio.to_thread). This machine's
network is closed: Chromium is told not to reach out for updates, sync or field trials,
and selenium is handed the driver's path, so it never runs Selenium Manager (which
would try to download one).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--password-store=basic",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)
ENTER = "\ue007"  # selenium's Keys.ENTER, for type()
POLL = 0.1  # seconds between two looks at the page
START_TIMEOUT = 60.0  # seconds Chromium has to start (a few on 2 busy cores)


def artefacts() -> Path:
    """Where tests leave files to look at afterwards: $HVMESH_TEST_ARTEFACTS (relative to
    the repository's root), test-artefacts by default."""
    return ROOT / os.environ.get("HVMESH_TEST_ARTEFACTS", "test-artefacts")


def artefact(*parts: str) -> Path:
    """The path of an artefact under artefacts(), its directory made."""
    path = artefacts().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def unavailable() -> str | None:
    """Why the browser cannot run here; None when it can."""
    for what, path, package in (
        ("chromium", CHROMIUM, "Debian's chromium"),
        ("chromedriver", CHROMEDRIVER, "Debian's chromium-driver"),
    ):
        if not os.access(path, os.X_OK):
            return f"no {what} at {path}: install {package} (tests/setup.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium in this Python: pip install selenium (tests/setup.sh)"
    return None


class Browser:
    """One headless Chromium; each method runs its selenium call in a thread."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: `return ...` gives the value) in the page."""
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def wait_for(
        self, expression: str, timeout: float, what: str, describe: str = "document.title"
    ) -> Any:
        """Poll the page until JavaScript `expression` is truthy, for at most `timeout`
        seconds; its value. AssertionError naming `what`, with `describe`'s value (a
        JavaScript expression telling what the page shows) when it never is."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.js(f"try {{ return ({expression}); }} catch (e) {{ return null; }}")
            if value:
                return value
            if time.monotonic() >= deadline:
                shown = await self.js(
                    f"try {{ return ({describe}); }} catch (e) {{ return String(e); }}"
                )
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}; the page shows {shown!r}"
                )
            await asyncio.sleep(POLL)  # noqa: sleep (polled: a page's state has no watch here)

    async def type(self, css: str, keys: str) -> None:
        """Send `keys` (selenium's Keys for special keys) to the element at `css`."""
        from selenium.webdriver.common.by import By

        def send() -> None:
            self.driver.find_element(By.CSS_SELECTOR, css).send_keys(keys)

        await asyncio.to_thread(send)

    async def screenshot(self, path: Path) -> Path:
        """The page as a PNG at `path` (its directory made)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        png: bytes = await asyncio.to_thread(self.driver.get_screenshot_as_png)
        path.write_bytes(png)
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.driver.quit)


def _start(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    log = profile.parent / "chromedriver.log"
    service = Service(CHROMEDRIVER, log_output=str(log))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


@contextlib.asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Browser]:
    """A fresh headless Chromium, its profile under `tmp`; quit afterwards. Check
    unavailable() first."""
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    async with asyncio.timeout(START_TIMEOUT):
        driver = await asyncio.to_thread(_start, profile)
    browser = Browser(driver)
    try:
        yield browser
    finally:
        await browser.close()
        shutil.rmtree(profile, ignore_errors=True)
