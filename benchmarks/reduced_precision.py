"""What bfloat16 would buy on this CPU, and what it would change: a path the package and the book do not take.

This machine's CPU multiplies bfloat16 matrices in its AMX units many times faster than float32 ones. Whisper is
often run in reduced precision (openai/whisper decodes in float16 on a GPU by default), so this measures, on the
same clips and in one run:

- ``matmul_peak_gflop_s``: the best of several 2048 x 2048 products in float32 and in bfloat16;
- the encoder (``run.encode_features``, batches of 16) in float32, and under ``torch.autocast("cpu", bfloat16)``,
  on ``--clips`` real Asterisk prompts, for tiny.en and base: seconds, the encoder output's relative difference
  (Frobenius norm of the difference over that of the float32 output), and how many greedy transcripts (float32
  decoding of each encoder output, at most 96 tokens) are identical to the float32 ones.

The package runs float32 throughout; the book's numbers are float32 numbers. Whether the book should trade exact
transcripts for encoder speed is a decision this file informs, not one it makes.

    python benchmarks/reduced_precision.py [--clips 48]
"""
from __future__ import annotations

import argparse

import torch

from _common import matmul_peak, real_clips, timeit, write
from asrinterp_utils import run
from asrinterp_utils.models import load_model

MAX_NEW_TOKENS = 96
RUNS = 2


def encoder(lm, features: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, float]:
    """The encoder output (float32) and the fastest of ``RUNS`` passes after it, seconds (the first pass, which
    allocates and picks kernels, is not timed)."""
    def encode() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return run.encode_features(lm, features, batch_size=16)

    return encode().float(), timeit(encode, repeats=RUNS, warmup=0)["min_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args()
    waves, _ = real_clips(args.clips)
    models = {}
    for name in ("tiny.en", "base"):
        lm = load_model(name)
        features, _ = lm.features(waves)
        exact, t32 = encoder(lm, features, bf16=False)
        reduced, t16 = encoder(lm, features, bf16=True)
        texts32 = run.greedy(lm, exact, max_new_tokens=MAX_NEW_TOKENS).texts(lm.tokenizer)
        texts16 = run.greedy(lm, reduced, max_new_tokens=MAX_NEW_TOKENS).texts(lm.tokenizer)
        same = sum(a == b for a, b in zip(texts32, texts16))
        models[name] = {
            "encoder_s": {"float32": t32, "bfloat16_autocast": t16},
            "encoder_speedup_bf16_over_float32": t32 / t16,
            "encoder_output_relative_difference": float((reduced - exact).norm() / exact.norm()),
            "transcripts_identical_to_float32": f"{same} of {len(texts32)}",
            "differing": [{"float32": a, "bfloat16_encoder": b} for a, b in zip(texts32, texts16) if a != b],
        }
    peak32, peak16 = matmul_peak(), matmul_peak(dtype=torch.bfloat16)
    write("reduced_precision", {
        "description": __doc__.strip().splitlines()[0], "clips": args.clips, "max_new_tokens": MAX_NEW_TOKENS,
        "timing": f"the fastest of {RUNS} encoder passes over all clips in each precision, after an untimed one",
        "matmul_peak_gflop_s": {"float32": peak32 / 1e9, "bfloat16": peak16 / 1e9},
        "matmul_peak_bf16_over_float32": peak16 / peak32,
        "models": models,
        "used_by_the_package": False,
    })


if __name__ == "__main__":
    main()
