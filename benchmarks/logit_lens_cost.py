"""Logit lens over every decoder layer and position of a batch, as one computation, next to one forward pass.

Teacher-forced on each model's own greedy transcripts of real clips (batch of 8). Three timings per model:

- ``forward``: one plain forward pass (encoder + decoder) of the batch;
- ``logit_lens``: :func:`asrinterp_utils.lens.logit_lens` (the forward pass with the residual stream cached, then one
  LayerNorm + unembedding per layer, with all statistics);
- ``hidden_states_per_layer``: the usual hand-wired way, ``output_hidden_states=True`` and then
  ``proj_out(decoder.layer_norm(h))`` per layer with softmax, top-k and KL (same numbers, asserted).

    python benchmarks/logit_lens_cost.py [--clips 8]
"""
from __future__ import annotations

import argparse

import torch

from _common import real_clips, timeit, write
from asrinterp_utils import lens, run
from asrinterp_utils.models import load_model


def by_hand(lm, feats, ids):
    """The hand-wired logit lens: hidden states of every layer, each through the final LayerNorm and proj_out."""
    with torch.no_grad():
        out = lm.model(feats, decoder_input_ids=ids, output_hidden_states=True)
        final_logp = torch.log_softmax(out.logits.float(), -1)
        kls = []
        for h in out.decoder_hidden_states[:-1]:
            logp = torch.log_softmax(lm.model.proj_out(lm.model.model.decoder.layer_norm(h)).float(), -1)
            logp.topk(5, dim=-1)
            kls.append((final_logp.exp() * (final_logp - logp)).sum(-1))
        kls.append(torch.zeros_like(kls[0]))
    return torch.stack(kls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=8)
    args = parser.parse_args()
    waves, _ = real_clips(args.clips)
    results = {}
    for name in ("tiny.en", "base"):
        lm = load_model(name, attn_implementation="sdpa")
        ids = run.generate_ids(lm, waves)
        feats, _ = lm.features(waves)

        def forward():
            with torch.no_grad():
                lm.model(feats, decoder_input_ids=ids)

        t_forward = timeit(forward, repeats=3)
        t_lens = timeit(lambda: lens.logit_lens(lm, feats, ids, top_k=5), repeats=3)
        t_hand = timeit(lambda: by_hand(lm, feats, ids), repeats=3)
        ours = lens.logit_lens(lm, feats, ids, top_k=5).kl
        # the last decoder hidden state of transformers is already normed: the hand-wired lens must treat it as the
        # output (as ours does), so only the earlier layers are compared
        hand = by_hand(lm, feats, ids)
        max_diff = float((ours[:-1] - hand[:-1]).abs().max())
        assert max_diff < 1e-3, max_diff
        results[name] = {"batch": args.clips, "tokens": ids.shape[1], "lens_layers": int(ours.shape[0]),
                         "seconds": {"forward": t_forward, "logit_lens": t_lens, "hidden_states_per_layer": t_hand},
                         "lens_over_forward": t_lens["median_s"] / t_forward["median_s"],
                         "hand_wired_over_forward": t_hand["median_s"] / t_forward["median_s"],
                         "kl_max_abs_difference_vs_hand_wired": max_diff}
    write("logit_lens_cost", {"description": __doc__.strip().splitlines()[0], "models": results})


if __name__ == "__main__":
    main()
