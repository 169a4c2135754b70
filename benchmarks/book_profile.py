"""Where the book's time goes: every chapter executed in full mode, cell by cell, with the time of each cell.

Runs each chapter (MyST Markdown) in one Jupyter kernel of this environment, in book order, the way the book build
does, and times every code cell. Point ``ASRINTERP_CACHE`` at an empty folder for a cold profile (what a new machine
pays: speech bank, features, transcripts and weights computed from nothing); the chapters then fill it in order,
as the book build does. Writes ``book_profile.json``: per chapter its total and its cells, slowest first, each with
its first source line. Nothing else may run on the machine meanwhile (see ``threads.json``).

    ASRINTERP_CACHE=$(mktemp -d) ASRINTERP_FAST=0 python benchmarks/book_profile.py            # every chapter
    ASRINTERP_FAST=0 python benchmarks/book_profile.py chapters/05_probing_the_encoder.md      # one chapter
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent


def profile_chapter(path: Path, timeout_s: int = 3600) -> dict:
    """Execute one chapter and time each code cell: ``{"total_s", "cells": [{"cell", "seconds", "first_line"}]}``."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    cells = []
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            t0 = time.perf_counter()
            client.execute_cell(cell, index)
            first = next((line for line in cell.source.splitlines() if line and not line.startswith(":")), "")
            cells.append({"cell": index, "seconds": round(time.perf_counter() - t0, 1), "first_line": first[:100]})
    return {"total_s": round(time.perf_counter() - start, 1),
            "cells": sorted(cells, key=lambda c: -c["seconds"])}


def main() -> None:
    from _common import write

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", type=Path, help="chapter files (default: chapters/*.md in order)")
    parser.add_argument("--out", default="book_profile", help="name of the JSON in benchmarks/results/")
    args = parser.parse_args()
    if os.environ.get("ASRINTERP_FAST", "0") != "0":
        parser.error("the profile is of the full book: run with ASRINTERP_FAST=0")
    chapters = args.chapters or sorted((ROOT / "chapters").glob("[0-9]*.md"))
    from asrinterp_utils.runtime import cache_dir

    root = cache_dir()  # ASRINTERP_CACHE, or the default folder
    cold = not root.exists() or not any(root.iterdir())
    result = {"cache": "empty" if cold else "as found", "chapters": {}}
    for path in chapters:
        result["chapters"][path.stem] = profile_chapter(path.resolve())
        result["total_s"] = round(sum(c["total_s"] for c in result["chapters"].values()), 1)
        write(args.out, result)  # after every chapter: an interrupted profile keeps what it measured
        print(f"{path.stem}: {result['chapters'][path.stem]['total_s']} s", flush=True)


if __name__ == "__main__":
    main()
