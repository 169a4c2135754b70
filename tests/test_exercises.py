"""The exercises' self-checks: a right answer passes, ``...`` is "not answered yet", a wrong answer raises.

The right answers here are computed the way a student would (by hand, with hooks), not by the check's own route.
"""
from __future__ import annotations

import math

import pytest
import torch

from asrinterp_utils import exercises, hooks
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.exercises import WrongAnswer

from ._toy_lm import toy_clips, toy_loaded_model


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


@pytest.fixture(scope="module")
def inputs(lm):
    feats, _ = lm.features(toy_clips(2))
    noise, _ = lm.features(toy_clips(2, seed=5))
    ids = torch.tensor([[1, 3, 4, 5, 6, 7], [1, 3, 6, 5, 4, 0]])
    return feats, noise, ids


def assert_three_ways(check, right, wrong, **kwargs):
    result = check(right, **kwargs)
    assert result.ok is True and bool(result) and "Correct" in str(result)
    unanswered = check(..., **kwargs)
    assert unanswered.ok is None and not unanswered and "Not answered" in str(unanswered)
    with pytest.raises(WrongAnswer):
        check(wrong, **kwargs)


def test_cross_attention_points(lm):
    names = [f"dec.{layer}.cross_attn_out" for layer in range(lm.dims.n_decoder_layers)]
    assert_three_ways(exercises.check_cross_attention_points, names, names[::-1], lm=lm)
    with pytest.raises(WrongAnswer, match="layer order"):
        exercises.check_cross_attention_points(names[::-1], lm)


def test_real_frames():
    right = math.ceil(3.7 * 16000 / 320)
    assert_three_ways(exercises.check_real_frames, right, right - 1, seconds=3.7)


def test_saturation_layers_against_a_hand_written_lens(lm, inputs):
    feats, _, ids = inputs
    model = lm.model
    core = model.model
    with torch.no_grad(), cache_activations(lm, ["dec.*.resid_pre", "dec.final"]) as cache:
        logits = model(feats[:1], decoder_input_ids=ids[:1]).logits
    final_top = logits.argmax(-1)[0]
    residuals = [cache[f"dec.{layer}.resid_pre"][0] for layer in range(lm.dims.n_decoder_layers)]
    residuals.append(cache["dec.final"][0])
    agrees = []
    for layer, resid in enumerate(residuals):
        normed = resid if layer == len(residuals) - 1 else core.decoder.layer_norm(resid)
        agrees.append((normed @ model.proj_out.weight.T).argmax(-1) == final_top)
    agrees = torch.stack(agrees)  # (layers, tokens)
    positions = [1, 2, 3, 4]
    right = []
    for t in positions:
        layer = len(residuals) - 1
        while layer > 0 and bool(agrees[layer - 1:, t].all()):
            layer -= 1
        right.append(layer)
    wrong = [r + 1 for r in right]
    assert_three_ways(exercises.check_saturation_layers, right, wrong, lm=lm, features=feats[:1],
                      decoder_input_ids=ids[:1], positions=positions)


def test_lens_equals_logits():
    assert_three_ways(exercises.check_lens_equals_logits, 3e-6, 0.2)


def test_single_patch_against_one_hooked_forward(lm, inputs):
    feats, noise_feats, ids = inputs
    start = 2
    with torch.no_grad():
        with cache_activations(lm, "dec.*") as noise:
            lm.model(noise_feats, decoder_input_ids=ids)
        clean = lm.model(feats, decoder_input_ids=ids).logits.log_softmax(-1)
        with hooks.patch(lm, {"dec.1.cross_attn_out": hooks.replace(noise)}):
            patched = lm.model(feats, decoder_input_ids=ids).logits.log_softmax(-1)
    target = ids[:, start:]  # the tokens from position `start` on, each predicted from the position before it

    def score(logprobs):
        return logprobs[:, start - 1:-1].gather(-1, target[..., None]).squeeze(-1).mean(-1)

    right = float((score(patched) - score(clean)).mean())
    assert_three_ways(exercises.check_single_patch, right, right + 0.5, lm=lm, features=feats,
                      decoder_input_ids=ids, reference_cache=noise, point="dec.1.cross_attn_out", start=start)


def test_most_damaging_head_against_one_forward_per_head(lm, inputs):
    feats, noise_feats, ids = inputs
    start = 2
    with torch.no_grad():
        with cache_activations(lm, "dec.*.cross_head_out") as noise:
            lm.model(noise_feats, decoder_input_ids=ids)
        metric = lambda logits: logits.log_softmax(-1)[:, start - 1:-1].gather(  # noqa: E731
            -1, ids[:, start:, None]).squeeze(-1).mean()
        base = metric(lm.model(feats, decoder_input_ids=ids).logits)
        changes = {}
        for layer in range(lm.dims.n_decoder_layers):
            for head in range(lm.dims.n_decoder_heads):
                with hooks.patch(lm, {f"dec.{layer}.cross_head_out": hooks.replace(noise, heads=head)}):
                    changes[f"dec.{layer}.cross_head_out[h{head}]"] = float(
                        metric(lm.model(feats, decoder_input_ids=ids).logits) - base)
    right = min(changes, key=changes.get)
    wrong = max(changes, key=changes.get)
    assert_three_ways(exercises.check_most_damaging_head, right, wrong, lm=lm, features=feats,
                      decoder_input_ids=ids, reference_cache=noise, start=start)
