"""Patch sweep over every decoder cross-attention head, three ways: ours (batched; encoder output and cross-attention
keys/values computed once), one full forward per patch, and nnsight doing the same sweep idiomatically (one
``trace`` per patch, writing the head's slice of ``out_proj``'s input); the same numbers from all three asserted.

Each of the targets (base: 6 layers x 8 heads = 48) replaces one head's output (`dec.L.cross_head_out`, the
per-head context entering out_proj) with its value from a white-noise run of the same length and level; the metric
is the mean log-probability of the clean transcript. Targets from the issue: >= 10x over one forward per patch, and
faster than nnsight. nnsight is optional (``pip install -e .[bench]``); without it that column is skipped.

    python benchmarks/patch_sweep.py [--model base] [--clips 1] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import real_clips, write
from asrinterp_utils import audio, patching, run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import load_model


@torch.no_grad()
def nnsight_sweep(lm, feats, ids, noise, metric) -> torch.Tensor:
    """The head sweep as an nnsight user writes it: wrap the model, one trace per (layer, head), assign the noise
    run's slice to the head's columns of out_proj's input, read the logits. Returns ``(targets, batch)``."""
    from nnsight import NNsight

    model = NNsight(lm.model)
    layers = lm.model.model.decoder.layers
    values = []
    for layer in range(len(layers)):
        d_head = layers[layer].encoder_attn.head_dim
        source = noise[f"dec.{layer}.cross_head_out"]  # (batch, tokens, heads, d_head)
        for head in range(layers[layer].encoder_attn.num_heads):
            with model.trace(input_features=feats, decoder_input_ids=ids):
                context = model.model.decoder.layers[layer].encoder_attn.out_proj.input
                context[:, :, head * d_head:(head + 1) * d_head] = source[:, :, head]
                logits = model.output.logits.save()
            values.append(metric(logits, ids).cpu())
    return torch.stack(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    lm = load_model(args.model)
    waves, _ = real_clips(args.clips)
    feats, _ = lm.features(waves)
    ids = run.generate_ids(lm, waves)
    noise_feats, _ = lm.features([audio.white_noise_like(w, seed=i) for i, w in enumerate(waves)])
    with torch.no_grad(), cache_activations(lm, "dec.*.cross_head_out") as noise:
        lm.model(noise_feats, decoder_input_ids=ids)  # the reference run, teacher-forced on the same tokens
    targets = patching.head_targets(lm, "cross_head_out", source=noise)
    metric = patching.token_logprob(start=len(lm.prompt_ids()))

    timings, results = {}, {}
    try:
        import nnsight
    except ImportError:
        nnsight = None
    if nnsight is not None:
        t0 = time.perf_counter()
        values = nnsight_sweep(lm, feats, ids, noise, metric)
        timings["nnsight"] = time.perf_counter() - t0
    for method in ("batched", "naive"):
        t0 = time.perf_counter()
        results[method] = patching.run_sweep(lm, feats, ids, targets, metric, method=method,
                                             batch_size=args.batch_size)
        timings[method] = time.perf_counter() - t0
    diff = (results["batched"].values - results["naive"].values).abs().max().item()
    assert diff < 1e-3, f"batched and naive sweeps disagree by {diff}"
    nnsight_diff = None
    if nnsight is not None:
        nnsight_diff = (results["naive"].values - values).abs().max().item()
        assert nnsight_diff < 1e-3, f"nnsight and naive sweeps disagree by {nnsight_diff}"
    delta = results["batched"].values - results["batched"].baseline
    worst = int(delta.mean(1).argmin())
    write(f"patch_sweep_{args.model}", {
        "description": __doc__.strip().splitlines()[0],
        "model": args.model, "clips": args.clips, "decoder_tokens": int(ids.shape[1]), "targets": len(targets),
        "batch_size": args.batch_size, "seconds": timings,
        "speedup_batched_over_naive": timings["naive"] / timings["batched"], "target_speedup": 10.0,
        "speedup_batched_over_nnsight": timings["nnsight"] / timings["batched"] if nnsight else None,
        "nnsight_version": getattr(nnsight, "__version__", None),
        "max_abs_difference": diff, "max_abs_difference_nnsight": nnsight_diff, "most_damaging_head": targets[worst].label,
        "most_damaging_head_delta_logprob": float(delta[worst].mean()),
    })


if __name__ == "__main__":
    main()
