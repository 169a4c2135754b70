"""Patched generation on looping inputs: ours (every target and clip in one decoder batch, each beside a
white-noise reference row fed the same tokens, cross-attention keys/values projected once and shared, ended rows
leaving the batch) against the naive loop (one target and one clip at a time, the encoder rerun, every row its own
keys/values), with the same transcripts asserted; and against the machine's limit (a roofline entry).

The inputs are the first looping clips that ``repetition.mine_loops`` finds among sped-up and stuttered bank
clips; the targets are every decoder layer's self-attention, cross-attention and MLP output. The roofline divides
the floating-point operations the batched sweep performs (counted by hooks on every linear layer and attention
call of one untimed rerun) by its time, over a float32 matrix-multiply peak measured in the same run. The
``profile`` entry says where the batched sweep's time goes (cProfile of one more, untimed run, grouped by kind).
Each way is timed twice and its fastest run kept.

    python benchmarks/patched_generation.py [--model tiny.en] [--loops 6] [--max-new-tokens 96]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from _common import matmul_peak, write
from asrinterp_utils import patching, repetition, run
from asrinterp_utils.data import bank
from asrinterp_utils.data.real import clip_audio
from asrinterp_utils.hooks import whisper_core
from asrinterp_utils.models import load_model

RUNS = 2


class FlopCounter:
    """Counts the multiply-adds (x2) of every ``nn.Linear`` and every attention product of the Whisper decoder and
    encoder inside the block, by forward hooks (a padded query slot counts as work done), and the cross-attention
    key/value projections, which ``run.cross_attention_kv`` computes from the layers' weights (not by calling them)."""

    def __init__(self, lm) -> None:
        self.core, self.flops, self.handles, self.past = whisper_core(lm), 0, [], 0
        self.unembed = lm.model.proj_out
        self.project = run.cross_attention_kv

    def _projections(self, model, states, **kwargs):
        d_model = states.shape[-1]
        self.flops += 2 * 2 * len(self.core.decoder.layers) * states.shape[0] * states.shape[1] * d_model * d_model
        return self.project(model, states, **kwargs)

    def __enter__(self) -> "FlopCounter":
        run.cross_attention_kv = self._projections
        modules = list(self.core.modules()) + [self.unembed]
        for m in modules:
            if isinstance(m, torch.nn.Linear):
                self.handles.append(m.register_forward_hook(self._linear))
            elif type(m).__name__ == "WhisperAttention":
                self.handles.append(m.register_forward_hook(self._attention, with_kwargs=True))
        self.handles.append(self.core.decoder.register_forward_pre_hook(self._decoder, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        run.cross_attention_kv = self.project
        for h in self.handles:
            h.remove()

    def _linear(self, module, args, output) -> None:
        self.flops += 2 * args[0].numel() // args[0].shape[-1] * module.in_features * module.out_features

    def _decoder(self, module, args, kwargs) -> None:
        cache = kwargs.get("cache")
        self.past = cache.get_seq_length() if cache is not None else 0

    def _attention(self, module, args, kwargs, output) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        rows, tokens, d_model = hidden.shape
        if kwargs.get("key_value_states") is not None:
            keys = kwargs["key_value_states"].shape[1]  # cross-attention: every encoder frame
        elif module.is_decoder:
            keys = self.past + tokens
        else:
            keys = tokens
        self.flops += 4 * rows * tokens * keys * d_model  # scores and weighted sum


def profile_groups(stats: pstats.Stats) -> dict:
    """Seconds of own time per kind of work."""
    groups = {"linear layers (projections, MLP, unembedding)": ("linear", "_unembed"),
              "attention kernels": ("scaled_dot_product_attention", "matmul", "softmax", "bmm"),
              "self-attention KV cache growth (torch.cat)": ("cat",),
              "argmax and suppression masks": ("argmax", "masked_fill"),
              "hooks (patches)": ("hooks.py",)}
    out = {name: 0.0 for name in groups}
    out["everything else (Python, layer norms, copies)"] = 0.0
    for (file, _, func), (_, _, tottime, _, _) in stats.stats.items():
        for name, keys in groups.items():
            if any(k == func or k in func.split(" ")[-1] or k in file for k in keys):
                out[name] += tottime
                break
        else:
            out["everything else (Python, layer norms, copies)"] += tottime
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--loops", type=int, default=6)
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
    peak = matmul_peak()

    def batched():
        """(encoded clips, sweep, seconds encoding, seconds decoding); the encoder runs (the store is not read), as
        in the naive loop"""
        t0 = time.perf_counter()
        encoded = patching.encode_clips(lm, waves, use_store=False)
        t1 = time.perf_counter()
        result = patching.generate_sweep(lm, encoded, targets, max_new_tokens=args.max_new_tokens)
        return result, t1 - t0, time.perf_counter() - t1

    # Warm-up (first calls allocate and pick kernels), on one clip and target, both ways; not timed.
    for method in ("batched", "naive"):
        patching.generate_sweep(lm, waves[:1], targets[:1], max_new_tokens=4, method=method)
    # Each way runs RUNS times, alternating, and its fastest run is kept (as timeit does, and as
    # benchmarks/encoder_lens.py: the slower runs carry the machine's noise and, for the first batched run, the
    # page faults of its first large allocations).
    runs, results, parts = {"batched": [], "naive": []}, {}, None
    for _ in range(RUNS):
        results["batched"], enc_s, dec_s = batched()
        runs["batched"].append(enc_s + dec_s)
        if runs["batched"][-1] == min(runs["batched"]):
            parts = enc_s, dec_s
        t0 = time.perf_counter()
        results["naive"] = patching.generate_sweep(lm, waves, targets, max_new_tokens=args.max_new_tokens,
                                                   method="naive")
        runs["naive"].append(time.perf_counter() - t0)
    timings = {way: min(seconds) for way, seconds in runs.items()}
    enc_s, dec_s = parts
    same = (results["batched"].token_ids == results["naive"].token_ids
            and results["batched"].baseline_ids == results["naive"].baseline_ids)
    assert same, "batched and naive patched generation disagree"

    with FlopCounter(lm) as counter:
        encoded = patching.encode_clips(lm, waves, use_store=False)
        enc_flops = counter.flops
        patching.generate_sweep(lm, encoded, targets, max_new_tokens=args.max_new_tokens)
    dec_flops = counter.flops - enc_flops
    profiler = cProfile.Profile()
    profiler.enable()
    batched()
    profiler.disable()
    where = profile_groups(pstats.Stats(profiler))

    def roof(flops, seconds):
        return {"gflop": flops / 1e9, "seconds": seconds, "achieved_gflops": flops / seconds / 1e9,
                "fraction_of_peak": flops / seconds / peak}

    write(f"patched_generation_{args.model}", {
        "description": __doc__.strip().splitlines()[0], "model": args.model, "looping_clips": len(waves),
        "targets": len(targets), "max_new_tokens": args.max_new_tokens, "seconds": timings, "runs_seconds": runs,
        "timing": f"the fastest of {RUNS} runs of each way, alternating",
        "speedup_batched_over_naive": timings["naive"] / timings["batched"], "identical_transcripts": same,
        "tokens_generated_per_target_and_clip": sum(len(i) for row in results["batched"].token_ids for i in row)
        / (len(targets) * len(waves)),
        "seconds_batched_parts": {"encode": enc_s, "decode": dec_s},
        "roofline": {
            "matmul_peak_gflops": peak / 1e9,
            "whole_sweep": roof(enc_flops + dec_flops, enc_s + dec_s),
            "encoder_passes": roof(enc_flops, enc_s),
            "patched_decoding": roof(dec_flops, dec_s),
            "fraction_of_peak": (enc_flops + dec_flops) / (enc_s + dec_s) / peak,
            "how": "FLOPs counted by hooks on every linear layer and attention product of the batched sweep, over "
                   "its wall time, over a float32 2048x2048 matrix-multiply peak measured in this run. Decoding is "
                   "bound by memory, not arithmetic: every step reads every clip's cross-attention keys and "
                   "values (4 layers x 12 encoder outputs x 1500 frames x 384 x 2 floats = 220 MB a step)",
        },
        "profile_seconds": where,
        "profile_note": "own time per kind of work in a cProfile'd rerun of the batched sweep (cProfile adds "
                        "overhead, so these add up to more than the timed run)",
    })


if __name__ == "__main__":
    main()
