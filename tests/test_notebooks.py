"""The generated notebooks: the Colab copies of the chapters are current, and student versions hide solutions."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("jupytext")
ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notebooks", ROOT / "scripts" / "notebooks.py")
notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(notebooks)


def test_colab_copies_are_current():
    """Every chapter has its .ipynb beside it (the launch buttons open it), regenerated since the last edit."""
    assert notebooks.chapter_sources(), "no chapters found"
    assert notebooks.write_colab(check=True) == 0, "run `make notebooks` and commit chapters/*.ipynb"


def test_colab_copy_starts_with_the_setup_cell_and_has_no_outputs():
    nb = json.loads(notebooks.chapter_sources()[0].with_suffix(".ipynb").read_text())
    first = "".join(nb["cells"][0]["source"])
    assert 'if "google.colab" in sys.modules:' in first and "pip install" in first
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_student_version_replaces_solutions_by_stubs(tmp_path):
    chapter = tmp_path / "01_demo.md"
    chapter.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n    format_version: 0.13\n"
        "kernelspec:\n  name: python3\n  display_name: Python 3\n  language: python\n---\n\n# Demo\n\n"
        "```{code-cell} ipython3\nx = 1\n```\n\n"
        "```{code-cell} ipython3\n:tags: [hide-cell, solution]\nanswer, other = x + 1, 3\nsecret = 42\n```\n\n"
        "```{code-cell} ipython3\nprint(answer)\n```\n")
    nb = notebooks.student_notebook(chapter)
    sources = ["".join(c.source) for c in nb.cells]
    assert not any("x + 1" in s or "42" in s for s in sources), "the solution leaked into the student version"
    stub = next(s for s in sources if "Your solution here" in s)
    assert "answer = ..." in stub and "other = ..." not in stub and "secret = ..." not in stub  # only what the check reads
    assert any("print(answer)" in s for s in sources), "the self-check cell must stay"


def test_student_versions_of_the_chapters_stub_only_the_answer():
    """In every chapter, a solution hands its check only ``answer``: anything else the check reads (the model, a
    cache) comes from cells the student version keeps, so a stubbed notebook still runs to the end."""
    n_exercises = 0
    for source in notebooks.chapter_sources():
        nb = notebooks.student_notebook(source)  # raises on a solution whose check reads none of its names
        for cell in nb.cells:
            if "exercise" in cell.metadata.get("tags", []):
                n_exercises += 1
                stubs = [line for line in cell.source.splitlines() if not line.startswith("#")]
                assert stubs == ["answer = ..."], f"{source.name}: {stubs}"
        assert not any("solution" in c.metadata.get("tags", []) for c in nb.cells)
    assert n_exercises >= 6


def test_names_assigned_inside_blocks_are_found():
    source = ("import torch\nwith torch.no_grad():\n    answer = 1\nfor i in range(2):\n    total = i\n"
              "def f():\n    hidden = 2\n")
    assert notebooks._assigned_names(source) == ["answer", "total", "f"]  # not a function's locals


def test_colab_cell_installs_what_make_setup_installs():
    packages = notebooks.apt_packages()
    assert {"asterisk-core-sounds-en", "pocketsphinx-testdata", "espeak-ng", "ffmpeg"} <= set(packages)
    cell = notebooks.colab_cell()
    install = next(line for line in cell.splitlines() if "apt-get" in line)
    assert all(f" {p} " in install for p in packages), "the Colab cell misses packages that make setup installs"
    assert "$$p" in install  # IPython passes $$ to the shell as $; a single $p would be expanded by IPython


def test_binder_installs_what_make_setup_installs():
    listed = (ROOT / ".binder" / "apt.txt").read_text().split()
    assert listed == notebooks.apt_packages(), "make .binder/apt.txt the Makefile's APT_PACKAGES, one per line"
