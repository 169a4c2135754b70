"""Execute the book's chapters several at a time into the book's execution cache, before Jupyter Book reads them.

    python scripts/execute_chapters.py [--jobs 2] [--cache _build/.jupyter_cache]

Jupyter Book (myst-nb) executes the pages one after another while Sphinx reads them. Part of a chapter's time
(decoding steps of a few rows, Python, pandas, scikit-learn, plots, speech synthesis) leaves a core idle; most is
compute-bound: on the book's 2-core machine each chapter took 1.7-2.05 times its time alone beside another, and
all of them together 4-12 % less than one after another, in two comparisons of cold builds. This script runs
``--jobs`` chapters at once, each kernel on
``cores // jobs`` threads, and files each executed notebook in the same jupyter-cache that myst-nb reads
(``execute_notebooks: cache``), under the same key (the code cells and the kernel, read by myst-nb's own MyST
reader). The build then finds every chapter there and executes only the short pages (the reports, which read what
the chapters saved, run after them as before).

Order: longest first, by the times of the last cold build (``benchmarks/results/build_times.json``), so that the
long chapters do not run alone at the end; a chapter named in :data:`RUN_AFTER` waits for the chapters it reuses
(chapter 11 reads the loops chapter 8 mines from the cache; run beside it, it would mine them again). A chapter
already in the cache (its code unchanged) is not run. A failing chapter stops the script with its traceback: the
build is strict, and would fail on it anyway after running it once more.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUN_AFTER = {"chapters/11_repairing_hallucinations": ["chapters/08_repetition_hallucinations"]}
"""Chapters that reuse what another chapter computes (from the package's caches) start when it has finished."""


def book_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def chapters() -> list[str]:
    """The table of contents' pages under ``chapters/``, in book order (``chapters/01_whisper_from_the_inside``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [f for f in files if f.startswith("chapters/")]


def read_notebook(page: str):
    """The page as myst-nb reads it for the build: the notebook whose code cells and kernel key the cache."""
    from myst_nb.core.read import read_myst_markdown_notebook
    from myst_parser.config.main import MdParserConfig

    extensions = set(book_config().get("parse", {}).get("myst_enable_extensions", []))
    path = ROOT / f"{page}.md"
    return read_myst_markdown_notebook(path.read_text(encoding="utf-8"),
                                       config=MdParserConfig(enable_extensions=extensions), add_source_map=True,
                                       path=str(path))


def execute(page: str, timeout: int, allow_errors: bool) -> tuple[str, object, float, str | None]:
    """Run one page in a fresh kernel with its folder as the working directory, as myst-nb does (in a worker)."""
    from jupyter_cache.executors.utils import single_nb_execution

    nb = read_notebook(page)
    result = single_nb_execution(nb, cwd=str((ROOT / page).parent), timeout=timeout, allow_errors=allow_errors,
                                 meta_override=True)
    return page, result.nb, result.time, result.exc_string if result.err is not None else None


def limit_threads(threads: int) -> None:
    """Each kernel (a child of this worker) computes on ``threads`` threads: ``jobs`` kernels share the cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)


def last_times() -> dict[str, float]:
    path = ROOT / "benchmarks" / "results" / "build_times.json"
    try:
        return {page: float(s) for page, s in json.loads(path.read_text(encoding="utf-8"))["chapters"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def startable(todo: list[str], running: list[str], slots: int,
              after: dict[str, list[str]] = RUN_AFTER) -> list[str]:
    """The pages of ``todo`` (in its order) to start now in ``slots`` free places: those whose :data:`RUN_AFTER`
    chapters are neither still to run nor running."""
    waiting_on = set(todo) | set(running)
    return [p for p in todo if not waiting_on & set(after.get(p, []))][:max(0, slots)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="chapters run at once (default: 2, or 1 on a single core)")
    parser.add_argument("--cache", type=Path, default=ROOT / "_build" / ".jupyter_cache",
                        help="myst-nb's execution cache of the build (for make book-fast: "
                             "_build/fast/_build/.jupyter_cache)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1; got {args.jobs}")
    jobs = min(args.jobs, os.cpu_count() or 1)  # more kernels than cores would only wait on each other
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    execution = book_config().get("execute", {})
    timeout, allow_errors = int(execution.get("timeout", 1800)), bool(execution.get("allow_errors", False))
    cache = get_cache(str(args.cache))
    todo = []
    for page in chapters():
        try:
            cache.match_cache_notebook(read_notebook(page))
        except KeyError:
            todo.append(page)
    if not todo:
        print("execute_chapters: every chapter is in the execution cache")
        return
    cost = last_times()
    todo.sort(key=lambda page: -cost.get(page, 0.0))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"execute_chapters: {len(todo)} chapters, {jobs} at a time on {threads} thread(s) each: "
          + ", ".join(Path(p).name for p in todo), flush=True)
    failed: list[str] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=limit_threads,
                             initargs=(threads,)) as pool:
        running: dict = {}
        while running or (todo and not failed):
            for page in ([] if failed else startable(todo, list(running.values()), jobs - len(running))):
                todo.remove(page)
                running[pool.submit(execute, page, timeout, allow_errors)] = page
            if not running:
                raise SystemExit(f"execute_chapters: {todo} wait for each other ({RUN_AFTER})")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                page = running.pop(future)
                try:
                    _, nb, seconds, error = future.result()
                except Exception as crash:  # the kernel or the worker died: no notebook came back
                    nb, seconds, error = None, time.perf_counter() - start, f"{type(crash).__name__}: {crash}"
                if error is not None:  # the others still running finish and are kept; nothing new starts
                    print(f"execute_chapters: {page} failed after {seconds:.0f} s\n{error}", file=sys.stderr)
                    failed.append(page)
                    continue
                cache.cache_notebook_bundle(CacheBundleIn(nb, str(ROOT / f"{page}.md"),
                                                          data={"execution_seconds": seconds,
                                                                "at_once": jobs, "threads": threads}),
                                            check_validity=False, overwrite=True)
                print(f"execute_chapters: {page} executed in {seconds:.1f} s "
                      f"({time.perf_counter() - start:.0f} s since the start)", flush=True)
    if failed:
        sys.exit(f"execute_chapters: {', '.join(failed)} failed (tracebacks above)")


if __name__ == "__main__":
    main()
