"""A real headless Chromium for the kiosk tests and benchmark (Debian's chromium + chromedriver,
driven by selenium; nothing is downloaded: both binaries come from apt, see setup.sh)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
# Runs as root in CI (hence --no-sandbox); no network but the device's loopback API.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
         "--disable-backgrounding-occluded-windows", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--force-color-profile=srgb", "--lang=vi")


def _first(paths: tuple[str, ...]) -> str | None:
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def unavailable() -> str | None:
    """Why a browser cannot be driven here (None: it can)."""
    if _first(CHROMIUM) is None or _first(CHROMEDRIVER) is None:
        return ("Chromium or chromedriver is not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                "apt-get install chromium chromium-driver (sh setup.sh test does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def launch(width: int = 800, height: int = 480):
    """A fresh headless Chromium (its own profile directory) with a ``width`` x ``height`` viewport."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ck-chromium-")
    options = webdriver.ChromeOptions()
    binary, chromedriver = _first(CHROMIUM), _first(CHROMEDRIVER)
    if binary is None or chromedriver is None:
        raise SystemExit(f"no Chromium or no chromedriver here ({unavailable()})")
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height + 200}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for js_errors()
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    finally:
        if driver is None:  # it did not start: leave no profile behind
            shutil.rmtree(profile, ignore_errors=True)
    driver.ck_profile = profile  # type: ignore[attr-defined]  # removed with the driver (quit)
    set_viewport(driver, width, height)
    return driver


def set_viewport(driver, width: int, height: int, *, mobile: bool = False, scale: float = 1.0) -> None:
    """The page's viewport exactly (the window's size includes no browser chrome in headless mode,
    but is not exact either)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})


def close(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "ck_profile", ""), ignore_errors=True)


def js_errors(driver) -> list[str]:
    """Script errors the pages raised since the last call (uncaught exceptions, console errors
    of the scripts; failed network requests, e.g. while the daemon restarts, are not counted)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("source") == "javascript" or "Uncaught" in e.get("message", "")
            or (e.get("source") == "console-api" and e.get("level") == "SEVERE")]


def wait_js(driver, script: str, timeout: float = 60.0, what: str = ""):
    """Poll ``return (script)`` in the page until it is truthy; its value (AssertionError on timeout)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = driver.execute_script(f"return ({script});")
        except WebDriverException as exc:  # the page may be between loads
            last = f"{type(exc).__name__}: {exc}"
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or script} (last: {last!r})")
        time.sleep(0.05)


def screenshot(driver, path: Path) -> Path:
    """A PNG of the viewport."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = driver.get_screenshot_as_png()
    path.write_bytes(data)
    return path
