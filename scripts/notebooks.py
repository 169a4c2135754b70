"""Notebooks made from the chapters' MyST sources: the Colab/Jupyter copies and the student versions.

    python scripts/notebooks.py colab            # chapters/NN_*.ipynb beside each chapters/NN_*.md (committed)
    python scripts/notebooks.py colab --check    # exit 1 if a committed .ipynb is out of date (tests run this)
    python scripts/notebooks.py student          # student/NN_*.ipynb: solutions removed (make student)

The chapters are written as MyST Markdown (``chapters/*.md``); Colab opens only ``.ipynb``, and the book's launch
buttons link to the ``.ipynb`` of the same name when one exists. Each notebook is the chapter's cells, without
outputs, after one extra first cell that installs the package and the system packages when it runs on Colab (and
does nothing elsewhere).

A **student version** replaces every code cell tagged ``solution`` by a stub that assigns ``...`` to each name the
solution defines and its self-check (the next code cell) reads, normally just ``answer = ...``; the self-check
then says "not answered yet" until the student fills it in. Everything else, the exercises' text and the self-checks included, stays.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
REPOSITORY = "https://github.com/asrinterp/beyond-transcription-book"


def apt_packages(makefile: Path = ROOT / "Makefile") -> list[str]:
    """The Debian packages ``make setup`` installs (``APT_PACKAGES`` in the Makefile, continuation lines joined):
    the recordings, voices and audio tools. The Colab cell installs the same list, so the two cannot drift."""
    text = makefile.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("APT_PACKAGES") and ":=" in line:
            return line.split(":=", 1)[1].split()
    raise ValueError(f"no APT_PACKAGES := ... line in {makefile}")


def colab_cell(packages: list[str] | None = None) -> str:
    """The first cell of every Colab copy: on Colab, install the system packages (all at once, else one by one,
    naming any that the image's Ubuntu lacks: the data functions then say which source is missing) and the
    package; anywhere else, nothing."""
    pkgs = " ".join(apt_packages() if packages is None else packages)
    return f'''\
# Running on Google Colab? This cell installs the book's package and the recordings, voices and audio tools the
# chapter needs (a few minutes, once per session). Anywhere else it does nothing: `make setup` installed them.
import sys

if "google.colab" in sys.modules:
    !apt-get -qq update > /dev/null; apt-get -qq install -y {pkgs} > /dev/null 2>&1 || for p in {pkgs}; do apt-get -qq install -y $$p > /dev/null 2>&1 || echo "apt-get could not install $$p"; done
    %pip install --quiet "asrinterp-utils[book] @ git+{REPOSITORY}"
'''


def chapter_sources() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.md"))


def colab_notebook(source: Path) -> nbformat.NotebookNode:
    """The chapter as a notebook without outputs, after the Colab set-up cell."""
    nb = jupytext.read(source)
    setup = nbformat.v4.new_code_cell(colab_cell(), metadata={"tags": ["colab-setup"]})
    nb.cells.insert(0, setup)
    _clean(nb)
    nb.metadata.pop("jupytext", None)
    nb.metadata["colab"] = {"provenance": [], "toc_visible": True}
    return nb


def _clean(nb: nbformat.NotebookNode) -> None:
    """No outputs, and cell ids that depend only on the position (so a regenerated file is byte-identical)."""
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


def _assigned_names(source: str) -> list[str]:
    """Names a cell assigns outside functions, in order (``answer = ...``, ``a, b = ...``, ``def f``, and
    assignments inside ``with``/``for``/``if``/``try`` blocks)."""
    names: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.append(node.name)
                continue
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in names:
                        names.append(n.id)
            for block in ("body", "orelse", "finalbody"):
                visit(getattr(node, block, []) or [])
            for handler in getattr(node, "handlers", []) or []:
                visit(handler.body)

    visit(ast.parse(source).body)
    return names


def _read_names(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def student_notebook(source: Path) -> nbformat.NotebookNode:
    """The Colab notebook with every ``solution`` cell replaced by a stub that assigns ``...`` to each name the
    solution defines and the next code cell (its self-check) reads."""
    nb = colab_notebook(source)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "solution" not in cell.metadata.get("tags", []):
            continue
        check = next((c for c in nb.cells[i + 1:] if c.cell_type == "code"), None)
        read = _read_names(check.source) if check is not None else set()
        names = [n for n in _assigned_names(cell.source) if n in read]
        if not names:
            raise ValueError(f"{source.name}: solution cell {i} defines nothing that the next cell (its check) reads")
        stub = ["# Your solution here: replace each ... (the cell after this one checks your answer)."]
        stub += [f"{name} = ..." for name in names]
        nb.cells[i] = nbformat.v4.new_code_cell("\n".join(stub), metadata={"tags": ["exercise"]})
    _clean(nb)
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def write_colab(check: bool = False) -> int:
    stale = []
    for source in chapter_sources():
        target = source.with_suffix(".ipynb")
        text = _text(colab_notebook(source))
        if check:
            if not target.is_file() or target.read_text(encoding="utf-8") != text:
                stale.append(target.relative_to(ROOT))
        else:
            target.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run `make notebooks` and commit):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def write_student(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for source in chapter_sources():
        (out / source.with_suffix(".ipynb").name).write_text(_text(student_notebook(source)), encoding="utf-8")
    print(f"student versions of {len(chapter_sources())} chapters in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    colab = sub.add_parser("colab", help="write chapters/NN_*.ipynb (Colab and Jupyter copies)")
    colab.add_argument("--check", action="store_true", help="only check that the committed copies are current")
    student = sub.add_parser("student", help="write student versions (solutions removed)")
    student.add_argument("--out", type=Path, default=ROOT / "student")
    args = parser.parse_args(argv)
    if args.command == "colab":
        return write_colab(args.check)
    return write_student(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
