"""The CUDA path, checked on a GPU: hooks, lens, tuned lens, greedy decoding, encoder lens, batched patching and the
audio-LLM lens give the CPU's answers on CUDA (fp32), and run in bf16.

No real weights travel to the GPU machine (they exceed what the device tool carries), so the model is tiny.en's
architecture, config, tokenizer and processor with random weights (seed 0): the same code paths, not the same
numbers. Writes ``gpu_check.json`` to the folder given by ``--out``.

    python benchmarks/gpu_check.py --config-dir DIR_WITH_TINY_EN_CONFIG_AND_TOKENIZER --out OUT
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
import transformers
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from asrinterp_utils import audio_llm, lens, patching, run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import LoadedModel, ModelDims


def loaded(config_dir: str, device: str, dtype: torch.dtype) -> LoadedModel:
    config = WhisperConfig.from_pretrained(config_dir)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(config_dir)
    model = model.to(device=device, dtype=dtype).eval()
    processor = WhisperProcessor.from_pretrained(config_dir)
    return LoadedModel("tiny.en (random weights)", model, processor, processor.tokenizer,
                       ModelDims.from_config(config), "random")


def synthetic_clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    return [(0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
            for i in range(n)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    report: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0), "checks": {}}
    checks = report["checks"]
    cpu, gpu = loaded(args.config_dir, "cpu", torch.float32), loaded(args.config_dir, "cuda", torch.float32)
    waves = synthetic_clips(4)
    feats, _ = cpu.features(waves)
    ids = torch.tensor([cpu.prompt_ids() + [400, 500, 600, 700, 800]] * len(waves))

    # 1. hooks: a full residual cache leaves the logits unchanged; CUDA matches CPU
    with torch.no_grad():
        plain = gpu.model(feats.cuda(), decoder_input_ids=ids.cuda()).logits
        with cache_activations(gpu, ["enc.*.resid_post", "dec.*.resid_post"], device=None):
            hooked = gpu.model(feats.cuda(), decoder_input_ids=ids.cuda()).logits
        on_cpu = cpu.model(feats, decoder_input_ids=ids).logits
    checks["hooked_equals_plain_max_abs"] = float((hooked - plain).abs().max())
    checks["cuda_vs_cpu_logits_max_abs"] = float((plain.cpu() - on_cpu).abs().max())

    # 2. logit lens: the last layer is the logits; CUDA statistics match CPU
    r_gpu, r_cpu = lens.logit_lens(gpu, feats, ids, top_k=3), lens.logit_lens(cpu, feats, ids, top_k=3)
    checks["lens_last_layer_kl_max"] = float(r_gpu.kl[-1].max())
    checks["lens_kl_cuda_vs_cpu_max_abs"] = float((r_gpu.kl - r_cpu.kl).abs().max())
    checks["lens_top1_cuda_vs_cpu_agreement"] = float((r_gpu.top_ids[..., 0] == r_cpu.top_ids[..., 0]).float().mean())

    # 3. greedy decoding from encoder states and the encoder lens
    with torch.no_grad():
        states = cpu.model.model.encoder(feats).last_hidden_state
    d_cpu = run.greedy(cpu, states, max_new_tokens=16).ids
    d_gpu = run.greedy(gpu, states.cuda(), max_new_tokens=16).ids
    checks["decode_greedy_cuda_equals_cpu"] = bool(d_cpu.shape == d_gpu.shape and torch.equal(d_cpu, d_gpu))
    checks["decode_greedy_output_device"] = str(d_gpu.device)
    table = lens.encoder_lens(gpu, waves[:2], max_new_tokens=8, progress=False)  # (no jiwer there: no WER)
    checks["encoder_lens_rows"] = len(table)

    # 4. batched patch sweep equals the naive one on CUDA
    source = None
    with torch.no_grad(), cache_activations(gpu, "dec.*.cross_head_out", device=None) as clean:
        gpu.model(feats.cuda().flip(0), decoder_input_ids=ids.cuda())
        source = clean
    targets = patching.head_targets(gpu, "cross_head_out", source=source)
    metric = patching.token_logprob(len(cpu.prompt_ids()))
    sync(); t0 = time.perf_counter()
    batched = patching.run_sweep(gpu, feats, ids, targets, metric, method="batched")
    sync(); t1 = time.perf_counter()
    naive = patching.run_sweep(gpu, feats, ids, targets, metric, method="naive")
    sync(); t2 = time.perf_counter()
    checks["sweep_batched_vs_naive_max_abs"] = float((batched.values - naive.values).abs().max())
    checks["sweep_seconds"] = {"batched": t1 - t0, "naive": t2 - t1, "targets": len(targets)}

    # 5. tuned lens fit on CUDA
    res = lens.decoder_residuals(gpu, waves, ["hello world"] * 2 + ["good morning"] * 2, progress=False)
    fit = lens.fit_tuned_lens(gpu, res.subset([0, 2]), res.subset([1, 3]), epochs=2, progress=False)
    checks["tuned_lens_epochs_recorded"] = int(fit.history.epoch.max())
    checks["tuned_lens_device"] = str(next(fit.lens.parameters()).device)

    # 6. bf16: the lens and decoding run
    bf = loaded(args.config_dir, "cuda", torch.bfloat16)
    r_bf = lens.logit_lens(bf, feats, ids, top_k=1)
    checks["bf16_lens_last_layer_agrees"] = bool(r_bf.agrees[-1].all())
    checks["bf16_decode_shape"] = list(run.greedy(bf, states.cuda(), max_new_tokens=8).ids.shape)

    # 7. audio-LLM lens on CUDA
    model, inputs = audio_llm.tiny_qwen2_audio(seed=0)
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    r = audio_llm.audio_llm_logit_lens(model, **inputs)
    checks["audio_llm_last_layer_kl_max"] = float(r.kl[-1].max())
    out = audio_llm.audio_llm_encoder_lens(model, **inputs, max_new_tokens=4)
    checks["audio_llm_encoder_lens_layers"] = len(out)

    # 8. timing on the GPU: logit lens over all layers and positions vs one forward (batch 32, 64 tokens)
    big_feats = feats.repeat(8, 1, 1).cuda()
    big_ids = torch.randint(0, 50000, (32, 64), device="cuda")
    with torch.no_grad():
        for _ in range(2):
            gpu.model(big_feats, decoder_input_ids=big_ids)
        sync(); t0 = time.perf_counter()
        gpu.model(big_feats, decoder_input_ids=big_ids)
        sync(); t1 = time.perf_counter()
    lens.logit_lens(gpu, big_feats, big_ids, top_k=5)
    sync(); t2 = time.perf_counter()
    lens.logit_lens(gpu, big_feats, big_ids, top_k=5)
    sync(); t3 = time.perf_counter()
    report["timing_s"] = {"forward": t1 - t0, "logit_lens_all_layers": t3 - t2, "ratio": (t3 - t2) / (t1 - t0)}
    ok = (checks["hooked_equals_plain_max_abs"] == 0.0 and checks["lens_last_layer_kl_max"] < 1e-5
          and checks["sweep_batched_vs_naive_max_abs"] < 1e-3 and checks["audio_llm_last_layer_kl_max"] < 1e-5
          and checks["bf16_lens_last_layer_agrees"] and checks["decode_greedy_output_device"] == "cpu")
    report["passed"] = bool(ok)
    with open(f"{args.out}/gpu_check.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
