"""The order in which make book runs the chapters several at a time (scripts/execute_chapters.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "execute_chapters.py"
spec = importlib.util.spec_from_file_location("execute_chapters", SCRIPT)
execute_chapters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_chapters)


def test_a_chapter_waits_for_the_chapters_it_reuses():
    after = {"c": ["a"]}
    assert execute_chapters.startable(["c", "a", "b"], [], 2, after) == ["a", "b"]  # c waits for a to run
    assert execute_chapters.startable(["c", "b"], ["a"], 1, after) == ["b"]  # a is running
    assert execute_chapters.startable(["c"], ["b"], 1, after) == ["c"]  # a has finished
    assert execute_chapters.startable(["c"], [], 0, after) == []  # no free place


def test_every_chapter_of_the_table_of_contents_is_run_and_dependencies_are_chapters():
    pages = execute_chapters.chapters()
    assert pages and all((execute_chapters.ROOT / f"{p}.md").is_file() for p in pages)
    assert all(p in pages and all(d in pages for d in deps) for p, deps in execute_chapters.RUN_AFTER.items())


def test_the_notebook_is_read_as_myst_nb_reads_it():
    nb = execute_chapters.read_notebook(execute_chapters.chapters()[0])
    assert nb.metadata.kernelspec.name == "python3" and any(c.cell_type == "code" for c in nb.cells)
