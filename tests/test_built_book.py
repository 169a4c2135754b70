"""Checks on the built book: its pages load nothing from other sites, and the vendored JavaScript is wired in.

These tests look at whatever ``make book`` (``_build/html``) and ``make book-fast`` (``_build/fast/_build/html``)
left behind and skip when neither exists, so ``make test`` on a fresh clone skips them; ``make book`` runs this
file after building. ``BOOK_HTML_DIR`` points them at another folder.

Only tags that make the browser fetch something are checked (scripts, stylesheets and other ``<link>`` loads,
images, media, frames). Plain ``<a href>`` links to other sites, such as the launch buttons, the repository button
and the references, are navigation and are allowed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Attributes that make the browser issue a request, per tag.
FETCHING = {
    "script": ("src",),
    "link": ("href",),
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "audio": ("src",),
    "video": ("src", "poster"),
    "track": ("src",),
    "iframe": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
}
# <link rel=...> values that only describe a relation and fetch nothing.
NAVIGATION_RELS = {"canonical", "alternate", "author", "help", "license", "next", "prev", "index", "search",
                   "top", "up", "first", "last", "bookmark", "copyright", "glossary", "start", "contents"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
VENDORED = ("require.js", "widgets-assets-path.js", "embed-amd.js")
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)""", re.I)


def html_dirs() -> list[Path]:
    if os.environ.get("BOOK_HTML_DIR"):
        candidates = [Path(os.environ["BOOK_HTML_DIR"])]
    else:
        candidates = [ROOT / "_build" / "html", ROOT / "_build" / "fast" / "_build" / "html"]
    return [d for d in candidates if (d / "index.html").is_file()]


DIRS = html_dirs()
pytestmark = pytest.mark.skipif(not DIRS, reason="no built book (run `make book` first)")


def is_external(url: str) -> bool:
    url = url.strip()
    if url.startswith("//"):
        return True
    return urlsplit(url).scheme.lower() in {"http", "https", "ftp", "ws", "wss"}


class RequestCollector(HTMLParser):
    """Collects (tag, attribute, url) for every attribute of the page that makes the browser fetch a URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.requests: list[tuple[str, str, str]] = []
        self.script_srcs: list[str] = []
        self.has_widget_state = False
        self.uses_mathjax: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script":
            if attr.get("type") == WIDGET_STATE:
                self.has_widget_state = True
            if attr.get("src"):
                self.script_srcs.append(attr["src"])
                if "mathjax" in attr["src"].lower():
                    self.uses_mathjax.append(attr["src"])
        if tag == "link":
            rels = set(attr.get("rel", "").lower().split())
            if rels and rels <= NAVIGATION_RELS:
                return
        for name in FETCHING.get(tag, ()):
            value = attr.get(name)
            if not value:
                continue
            urls = [part.strip().split()[0] for part in value.split(",") if part.strip()] if name == "srcset" \
                else [value]
            self.requests.extend((tag, name, url) for url in urls)
        style = attr.get("style", "")
        self.requests.extend((tag, "style", url) for url in CSS_URL.findall(style))


def parse(page: Path) -> RequestCollector:
    collector = RequestCollector()
    collector.feed(page.read_text(encoding="utf-8", errors="replace"))
    return collector


def pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.relative_to(html_dir).parts)


def basename(src: str) -> str:
    return urlsplit(src).path.rsplit("/", 1)[-1]


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_pages_request_nothing_from_other_sites(html_dir: Path) -> None:
    found = []
    all_pages = pages(html_dir)
    assert all_pages, f"no HTML pages in {html_dir}"
    for page in all_pages:
        for tag, attr, url in parse(page).requests:
            if is_external(url):
                found.append(f"{page.relative_to(html_dir)}: <{tag} {attr}={url!r}>")
    assert not found, "pages load from other sites (the book must work offline):\n" + "\n".join(found)


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_stylesheets_import_nothing_from_other_sites(html_dir: Path) -> None:
    found = []
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        found += [f"{css.relative_to(html_dir)}: {url}" for url in CSS_URL.findall(text)]
    assert not found, "stylesheets load from other sites:\n" + "\n".join(found)


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_vendored_javascript_is_present(html_dir: Path) -> None:
    static = html_dir / "_static"
    for name in VENDORED + ("mathjax/tex-mml-chtml.js",):
        path = static / name
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing: run scripts/vendor_js.py and rebuild"
    fonts = sorted(p.name for p in static.glob("*.woff2"))
    assert fonts, "the ipywidgets Font Awesome fonts are missing next to embed-amd.js"
    # Every AMD module in embed-amd.js loads the fonts relative to its own address (a missing copy failed CI once,
    # on a page where the controls bundle's @font-face rule won the race).
    names = re.findall(r'define\("([^"]+)"', (static / "embed-amd.js").read_text(encoding="utf-8"))
    folders = {name.rsplit("/", 1)[0] for name in names if "/" in name}
    assert "@jupyter-widgets" in folders, names
    missing = [f"{folder}/{font}" for folder in sorted(folders) for font in fonts
               if not (static / folder / font).is_file()]
    assert not missing, f"fonts missing where the widget modules load them: {missing}; rerun scripts/vendor_js.py"


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_widget_pages_use_the_vendored_javascript(html_dir: Path) -> None:
    widget_pages = 0
    for page in pages(html_dir):
        info = parse(page)
        for src in info.uses_mathjax:
            assert basename(src) == "tex-mml-chtml.js" and "_static/mathjax/" in src, \
                f"{page.relative_to(html_dir)} loads MathJax from {src}"
        if not info.has_widget_state:
            continue
        widget_pages += 1
        names = [basename(s) for s in info.script_srcs]
        for name in VENDORED:
            assert name in names, f"{page.relative_to(html_dir)} has widget state but does not load _static/{name}"
            src = info.script_srcs[names.index(name)]
            assert not is_external(src) and "_static/" in src, f"{page.relative_to(html_dir)} loads {src}"
            assert (page.parent / urlsplit(src).path).resolve().is_file(), f"{src} does not exist for {page}"
        order = [names.index(n) for n in VENDORED]
        assert order == sorted(order), f"{page.relative_to(html_dir)}: scripts out of order: {VENDORED}"
    if widget_pages == 0:
        pytest.skip("no page of this build holds widget state")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


RAW_TABLE = re.compile(r"<p>\|[^<]*\n\|\s*(?:-{3}|—)")  # "| a | b |" then a "|---|" row, left as a paragraph


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_markdown_tables_in_cell_outputs_are_rendered_as_tables(html_dir: Path) -> None:
    """Generated Markdown tables (the paper-beside-ours claims) must become <table>s, not a paragraph of pipes."""
    raw = [str(page.relative_to(html_dir)) for page in pages(html_dir)
           if RAW_TABLE.search(page.read_text(encoding="utf-8", errors="replace"))]
    assert not raw, f"Markdown tables shown as text in {raw}: set nb_render_markdown_format to myst (or gfm)"


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_widgets_render_offline_in_a_browser(html_dir: Path) -> None:
    """Open the first page with widgets in headless Chromium with every host name unresolvable, and check that
    the HTML manager turned the saved widget state into live widgets."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed")
    page = next((p for p in pages(html_dir) if parse(p).has_widget_state), None)
    if page is None:
        pytest.skip("no page of this build holds widget state")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync",
               "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
               "--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    rendered = re.findall(r'<[a-z]+[^>]*\bclass="([^"]*\blm-Widget\b[^"]*)"', dom)
    assert rendered, f"no rendered widget in {page.relative_to(html_dir)}: the vendored HTML manager did not run"
    assert not any("jupyter-widgets-error" in c or "widget-error" in c for c in rendered), \
        f"a widget in {page.relative_to(html_dir)} failed to render: {rendered}"


def _playwright_browser():
    """A headless Chromium driven by Playwright (the system's Chromium: Playwright's own download needs the
    internet), or a skip saying what is missing."""
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e .[test])")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed")
    return chromium


async def _browser_report(page_paths: list[Path], html_dir: Path) -> dict[str, list[str]]:
    """Each page's problems (:func:`_page_problems`), ``PAGES_AT_ONCE`` pages open at a time in one browser."""
    import asyncio

    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu",
                                                                             "--host-resolver-rules=MAP * ~NOTFOUND"])
        slots = asyncio.Semaphore(PAGES_AT_ONCE)

        async def check(page_path: Path) -> list[str]:
            async with slots:
                return await _page_problems(browser, page_path)

        try:
            found = await asyncio.gather(*(check(path) for path in page_paths))
        finally:
            await browser.close()
    return {str(path.relative_to(html_dir)): problems for path, problems in zip(page_paths, found) if problems}


async def _page_problems(browser, page_path: Path) -> list[str]:
    """Open one built page with every host name unresolvable and return what went wrong: console errors, uncaught
    exceptions, failed loads, requests to other sites, broken images, widgets that did not render."""
    problems: list[str] = []
    page = await browser.new_page()
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"uncaught exception: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}: {r.failure}"))
    page.on("request", lambda r: problems.append(f"request to another site: {r.url}")
            if is_external(r.url) else None)
    try:
        await page.goto(page_path.resolve().as_uri(), wait_until="load", timeout=60_000)
        if parse(page_path).has_widget_state:
            try:
                await page.wait_for_selector(".lm-Widget", timeout=30_000)
            except Exception:  # noqa: BLE001 - reported below as "no widget rendered"
                pass
            if await page.locator(".lm-Widget").count() == 0:
                problems.append("the page holds widget state but no widget rendered")
            if await page.locator(".jupyter-widgets-error-widget, .widget-error").count():
                problems.append("a widget failed to render")
        await page.wait_for_timeout(500)  # late console errors
        broken = await page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0)"
                                     ".map(i => i.getAttribute('src'))")
        problems += [f"broken image: {src}" for src in broken]
        audio = await page.evaluate("Array.from(document.querySelectorAll('audio')).filter(a => a.error)"
                                    ".map(a => (a.currentSrc || '').slice(0, 60))")
        problems += [f"audio player cannot play: {src}" for src in audio]
    finally:
        await page.close()
    return problems


# Pages open this many at a time in one browser: a page spends much of its check waiting (for late console errors,
# for widgets), so overlapping pages keeps both cores busy. On the book's 2-core machine, 25 pages took 34 s one by
# one, 20 s four at a time and 19 s eight at a time.
PAGES_AT_ONCE = 4


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_every_page_opens_cleanly_in_a_browser(html_dir: Path) -> None:
    """Every built page, opened in headless Chromium offline: no console error, no uncaught exception, no failed
    or external request, no broken image or audio player, and widgets rendered where the page saved widget state."""
    import asyncio

    _playwright_browser()
    report = asyncio.run(_browser_report(pages(html_dir), html_dir))
    assert not report, "pages with problems in a browser:\n" + "\n".join(
        f"{name}:\n  " + "\n  ".join(problems[:10]) for name, problems in report.items())


COLAB_LINK = re.compile(r'https://colab\.research\.google\.com/github/[^/"]+/[^/"]+/blob/[^/"]+/([^"]+)')


@pytest.mark.parametrize("html_dir", DIRS, ids=lambda d: str(d.relative_to(ROOT)) if d.is_relative_to(ROOT) else str(d))
def test_launch_buttons_open_the_chapters_notebooks(html_dir: Path) -> None:
    """Every chapter's Colab button opens its generated .ipynb (which exists in the repository); pages without such
    a copy (the generated back matter) have no launch button."""
    chapters = sorted((html_dir / "chapters").glob("*.html"))
    assert chapters, f"no chapter pages in {html_dir}"
    for page in chapters:
        links = COLAB_LINK.findall(page.read_text(encoding="utf-8", errors="replace"))
        assert links, f"{page.name} has no Colab launch button"
        for rel in set(links):
            assert rel.endswith(".ipynb") and (ROOT / rel).is_file(), f"{page.name}: Colab opens {rel}, not a notebook"
    for page in pages(html_dir):
        if page.parent.name != "chapters":
            assert not COLAB_LINK.search(page.read_text(encoding="utf-8", errors="replace")), \
                f"{page.relative_to(html_dir)} has a launch button but no notebook copy"
