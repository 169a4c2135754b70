"""Write how long a build took: each step of ``.ci/run`` and each page of the full book.

    python scripts/build_times.py --cache empty --make-test-s 540 --make-book-s 1500 [--prose-rebuild-s 60] [--out FILE]

The page times come from the full book's execution cache (``_build/.jupyter_cache/global.db``), the step times from
the caller (``.ci/run`` measures them). ``--cache`` says whether ``$ASRINTERP_CACHE`` (speech bank, features, mined
loops, converted weights) was ``empty`` or ``warm`` when the run started. The JSON is what the book's performance
page shows; ``benchmarks/results/build_times.json`` is the one from a fresh clone with an empty cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from asrinterp_utils.reports import chapter_times  # noqa: E402
from asrinterp_utils.runtime import write_text_atomic  # noqa: E402
from _common import matmul_peak, read_bandwidth  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", choices=("empty", "warm"), required=True)
    parser.add_argument("--make-test-s", type=float, required=True)
    parser.add_argument("--make-book-s", type=float, required=True)
    parser.add_argument("--db", type=Path, default=ROOT / "_build" / ".jupyter_cache" / "global.db")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "build_times.json")
    parser.add_argument("--prose-rebuild-s", type=float, default=None,
                        help="seconds of a `make book` after a change to prose only (measured by hand: every chapter "
                             "comes from the execution cache)")
    parser.add_argument("--note", default="", help="how the run went, when it was not one plain .ci/run")
    args = parser.parse_args()
    times = chapter_times(args.db)
    payload = {
        "cache": args.cache,
        "make_test_s": round(args.make_test_s, 1),
        "make_book_s": round(args.make_book_s, 1),
        "ci_run_s": round(args.make_test_s + args.make_book_s, 1),
        **({"prose_rebuild_s": round(args.prose_rebuild_s, 1)} if args.prose_rebuild_s is not None else {}),
        "chapters": {row.page: round(row.seconds, 1) for row in times.itertuples()},
        "chapters_at_once": int(times.at_once.max()) if len(times) else 1,
        "date": time.strftime("%Y-%m-%d"),
        **({"note": args.note} if args.note else {}),
        # machines of one kind differ (a float32 peak of 200 against 390 GFLOP/s has been measured here): the speed
        # of the one that ran the build, measured when this is written (nothing else should be running)
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                    "float32_matmul_peak_gflop_s": round(matmul_peak() / 1e9, 1),
                    "read_bandwidth_gb_s": round(read_bandwidth() / 1e9, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"build_times: wrote {args.out}")


if __name__ == "__main__":
    main()
