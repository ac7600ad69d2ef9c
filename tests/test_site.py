"""The built web book in a real browser, served from 127.0.0.1 with every other host cut off.

For every page of ``_toc.yml`` (and the landing page): no console or page error, no failed request and no HTTP
status >= 400, no request to another host (MathJax, RequireJS, the widget manager and the
fonts all come from the site), formulas typeset by MathJax, images loaded and described,
internal links and their ``#anchors`` resolving, no critical axe-core violation; on pages
with widgets, moving a slider changes the picture it drives; matplotlib ``to_jshtml``
animations step. A screenshot of the upsampling chapter goes to ``test-artifacts/``.

Needs Debian's ``chromium`` package and the pip packages ``playwright``,
``pytest-playwright`` and ``axe-playwright-python`` (never ``playwright install``: it
downloads a browser). The module is skipped when no chromium executable is found.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from conftest import BOOK_GROUP, ROOT, BookBuild
from test_book import toc_files

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium executable (install Debian's `chromium` package or set $CHROMIUM); "
        "the browser checks of the web book did not run",
        allow_module_level=True,
    )
from axe_playwright_python.sync_playwright import Axe  # noqa: E402  (after the skip: chromium first)

HTML = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT_PAGE = "book/06_upsampling.html"
#: Every page of the table of contents, and the landing page (a redirect to the first chapter).
PAGES = ["index.html"] + [entry + ".html" for entry in toc_files()]

#: axe-core options. Colour contrast is at most a "serious" violation and the slowest rule by far
#: on long pages; only critical violations fail a page.
AXE_OPTIONS = {"resultTypes": ["violations"], "rules": {"color-contrast": {"enabled": False}}}

pytestmark = [pytest.mark.xdist_group(BOOK_GROUP), pytest.mark.slow]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright launches Debian's chromium (no sandbox: tests may run as root in containers)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ["--no-sandbox"]}


@pytest.fixture(scope="session")
def site(book_build: BookBuild) -> Iterator[str]:
    """The built book served on 127.0.0.1 (a free port); its base URL."""
    book_build.require_success()
    handler = functools.partial(_QuietHandler, directory=str(book_build.html))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class Visit:
    """What the browser saw while loading one page."""

    console_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    off_host: list[str] = field(default_factory=list)


def open_page(page, site: str, path: str) -> Visit:
    """Load ``path`` with every request to another host aborted and recorded; wait for MathJax and widgets."""
    visit = Visit()
    host = urlsplit(site).netloc

    def route(r) -> None:
        if urlsplit(r.request.url).netloc == host:
            r.continue_()
        else:
            visit.off_host.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on(
        "console", lambda m: m.type == "error" and visit.console_errors.append(f"{m.text} ({m.location.get('url')})")
    )
    page.on("pageerror", lambda e: visit.console_errors.append(f"page error: {e}"))
    page.on("response", lambda r: r.status >= 400 and visit.failed.append(f"HTTP {r.status} {r.url}"))
    page.on(
        "requestfailed",
        lambda r: urlsplit(r.url).netloc == host and visit.failed.append(f"{r.failure} {r.url}"),
    )
    page.goto(site + path, wait_until="networkidle")
    # MathJax 3 typesets asynchronously once loaded; startup.promise settles when it is done.
    page.wait_for_function(
        "() => !document.querySelector('.math') || (window.MathJax && MathJax.startup && MathJax.startup.promise)"
    )
    page.evaluate("() => window.MathJax && MathJax.startup && MathJax.startup.promise.then(() => true)")
    # The widget manager renders each saved view into a div.widget-subarea it inserts before the view's <script>.
    page.wait_for_function(
        """() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')].every(
               s => s.previousElementSibling && s.previousElementSibling.classList.contains('widget-subarea')
                    && s.previousElementSibling.childElementCount > 0)""",
        timeout=30_000,
    )
    page.wait_for_load_state("networkidle")
    return visit


# ---------------------------------------------------------------- static page structure


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value or "")


@functools.cache
def static_ids(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(errors="replace"))
    return frozenset(parser.ids)


def target_file(url_path: str) -> Path:
    path = HTML / unquote(url_path).lstrip("/")
    return path / "index.html" if url_path.endswith("/") or path.is_dir() else path


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("path", PAGES)
def test_page(page, site, path):
    problems = page_problems(page, site, path)
    assert not problems, f"{path}:\n" + "\n".join(problems)


def page_problems(page, site: str, path: str) -> list[str]:
    """Everything wrong with one page, as readable lines."""
    visit = open_page(page, site, path)
    problems: list[str] = []
    problems += [f"console: {e}" for e in visit.console_errors]
    problems += [f"request failed: {f}" for f in visit.failed]
    problems += [f"request to another host: {u}" for u in visit.off_host]

    untypeset = page.evaluate(
        "() => [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container'))"
        ".map(e => e.textContent.slice(0, 60))"
    )
    problems += [f"formula not typeset by MathJax: {t!r}" for t in untypeset]

    images = page.evaluate(
        "() => [...document.images].map(i => ({src: i.currentSrc.slice(0, 80),"
        " loaded: i.complete && i.naturalWidth > 0, alt: (i.getAttribute('alt') || '').trim()}))"
    )
    problems += [f"image not loaded: {i['src']}" for i in images if not i["loaded"]]
    problems += [f"image without alt text: {i['src']}" for i in images if not i["alt"]]

    for href in page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)"):
        parts = urlsplit(href)
        if parts.scheme not in {"http", "https"} or parts.netloc != urlsplit(site).netloc:
            continue
        target = target_file(parts.path)
        if not target.is_file():
            problems.append(f"broken link: {href}")
        elif parts.fragment and target.suffix == ".html":
            own = target == target_file(urlsplit(page.url).path)
            ids = set(page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)")) if own else set()
            if unquote(parts.fragment) not in static_ids(target) | ids:
                problems.append(f"broken anchor: {href}")

    critical = [v for v in Axe().run(page, options=AXE_OPTIONS).response["violations"] if v.get("impact") == "critical"]
    problems += [
        f"axe critical {v['id']}: {v['help']} ({len(v['nodes'])}x, e.g. {v['nodes'][0]['target']})" for v in critical
    ]

    if page.locator("script[type='application/vnd.jupyter.widget-view+json']").count():
        problems += slider_problems(page)
    problems += animation_problems(page)

    if path == SCREENSHOT_PAGE:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "06_upsampling.png", full_page=True)
    return problems


def visible_pictures(page, output) -> str:
    """Digest of the images visible in the cell output ``output``."""
    sources = output.evaluate(
        "o => [...o.querySelectorAll('img')].filter(i => i.offsetParent !== null && i.getClientRects().length)"
        ".map(i => i.currentSrc)"
    )
    return hashlib.sha256("\n".join(sources).encode()).hexdigest() if sources else ""


def slider_problems(page) -> list[str]:
    """Every slider must drive the picture next to it on the static page (jslink, no kernel)."""
    sliders = page.locator(".cell_output .widget-slider")
    if not sliders.count():
        return ["the page stores widget state but shows no slider"]
    problems = []
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        slider.scroll_into_view_if_needed()
        output = slider.locator("xpath=ancestor::div[contains(@class, 'cell_output')][1]")
        before = visible_pictures(page, output)
        if not before:
            problems.append(f"slider {i} has no visible picture next to it")
            continue
        handle = slider.locator(".noUi-handle").first
        for key in ("End", "Home"):  # one of them moves the slider, wherever it starts
            handle.focus()
            page.keyboard.press(key)
            page.wait_for_timeout(200)
            if visible_pictures(page, output) != before:
                break
        else:
            problems.append(f"moving slider {i} did not change the picture")
    return problems


def animation_problems(page) -> list[str]:
    """matplotlib ``to_jshtml`` animations step when their "next frame" button is clicked."""
    problems = []
    images = page.locator("img[id^='_anim_img']")
    for i in range(images.count()):
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        before = image.get_attribute("src")
        animation = image.locator("xpath=ancestor::div[contains(@class, 'animation')][1]")
        animation.locator("button[onclick*='next_frame']").first.click()
        if image.get_attribute("src") == before:
            problems.append(f"animation {i} did not step")
    return problems
