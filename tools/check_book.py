#!/usr/bin/env python3
"""Check the built HTML book in a real (headless) browser, with no network.

    .venv/bin/python tools/check_book.py _build/html --screenshot chapters/01_model_zoo.html

Serves the folder on 127.0.0.1 (a free port, in a background thread), opens every content page in
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is downloaded), and
checks on each page that:

- every <img> has loaded (lazy images are forced) with a non-zero natural size;
- math is typeset: where the page has Sphinx math markup (class "math"), MathJax has produced
  mjx-container elements, shows no error (merror) and leaves no raw TeX delimiters visible;
- no Python traceback is shown (the text "Traceback (most recent call last)" or error outputs);
- no code block scrolls sideways and the page is no wider than the window (code fits the column);
- every internal link (relative or same-origin) leads to an existing file, and its #fragment, if
  any, to an element with that id (or name) on the target page;
- nothing is fetched from any host but the local server (every other request is blocked and
  reported), no local file the page loads is missing, and no JavaScript error is raised.

Prints one line per page and a summary; exits 0 when every page passes, 1 with the list of failures
otherwise, 2 when the check cannot run (no such folder, no browser).
`--screenshot PAGE` (repeatable) saves a full-page PNG of PAGE into <html>/../artifacts/<name>.png.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# Folders of the built site that hold assets, not pages.
NON_PAGE_DIRS = {"_static", "_sources", "_images", "_downloads", "mathjax", ".doctrees",
                 "jupyter_execute"}

WAIT_IMAGES_JS = """
async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) {
    img.loading = 'eager';           // force lazy images
    img.scrollIntoView({block: 'center'});
  }
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(resolve => {
    img.addEventListener('load', resolve, {once: true});
    img.addEventListener('error', resolve, {once: true});
    setTimeout(resolve, 15000);
  })));
  window.scrollTo(0, 0);
  return imgs.map(img => ({
    src: img.getAttribute('src') || '',
    w: img.naturalWidth, h: img.naturalHeight, complete: img.complete,
  }));
}
"""

MATH_PRESENT_JS = "() => document.querySelectorAll('.math').length"

MATHJAX_SCRIPT_JS = """
() => Array.from(document.scripts).some(s => /mathjax|tex-(mml-)?(chtml|svg)/i.test(s.src || ''))
"""

MATHJAX_READY_JS = """
() => !!(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)
"""

MATHJAX_DONE_JS = "() => window.MathJax.startup.promise.then(() => true)"

FONTS_READY_JS = "() => document.fonts.ready.then(() => true)"

MATH_REPORT_JS = r"""
() => {
  const maths = Array.from(document.querySelectorAll('.math'));
  const untypeset = [], raw = [];
  const delim = /\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{/;
  for (const m of maths) {
    if (!m.querySelector('mjx-container') && m.tagName.toLowerCase() !== 'mjx-container') {
      untypeset.push(m.textContent.trim().slice(0, 80));
    }
    const c = m.cloneNode(true);
    c.querySelectorAll('mjx-container').forEach(e => e.remove());
    const t = c.textContent.trim();
    if (delim.test(t)) raw.push(t.slice(0, 80));
  }
  // Raw TeX delimiters anywhere in the visible text, outside code, scripts and typeset maths.
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight')
      .forEach(e => e.remove());
  const text = body.textContent;
  const stray = text.match(/\\\((.{1,60}?)\\\)|\\\[(.{1,60}?)\\\]|\$\$(.{0,60}?)\$\$/s);
  if (stray) raw.push(stray[0].slice(0, 80));
  const errors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error], .MathJax_Error'))
      .map(e => (e.getAttribute('data-mjx-error') || e.textContent || '').trim().slice(0, 80));
  return {
    markup: maths.length,
    containers: document.querySelectorAll('mjx-container').length,
    untypeset, raw, errors,
  };
}
"""

TRACEBACK_JS = r"""
() => {
  const found = [];
  if ((document.body.innerText || '').includes('Traceback (most recent call last)')) {
    found.push('the text "Traceback (most recent call last)"');
  }
  const sel = ['.output.traceback', '.output.error', '.output_error', '.highlight-ipythontb',
               '.cell_output .traceback'];
  const n = document.querySelectorAll(sel.join(', ')).length;
  if (n) found.push(`${n} error output(s) (a cell shows an exception)`);
  return found;
}
"""

# Code must fit the text column: a code block that scrolls sideways, or a page wider than the window.
OVERFLOW_JS = r"""
() => {
  const wide = Array.from(document.querySelectorAll('div.highlight pre'))
      .filter(p => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1)
      .map(p => p.textContent.split('\n').reduce((a, l) => (l.length > a.length ? l : a), '')
                 .trim().slice(0, 60));
  const page = document.documentElement.scrollWidth > window.innerWidth + 1
      ? [`page ${document.documentElement.scrollWidth}px wide in a ${window.innerWidth}px window`] : [];
  return {wide, page};
}
"""

LINKS_JS = """
() => Array.from(document.querySelectorAll('a[href]')).map(a => [a.getAttribute('href'), a.href])
"""

DOM_IDS_JS = """
() => Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name'))
"""


class _IdCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def _static_ids(path: Path) -> frozenset[str]:
    parser = _IdCollector()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


REDIRECT_RE = re.compile(
    r"""<meta\s+http-equiv=["']?refresh["']?\s+content=["']\s*\d+\s*;\s*url=([^"'>]+)["']""",
    re.IGNORECASE,
)


def redirect_target(path: Path) -> str | None:
    """The URL of a meta-refresh redirect page (Jupyter Book's index.html), else None."""
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    match = REDIRECT_RE.search(head)
    return match.group(1).strip() if match else None


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # The browser drops connections it no longer needs (a navigation, a cancelled load).
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".woff": "font/woff",
        ".woff2": "font/woff2",
        ".svg": "image/svg+xml",
        ".json": "application/json",
    }

    def log_message(self, format, *args):  # noqa: A002 - silence per-request logging
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="book-server", daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def _capped(what: str, items: list[str], limit: int = 3) -> list[str]:
    lines = [f"{what}: {item!r}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"{what}: ... and {len(items) - limit} more")
    return lines


def find_pages(root: Path) -> list[str]:
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if rel.parts[0] in NON_PAGE_DIRS:
            continue
        pages.append(rel.as_posix())
    return pages


def resolve_internal(url: str, origin: str, root: Path) -> tuple[Path, str] | None:
    """Map a same-origin URL to (file, fragment); None when the URL is not inside the site."""
    parts = urllib.parse.urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}" != origin:
        return None
    rel = urllib.parse.unquote(parts.path).lstrip("/")
    target = (root / rel) if rel else root
    if target.is_dir() or rel.endswith("/") or not rel:
        target = target / "index.html"
    return target, urllib.parse.unquote(parts.fragment)


def check_links(links, page_rel: str, page_dom_ids: set[str], origin: str, root: Path) -> list[str]:
    failures = []
    seen = set()
    for raw, resolved in links:
        if not raw or raw.startswith(("javascript:", "mailto:", "tel:", "data:")):
            continue
        if raw == "#":
            continue
        if (raw, resolved) in seen:
            continue
        seen.add((raw, resolved))
        hit = resolve_internal(resolved, origin, root)
        if hit is None:
            continue  # external link: not followed (and never fetched)
        target, fragment = hit
        try:
            target.resolve().relative_to(root.resolve())
        except ValueError:
            failures.append(f"link {raw!r} points outside the site")
            continue
        if not target.is_file():
            failures.append(f"broken link {raw!r}: no file {target.relative_to(root).as_posix()}")
            continue
        if not fragment or target.suffix != ".html":
            continue
        ids = set(_static_ids(target))
        if target.resolve() == (root / page_rel).resolve():
            ids |= page_dom_ids
        if fragment not in ids:
            failures.append(
                f"broken link {raw!r}: no element with id {fragment!r} in "
                f"{target.relative_to(root).as_posix()}"
            )
    return failures


def browser_tools(name: str) -> tuple[str, Any, type[Exception]] | None:
    """The Chromium executable ``name`` names (a path or a command on PATH) and Playwright's
    ``sync_playwright`` and ``Error``; None, with the fix printed, when either is missing."""
    chromium = shutil.which(name) or name
    if not Path(chromium).is_file():
        print(f"error: no Chromium at {name}: run tools/install_browser.sh "
              "(Debian: apt-get install chromium) or pass --chromium", file=sys.stderr)
        return None
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: the playwright package is missing: .venv/bin/pip install -r requirements.txt",
              file=sys.stderr)
        return None
    return chromium, sync_playwright, PlaywrightError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path, help="the built HTML folder, e.g. _build/html")
    ap.add_argument("--screenshot", action="append", default=[], metavar="PAGE",
                    help="page (relative to html_dir) to save as a full-page PNG; repeatable")
    ap.add_argument("--artifacts", type=Path, default=None,
                    help="where screenshots go (default: <html_dir>/../artifacts)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                    help="Chromium executable (default: $CHROMIUM or /usr/bin/chromium)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per page (default 30)")
    args = ap.parse_args(argv)

    root = args.html_dir.resolve()
    if not (root / "index.html").is_file() and not any(root.glob("*.html")):
        print(f"error: {args.html_dir} has no HTML pages: build the book first (make book)",
              file=sys.stderr)
        return 2
    browser = browser_tools(args.chromium)
    if browser is None:
        return 2
    chromium, sync_playwright, PlaywrightError = browser

    pages = find_pages(root)
    wanted_shots = [s.removeprefix("./") for s in args.screenshot]
    failures: dict[str, list[str]] = {}
    for shot in wanted_shots:
        if shot not in pages:
            failures.setdefault(shot, []).append("screenshot requested but no such page was built")
    artifacts = (args.artifacts or (root.parent / "artifacts")).resolve()

    server, origin = serve(root)
    timeout_ms = args.timeout * 1000
    current: list[str] = []  # failures of the page being checked (filled by event handlers)
    start = time.perf_counter()
    totals = {"pages": 0, "images": 0, "math": 0}

    def on_route(route):
        url = route.request.url
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme in ("data", "blob", "about") or url.startswith(origin + "/") or url == origin:
            route.continue_()
        else:
            current.append(f"network request to another host (blocked): {url}")
            route.abort("blockedbyclient")

    def on_response(response):
        if response.url.startswith(origin) and response.status >= 400:
            current.append(f"missing local file (HTTP {response.status}): "
                           f"{response.url[len(origin):]}")

    def on_request_failed(request):
        # ERR_ABORTED: the browser cancelled a load itself (e.g. a page that navigates away).
        if request.url.startswith(origin) and "ERR_ABORTED" not in (request.failure or ""):
            current.append(f"local request failed ({request.failure}): {request.url[len(origin):]}")

    def on_page_error(error):
        current.append(f"JavaScript error: {error}")

    def check_page(page, rel: str) -> tuple[int, int]:
        """Run every check on one page; problems go to `current`. Returns (images, math)."""
        page.goto(f"{origin}/{urllib.parse.quote(rel)}", wait_until="load")
        images = page.evaluate(WAIT_IMAGES_JS)
        for img in images:
            if not img["complete"] or img["w"] == 0 or img["h"] == 0:
                current.append(f"image not loaded: {img['src'][:120]!r} ({img['w']}x{img['h']})")
        n_math = 0
        if page.evaluate(MATH_PRESENT_JS):
            if not page.evaluate(MATHJAX_SCRIPT_JS):
                current.append("the page has math markup but no MathJax script")
            else:
                try:
                    # MathJax's script is deferred, so it has run by the load event: a short wait.
                    page.wait_for_function(MATHJAX_READY_JS, timeout=min(timeout_ms, 3_000))
                    page.evaluate(MATHJAX_DONE_JS)
                except PlaywrightError as exc:
                    current.append("MathJax did not load or did not finish typesetting: "
                                   f"{str(exc).splitlines()[0]}")
            math = page.evaluate(MATH_REPORT_JS)
            n_math = math["containers"]
            if math["containers"] == 0:
                current.append(f"{math['markup']} math element(s) but no MathJax output")
            current.extend(_capped("math not typeset", math["untypeset"]))
            current.extend(_capped("raw TeX visible", math["raw"]))
            current.extend(_capped("MathJax error", math["errors"]))
        page.evaluate(FONTS_READY_JS)  # web fonts (theme icons, MathJax) requested and loaded
        current.extend(f"Python traceback shown: {found}" for found in page.evaluate(TRACEBACK_JS))
        overflow = page.evaluate(OVERFLOW_JS)
        current.extend(_capped("code block scrolls sideways", overflow["wide"]))
        current.extend(overflow["page"])
        links = page.evaluate(LINKS_JS)
        dom_ids = set(page.evaluate(DOM_IDS_JS))
        current.extend(check_links(links, rel, dom_ids, origin, root))
        return len(images), n_math

    shots: list[str] = []
    profile = tempfile.mkdtemp(prefix="check-book-profile-")  # a fresh user-data-dir
    try:
        with sync_playwright() as pw:
            try:
                context = pw.chromium.launch_persistent_context(
                    profile,
                    executable_path=chromium,
                    headless=True,
                    args=CHROMIUM_FLAGS,
                    service_workers="block",
                    viewport={"width": 1280, "height": 900},
                    accept_downloads=False,
                )
            except PlaywrightError as exc:
                print(f"error: could not start Chromium ({chromium}): {exc}", file=sys.stderr)
                return 2
            try:
                context.set_default_timeout(timeout_ms)
                context.route("**/*", on_route)
                page = context.pages[0] if context.pages else context.new_page()
                page.on("response", on_response)
                page.on("requestfailed", on_request_failed)
                page.on("pageerror", on_page_error)

                for rel in pages:
                    current.clear()
                    totals["pages"] += 1
                    target = redirect_target(root / rel)
                    if target is not None:
                        # A redirect stub (Jupyter Book's index.html): check where it points.
                        resolved = urllib.parse.urljoin(f"{origin}/{rel}", target)
                        problems = check_links([(target, resolved)], rel, set(), origin, root)
                        if problems:
                            failures.setdefault(rel, []).extend(problems)
                            print(f"FAIL {rel}: redirect to {target}, {len(problems)} problem(s)")
                        else:
                            print(f"ok {rel}: redirect to {target}")
                        continue
                    n_images = n_math = 0
                    try:
                        n_images, n_math = check_page(page, rel)
                        if rel in wanted_shots:
                            artifacts.mkdir(parents=True, exist_ok=True)
                            shot = artifacts / f"{Path(rel).stem}.png"
                            page.screenshot(path=str(shot), full_page=True)
                            shots.append(f"screenshot of {rel}: {shot}")
                    except PlaywrightError as exc:
                        current.append(f"could not check the page: {str(exc).splitlines()[0]}")
                    totals["images"] += n_images
                    totals["math"] += n_math
                    page_failures = list(dict.fromkeys(current))  # dedupe, keep order
                    if page_failures:
                        failures.setdefault(rel, []).extend(page_failures)
                        print(f"FAIL {rel}: {n_images} images, {n_math} math, "
                              f"{len(page_failures)} problem(s)")
                    else:
                        print(f"ok {rel}: {n_images} images, {n_math} math")
            finally:
                context.close()
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)

    for line in shots:
        print(line)
    elapsed = time.perf_counter() - start
    summary = (f"{totals['pages']} pages, {totals['images']} images, {totals['math']} math "
               f"in {elapsed:.1f} s")
    if failures:
        n = sum(len(v) for v in failures.values())
        print(f"\nFAILED: {n} problem(s) on {len(failures)} page(s) ({summary}):")
        for rel, problems in failures.items():
            for problem in problems:
                print(f"  {rel}: {problem}")
        return 1
    print(f"\nall pages ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
