"""Shared helpers for the benchmark scripts: timing, machine facts, JSON output."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Median and spread of wall time (seconds) over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def machine() -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": "cpu"}
    if torch.cuda.is_available():
        info.update(device="cuda", gpu=torch.cuda.get_device_name(0))
    return info


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(payload, indent=2))
    return path


def real_clips(n: int, min_words: int = 8):
    """``n`` real Asterisk prompts (16 kHz float32 arrays) and their transcripts."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio

    table = asterisk_prompts(min_words=min_words, max_duration_s=12.0, progress=False).sample(n, random_state=0)
    return [clip_audio(p) for p in table.path], list(table.text)


def matmul_peak(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """The matrix-multiply throughput of this machine in ``dtype`` (float32 unless asked), FLOP/s: the best of
    ``repeats`` ``n x n`` products (the practical peak that a roofline compares against)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def read_bandwidth(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes per second this machine reads from memory: the best of ``repeats`` sums over a 256 MB float32 array
    (larger than any cache), the limit of a step of greedy decoding that reads cross-attention keys and values."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return n_bytes / best
