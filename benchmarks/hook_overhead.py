"""Hook overhead: a forward pass with a full residual-stream cache against the plain forward.

Forward = encoder + decoder teacher-forced on the model's own transcript, for a batch of real clips. The cache
records every residual-stream point of both sides (resid_pre, mid-block residuals, resid_post, final), moved to the
CPU. Target from the issue: ratio <= 1.05.

    python benchmarks/hook_overhead.py [--models tiny.en base] [--clips 4] [--repeats 5]
"""
from __future__ import annotations

import argparse

import torch

from _common import real_clips, timeit, write
from asrinterp_utils import run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import load_model

RESIDUAL = ["*.resid_pre", "*.resid_post_attn", "*.resid_post_self", "*.resid_post_cross", "*.resid_post", "*.final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    waves, _ = real_clips(args.clips)
    results = {}
    for name in args.models:
        lm = load_model(name)
        feats, _ = lm.features(waves)
        ids = run.generate_ids(lm, waves)

        @torch.no_grad()
        def plain():
            return lm.model(feats, decoder_input_ids=ids).logits

        @torch.no_grad()
        def hooked():
            with cache_activations(lm, RESIDUAL) as cache:
                logits = lm.model(feats, decoder_input_ids=ids).logits
            return logits, cache

        logits, cache = hooked()
        same = bool(torch.equal(logits, plain()))
        # interleave the two so that drifts in machine load hit both alike
        t_plain, t_hooked = [], []
        for _ in range(args.repeats):
            t_plain.append(timeit(plain, repeats=1, warmup=0)["median_s"])
            t_hooked.append(timeit(hooked, repeats=1, warmup=0)["median_s"])
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        results[name] = {
            "clips": args.clips, "decoder_tokens": int(ids.shape[1]), "points_cached": len(cache),
            "cached_megabytes": round(sum(t.numel() * t.element_size() for t in cache.values()) / 2**20, 1),
            "plain_median_s": med(t_plain), "hooked_median_s": med(t_hooked),
            "ratio_hooked_over_plain": med(t_hooked) / med(t_plain), "logits_identical": same,
            "target_ratio": 1.05,
        }
    write("hook_overhead", {"description": __doc__.strip().splitlines()[0], "results": results})


if __name__ == "__main__":
    main()
