"""What the book's methods cost on a GPU with the paper's model size: Whisper-large-v3's architecture.

No weights travel to the GPU machine, so the model is large-v3's architecture (32 + 32 layers, d_model 1280, 20
heads, 128 mel bins) with random weights, built from a Whisper config folder (tokenizer, generation config) with
the sizes replaced. Random weights change no timing and no memory; they make the transcripts meaningless, so only
token ids are produced (greedy decoding runs to ``--max-new-tokens``). Measures, in float16 on one GPU: parameter
memory, the encoder on one and on a batch of 30-second windows, greedy decoding, a full residual-stream cache, the
logit lens over every layer, a teacher-forced patch sweep over all 640 cross-attention heads against one forward
per head (timed on a sample of heads and scaled), and patched generation over every decoder component. Peak GPU
memory is recorded for each. Writes ``gpu_large_models.json`` to ``--out``.

    python benchmarks/gpu_large_models.py --config-dir DIR_WITH_A_WHISPER_CONFIG --out OUT
    python benchmarks/gpu_large_models.py --config-dir DIR --out OUT --device cpu --scale small   # smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
from transformers import WhisperProcessor, WhisperTokenizerFast

from asrinterp_utils import lens, patching, run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import LoadedModel, ModelDims

LARGE_V3 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128)
SMALL = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=128)


def build(config_dir: str, sizes: dict, device: str, dtype: torch.dtype) -> LoadedModel:
    config = WhisperConfig.from_pretrained(config_dir, **sizes)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config).to(dtype=dtype).eval()
    model.generation_config = GenerationConfig.from_pretrained(config_dir)
    tokenizer = WhisperTokenizerFast.from_pretrained(config_dir)
    features = WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"])
    processor = WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)
    return LoadedModel("large-v3 architecture (random weights)", model, processor, tokenizer,
                       ModelDims.from_config(config), "random")


def clips(n: int, seconds: float = 8.0) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    return [(0.1 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
            for i in range(n)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measured(device: str, fn):
    """(result, seconds, peak GPU memory in GB above what was allocated before) of ``fn()``."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - before) / 1e9 if device == "cuda" else None
    return out, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", choices=["large-v3", "small"], default="large-v3")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    device = args.device
    assert device == "cpu" or torch.cuda.is_available(), "no CUDA device"
    dtype = torch.float16 if device == "cuda" else torch.float32
    lm, load_s, load_gb = measured(device, lambda: build(args.config_dir, LARGE_V3 if args.scale == "large-v3"
                                                         else SMALL, device, dtype))
    n_params = sum(p.numel() for p in lm.model.parameters())
    report: dict = {"benchmark": "gpu_large_models", "date": time.strftime("%Y-%m-%d"),
                    "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                "transformers": transformers.__version__, "device": device,
                                "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
                    "description": "Whisper-large-v3's architecture with random weights, float16: what each method "
                                   "costs in time and GPU memory at the paper's model size.",
                    "model": f"{args.scale} architecture, random weights", "dtype": str(dtype).replace("torch.", ""),
                    "parameters_millions": round(n_params / 1e6, 1), "batch": args.batch, "steps": {}}
    steps = report["steps"]
    steps["load (random init)"] = {"seconds": load_s, "peak_gb": load_gb}

    waves = clips(args.batch)
    feats, _ = lm.features(waves)
    feats = feats.to(device=device, dtype=dtype)
    core = lm.model.model
    _, s, gb = measured(device, lambda: core.encoder(feats[:1]))  # warm-up
    _, s, gb = measured(device, lambda: core.encoder(feats[:1]))
    steps["encoder, 1 window"] = {"seconds": s, "peak_gb": gb}
    states, s, gb = measured(device, lambda: core.encoder(feats).last_hidden_state)
    steps[f"encoder, {args.batch} windows"] = {"seconds": s, "peak_gb": gb}
    ids, s, gb = measured(device, lambda: run.greedy(lm, states, max_new_tokens=args.max_new_tokens).ids)
    steps[f"greedy decoding, {args.batch} windows, up to {args.max_new_tokens} tokens"] = {
        "seconds": s, "peak_gb": gb, "tokens": int(ids.shape[1])}
    ids = ids[:, : len(lm.prompt_ids()) + 24].to(device)

    def full_cache():
        with cache_activations(lm, ["enc.*.resid_post", "dec.*.resid_post"]) as cache:
            lm.model(feats, decoder_input_ids=ids)
        return sum(t.numel() * t.element_size() for t in cache.values()) / 1e9

    cache_gb, s, gb = measured(device, full_cache)
    steps["forward with every layer's residual stream cached"] = {"seconds": s, "peak_gb": gb,
                                                                 "cache_gb": cache_gb}
    _, s, gb = measured(device, lambda: lens.logit_lens(lm, feats, ids))
    steps["logit lens, every decoder layer and position"] = {"seconds": s, "peak_gb": gb}

    # Patch sweep over every cross-attention head, teacher-forced, four windows.
    few_feats, few_ids, few_noise = feats[:4], ids[:4], torch.randn_like(feats[:4])
    with torch.no_grad(), cache_activations(lm, "dec.*.cross_head_out") as noise:
        lm.model(few_noise, decoder_input_ids=few_ids)
    metric = patching.token_logprob(len(lm.prompt_ids()))
    targets = patching.head_targets(lm, "cross_head_out", source=noise)
    sweep, s_batched, gb = measured(device, lambda: patching.run_sweep(lm, few_feats, few_ids, targets, metric,
                                                                       batch_size=32))
    steps[f"patch sweep, {len(targets)} cross-attention heads x 4 windows (ours)"] = {"seconds": s_batched,
                                                                                     "peak_gb": gb}
    sample = targets[:: max(1, len(targets) // 16)]
    naive, s_naive, _ = measured(device, lambda: patching.run_sweep(lm, few_feats, few_ids, sample, metric,
                                                                    method="naive"))
    index = [targets.index(t) for t in sample]
    report["patch_sweep"] = {
        "targets": len(targets), "naive_timed_on": len(sample),
        "naive_seconds_scaled_to_all": s_naive * len(targets) / len(sample),
        "speedup_batched_over_naive": s_naive * len(targets) / len(sample) / s_batched,
        "max_abs_difference_on_sample": float((sweep.values[index] - naive.values).abs().max())}

    components = [t for c in ("self_attn_out", "cross_attn_out", "mlp_out")
                  for t in patching.component_targets(lm, f"dec.*.{c}", source=patching.REFERENCE)]
    gen, s, gb = measured(device, lambda: patching.generate_sweep(lm, waves[:4], components, max_new_tokens=16,
                                                                  batch_rows=192))
    steps[f"patched generation, {len(components)} decoder components x 4 windows, 16 tokens"] = {
        "seconds": s, "peak_gb": gb}
    if device == "cuda":
        report["peak_gb_overall"] = torch.cuda.max_memory_allocated() / 1e9
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_large_models.json").write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
