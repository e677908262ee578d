"""Debian's Chromium, headless, driven through Debian's chromedriver of the same build (selenium):
a fresh profile each time, and on the way out the browser, the driver and every process they
started stopped: `with headless_chromium(profile_dir) as browser:`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What lets Chromium run here: no sandbox (root, no user namespaces), no GPU, and nothing it
# would fetch by itself (updates, sync, field trials), since only the loopback is reachable.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
)
T = TypeVar("T")


def _processes_using(profile_dir: Path) -> list[int]:
    """Processes whose command line names the profile: the browser and its helpers."""
    needle = str(profile_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _wait_until_gone(profile_dir: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while left := _processes_using(profile_dir):
        if time.monotonic() > deadline:
            raise AssertionError(f"browser processes left behind: {left}")
        time.sleep(0.05)


@contextlib.contextmanager
def headless_chromium(profile_dir: Path, *, time_zone: str = "UTC") -> Iterator[WebDriver]:
    """The browser, its clock in `time_zone` (what the page reads as the user's zone); its
    console (errors, CSP violations) readable with `browser.get_log("browser")`."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError(
            "the dashboard's specs need Debian's Chromium and its driver:"
            " apt-get install -y chromium chromium-driver (.ci/run installs them)"
        )
    profile_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), env={**os.environ, "TZ": time_zone})
    browser = webdriver.Chrome(options=options, service=service)
    try:
        yield browser
    finally:
        browser.quit()  # closes the browser, then stops the driver
        _wait_until_gone(profile_dir)


def wait_for(browser: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 30) -> T:
    """Until `condition` returns something truthy (then that), polling the page, never a sleep
    of a guessed length; fails past the timeout."""
    result: T = WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)
    return result


def console_errors(browser: WebDriver) -> list[dict[str, Any]]:
    """The page's console errors since the last call: a failed request, an exception, a
    violation of its content security policy."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry for entry in entries if entry["level"] == "SEVERE"]


def script(browser: WebDriver, source: str, *args: Any) -> Any:
    """`source` run in the page as a function body (`return ...`), with `arguments`."""
    return browser.execute_script(source, *args)
