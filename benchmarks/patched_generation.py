"""Patched generation on looping inputs: ours (every target and clip in one decoder batch, each beside a
white-noise reference row fed the same tokens, cross-attention keys/values projected once and shared) against the
naive loop (one target and one clip at a time, the encoder rerun, every row its own keys/values), with the same
transcripts asserted.

The inputs are the first looping clips that ``repetition.mine_loops`` finds among sped-up and stuttered bank
clips; the targets are every decoder layer's self-attention, cross-attention and MLP output.

    python benchmarks/patched_generation.py [--model tiny.en] [--loops 8] [--max-new-tokens 96]
"""
from __future__ import annotations

import argparse
import time

from _common import write
from asrinterp_utils import patching, repetition
from asrinterp_utils.data import bank
from asrinterp_utils.data.real import clip_audio
from asrinterp_utils.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--loops", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    lm = load_model(args.model)
    table = bank.speech_dataset("transcribed", fast=False, progress=False)
    candidates = repetition.candidate_inputs(table, kinds=("speed3x", "stutter"), n_clips=20)
    mined = repetition.mine_loops(lm, candidates, max_new_tokens=args.max_new_tokens, progress=False)
    loops = mined[mined.hallucinated_loop].head(args.loops)
    paths = table.set_index("clip_id").path
    waves = [repetition.transform(clip_audio(paths[r.source_clip_id]), r.kind) for r in loops.itertuples()]
    targets = [t for c in ("self_attn_out", "cross_attn_out", "mlp_out")
               for t in patching.component_targets(lm, f"dec.*.{c}", source=patching.REFERENCE)]
    timings, results = {}, {}
    for method in ("batched", "naive"):
        t0 = time.perf_counter()
        results[method] = patching.generate_sweep(lm, waves, targets, max_new_tokens=args.max_new_tokens,
                                                  method=method)
        timings[method] = time.perf_counter() - t0
    same = results["batched"].token_ids == results["naive"].token_ids
    assert same, "batched and naive patched generation disagree"
    write(f"patched_generation_{args.model}", {
        "description": __doc__.strip().splitlines()[0], "model": args.model, "looping_clips": len(waves),
        "targets": len(targets), "max_new_tokens": args.max_new_tokens, "seconds": timings,
        "speedup_batched_over_naive": timings["naive"] / timings["batched"], "identical_transcripts": same,
        "tokens_generated_per_target_and_clip": sum(len(i) for row in results["batched"].token_ids for i in row)
        / (len(targets) * len(waves)),
    })


if __name__ == "__main__":
    main()
