"""Small Sphinx fixes for the Jupyter Book 1 stack, loaded as a local extension (``_config.yml``).

* sphinx-thebe registers its inline configuration script (``const THEBE_JS_URL = ...``) a second time in our
  build, and the second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in every page's
  console. Each page's scripts are de-duplicated here (same file, same attributes, same inline body: kept once; an inline script's file is None or "", which
  are the same).
* Launch buttons (Binder, Colab) only on the chapters: each chapter has a generated ``.ipynb`` beside it that Colab
  opens and whose first cell installs the package. The generated back matter (reports, the GPU page) reads results
  of a build and has no such copy, so a launch button there would open a page that cannot run.
"""
from __future__ import annotations


def _script_key(script) -> tuple:
    # An inline script's filename is None or "" depending on who added it: the same script either way.
    attributes = getattr(script, "attributes", {}) or {}
    return (getattr(script, "filename", str(script)) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def launch_buttons_on_chapters_only(app, pagename, templatename, context, doctree) -> None:
    buttons = context.get("header_buttons")
    if buttons is None or pagename.startswith("chapters/"):
        return
    buttons[:] = [b for b in buttons if not (isinstance(b, dict) and b.get("label") == "launch-buttons")]


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    app.connect("html-page-context", launch_buttons_on_chapters_only, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

