"""Repairs (asrinterp_utils/repair.py) against known answers: the no-speech rule on planted values, directions
planted in data, steering of zero strength and projections, a stacked sweep against each repair run alone, and
the no-speech probability and average log-probability against Hugging Face's forward and ``generate`` on tiny.en."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asrinterp_utils import hooks, patching, repair, run

from ._toy_lm import toy_clips, toy_loaded_model

TOKEN = 5  # the toy has no tokenizer: any token stands for <|nocaptions|>
MAX_NEW = 8


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


@pytest.fixture(scope="module")
def states(lm):
    return run.encode(lm, toy_clips(5)).states


def test_silence_rule_drops_text_only_when_both_numbers_say_so():
    p = [0.9, 0.9, 0.5, 0.61, 0.6, 0.9]
    lp = [-1.5, -0.5, -2.0, -1.0, -3.0, -1.0000001]
    assert repair.silence_rule(p, lp).tolist() == [True, False, False, True, False, True]
    assert repair.silence_rule(p, lp, no_speech_threshold=0.95).tolist() == [False] * 6
    with pytest.raises(ValueError, match="no-speech probabilities"):
        repair.silence_rule([0.9], [-1.0, -2.0])


def test_mean_difference_finds_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 8, generator=g)
    shift = torch.zeros(8)
    shift[3] = 3.0
    d = repair.mean_difference(base[:200] + shift, base[200:])
    assert float(d.unit[3]) > 0.98 and abs(float(d.unit.norm()) - 1) < 1e-6
    assert abs(d.gap - 3.0) < 0.35
    with pytest.raises(ValueError, match="same mean"):
        repair.mean_difference(base[:4], base[:4])
    with pytest.raises(ValueError, match="same d"):
        repair.mean_difference(base[:4], base[:4, :3])


def _apply(iv, x):
    ctx = hooks.HookContext(None, torch.arange(x.shape[1]))
    return x + iv.value if iv.mode == "add" else iv.value(x, ctx)


def test_steer_direction_algebra():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 6, generator=g), torch.randn(6, generator=g) * 5
    u = v / v.norm()
    assert torch.equal(_apply(repair.steer_direction(v, add=0.0), x), x + 0.0 * u)
    clamped = _apply(repair.steer_direction(v, clamp=2.5), x)
    assert torch.allclose(clamped @ u, torch.full((2, 4), 2.5), atol=1e-5)
    assert torch.allclose(clamped - (clamped @ u)[..., None] * u, x - (x @ u)[..., None] * u, atol=1e-5)
    once = _apply(repair.steer_direction(v, project_out=True), x)
    assert torch.allclose(once @ u, torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(_apply(repair.steer_direction(v, project_out=True), once), once, atol=1e-6)
    assert torch.allclose(_apply(repair.steer_direction(v, clamp=0.0), x), once, atol=1e-6)
    added = _apply(repair.steer_direction(v, add=1.5), x)
    assert torch.allclose(added @ u - x @ u, torch.full((2, 4), 1.5), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        repair.steer_direction(v, add=1.0, project_out=True)
    with pytest.raises(ValueError, match="non-zero"):
        repair.steer_direction(torch.zeros(6), add=1.0)


def test_steering_of_zero_strength_changes_nothing(lm, states):
    plain = repair.transcribe_with_silence(lm, states=states, max_new_tokens=MAX_NEW, token=TOKEN)
    direction = torch.randn(lm.dims.d_model if hasattr(lm.dims, "d_model") else 16)
    zero = {"dec.0.resid_post": repair.steer_direction(direction, add=0.0)}
    steered = repair.transcribe_with_silence(lm, states=states, patches=zero, max_new_tokens=MAX_NEW, token=TOKEN)
    assert plain.transcript.tolist() == steered.transcript.tolist()
    assert np.allclose(plain.avg_logprob, steered.avg_logprob) and np.allclose(plain.no_speech_prob,
                                                                               steered.no_speech_prob)


def test_transcribe_with_silence_scores_the_greedy_tokens(lm, states):
    out = repair.transcribe_with_silence(lm, states=states, max_new_tokens=MAX_NEW, token=TOKEN)
    decoded = run.greedy(lm, states, max_new_tokens=MAX_NEW)
    assert out.n_tokens.tolist() == [len(t) for t in decoded.text_ids]
    logits = run.teacher_force(lm, states, decoded.ids).float()
    at_start, always = lm.suppression_masks(True)
    n_prompt = decoded.n_prompt
    for r, ids in enumerate(decoded.text_ids):
        assert abs(out.no_speech_prob[r] - float(logits[r, 0].softmax(-1)[TOKEN])) < 1e-5
        tokens = ids + ([] if decoded.hit_limit[r] else [2])
        total = 0.0
        for i, t in enumerate(tokens):
            step = logits[r, n_prompt - 1 + i].clone()
            step[at_start if i == 0 else always] = float("-inf")
            total += float(step.log_softmax(-1)[t])
        assert abs(out.avg_logprob[r] - total / (len(ids) + 1)) < 1e-4
    assert (out.output == np.where(out.silent, "", out.transcript)).all()


def test_rule_sweep_equals_each_target_alone(lm, states):
    heads = patching.head_targets(lm, "self_head_out")
    targets = heads + [
        patching.PatchTarget("steer", {"dec.1.resid_post": repair.steer_direction(torch.ones(16), add=3.0)}),
        patching.combine(heads[0], heads[-1], label="two heads")]  # a point holding a list of interventions
    swept = repair.rule_sweep(lm, states, targets, max_new_tokens=MAX_NEW, max_rows=12, token=TOKEN)
    assert list(swept) == [t.label for t in targets]
    for target in targets:
        alone = repair.transcribe_with_silence(lm, states=states, patches=target.interventions,
                                               max_new_tokens=MAX_NEW, token=TOKEN)
        got = swept[target.label]
        assert got.transcript.tolist() == alone.transcript.tolist(), target.label
        assert np.allclose(got.avg_logprob, alone.avg_logprob, atol=1e-5)
        assert np.allclose(got.no_speech_prob, alone.no_speech_prob, atol=1e-6)
    changed = [t.label for t in targets if swept[t.label].transcript.tolist()
               != repair.transcribe_with_silence(lm, states=states, max_new_tokens=MAX_NEW,
                                                 token=TOKEN).transcript.tolist()]
    assert changed, "no target changed any transcript: the sweep would pass without patching anything"


def test_rule_sweep_refuses_encoder_points_and_rows(lm, states):
    for rows in (0, 1.5, False):
        with pytest.raises(ValueError, match="max_rows must be a whole number"):
            repair.rule_sweep(lm, states, patching.head_targets(lm, "self_head_out")[:1], max_rows=rows, token=TOKEN)
    enc = patching.PatchTarget("enc", {"enc.0.resid_post": hooks.zero()})
    with pytest.raises(ValueError, match="encoder point"):
        repair.rule_sweep(lm, states, [enc], token=TOKEN)
    rowed = patching.PatchTarget("rows", {"dec.0.resid_post": hooks.zero(rows=[0])})
    with pytest.raises(ValueError, match="rows are set by the sweep"):
        repair.rule_sweep(lm, states, [rowed], token=TOKEN)
    with pytest.raises(ValueError, match="give clips"):
        repair.transcribe_with_silence(lm, token=TOKEN)
    with pytest.raises(ValueError, match="patch the encoder"):
        repair.transcribe_with_silence(lm, states=states, patches={"enc.0.resid_post": hooks.zero()}, token=TOKEN)
    with pytest.raises(ValueError, match="no tokenizer"):
        repair.no_speech_token(lm)


def test_decoder_states_are_the_cached_prompt_activations(lm, states):
    got = repair.decoder_states(lm, states, "dec.*.resid_post", position=1)
    from asrinterp_utils.cache import cache_activations

    with cache_activations(lm, "dec.1.resid_post") as cache:
        run.teacher_force(lm, states, repair.prompt_ids(lm, len(states)), logits=False)
    assert got.shape == (2, len(states), 16) and torch.equal(got[1], cache["dec.1.resid_post"][:, 1])
    with pytest.raises(ValueError, match="prompt position"):
        repair.decoder_states(lm, states, position=5)


@pytest.mark.real
def test_no_speech_probability_and_logprobs_match_hugging_face_on_tiny_en():
    """The no-speech probability against Hugging Face's forward on the prompt; the tokens against ``generate``; the
    average log-probability against Hugging Face's forward on those tokens under the suppression rules greedy
    decoding chooses under (which forbid the timestamp tokens too; ``generate`` without timestamps leaves them to
    the <|notimestamps|> prompt, and its averages differ by about 0.01)."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.data.bank import non_speech_clips
    from asrinterp_utils.models import load_model

    tiny = load_model("tiny.en")
    waves = [clip_audio(p) for p in asterisk_prompts(min_words=6, max_duration_s=8.0, progress=False).head(2).path]
    waves += [clip_audio(p) for p in non_speech_clips(2).path]
    out = repair.transcribe_with_silence(tiny, waves, max_new_tokens=40)
    feats, _ = tiny.features(waves)
    token = repair.no_speech_token(tiny)
    assert token == tiny.tokenizer.convert_tokens_to_ids("<|nocaptions|>")
    at_start, always = tiny.suppression_masks(True)
    with torch.no_grad():
        generated = tiny.model.generate(feats, max_new_tokens=40, do_sample=False, num_beams=1,
                                        return_timestamps=False)
        prompt = torch.tensor([tiny.prompt_ids()] * len(waves))
        if not torch.equal(generated[:, :prompt.shape[1]], prompt):  # generate gives the new tokens only
            generated = torch.cat([prompt, generated], dim=1)
        logits = tiny.model(feats, decoder_input_ids=generated).logits.float()
    assert np.allclose(out.no_speech_prob, logits[:, 0].softmax(-1)[:, token].numpy(), atol=1e-5)
    n_prompt = len(tiny.prompt_ids())
    for r in range(len(waves)):
        tokens = generated[r, n_prompt:].tolist()
        n = tokens.index(tiny.end_of_text) + 1 if tiny.end_of_text in tokens else len(tokens)
        assert out.n_tokens[r] == n - (tiny.end_of_text in tokens)
        total = 0.0
        for i, t in enumerate(tokens[:n]):
            step = logits[r, n_prompt - 1 + i].clone()
            step[at_start if i == 0 else always] = float("-inf")
            total += float(step.log_softmax(-1)[t])
        # float32 rounding: the KV-cached steps and one forward over the whole sequence differ by ~1e-4 a token
        assert abs(out.avg_logprob[r] - total / (out.n_tokens[r] + 1)) < 2e-3, (r, out.transcript[r])
