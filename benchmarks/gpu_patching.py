"""Patched generation and attribution patching on CUDA, checked on a GPU: the batched generation sweep gives the
naive loop's transcripts, patching all of cross-attention from the reference gives the reference's own transcript,
attribution patching gives the CPU's estimates, and the batched-over-naive speed-up on the GPU.

No real weights travel to the GPU machine, so the model is base's architecture, config, tokenizer and processor
with random weights (seed 0): the same code paths, not the same numbers. Writes ``gpu_patching.json`` to ``--out``.

    python benchmarks/gpu_patching.py --config-dir DIR_WITH_BASE_CONFIG_AND_TOKENIZER --out OUT
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers

from asrinterp_utils import hooks, patching
from asrinterp_utils.cache import cache_activations
from gpu_check import loaded, sync, synthetic_clips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script")
    args = parser.parse_args()
    assert args.device == "cpu" or torch.cuda.is_available(), "no CUDA device"
    report: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(),
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "none (cpu smoke run)",
                    "model": "base architecture, random weights", "checks": {}}
    checks = report["checks"]
    cpu, gpu = loaded(args.config_dir, "cpu", torch.float32), loaded(args.config_dir, args.device, torch.float32)
    waves = synthetic_clips(args.clips)

    everything = patching.PatchTarget("all cross", {"dec.*.cross_attn_out": hooks.replace(patching.REFERENCE)})
    result = patching.generate_sweep(gpu, waves, [everything], max_new_tokens=args.max_new_tokens)
    checks["all_cross_attention_gives_the_reference_transcript"] = result.texts[0] == result.reference_texts

    targets = [t for c in ("self_attn_out", "cross_attn_out", "mlp_out")
               for t in patching.component_targets(gpu, f"dec.*.{c}", source=patching.REFERENCE)]
    targets += patching.head_targets(gpu, "cross_head_out", source=patching.REFERENCE, layers=[5])
    timings, sweeps = {}, {}
    for method in ("batched", "naive"):
        sync()
        t0 = time.perf_counter()
        sweeps[method] = patching.generate_sweep(gpu, waves, targets, max_new_tokens=args.max_new_tokens,
                                                 method=method)
        sync()
        timings[method] = time.perf_counter() - t0
    checks["generation_batched_equals_naive"] = sweeps["batched"].token_ids == sweeps["naive"].token_ids
    report["generation_sweep"] = {"targets": len(targets), "clips": len(waves), "seconds": timings,
                                  "speedup_batched_over_naive": timings["naive"] / timings["batched"]}

    feats, _ = cpu.features(waves[:2])
    ids = torch.tensor([cpu.prompt_ids() + [440, 2068, 7286, 8176, 13]] * 2)
    noise, _ = cpu.features([w[::-1].copy() for w in waves[:2]])
    metric = patching.token_logprob(start=len(cpu.prompt_ids()))
    estimates = {}
    for name, lm in (("cpu", cpu), ("cuda", gpu)):
        with torch.no_grad(), cache_activations(lm, "dec.*.cross_head_out") as ref:
            lm.model(noise.to(lm.device), decoder_input_ids=ids.to(lm.device))
        attr = patching.attribution_patching(lm, feats, ids, "dec.*.cross_head_out", ref, metric)
        estimates[name] = attr.labels_and_values()[1]
    checks["attribution_cuda_matches_cpu_max_abs"] = float((estimates["cpu"] - estimates["cuda"]).abs().max())
    with open(f"{args.out}/gpu_patching.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
