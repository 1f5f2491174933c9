"""pytest plugin: headless Chromium from Debian's package, driven by Playwright.

    def test_page(page: Page) -> None:
        page.goto(url)

`page` is a new tab for each test, in one Chromium per test module (a fresh user-data
directory, no network features). Chromium is `/usr/bin/chromium`, installed by
`make browser` (scripts/debian-packages.sh browser, which `make test` runs), never by
`playwright install`. `chromium()` is the same launch for scripts (docs screenshots).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, as root, on a machine without network: nothing may try to phone home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ChromiumMissing(RuntimeError):
    pass


@contextlib.contextmanager
def chromium(**context_options: Any) -> Iterator[BrowserContext]:
    """Chromium with a fresh user-data directory, closed (and the directory removed) after."""
    if not CHROMIUM.exists():
        raise ChromiumMissing(
            f"{CHROMIUM} is missing: run `make browser` (it apt-get installs Debian's chromium)"
        )
    with tempfile.TemporaryDirectory(prefix="tti-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            **context_options,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[BrowserContext]:
    # Module scope: Playwright's sync API keeps an event loop of its own while it runs.
    try:
        with chromium(viewport={"width": 1280, "height": 900}) as context:
            yield context
    except ChromiumMissing as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def page(browser_context: BrowserContext) -> Iterator[Page]:
    """A new tab (its own sessionStorage); closed after the test."""
    tab = browser_context.new_page()
    try:
        yield tab
    finally:
        tab.close()
