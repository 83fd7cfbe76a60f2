"""An operator's browser for the screen tests: Playwright driving Debian's Chromium (``apt-get install
chromium``; Playwright's own browser builds are never downloaded), headless, at 1,400 x 900, logged in to
the live server as an operator. Without Chromium the tests that need it skip, saying so."""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from django.test import Client

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
# SCREENSHOTS=/tmp/screens keeps a full-page picture of every page a test looks at, to look at oneself.
SCREENSHOTS = os.environ.get("SCREENSHOTS")


class Screen:
    """The page, with what the tests ask of it."""

    def __init__(self, page, base: str) -> None:
        self.page, self.base = page, base

    def open(self, path: str, *, shot: str | None = None):
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        if SCREENSHOTS and shot:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{shot}.png"), full_page=True)
        return self.page

    def box(self, selector: str) -> dict:
        """The first match's place on the page (CSS pixels, from the top of the page) and its sizes."""
        found = self.page.eval_on_selector(
            selector,
            """e => { const r = e.getBoundingClientRect();
                      return {top: r.top + window.scrollY, left: r.left, width: r.width, height: r.height,
                              scrollWidth: e.scrollWidth, clientWidth: e.clientWidth,
                              scrollHeight: e.scrollHeight, clientHeight: e.clientHeight}; }""",
        )
        return found

    def overflowing(self, selector: str) -> list[str]:
        """The text of each match whose content does not fit in its box (clipped or spilling over)."""
        return self.page.eval_on_selector_all(
            selector,
            """es => es.filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)
                       .map(e => e.innerText || e.title)""",
        )

    def wider_than_its_container(self, selector: str = "#result_list") -> float:
        """How many pixels a table is wider than the box it sits in (the list's ``.results``, which scrolls
        sideways when it is): 0 when every column shows."""
        return self.page.eval_on_selector(
            selector, "t => Math.max(0, t.getBoundingClientRect().width - t.parentElement.clientWidth)"
        )

    def text(self, selector: str = "#content") -> str:
        return self.page.inner_text(selector)


@contextlib.contextmanager
def chromium() -> Iterator:
    """Headless Chromium (one per test module: starting it is most of a screen test's time)."""
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM) to see the screens")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    # Playwright's sync API parks its event loop in a greenlet of this thread, so Django's guard against
    # database calls from async code would refuse the tests' own (synchronous) setup and teardown; they
    # never run inside that loop.
    with mock.patch.dict(os.environ, {"DJANGO_ALLOW_ASYNC_UNSAFE": "true"}), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def operator_screen(browser, live_server, operator) -> Iterator[Screen]:
    """A page of ``browser`` logged in as ``operator`` (the session of Django's test client, as a cookie)."""
    client = Client()
    client.force_login(operator)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
        yield Screen(context.new_page(), live_server.url)
    finally:
        context.close()
