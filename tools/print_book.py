#!/usr/bin/env python3
"""Print the whole book into one PDF with headless Chromium, with no network.

    .venv/bin/jupyter-book build --builder singlehtml --path-output _build/print \
        --warningiserror --keep-going .
    .venv/bin/python tools/print_book.py _build/print/_build/singlehtml \
        [-o _build/pdf/how-vits-work.pdf]

Prints Jupyter Book's single-page build (every page of _toc.yml in one HTML file) rather than the
pages of _build/html one by one merged afterwards: the PDF is then one document, with one run of
page numbers, a contents page and links between chapters that work inside it, and every font
embedded once. The folder is served on 127.0.0.1 and opened in Chromium with the helpers of
tools/check_book.py; every request to any other host is blocked and reported. The script waits for
every image (lazy ones forced) and for MathJax (served from the book's own mathjax/ folder) to
finish typesetting, then readies the page for paper: the theme's chrome (sidebars, header buttons,
prev/next links) is hidden and the article gets the full page width; code the author hid (hide-input
cells) is left out and anything else folded (exercise solutions, hidden outputs) is unfolded; long
code lines wrap; each chapter starts on a new page; short code cells, tables and figures are kept
whole; a table or formula still wider than the page is shrunk.

The PDF (A4, running title and page numbers in the footer) is written to a temporary file beside the
output and renamed into place, so a failed print never leaves half a PDF. Exits 0 when written, 1
when the page did not render completely (an image or MathJax failed, a request was blocked or a
local file was missing: nothing is written), 2 when it cannot run (no single-page build, no
browser). --outline adds bookmarks of the chapters and sections, and with them the tagged
(accessible) structure Chromium builds them from: 11.6 MB instead of 5.0 MB for this book. Check the
result with tools/check_pdf.py.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_book  # noqa: E402  (tools/check_book.py: server, flags and wait snippets)

# Built under _build/print (with its own Sphinx environment, so that switching builders does not
# make every `make html` re-read every page); the page lands in _build/print/_build/singlehtml.
BUILD_COMMAND = (".venv/bin/jupyter-book build --builder singlehtml --path-output _build/print "
                 "--warningiserror --keep-going .")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "_build" / "pdf" / "how-vits-work.pdf"

PAPER = "A4"
PAPER_MM = (210.0, 297.0)
MARGIN_MM = {"top": 14.0, "right": 15.0, "bottom": 16.0, "left": 15.0}
# Below 1 so that body text prints at about 10 pt and an output line of ~95 characters fits.
SCALE = 0.8
CSS_PX_PER_MM = 96 / 25.4

# The single-page build has no search index, yet the theme's <head> still links searchindex.js:
# its 404 is expected and harmless in print. Any other missing local file is a failure.
EXPECTED_MISSING = {"/searchindex.js"}

# Theme chrome hidden in print (display: none). Links inside it also lose their href: Chromium 156
# emits a link annotation for the hidden "skip to content" link ~150 times on every page (25,000
# links, 3 MB of PDF). Hidden, not removed: the theme's scripts still look some of them up.
CHROME_SELECTORS = [
    "#pst-skip-link", ".skip-link", "#pst-back-to-top", "#pst-scroll-pixel-helper",
    ".bd-header", ".bd-header-announcement", ".bd-sidebar-primary", ".bd-sidebar-secondary",
    ".bd-header-article", ".prev-next-footer", ".prev-next-area", ".bd-footer",
    ".bd-footer-article", ".bd-footer-content", ".search-button__wrapper", "dialog",
    ".primary-toggle", ".secondary-toggle", "label.overlay", "input.sidebar-toggle",
    "a.headerlink", "button.copybtn", ".theme-switch-button", ".thebe-launch-button",
]

PRINT_CSS = """
@media print {
  html, body { background: #fff !important; }
  /* The article alone, over the full width of the paper (the theme keeps a left margin). */
  .bd-page-width, .bd-container, .bd-container__inner, .bd-main, .bd-main .bd-content,
  .bd-main .bd-content .bd-article-container, .bd-article {
    max-width: none !important; width: 100% !important; min-width: 0 !important;
    margin: 0 !important; padding-left: 0 !important; padding-right: 0 !important;
  }
  /* Nothing cut off at the page edge: code wraps, outputs lose their scroll boxes. */
  pre, pre code, div.highlight pre, .output pre {
    white-space: pre-wrap !important; overflow-wrap: anywhere !important;
    overflow: visible !important; max-height: none !important;
  }
  div.highlight, .cell_output, .cell_output .output, .output.text_html, .table-wrapper {
    overflow: visible !important; max-height: none !important;
  }
  img { max-width: 100% !important; height: auto !important; }
  /* Figures, table rows and display maths stay whole (a long table may span pages, its header
     repeated); headings stay with what follows. */
  img, figure, tr, mjx-container[display="true"] { break-inside: avoid; }
  /* The themes keep every code block and table whole, which pushes a long one to the next page
     and leaves an empty cell frame or half a page blank: only short ones are kept whole (JS). */
  div.highlight, div[class*="highlight-"], .bd-main .bd-content table {
    break-inside: auto !important;
  }
  thead { display: table-header-group; }
  h1, h2, h3, h4, h5, h6 { break-after: avoid; }
  /* Every chapter (a document inlined by the single-page builder) starts on a new page, with
     the anchor that links to it (an empty span before its section) at the top of that page. */
  span[id^="document-"] { display: block; break-before: page; }
}
"""

# Paper cannot unfold anything, so folded content is printed as the author meant it to be read:
# code the author hid (a myst-nb "hide-input" cell: plotting and set-up boilerplate) is left out,
# anything else folded (hidden outputs, exercise solutions, dropdowns) is printed unfolded, without
# its "Show ..." toggle. Figures are outputs: none is ever left out. Returns [chrome, code, opened].
PREPARE_JS = """
(selectors) => {
  const chrome = document.querySelectorAll(selectors.join(', '));
  for (const el of chrome) {
    el.style.setProperty('display', 'none', 'important');
    for (const a of [el, ...el.querySelectorAll('a')]) a.removeAttribute('href');
  }
  let code = 0, opened = 0;
  for (const d of document.querySelectorAll('details.hide')) {  // myst-nb's hidden cell parts
    if (!d.querySelector('.cell_output')) { d.remove(); code++; continue; }
    d.open = true;
    d.querySelectorAll(':scope > summary').forEach(s => s.remove());
    opened++;
  }
  for (const d of document.querySelectorAll('details:not([open])')) { d.open = true; opened++; }
  for (const el of document.querySelectorAll('.toggle-hidden')) {  // sphinx-togglebutton
    el.classList.remove('toggle-hidden');
    opened++;
  }
  document.querySelectorAll('button.toggle-button').forEach(b => b.remove());
  return [chrome.length, code, opened];
}
"""

# Shrinks (CSS zoom) each table, display formula or image still wider than the article, measured
# with the print stylesheet at the printed width. Returns [fitted, still too wide] descriptions.
FIT_WIDE_JS = """
() => {
  const article = document.querySelector('.bd-article') || document.body;
  const right = article.getBoundingClientRect().right;
  const sel = 'table, mjx-container[display="true"], pre, img, .output.text_html > div';
  const fitted = [], wide = [];
  const describe = el => el.tagName.toLowerCase() + ' "'
      + (el.textContent || el.getAttribute('src') || '').trim().replace(/\\s+/g, ' ').slice(0, 50)
      + '"';
  for (const el of document.querySelectorAll(sel)) {
    if (el.parentElement && el.parentElement.closest('[data-print-fit]')) continue;
    const box = el.getBoundingClientRect();
    const need = Math.max(el.scrollWidth, box.width);
    const avail = right - box.left;
    if (need <= avail + 1 || avail <= 0) continue;
    const zoom = Math.max(avail / need, 0.5);
    el.style.zoom = zoom.toFixed(3);
    el.setAttribute('data-print-fit', '');
    fitted.push(describe(el));
    if (avail / need < 0.5) wide.push(describe(el));
  }
  return [fitted, wide];
}
"""

# Keeps each code cell, cell output, table or admonition shorter than a third of a printed page
# on one page (break-inside: avoid), so a page does not end with an empty code box whose lines all
# went on to the next page. Longer ones may still break: avoiding that would leave pages half empty.
KEEP_SHORT_BLOCKS_JS = """
(maxHeight) => {
  const sel = '.cell_input, .cell_output > .output, table, .admonition, div[class^="highlight-"]';
  let kept = 0;
  for (const el of document.querySelectorAll(sel)) {
    if (el.getBoundingClientRect().height <= maxHeight) {
      el.style.setProperty('break-inside', 'avoid', 'important');
      kept++;
    }
  }
  return kept;
}
"""

FOOTER_TEMPLATE = """
<div style="width: 100%; font-size: 8px; color: #555; padding: 0 {right}mm 0 {left}mm;
            display: flex; justify-content: space-between; font-family: sans-serif;">
  <span>{title}</span>
  <span><span class="pageNumber"></span> / <span class="totalPages"></span></span>
</div>
"""


def find_book_page(root: Path) -> str:
    """The one page of a single-page build (the target of index.html's redirect).

    Raises ValueError, with the command that builds the right folder, when `root` is missing, has
    no page, or is the multi-page build (printing _build/html would print its first page only).
    """
    if not root.is_dir():
        raise ValueError(f"no folder {root}")
    pages = [rel for rel in check_book.find_pages(root)
             if rel not in ("genindex.html", "search.html")
             and check_book.redirect_target(root / rel) is None]
    if not pages:
        raise ValueError(f"{root} has no HTML page")
    if len(pages) > 1:
        raise ValueError(f"{root} is a multi-page build ({len(pages)} pages), not the single-page "
                         "one")
    return pages[0]


def printed_area_px() -> tuple[int, int]:
    """Width and height of the printed area in CSS pixels, as Chromium lays the page out."""
    width = PAPER_MM[0] - MARGIN_MM["left"] - MARGIN_MM["right"]
    height = PAPER_MM[1] - MARGIN_MM["top"] - MARGIN_MM["bottom"]
    return round(width * CSS_PX_PER_MM / SCALE), round(height * CSS_PX_PER_MM / SCALE)


def count_pages(pdf: Path) -> int | None:
    """Pages in the PDF, via pypdf when it is installed (only the summary line needs it)."""
    try:
        import pypdf
    except ImportError:
        return None
    return len(pypdf.PdfReader(str(pdf)).pages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", type=Path,
                    help="the single-page HTML build, e.g. _build/print/_build/singlehtml")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                    help="the PDF to write (default: _build/pdf/how-vits-work.pdf)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                    help="Chromium executable (default: $CHROMIUM or /usr/bin/chromium)")
    ap.add_argument("--outline", action="store_true",
                    help="add an outline (bookmarks) and the tagged structure it is built from: "
                         "a PDF more than twice the size")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds allowed for loading, typesetting and printing (default 120)")
    args = ap.parse_args(argv)

    root = args.html_dir.resolve()
    try:
        rel = find_book_page(root)
    except ValueError as exc:
        print(f"error: {exc}: build the single-page book first: make pdf, or "
              f"bash tools/fetch_mathjax.sh && {BUILD_COMMAND}", file=sys.stderr)
        return 2
    browser = check_book.browser_tools(args.chromium)
    if browser is None:
        return 2
    chromium, sync_playwright, PlaywrightError = browser
    out = args.output.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    server, origin = check_book.serve(root)
    problems: list[str] = []

    def on_route(route) -> None:
        url = route.request.url
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme in ("data", "blob", "about") or url.startswith(origin + "/") or url == origin:
            route.continue_()
        else:
            problems.append(f"network request to another host (blocked): {url}")
            route.abort("blockedbyclient")

    def on_response(response) -> None:
        path = response.url[len(origin):]
        if (response.url.startswith(origin) and response.status >= 400
                and urllib.parse.urlsplit(path).path not in EXPECTED_MISSING):
            problems.append(f"missing local file (HTTP {response.status}): {path}")

    def on_request_failed(request) -> None:
        if (request.url.startswith(origin) and "ERR_ABORTED" not in (request.failure or "")
                and urllib.parse.urlsplit(request.url).path not in EXPECTED_MISSING):
            problems.append(f"local request failed ({request.failure}): "
                            f"{request.url[len(origin):]}")

    tmp_fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=".pdf.tmp")
    os.close(tmp_fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp's file is private; the PDF is an ordinary build output
    n_images = n_math = 0
    try:
        with sync_playwright() as pw:
            try:
                browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                             args=check_book.CHROMIUM_FLAGS)
            except PlaywrightError as exc:
                print(f"error: could not start Chromium ({chromium}): {exc}", file=sys.stderr)
                return 2
            try:
                context = browser.new_context(service_workers="block", accept_downloads=False,
                                              viewport={"width": 1280, "height": 900})
                context.set_default_timeout(args.timeout * 1000)
                context.route("**/*", on_route)
                page = context.new_page()
                page.on("response", on_response)
                page.on("requestfailed", on_request_failed)
                page.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))

                print(f"loading {rel} from {root} ...", flush=True)
                page.goto(f"{origin}/{urllib.parse.quote(rel)}", wait_until="load")
                images = page.evaluate(check_book.WAIT_IMAGES_JS)
                n_images = len(images)
                for img in images:
                    if not img["complete"] or img["w"] == 0 or img["h"] == 0:
                        problems.append(f"image not loaded: {img['src'][:120]!r}")
                if page.evaluate(check_book.MATH_PRESENT_JS):
                    try:
                        page.wait_for_function(check_book.MATHJAX_READY_JS, timeout=10_000)
                        page.evaluate(check_book.MATHJAX_DONE_JS)
                    except PlaywrightError as exc:
                        problems.append("MathJax did not load or did not finish typesetting: "
                                        f"{str(exc).splitlines()[0]}")
                    math = page.evaluate(check_book.MATH_REPORT_JS)
                    n_math = math["containers"]
                    if not n_math:
                        problems.append(f"{math['markup']} math element(s), no MathJax output")
                    problems.extend(f"math not typeset: {t!r}" for t in math["untypeset"][:3])
                    problems.extend(f"MathJax error: {t!r}" for t in math["errors"][:3])
                page.evaluate(check_book.FONTS_READY_JS)

                title = page.title()
                page.emulate_media(media="print")
                width, height = printed_area_px()
                page.set_viewport_size({"width": width, "height": height})
                hidden, hidden_code, unfolded = page.evaluate(PREPARE_JS, CHROME_SELECTORS)
                page.add_style_tag(content=PRINT_CSS)
                fitted, wide = page.evaluate(FIT_WIDE_JS)
                page.evaluate(KEEP_SHORT_BLOCKS_JS, height / 3)
                page.evaluate(check_book.FONTS_READY_JS)
                print(f"loaded in {time.perf_counter() - start:.1f} s: {n_images} images, "
                      f"{n_math} formulas typeset; left out {hidden} theme elements and "
                      f"{hidden_code} hidden code cells, unfolded {unfolded} folded parts, "
                      f"shrank {len(fitted)} wide tables or formulas to fit", flush=True)
                for what in wide:
                    print(f"warning: still wider than the page at half size: {what}")

                unique = list(dict.fromkeys(problems))  # dedupe, keep order
                if unique:
                    print(f"FAILED: the book did not render completely, no PDF written "
                          f"({len(unique)} problem(s)):")
                    for problem in unique:
                        print(f"  {problem}")
                    return 1
                print(f"printing to {out} ...", flush=True)
                page.pdf(
                    path=str(tmp), format=PAPER, scale=SCALE, print_background=True,
                    margin={side: f"{mm}mm" for side, mm in MARGIN_MM.items()},
                    display_header_footer=True, header_template="<span></span>",
                    footer_template=FOOTER_TEMPLATE.format(title=html.escape(title), **MARGIN_MM),
                    outline=args.outline, tagged=args.outline,
                )
            finally:
                browser.close()
        tmp.replace(out)
    finally:
        server.shutdown()
        server.server_close()
        tmp.unlink(missing_ok=True)

    pages = count_pages(out)
    size_mb = out.stat().st_size / 2**20
    shown = os.path.relpath(out) if out.is_relative_to(Path.cwd()) else out
    print(f"wrote {shown}: {pages if pages is not None else '?'} pages, {n_images} images, "
          f"{n_math} formulas, {size_mb:.1f} MB in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
