"""The hook toolkit on the real tiny.en and real speech: parity with the plain Hugging Face model, and patching
known answers."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import audio, hooks, patching, run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.models import attention_backend

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def tiny():
    from asrinterp_utils.models import load_model

    return load_model("tiny.en")


@pytest.fixture(scope="module")
def speech():
    from asrinterp_utils.data import asterisk_prompts, clip_audio

    table = asterisk_prompts(min_words=6, max_duration_s=8.0, progress=False).sample(2, random_state=1)
    return [clip_audio(p) for p in table.path], list(table.text)


@torch.no_grad()
def test_hooked_real_model_matches_plain_hugging_face(tiny, speech):
    waves, _ = speech
    feats, n_frames = tiny.features(waves)
    ids = run.generate_ids(tiny, waves)
    with attention_backend(tiny, "eager"):  # the hooked run reads decoder patterns, which switches it to eager
        out = tiny.model(feats, decoder_input_ids=ids, output_hidden_states=True)
    names = lambda n: not n.endswith("attn_pattern")  # noqa: E731 (1500 x 1500 per head: not needed here)
    with cache_activations(tiny, names) as cache:
        assert tiny.model.config._attn_implementation == "eager"
        hooked = tiny.model(feats, decoder_input_ids=ids).logits
    assert tiny.model.config._attn_implementation == "sdpa"  # load_model's default, back
    assert torch.equal(hooked, out.logits)
    for i in range(tiny.dims.n_encoder_layers):
        assert torch.equal(cache[f"enc.{i}.resid_pre"], out.encoder_hidden_states[i])
    for i in range(tiny.dims.n_decoder_layers):
        assert torch.equal(cache[f"dec.{i}.resid_pre"], out.decoder_hidden_states[i])
    assert torch.equal(cache["enc.final"], out.encoder_last_hidden_state)
    # the model's greedy tokens are the argmax of its teacher-forced logits
    prompt = len(tiny.prompt_ids())
    n_text = int((ids[0] != tiny.tokenizer.eos_token_id).sum())
    assert torch.equal(out.logits[0, prompt - 1:n_text].argmax(-1), ids[0, prompt:n_text + 1])


@torch.no_grad()
def test_real_patching_known_answers(tiny, speech):
    waves, _ = speech
    feats, _ = tiny.features(waves)
    ids = run.generate_ids(tiny, waves)
    noise_feats, _ = tiny.features([audio.white_noise_like(w, seed=0) for w in waves])
    with cache_activations(tiny, ["enc.final", "dec.*.cross_head_out"]) as noise:
        noise_logits = tiny.model(noise_feats, decoder_input_ids=ids).logits
    with cache_activations(tiny, "dec.*.cross_head_out") as clean:
        clean_logits = tiny.model(feats, decoder_input_ids=ids).logits
    with hooks.patch(tiny, {"dec.*.cross_head_out": hooks.replace(clean)}):
        assert torch.allclose(tiny.model(feats, decoder_input_ids=ids).logits, clean_logits, atol=1e-4)
    with hooks.patch(tiny, {"enc.final": hooks.replace(noise)}):
        assert torch.allclose(tiny.model(feats, decoder_input_ids=ids).logits, noise_logits, atol=1e-3)
    # generation with the encoder replaced by noise transcribes like the noise run
    with hooks.patch(tiny, {"enc.final": hooks.replace(noise)}):
        patched_text = run.transcribe(tiny, waves)
    noise_text = run.transcribe(tiny, [audio.white_noise_like(w, seed=0) for w in waves])
    assert patched_text == noise_text
    assert hooks.active_hook_count(tiny) == 0


def test_real_batched_sweep_equals_naive(tiny, speech):
    waves, _ = speech
    feats, _ = tiny.features(waves[:1])
    ids = run.generate_ids(tiny, waves[:1])
    noise_feats, _ = tiny.features([audio.white_noise_like(waves[0], seed=0)])
    with torch.no_grad(), cache_activations(tiny, "dec.*.cross_head_out") as noise:
        tiny.model(noise_feats, decoder_input_ids=ids)
    targets = patching.head_targets(tiny, "cross_head_out", source=noise, layers=[2, 3])
    metric = patching.token_logprob(start=len(tiny.prompt_ids()))
    fast = patching.run_sweep(tiny, feats, ids, targets, metric, batch_size=6)
    slow = patching.run_sweep(tiny, feats, ids, targets, metric, method="naive")
    assert torch.allclose(fast.values, slow.values, atol=1e-4)
    assert (fast.values < fast.baseline).any()  # some head matters


def test_real_patched_generation_known_answers(tiny, speech):
    """On tiny.en and real speech: nothing patched = the model's own greedy transcript; all of cross-attention from
    the white-noise run = the transcript of the noise itself; batched = one target and clip at a time."""
    waves, _ = speech
    targets = [patching.PatchTarget("all cross", {"dec.*.cross_attn_out": hooks.replace(patching.REFERENCE)}),
               *patching.head_targets(tiny, "cross_head_out", source=patching.REFERENCE, layers=[3])[:2]]
    fast = patching.generate_sweep(tiny, waves, targets, max_new_tokens=40)
    assert fast.baseline_texts == run.transcribe(tiny, waves, max_new_tokens=40)
    assert fast.texts[0] == fast.reference_texts and fast.texts[0] != fast.baseline_texts
    slow = patching.generate_sweep(tiny, waves, targets[1:], max_new_tokens=40, method="naive")
    assert slow.token_ids == fast.token_ids[1:]
