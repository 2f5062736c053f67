"""Sphinx extension loaded by the book's _config.yml (sphinx: local_extensions).

Works around a Sphinx 7.4 bug: an inline <script> (a body, no file) registered by an extension after
the HTML builder started is emitted twice, once as filename None and once as ''. Jupyter Book 1.x
pins Sphinx 7, and two of its extensions register such scripts: sphinx-togglebutton (harmless
`var`) and sphinx-thebe, whose duplicated `const THEBE_JS_URL` raises "Identifier has already been
declared" on every page. This drops the second copy of any identical script, page by page.

Also gives the single-page builder (`make pdf`) the HTML node visitors that other extensions
registered, which sphinx-exercise's builder-specific registration would otherwise hide.
"""

from __future__ import annotations


def _key(js) -> tuple:
    filename = getattr(js, "filename", js) or ""
    attributes = getattr(js, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _key(js)
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique  # in place: the template renders this list


def _html_visitors_for_singlehtml(app) -> None:
    """Give a builder named other than its format (singlehtml) the visitors of the format (html).

    Sphinx looks up an extension node's visitor under the builder's name and falls back to its
    format only when no extension registered any visitor under that name. sphinx-exercise
    registers its nodes for "singlehtml" by name, so the single-page build lost every other
    extension's HTML visitors (myst-nb's hidden cells raised NotImplementedError). Visitors
    registered under the builder's own name are kept.
    """
    handlers = app.registry.translation_handlers
    if app.builder.name != app.builder.format and app.builder.name in handlers:
        for node, visitors in handlers.get(app.builder.format, {}).items():
            handlers[app.builder.name].setdefault(node, visitors)


def setup(app):
    app.connect("builder-inited", _html_visitors_for_singlehtml)
    # Late priority: after other extensions have added their per-page scripts.
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
