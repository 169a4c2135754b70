"""How many decoder rows a patched-generation sweep stacks per forward: chapter 8's head sweep (every
cross-attention head patched from white noise, during generation, on the chapter's 12 selection loops) in chunks
of 256 rows (the default until 2026-12-07), 1024 (``run.SWEEP_ROWS``, the default now) and all rows at once, on
tiny.en and base; and the same for its component sweep (every layer's self-attention, cross-attention and MLP output).

Every chunk reads each clip's cross-attention keys and values once per step, whatever the number of targets in
it, so fewer, larger chunks read them fewer times; the other work (projections, MLPs, the unembedding of each
patched row) is the same per row. One timed sweep per setting (each takes tens of seconds), after an untimed one on
one loop. Rows whose transcripts differ between settings are decoded once more alone, with the naive method (one
target, one clip, the encoder rerun), to say which setting agrees with it: batches of different shapes use
different matrix kernels, so float rounding can tip a near-tie.

    python benchmarks/sweep_rows.py [--models tiny.en base]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from _common import write

MAX_NEW_TOKENS = 64  # chapter 8's
N_SELECT = 12  # chapter 8's selection split
INPUT_KIND = {"speed2.5x": "speed-up", "speed3x": "speed-up", "stutter": "stutter", "none": "other language"}


def selection_loops(lm):
    """Chapter 8's selection loops for ``lm``, as audio: its candidates mined (read from the cache where the chapter
    mined them), the loops split by input kind with the chapter's seed."""
    from asrinterp_utils import repetition
    from asrinterp_utils.data import bank
    from asrinterp_utils.data.real import clip_audio

    source = bank.speech_dataset("transcribed", fast=False, progress=False)
    other = bank.speech_dataset("other_languages", progress=False)
    candidates = pd.concat([repetition.candidate_inputs(source, kinds=("speed2.5x", "speed3x", "stutter"), n_clips=64),
                            repetition.candidate_inputs(other, kinds=("none",))], ignore_index=True)
    mined = repetition.mine_loops(lm, candidates, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    found = mined[mined.hallucinated_loop].assign(input=lambda m: m.kind.map(INPUT_KIND)).reset_index(drop=True)
    selection, _ = repetition.split_loops(found, N_SELECT, by="input", seed=0)
    paths = pd.concat([source, other]).set_index("clip_id").path
    return [repetition.transform(clip_audio(paths[r.source_clip_id]), r.kind) for r in selection.itertuples()]


def sweep_settings(lm, audio, encoded, targets) -> dict:
    """One sweep of ``targets`` over the loops at each setting of ``batch_rows``: seconds, and every row whose tokens
    differ between settings, with the naive method's tokens beside them."""
    from asrinterp_utils import patching, run

    all_rows = 2 * len(audio) * (len(targets) + 1)  # patched + reference per target and loop, and the unpatched
    settings = {"256": 256, "1024 (run.SWEEP_ROWS)": run.SWEEP_ROWS, "all at once": all_rows}
    seconds, ids = {}, {}
    for label, rows in settings.items():
        fresh = dataclasses.replace(encoded, _decoded={})  # the same encoder outputs, nothing decoded yet
        t0 = time.perf_counter()
        sweep = patching.generate_sweep(lm, fresh, targets, max_new_tokens=MAX_NEW_TOKENS, batch_rows=rows)
        seconds[label] = round(time.perf_counter() - t0, 1)
        ids[label] = sweep.token_ids
    differing = sorted({(t, c) for label in settings for t in range(len(targets)) for c in range(len(audio))
                        if ids[label][t][c] != ids["all at once"][t][c]})
    disagreements = []
    for t, c in differing:
        naive = patching.generate_sweep(lm, [audio[c]], [targets[t]], max_new_tokens=MAX_NEW_TOKENS,
                                        method="naive").token_ids[0][0]
        disagreements.append({"target": targets[t].label, "loop": c, "tokens_naive": len(naive),
                              **{f"tokens_{label}": len(ids[label][t][c]) for label in settings},
                              "agree_with_naive": [label for label in settings if ids[label][t][c] == naive]})
    return {"loops": len(audio), "targets": len(targets), "rows": all_rows, "seconds": seconds,
            "speedup_1024_over_256": round(seconds["256"] / seconds["1024 (run.SWEEP_ROWS)"], 2),
            "identical_1024_and_all_at_once": ids["1024 (run.SWEEP_ROWS)"] == ids["all at once"],
            "rows_compared": len(audio) * len(targets), "rows_differing_between_settings": disagreements}


def main() -> None:
    from asrinterp_utils import patching, run
    from asrinterp_utils.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    args = parser.parse_args()
    results = {}
    for name in args.models:
        lm = load_model(name)
        audio = selection_loops(lm)
        encoded = patching.encode_clips(lm, audio)
        heads = patching.head_targets(lm, "cross_head_out", source=patching.REFERENCE)
        patching.generate_sweep(lm, audio[:1], heads[:2], max_new_tokens=8)  # warm-up, untimed
        sweeps = {"heads": heads,
                  "components": [t for c in ("self_attn_out", "cross_attn_out", "mlp_out")
                                 for t in patching.component_targets(lm, f"dec.*.{c}", source=patching.REFERENCE)]}
        results[name] = {kind: sweep_settings(lm, audio, encoded, targets) for kind, targets in sweeps.items()}
    write("sweep_rows", {"description": __doc__.split("\n\n")[0], "max_new_tokens": MAX_NEW_TOKENS,
                         "package_default": run.SWEEP_ROWS, "results": results})


if __name__ == "__main__":
    main()
