"""Encoder lens: all encoder layers of several clips decoded as one batch, against one generate call per layer.

Three ways, on the same encoder states (each layer's output through the final encoder LayerNorm), greedy:

- ``batched`` (ours): :func:`asrinterp_utils.lens.encoder_lens`, the encoder once per batch of clips, every
  ``clips x layers`` state decoded together by ``run.greedy``;
- ``one_decode_per_layer``: the same decoding rules, one call per clip and layer (the naive loop); its transcripts
  must equal ours exactly (asserted);
- ``hf_generate_per_layer``: Hugging Face ``model.generate(encoder_outputs=...)`` per clip and layer, the way it is
  usually wired by hand. It does not suppress timestamp tokens, which early layers of base emit; generate then treats
  them as segment boundaries and can decode far past its limit. Its transcripts are compared, not asserted.

Target: >= 3x over the naive loop on base (the JSON gives the bounds that this machine puts on it). Both ways read
the same cross-attention keys and values at every step of every row (each row decodes a different encoder output,
so nothing is shared): about 37 MB per row and step for base. The ``memory_floor`` entry divides those bytes by
this machine's measured read bandwidth: what no greedy loop over these rows can beat on this CPU, and what bounds
the batched speed-up (batching saves the per-step overhead of the one-row loop, not that reading).

    python benchmarks/encoder_lens.py [--model base] [--clips 4]
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers.modeling_outputs import BaseModelOutput

from _common import matmul_peak, read_bandwidth, real_clips, write
from asrinterp_utils import lens, run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import load_model

MAX_NEW_TOKENS = 64
RUNS = 2


def layer_states(lm, wave):
    core = lm.model.model
    feats, _ = lm.features([wave])
    names = [f"enc.{i}.resid_post" for i in range(lm.dims.n_encoder_layers)]
    with torch.no_grad(), cache_activations(lm, names, device=None) as cache:
        core.encoder(feats)
    return [core.encoder.layer_norm(cache[name]) for name in names]


def text_of(lm, ids):
    return lm.tokenizer.decode(ids, skip_special_tokens=True).strip()


def one_decode_per_layer(lm, waves):
    return [text_of(lm, run.greedy(lm, states, max_new_tokens=MAX_NEW_TOKENS).ids[0])
            for wave in waves for states in layer_states(lm, wave)]


def hf_generate_per_layer(lm, waves):
    rows = []
    for wave in waves:
        for states in layer_states(lm, wave):
            features = torch.zeros(1, lm.dims.n_mels, 2 * lm.dims.n_audio_ctx)  # generate indexes them; unused
            kwargs = dict(language="en", task="transcribe") if lm.dims.multilingual else {}
            with torch.no_grad():
                ids = lm.model.generate(features, encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                        max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                        return_timestamps=False, **kwargs)
            rows.append(text_of(lm, ids[0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="base")
    parser.add_argument("--clips", type=int, default=4)
    args = parser.parse_args()
    lm = load_model(args.model, attn_implementation="sdpa")
    waves, _ = real_clips(args.clips)
    # Warm-up, not timed: the first calls allocate (and page-fault in) the large tensors and pick kernels.
    lens.encoder_lens(lm, waves, max_new_tokens=4, clips_per_batch=4, progress=False, use_store=False)
    one_decode_per_layer(lm, waves[:1])
    split = {"encoder": 0.0, "decoding": 0.0}  # where the batched run's time goes

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                split[key] += time.perf_counter() - start
        return wrapper

    # Each way is timed RUNS times and its fastest run kept (as timeit does: the others carry the machine's noise,
    # which on a shared 2-core machine moved this ratio from 1.8x to 2.3x between runs of the same code).
    runs = {"batched": [], "one_decode_per_layer": []}
    encode_features, greedy = run.encode_features, run.greedy
    for _ in range(RUNS):
        for key in split:
            split[key] = 0.0
        run.encode_features, run.greedy = timed("encoder", encode_features), timed("decoding", greedy)
        t0 = time.perf_counter()
        batched = lens.encoder_lens(lm, waves, max_new_tokens=MAX_NEW_TOKENS, clips_per_batch=4, progress=False,
                                    use_store=False)
        runs["batched"].append(time.perf_counter() - t0)
        run.encode_features, run.greedy = encode_features, greedy
        if runs["batched"][-1] == min(runs["batched"]):
            fastest_split = dict(split)
        t0 = time.perf_counter()
        naive = one_decode_per_layer(lm, waves)
        runs["one_decode_per_layer"].append(time.perf_counter() - t0)
    split = fastest_split
    t_batched, t_naive = min(runs["batched"]), min(runs["one_decode_per_layer"])
    # every row projects its own encoder output to each decoder layer's cross-attention keys and values, in both
    # ways: 2 (K, V) x layers x frames x d_model^2 multiply-adds per row
    n_rows = args.clips * lm.dims.n_encoder_layers
    kv_flop = n_rows * 2 * lm.dims.n_decoder_layers * lm.dims.n_audio_ctx * lm.dims.d_model ** 2 * 2
    t0 = time.perf_counter()
    hf = hf_generate_per_layer(lm, waves)
    t_hf = time.perf_counter() - t0
    bandwidth = read_bandwidth()
    peak = matmul_peak()
    steps = [min(n + 1, MAX_NEW_TOKENS) for n in batched.n_tokens]  # each row's decoding steps (its end token too)
    per_step = 2 * lm.dims.n_decoder_layers * lm.dims.n_audio_ctx * lm.dims.d_model * 4  # keys + values, float32
    floor_s = sum(steps) * per_step / bandwidth
    ours = batched.transcript.tolist()
    assert ours == naive, "batched and per-layer decoding must give the same transcripts"
    differing = [{"clip": int(c), "layer": int(layer), "ours": o, "hf_generate": h}
                 for c, layer, o, h in zip(batched["clip"], batched.layer, ours, hf) if o != h]
    write(f"encoder_lens_{args.model}", {
        "description": __doc__.strip().splitlines()[0], "model": args.model, "clips": args.clips,
        "layers": lm.dims.n_encoder_layers, "max_new_tokens": MAX_NEW_TOKENS,
        "seconds": {"batched": t_batched, "one_decode_per_layer": t_naive, "hf_generate_per_layer": t_hf},
        "runs_seconds": runs, "timing": f"the fastest of {RUNS} runs of each way (hf_generate_per_layer: one run)",
        "speedup_vs_one_decode_per_layer": t_naive / t_batched, "speedup_vs_hf_generate_per_layer": t_hf / t_batched,
        "target_speedup": 3.0,
        "where_the_time_goes": {
            "encoder_s": split["encoder"], "decoding_s": split["decoding"],
            "other_s": t_batched - split["encoder"] - split["decoding"],
            "cross_kv_projection_gflop": kv_flop / 1e9,
            "cross_kv_projection_s_at_peak": kv_flop / peak,
            "matmul_peak_gflop_s": peak / 1e9,
            "speedup_bound_if_decoding_steps_were_free": t_naive / (split["encoder"] + kv_flop / peak),
            "speedup_bound_at_memory_floor": t_naive / (split["encoder"] + kv_flop / peak + floor_s),
            "how": "the encoder pass and the cross-attention key/value projections are the same work in both ways "
                   "(the naive loop also encodes each clip once); batching saves only the per-step cost, so the "
                   "speed-up over the naive loop is bounded by naive time / (encoder + projections at peak); "
                   "decoding cannot take less than the memory floor below, which gives the tighter bound "
                   "naive time / (encoder + projections at peak + memory floor)"},
        "memory_floor": {"row_steps": sum(steps), "bytes_per_row_step": per_step,
                         "read_bandwidth_gb_s": bandwidth / 1e9, "floor_s": floor_s,
                         "batched_over_floor": t_batched / floor_s,
                         "how": "cross-attention keys and values read once per row and decoding step, over the "
                                "read bandwidth measured in this run (encoder passes and projections not counted)"}, "transcripts_identical_to_one_decode_per_layer": True,
        "transcripts_identical_to_hf_generate": f"{len(ours) - len(differing)} of {len(ours)}",
        "differing_from_hf_generate": differing,
        "transcripts": [{"clip": int(c), "layer": int(layer), "text": t}
                        for c, layer, t in zip(batched["clip"], batched.layer, ours)],
    })


if __name__ == "__main__":
    main()
