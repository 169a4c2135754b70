"""Lenses with known answers: the last layer's lens is the model's output; LayerNorm statistics are each layer's own;
the saturation layer of a planted agreement pattern; the encoder lens at the last layer is the normal transcript."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import lens
from asrinterp_utils.cache import cache_activations


@torch.no_grad()
def test_last_layer_lens_equals_the_logits(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with cache_activations(toy, "dec.1.resid_post") as c:
        logits = toy(feats, decoder_input_ids=ids).logits
    assert torch.allclose(lens.lens_logits(toy, c["dec.1.resid_post"]), logits, atol=1e-5)
    result = lens.logit_lens(toy, feats, ids, top_k=3)
    assert result.kl.shape == (3, 2, 7) and result.top_ids.shape == (3, 2, 7, 3)
    assert result.agrees[-1].all() and torch.all(result.kl[-1] < 1e-6) and torch.all(result.final_rank[-1] == 0)
    assert torch.equal(result.final_ids, logits.argmax(-1))
    assert torch.all(result.kl >= 0) and torch.all(result.final_prob <= 1)
    table = result.per_layer()
    assert list(table.layer) == [0, 1, 2] and table.top1_agreement.iloc[-1] == 1.0


@torch.no_grad()
def test_layernorm_statistics_are_each_layers_own(toy):
    """LayerNorm is invariant to rescaling its own input; a lens that reused another layer's statistics is not."""
    x = torch.randn(1, 4, 16)
    assert torch.allclose(lens.lens_logits(toy, 5 * x + 0.0), lens.lens_logits(toy, x), atol=1e-4)


def test_saturation_layer_on_a_planted_pattern():
    agrees = torch.tensor([[[False, True, True, False]],
                           [[True, True, False, False]],
                           [[False, True, True, True]],
                           [[True, True, True, True]]])  # (layers=4, batch=1, tokens=4)
    zeros = torch.zeros(4, 1, 4)
    result = lens.LogitLensResult(top_ids=zeros, top_probs=zeros, final_prob=zeros, final_rank=zeros, kl=zeros,
                                  entropy=zeros, agrees=agrees, final_ids=torch.zeros(1, 4))
    assert result.saturation_layer().tolist() == [[3, 0, 2, 2]]


@pytest.mark.real
def test_encoder_lens_last_layer_reproduces_the_transcript():
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    lm = load_model("tiny.en")
    waves = [clip_audio(p) for p in asterisk_prompts(min_words=6, max_duration_s=6, progress=False).path[:2]]
    table = lens.encoder_lens(lm, waves)
    assert sorted(table.layer.unique()) == [0, 1, 2, 3]
    last = table[table.layer == 3].sort_values("clip").transcript.tolist()
    assert last == lm.transcribe(waves)
    # and the logit lens on real speech: agreement rises to 1 at the output
    feats, _ = lm.features(waves)
    result = lens.logit_lens(lm, feats, lm.generate_ids(waves))
    agreement = result.per_layer().top1_agreement
    assert agreement.iloc[-1] == 1.0 and agreement.iloc[0] < agreement.iloc[-1]


@pytest.mark.real
def test_decoding_from_given_encoder_states_equals_normal_decoding():
    """generate_ids(encoder_states=...) on the encoder's own output reproduces generate_ids(audio), for the
    English-only and the multilingual model (the encoder lens rests on this)."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    waves = [clip_audio(p) for p in asterisk_prompts(min_words=6, max_duration_s=6, progress=False).path[2:4]]
    for name in ("tiny.en", "base"):
        lm = load_model(name)
        feats, _ = lm.features(waves)
        with torch.no_grad():
            states = lm.model.model.encoder(feats).last_hidden_state
        assert torch.equal(lm.generate_ids(None, encoder_states=states), lm.generate_ids(waves)), name
