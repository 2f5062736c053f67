#!/usr/bin/env python3
"""Check the printed book (a PDF) against the HTML it was printed from.

    .venv/bin/python tools/check_pdf.py _build/pdf/how-vits-work.pdf \
        --html _build/print/_build/singlehtml

Opens the PDF with pypdf and checks that:

- pages: it has at least one page per page of the book (the documents of the HTML; a print that
  stopped early, or that printed a redirect stub, has fewer), or --min-pages;
- contents: the title of every page of the book (chapters, references) is in the text, in order;
- text: every page has text outside its top and bottom 10 mm (running title, page numbers),
  except pages that show an image (a full-page figure);
- images: the PDF embeds at least as many raster images as the HTML has distinct raster <img>
  sources (png, jpg, gif, webp), and each one whose file the check can read has a PDF image of
  its exact pixel size (Chromium embeds figures unscaled), so no figure is missing;
- math: where the HTML has math markup, MathJax's own fonts (MathJax_*) are embedded and no raw
  TeX (\\( \\), \\[ \\], $$ $$, \\begin{) is left in the text;
- tracebacks: no page shows "Traceback (most recent call last)".

--html takes the single-page build that tools/print_book.py prints (_build/print/_build/singlehtml)
or the multi-page one (_build/html): all its content pages are read (titles in order within a
file). Prints one ok/FAIL line per check; exits 0 when all pass, 1 when one fails, 2 when the check
cannot run (no PDF, no HTML, no pypdf).
"""

from __future__ import annotations

import argparse
import collections
import html.parser
import re
import struct
import sys
import time
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_book  # noqa: E402  (tools/check_book.py: which files of a build are pages)

if TYPE_CHECKING:
    import pypdf

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}
MM = 72 / 25.4  # PDF points per millimetre
TRACEBACK = "Traceback (most recent call last)"
RAW_TEX_RE = re.compile(r"\\\((.{1,60}?)\\\)|\\\[(.{1,60}?)\\\]|\$\$(.{0,60}?)\$\$|\\begin\{",
                        re.DOTALL)
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


@dataclass
class BookHtml:
    """What the check needs from the HTML: its pages' titles, raster images and math."""

    titles: list[list[str]] = field(default_factory=list)  # per HTML file, in reading order
    images: dict[str, Path | None] = field(default_factory=dict)  # src -> file (None: data URI)
    math: int = 0


class _BookParser(html.parser.HTMLParser):
    """Collects, from one HTML page, the images, the math markup and the title of each document.

    A document's title is the first heading of the page, and in a single-page build also the first
    heading after each <span id="document-..."> (where the builder inlined another page).
    """

    def __init__(self, page: Path, book: BookHtml) -> None:
        super().__init__(convert_charrefs=True)
        self.page, self.book = page, book
        self.titles: list[str] = []
        book.titles.append(self.titles)
        self.want_title = True
        self.heading: list[str] | None = None  # text of the title heading being read
        self.skip_depth = 0  # > 0 inside a heading's "#" link or math, whose text is not the title
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        classes = (attr.get("class") or "").split()
        if tag == "span" and (attr.get("id") or "").startswith("document-"):
            self.want_title = True
        if "math" in classes:
            self.book.math += 1
        if tag == "img" and attr.get("src"):
            self._add_image(attr["src"])
        if self.heading is not None:
            self.depth += 1
            if self.skip_depth or "headerlink" in classes or "math" in classes:
                self.skip_depth += 1
        elif tag in HEADINGS and self.want_title:
            self.heading, self.depth, self.skip_depth = [], 0, 0

    def handle_endtag(self, tag: str) -> None:
        if self.heading is None:
            return
        if tag in HEADINGS and self.depth == 0:
            title = " ".join("".join(self.heading).split())
            if title:
                self.titles.append(title)
            self.heading, self.want_title = None, False
            return
        self.depth -= 1
        if self.skip_depth:
            self.skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.heading is not None and not self.skip_depth:
            self.heading.append(data)

    def _add_image(self, src: str) -> None:
        if src.startswith("data:"):
            if re.match(r"data:image/(png|jpe?g|gif|webp|bmp)[;,]", src):
                self.book.images.setdefault(src, None)
            return
        path = urllib.parse.unquote(urllib.parse.urlsplit(src).path)
        if Path(path).suffix.lower() in RASTER_SUFFIXES:
            self.book.images.setdefault(src, (self.page.parent / path).resolve())


def read_book_html(root: Path) -> BookHtml:
    """Parse every content page of a build (redirect stubs, genindex and search left out)."""
    book = BookHtml()
    for rel in check_book.find_pages(root):
        path = root / rel
        if rel in ("genindex.html", "search.html") or check_book.redirect_target(path):
            continue
        _BookParser(path, book).feed(path.read_text(encoding="utf-8", errors="replace"))
    return book


def raster_size(path: Path) -> tuple[int, int] | None:
    """Pixel (width, height) of a PNG, JPEG or GIF file from its header; None for other files."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"\xff\xd8":  # JPEG: walk the segments to the frame header (SOFn)
        i = 2
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
    return None


def pdf_images(reader: pypdf.PdfReader) -> tuple[dict[int, tuple[int, int]], list[bool]]:
    """The PDF's raster images ({object number: (width, height)}, soft masks left out) and, for
    each page, whether it shows one. Form XObjects are searched too."""
    images: dict[int, tuple[int, int]] = {}
    masks: set[int] = set()
    has_image: list[bool] = []

    def walk(resources, seen: set[int]) -> bool:
        found = False
        xobjects = resources.get("/XObject") if resources else None
        for ref in (xobjects.get_object().values() if xobjects else []):
            obj = ref.get_object()
            key = getattr(ref, "idnum", id(obj))
            if obj.get("/Subtype") == "/Image":
                images[key] = (int(obj["/Width"]), int(obj["/Height"]))
                for mask in ("/SMask", "/Mask"):
                    if hasattr(obj.get(mask), "idnum"):
                        masks.add(obj[mask].idnum)
                found = True
            elif obj.get("/Subtype") == "/Form" and key not in seen:
                seen.add(key)
                found = walk(obj.get("/Resources"), seen) or found
        return found

    for page in reader.pages:
        has_image.append(walk(page.get("/Resources"), set()))
    return {k: v for k, v in images.items() if k not in masks}, has_image


def pdf_fonts(reader: pypdf.PdfReader) -> set[str]:
    """Names of the fonts the pages use (subset prefixes like ABCDEF+ removed)."""
    names: set[str] = set()
    for page in reader.pages:
        resources = page.get("/Resources")
        fonts = resources.get("/Font") if resources else None
        for ref in (fonts.get_object().values() if fonts else []):
            font = ref.get_object()
            name = font.get("/BaseFont")
            if name is None and font.get("/FontDescriptor") is not None:
                name = font["/FontDescriptor"].get_object().get("/FontName")
            if name is not None:
                names.add(str(name).lstrip("/").split("+", 1)[-1])
    return names


def page_texts(reader: pypdf.PdfReader, band_mm: float) -> tuple[list[str], list[str]]:
    """Each page's full text and its body text (outside the top and bottom `band_mm`)."""
    full, body = [], []
    for page in reader.pages:
        top = float(page.mediabox.top) - band_mm * MM
        bottom = float(page.mediabox.bottom) + band_mm * MM
        parts: list[str] = []

        def visit(text, cm, tm, font, size, parts=parts, top=top, bottom=bottom) -> None:
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            if text.strip() and bottom <= y <= top:
                parts.append(text)

        full.append(page.extract_text(visitor_text=visit))
        body.append("".join(parts).strip())
    return full, body


def squash(text: str) -> str:
    """Text compared without case, whitespace or ligatures (the PDF has "ﬁ", the HTML "fi")."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _pages_list(numbers: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pdf", type=Path, help="the printed book, e.g. _build/pdf/how-vits-work.pdf")
    ap.add_argument("--html", type=Path, required=True,
                    help="the HTML it was printed from, e.g. _build/print/_build/singlehtml")
    ap.add_argument("--min-pages", type=int, default=None,
                    help="fewest pages accepted (default: one per page of the book)")
    ap.add_argument("--band-mm", type=float, default=10.0,
                    help="top and bottom band of each page left out of the text check, in mm "
                         "(running titles and page numbers; default 10)")
    args = ap.parse_args(argv)

    if not args.pdf.is_file():
        print(f"error: no PDF at {args.pdf}: print the book first (make pdf)", file=sys.stderr)
        return 2
    root = args.html.resolve()
    if not root.is_dir() or not any(root.glob("*.html")):
        print(f"error: {args.html} has no HTML pages: build the book first (make pdf builds "
              "_build/print/_build/singlehtml)", file=sys.stderr)
        return 2
    try:
        import pypdf
    except ImportError:
        print("error: the pypdf package is missing: .venv/bin/pip install -r requirements.txt",
              file=sys.stderr)
        return 2

    start = time.perf_counter()
    results: list[tuple[bool, str, str]] = []

    def report(ok: bool, name: str, detail: str) -> None:
        results.append((ok, name, detail))
        print(f"{'ok' if ok else 'FAIL'} {name}: {detail}", flush=True)

    book = read_book_html(root)
    try:
        reader = pypdf.PdfReader(str(args.pdf))
        if reader.is_encrypted:
            raise pypdf.errors.PdfReadError("the PDF is encrypted")
        n_pages = len(reader.pages)
    except (pypdf.errors.PyPdfError, OSError, ValueError) as exc:
        report(False, "pdf", f"cannot be read: {exc}")
        return 1
    size_mb = args.pdf.stat().st_size / 2**20
    titles = [title for page in book.titles for title in page]
    print(f"{args.pdf}: {n_pages} pages, {size_mb:.1f} MB; {args.html}: {len(titles)} "
          f"pages, {len(book.images)} raster images, {book.math} math elements", flush=True)

    min_pages = args.min_pages if args.min_pages is not None else max(1, len(titles))
    report(n_pages >= min_pages, "pages", f"{n_pages} (at least {min_pages} wanted)")

    full, body = page_texts(reader, args.band_mm)
    text = squash("".join(full))
    missing, out_of_order = [], []
    for page in book.titles:  # in order within one HTML file (a multi-page build: any order)
        pos = 0
        for title in page:
            found = text.find(squash(title), pos)
            if found >= 0:
                pos = found
            elif text.find(squash(title)) >= 0:
                out_of_order.append(title)
            else:
                missing.append(title)
    report(not missing and not out_of_order and bool(titles), "contents",
           f"{len(titles) - len(missing) - len(out_of_order)} of {len(titles)} page "
           "titles found in order"
           + "".join(f"; missing: {t!r}" for t in missing[:3])
           + "".join(f"; out of order: {t!r}" for t in out_of_order[:3]))

    images, has_image = pdf_images(reader)
    blank = [i + 1 for i, t in enumerate(body) if not t and not has_image[i]]
    figure_only = sum(1 for i, t in enumerate(body) if not t and has_image[i])
    report(not blank, "text",
           f"{n_pages - len(blank) - figure_only} pages with text, {figure_only} with a figure "
           "only" + (f"; no text and no image on page(s) {_pages_list(blank)}" if blank else ""))

    sizes = collections.Counter(images.values())
    unmatched, unread = [], 0
    for src, path in book.images.items():
        size = raster_size(path) if path is not None else None
        if size is None:
            unread += 1
        elif sizes[size] > 0:
            sizes[size] -= 1
        else:
            unmatched.append(f"{src[:60]} ({size[0]}x{size[1]})")
    enough = len(images) >= len(book.images)
    report(enough and not unmatched, "images",
           f"{len(images)} raster images in the PDF for {len(book.images)} in the HTML"
           + (f" ({unread} of unknown size, counted only)" if unread else "")
           + (f"; {len(unmatched)} figure(s) not in the PDF, e.g. {unmatched[0]}"
              if unmatched else ""))

    if book.math:
        math_fonts = sorted(f for f in pdf_fonts(reader) if f.startswith("MathJax_"))
        raw = [(i + 1, m.group(0)[:40]) for i, t in enumerate(full) for m in RAW_TEX_RE.finditer(t)]
        report(bool(math_fonts) and not raw, "math",
               (f"MathJax fonts embedded ({', '.join(math_fonts)})" if math_fonts
                else "no MathJax font embedded: the math was not typeset")
               + "".join(f"; raw TeX on page {p}: {s!r}" for p, s in raw[:3]))
    else:
        report(True, "math", "the HTML has no math")

    traced = [i + 1 for i, t in enumerate(full) if TRACEBACK in t]
    report(not traced, "tracebacks",
           f"{TRACEBACK!r} on page(s) {_pages_list(traced)}" if traced else "none shown")

    failed = [name for ok, name, _ in results if not ok]
    elapsed = time.perf_counter() - start
    if failed:
        print(f"\nFAILED: {len(failed)} of {len(results)} checks ({', '.join(failed)}) "
              f"in {elapsed:.1f} s")
        return 1
    print(f"\nall {len(results)} checks ok: {n_pages} pages, {len(images)} images, "
          f"{size_mb:.1f} MB in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
