"""Audio-LLM lenses on a small random Qwen2-Audio, with known answers: the last lens layer is the model's logits; the
earlier ones are ``lm_head(RMSNorm(h))`` with each layer's own statistics, checked against ``output_hidden_states``;
the encoder lens at the last tower layer is ``model.generate``, and at an earlier one matches a hand-built tower
output; the model is left as it was, even when a call fails."""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

from asrinterp_utils import audio_llm, lens
from asrinterp_utils.lens import LogitLensResult

from .conftest import random_whisper


@pytest.fixture(scope="module")
def tiny():
    """A model that never sees ``output_hidden_states`` (which makes transformers install permanent hooks)."""
    return audio_llm.tiny_qwen2_audio(seed=0)


def all_hooks(model: torch.nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks}


def test_tiny_inputs_follow_the_processor_layout(tiny):
    model, inputs = tiny
    assert audio_llm.is_audio_llm(model) and not audio_llm.is_audio_llm(random_whisper())
    frames = inputs["feature_attention_mask"].sum(-1)
    n_audio = (((frames - 1) // 2 + 1) - 2) // 2 + 1
    assert torch.equal((inputs["input_ids"] == model.config.audio_token_id).sum(-1), n_audio)
    assert inputs["input_features"].shape == (2, 128, 3000)
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][1, 0]  # left padding


@torch.no_grad()
def test_last_lens_layer_is_the_models_logits(tiny):
    model, inputs = tiny
    logits = model(**inputs).logits
    result = audio_llm.audio_llm_logit_lens(model, **inputs, top_k=3)
    assert isinstance(result, LogitLensResult)
    assert result.n_layers == len(model.model.language_model.layers) + 1 == 3
    assert result.top_ids.shape == (3, 2, 49, 3) and result.kl.shape == (3, 2, 49)
    assert torch.equal(result.final_ids, logits.argmax(-1))
    assert result.agrees[-1].all() and torch.all(result.final_rank[-1] == 0)
    assert torch.all(result.kl[-1].abs() < 1e-6)
    assert torch.equal(result.top_ids[-1], logits.topk(3, dim=-1).indices)
    assert result.per_layer(mask=inputs["attention_mask"]).top1_agreement.iloc[-1] == 1.0


def test_the_whisper_logit_lens_refuses_an_audio_llm_and_names_its_own_lens(tiny):
    """lens.logit_lens reads a Whisper decoder; on an audio LLM it says which function to call instead."""
    model, inputs = tiny
    with pytest.raises(TypeError, match="audio_llm_logit_lens"):
        lens.logit_lens(model, inputs["input_features"], inputs["input_ids"], top_k=2)


@torch.no_grad()
def test_earlier_layers_are_lm_head_of_rmsnorm_with_their_own_statistics():
    """Computed independently: ``output_hidden_states`` (whose last entry transformers has already normed) and a
    hand-written RMSNorm, on a separate model of the same seed."""
    model, inputs = audio_llm.tiny_qwen2_audio(seed=0)
    result = audio_llm.audio_llm_logit_lens(model, **inputs, top_k=4)
    out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states  # (embeddings, block 0, block 1 normed), each (batch, tokens, hidden)
    norm, lm_head = model.model.language_model.norm, model.lm_head
    assert len(hidden) == result.n_layers
    assert torch.equal(lm_head(hidden[-1]), out.logits)  # the last entry is normed already: no second norm
    assert not torch.allclose(lm_head(norm(hidden[-1])), out.logits, atol=1e-3)  # ...which would change it

    def rmsnorm(h: torch.Tensor, stats_from: torch.Tensor) -> torch.Tensor:
        rms = stats_from.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
        return norm.weight * (h / rms)

    final_logp = out.logits.log_softmax(-1)
    for layer in range(result.n_layers - 1):
        logits = lm_head(norm(hidden[layer]))  # (batch, tokens, vocab)
        assert torch.allclose(logits, lm_head(rmsnorm(hidden[layer], hidden[layer])), atol=1e-5)
        logp = logits.log_softmax(-1)
        kl = (final_logp.exp() * (final_logp - logp)).sum(-1).clamp(min=0)
        assert torch.allclose(result.kl[layer], kl, atol=1e-5)
        assert torch.allclose(result.top_probs[layer], logp.exp().topk(4, dim=-1).values, atol=1e-5)
        # top ids up to ties: the lens's top-1 token has the largest logit
        assert torch.allclose(logits.gather(-1, result.top_ids[layer][..., :1]).squeeze(-1), logits.amax(-1))
        assert torch.equal(result.agrees[layer], logits.argmax(-1) == out.logits.argmax(-1))
        # Statistics borrowed from another layer give another lens.
        other = lm_head(rmsnorm(hidden[layer], hidden[layer + 1]))
        other_kl = (final_logp.exp() * (final_logp - other.log_softmax(-1))).sum(-1)
        assert not torch.allclose(result.kl[layer], other_kl, atol=1e-4)


@torch.no_grad()
def test_encoder_lens_last_layer_is_generate(tiny):
    model, inputs = tiny
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    (ids,) = audio_llm.audio_llm_encoder_lens(model, **inputs, layers=[1], max_new_tokens=4)
    assert ids.dtype == torch.long and torch.equal(ids, expected)


@pytest.mark.parametrize("apply_final_norm", [True, False])
@torch.no_grad()
def test_encoder_lens_earlier_layer_matches_a_hand_built_tower_output(tiny, apply_final_norm):
    """Layer 0's output, pooled (and normed) by hand, put in place of the tower's output during ``generate``."""
    model, inputs = tiny
    tower = model.model.audio_tower
    captured = {}
    handle = tower.layers[0].register_forward_hook(lambda m, a, out: captured.update(h=out))
    try:
        model(**inputs)
    finally:
        handle.remove()
    pooled = tower.avg_pooler(captured["h"].permute(0, 2, 1)).permute(0, 2, 1)  # (batch, 750, d_model)
    states = tower.layer_norm(pooled) if apply_final_norm else pooled
    handle = tower.register_forward_hook(lambda m, a, out: BaseModelOutput(last_hidden_state=states))
    try:
        expected = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    finally:
        handle.remove()
    (ids,) = audio_llm.audio_llm_encoder_lens(model, **inputs, layers=[0], apply_final_norm=apply_final_norm,
                                              max_new_tokens=4)
    assert torch.equal(ids, expected)


@torch.no_grad()
def test_the_model_is_restored_even_when_a_call_fails():
    model, inputs = audio_llm.tiny_qwen2_audio(seed=1)
    tower = model.model.audio_tower
    layers, layer_norm, names = list(tower.layers), tower.layer_norm, [n for n, _ in model.named_modules()]
    audio_llm.audio_llm_logit_lens(model, **inputs)
    per_layer = audio_llm.audio_llm_encoder_lens(model, **inputs, apply_final_norm=False, max_new_tokens=2)
    assert len(per_layer) == 2 and all(ids.shape == (2, 49 + 2) for ids in per_layer)  # layers=None: every layer
    input_ids = inputs["input_ids"].clone()
    input_ids[0, 43] = 7  # one audio token short: refused before the model runs
    bad = dict(inputs, input_ids=input_ids)
    with pytest.raises(ValueError, match="do not match"):
        audio_llm.audio_llm_logit_lens(model, **bad)

    def fail(*_):
        raise RuntimeError("a failure inside the forward pass")

    planted = model.model.language_model.layers[1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="inside the forward pass"):
            audio_llm.audio_llm_logit_lens(model, **inputs)
        with pytest.raises(RuntimeError, match="inside the forward pass"):
            audio_llm.audio_llm_encoder_lens(model, **inputs, layers=[0], apply_final_norm=False, max_new_tokens=2)
    finally:
        planted.remove()
    assert all_hooks(model) == {}
    assert list(tower.layers) == layers and len(tower.layers) == 2 and tower.layer_norm is layer_norm
    assert [n for n, _ in model.named_modules()] == names


@torch.no_grad()
def test_default_feature_mask_means_a_full_30_s_clip(tiny):
    model, inputs = tiny
    ids = torch.cat([torch.tensor([5, 253]), torch.full((750,), 255), torch.tensor([254, 6, 7])])[None]
    result = audio_llm.audio_llm_logit_lens(model, ids, inputs["input_features"][:1])
    assert result.kl.shape == (3, 1, 755) and result.agrees[-1].all()


def test_bad_inputs_raise_clear_errors(tiny):
    model, inputs = tiny
    with pytest.raises(ValueError, match="Qwen2AudioForConditionalGeneration"):
        audio_llm.audio_llm_logit_lens(random_whisper(), **inputs)
    with pytest.raises(ValueError, match="Qwen2AudioForConditionalGeneration"):
        audio_llm.audio_llm_encoder_lens(torch.nn.Linear(2, 2), **inputs)
    for layers in ([2], [-1], [0, 5]):
        with pytest.raises(ValueError, match=r"0\.\.1"):
            audio_llm.audio_llm_encoder_lens(model, **inputs, layers=layers)
    with pytest.raises(ValueError, match="3000 frames"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, input_features=inputs["input_features"][..., :1000]))
    with pytest.raises(ValueError, match=r"\(batch, tokens\)"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, input_ids=inputs["input_ids"][0]))
    with pytest.raises(ValueError, match="batch"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, input_features=inputs["input_features"][:1]))
    with pytest.raises(ValueError, match=r"attention_mask must be \(2, 49\)"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, attention_mask=inputs["attention_mask"][:, 1:]))
    with pytest.raises(ValueError, match=r"feature_attention_mask must be \(2, 3000\)"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs,
                                                     feature_attention_mask=inputs["feature_attention_mask"][:1]))
    shorter = inputs["feature_attention_mask"].clone()
    shorter[0, 100:] = 0  # 100 real frames read as 25 audio tokens where the prompt has 40
    with pytest.raises(ValueError, match="row 0 of input_ids has 40 <.AUDIO.> tokens, but .* marks 100 real mel "
                                         "frames, which the audio tower turns into 25"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, feature_attention_mask=shorter))
    with pytest.raises(ValueError, match="input_ids must hold token ids"):
        audio_llm.audio_llm_logit_lens(model, **dict(inputs, input_ids=inputs["input_ids"].float()))
    with pytest.raises(ValueError, match=r"top_k must be .* \(256\); got 0"):
        audio_llm.audio_llm_logit_lens(model, **inputs, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        audio_llm.audio_llm_encoder_lens(model, **inputs, layers=[0], max_new_tokens=0)
