"""Execute every chapter of the book in fast mode, the way the book build runs it.

Each chapter in ``chapters/`` (MyST Markdown with a jupytext header, or ``.ipynb``), then each page of
``reports/``, is read with jupytext and run
top to bottom with nbclient in a ``python3`` kernel, with ``ASRINTERP_FAST=1`` in the environment and the
chapter's folder as the working directory. A ``.ipynb`` paired with a ``.md`` of the same name runs once, as the
``.md``. The executed notebook is written to ``_build/chapter-tests/`` (also when a cell fails) for inspection.
Under ``make test`` the chapters are shared out between the two pytest workers one at a time (tests/conftest.py),
and the report pages run in a second session once every chapter has finished (``-m after_chapters``).

    ASRINTERP_FAST=1 .venv/bin/python -m pytest tests/test_chapters.py            # all chapters
    ASRINTERP_FAST=1 .venv/bin/python -m pytest tests/test_chapters.py -k 01_     # one chapter
    .venv/bin/python -m pytest -m "not chapters"                                  # everything else
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_DIR = ROOT / "chapters"
OUT_DIR = ROOT / "_build" / "chapter-tests"
KERNEL = "python3"
CELL_TIMEOUT_S = 600


REPORT_DIR = ROOT / "reports"


def chapter_files() -> list[Path]:
    """The chapters and the book's other pages that run code."""
    md = sorted(CHAPTER_DIR.glob("*.md"))
    stems = {p.stem for p in md}
    ipynb = sorted(p for p in CHAPTER_DIR.glob("*.ipynb") if p.stem not in stems)
    pages = sorted(p for p in (ROOT / "book").glob("*.md") if "```{code-cell}" in p.read_text(encoding="utf-8"))
    return sorted(md + ipynb) + pages


def report_files() -> list[Path]:
    """The generated report pages: they read what the chapters saved, so they run after them (in a plain pytest
    run they come last in this file; make test runs them in a second session, -m after_chapters)."""
    return sorted(REPORT_DIR.glob("*.md"))


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel inherits this process's environment.
    monkeypatch.setenv("ASRINTERP_FAST", "1")
    # No interactive backends in a headless kernel.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # two pytest workers share the cores (make test): a chapter's kernel computes on one thread, like the unit
        # tests beside it, so that neither waits on the other's threads
        monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.chapters
def test_python3_kernel_is_this_environment(fast_env: None) -> None:
    """The ``python3`` kernel must run this interpreter's environment (the project's ``.venv``), not some other
    Python that happens to have a kernel called python3 registered."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("import os, sys; print(sys.prefix); print(os.environ.get('ASRINTERP_FAST'))"))
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=120).execute()
    prefix, fast = nb.cells[0].outputs[0]["text"].split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), (
        f"kernel {KERNEL!r} runs {prefix}, the tests run {sys.prefix}: run "
        f"`{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL}` or remove the stray kernelspec "
        f"(`jupyter kernelspec list`)"
    )
    assert fast == "1"


def execute_in_fast_mode(path: Path) -> None:
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    finally:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUT_DIR / f"{path.stem}.ipynb")


@pytest.mark.chapters
@pytest.mark.parametrize("path", chapter_files(), ids=lambda p: p.name)
def test_chapter_runs_in_fast_mode(path: Path, fast_env: None) -> None:
    execute_in_fast_mode(path)


@pytest.mark.chapters
@pytest.mark.after_chapters
@pytest.mark.parametrize("path", report_files(), ids=lambda p: p.name)
def test_report_page_runs_in_fast_mode(path: Path, fast_env: None) -> None:
    execute_in_fast_mode(path)
