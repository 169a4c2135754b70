"""Patch sweep over every decoder cross-attention head: batched (encoder output and cross-attention keys/values
computed once) against one full forward per patch, with identical numbers asserted.

Each of the targets (base: 6 layers x 8 heads = 48) replaces one head's output (`dec.L.cross_head_out`, the
per-head context entering out_proj) with its value from a white-noise run of the same length and level; the metric
is the mean log-probability of the clean transcript. Target from the issue: >= 10x.

    python benchmarks/patch_sweep.py [--model base] [--clips 1] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import real_clips, write
from asrinterp_utils import audio, patching
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    lm = load_model(args.model)
    waves, _ = real_clips(args.clips)
    feats, _ = lm.features(waves)
    ids = lm.generate_ids(waves)
    noise_feats, _ = lm.features([audio.white_noise_like(w, seed=i) for i, w in enumerate(waves)])
    with torch.no_grad(), cache_activations(lm, "dec.*.cross_head_out") as noise:
        lm.model(noise_feats, decoder_input_ids=ids)  # the reference run, teacher-forced on the same tokens
    targets = patching.head_targets(lm, "cross_head_out", source=noise)
    metric = patching.token_logprob(start=len(lm.prompt_ids()))

    timings, results = {}, {}
    for method in ("batched", "naive"):
        t0 = time.perf_counter()
        results[method] = patching.run_sweep(lm, feats, ids, targets, metric, method=method,
                                             batch_size=args.batch_size)
        timings[method] = time.perf_counter() - t0
    diff = (results["batched"].values - results["naive"].values).abs().max().item()
    assert diff < 1e-3, f"batched and naive sweeps disagree by {diff}"
    delta = results["batched"].values - results["batched"].baseline
    worst = int(delta.mean(1).argmin())
    write(f"patch_sweep_{args.model}", {
        "description": __doc__.strip().splitlines()[0],
        "model": args.model, "clips": args.clips, "decoder_tokens": int(ids.shape[1]), "targets": len(targets),
        "batch_size": args.batch_size, "seconds": timings,
        "speedup_batched_over_naive": timings["naive"] / timings["batched"], "target_speedup": 10.0,
        "max_abs_difference": diff, "most_damaging_head": targets[worst].label,
        "most_damaging_head_delta_logprob": float(delta[worst].mean()),
    })


if __name__ == "__main__":
    main()
