"""Encoder lens: all encoder layers of a clip decoded as one batch, against one generate per layer.

Both decode the same encoder states (each layer's output through the final encoder LayerNorm) greedily. The last
layer's transcripts must agree; any other difference is listed (greedy decoding from early layers, whose
distributions are nearly flat, can flip on rounding that depends on the batch size). Target: >= 3x on base.

    python benchmarks/encoder_lens.py [--model base] [--clips 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import real_clips, write
from asrinterp_utils import lens
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import load_model


def one_generate_per_layer(lm, waves, max_new_tokens=64):
    """The naive way: the encoder once per clip, then one generate call per layer."""
    core = lm.model.model
    rows = []
    for clip, wave in enumerate(waves):
        feats, _ = lm.features([wave])
        names = [f"enc.{i}.resid_post" for i in range(lm.dims.n_encoder_layers)]
        with torch.no_grad(), cache_activations(lm, names, device=None) as cache:
            core.encoder(feats)
        for layer, name in enumerate(names):
            states = core.encoder.layer_norm(cache[name])
            ids = lm.generate_ids(None, max_new_tokens=max_new_tokens, encoder_states=states)
            rows.append((clip, layer, lm.tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=3)
    args = parser.parse_args()
    lm = load_model(args.model)
    waves, _ = real_clips(args.clips)
    t0 = time.perf_counter()
    batched = lens.encoder_lens(lm, waves)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = one_generate_per_layer(lm, waves)
    t_naive = time.perf_counter() - t0
    pairs = list(zip([tuple(r) for r in batched[["clip", "layer", "transcript"]].itertuples(index=False)], naive))
    differing = [{"clip": a[0], "layer": a[1], "batched": a[2], "per_layer": b[2]} for a, b in pairs if a != b]
    last = lm.dims.n_encoder_layers - 1
    assert not [d for d in differing if d["layer"] == last], "the last layer's transcripts must agree"
    write(f"encoder_lens_{args.model}", {
        "description": __doc__.strip().splitlines()[0], "model": args.model, "clips": args.clips,
        "layers": lm.dims.n_encoder_layers, "seconds": {"batched": t_batched, "one_generate_per_layer": t_naive},
        "speedup": t_naive / t_batched, "target_speedup": 3.0,
        "transcripts_identical": f"{len(pairs) - len(differing)} of {len(pairs)}",
        # greedy decoding of near-flat distributions (early layers) can flip on batch-size-dependent rounding
        "differing": differing,
    })


if __name__ == "__main__":
    main()
