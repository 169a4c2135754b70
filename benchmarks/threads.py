"""Decoding beside another busy process: does it collapse, and which OpenMP setting keeps it up?

On a 2-core machine two processes that each run PyTorch's OpenMP threads can make every small operation wait
for a descheduled thread at its barrier (a known cause of 10-30x slower decoding here). This script times one
decoding workload (greedy transcripts of real clips on tiny.en, the shape of the book's loops) in a fresh process,
alone and beside a second process running the same workload, under the settings a user may have:

* ``default``: the OpenMP defaults (threads spin for a while at each barrier before sleeping);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, which :mod:`asrinterp_utils.runtime` sets for the package's processes;
* ``one_thread``: ``OMP_NUM_THREADS=1`` in both processes.

Every figure is the workload's own wall time inside the child (model loading excluded), the median of three
children; the pair's children start together.

    python benchmarks/threads.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import write

WORKLOAD = r"""
import os, time, json
from asrinterp_utils import run
from asrinterp_utils.data import asterisk_prompts, clip_audio
from asrinterp_utils.models import load_model
lm = load_model("tiny.en")
table = asterisk_prompts(min_words=6, max_duration_s=10.0, progress=False).head(8)
waves = [clip_audio(p) for p in table.path]
run.transcribe(lm, waves[:1], max_new_tokens=8)  # warm-up
t0 = time.perf_counter()
for _ in range(3):
    run.transcribe(lm, waves, max_new_tokens=64)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

SETTINGS = {"default": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None},
            "one_thread": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1"}}


def _env(setting: dict) -> dict:
    env = dict(os.environ)
    env["ASRINTERP_OMP_WAIT_POLICY"] = "unset"  # the package leaves the policy to this script
    for key, value in setting.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    return env


def _run(setting: dict, n_processes: int) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKLOAD], env=_env(setting), stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parent.parent) for _ in range(n_processes)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1])["seconds"] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("a workload process failed")
    return out


def main() -> None:
    results = {}
    for name, setting in SETTINGS.items():
        alone = statistics.median(_run(setting, 1)[0] for _ in range(3))
        pair = statistics.median(max(_run(setting, 2)) for _ in range(3))
        results[name] = {"alone_s": alone, "beside_another_s": pair, "slowdown_beside_another": pair / alone}
    write("threads", {
        "description": __doc__.strip().splitlines()[0],
        "workload": "3 x greedy transcripts of 8 real clips (max 64 tokens) on tiny.en, in a fresh process",
        "settings": {k: {e: v for e, v in s.items() if v} for k, s in SETTINGS.items()},
        "results": results,
        "note": "two processes doing the same work on two cores should take about twice as long as one alone "
                "when each uses both cores (the ideal slowdown is 2); far more than that is the collapse",
    })


if __name__ == "__main__":
    main()
