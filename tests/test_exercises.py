"""The exercises' self-checks: a right answer passes, ``...`` is "not answered yet", a wrong answer raises.

The right answers here are computed the way a student would (by hand, with hooks), not by the check's own route.
"""
from __future__ import annotations

import math

import pytest
import torch

from asrinterp_utils import exercises, hooks, run
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


def hand_logprob(logits, ids, start):
    """Per clip, the mean log-probability of the tokens from position ``start`` on, each predicted from the
    position before it: what ``patching.token_logprob`` computes, written out by hand."""
    return logits.log_softmax(-1)[:, start - 1:-1].gather(-1, ids[:, start:, None]).squeeze(-1).mean(-1)


def test_single_patch_against_one_hooked_forward(lm, inputs):
    feats, noise_feats, ids = inputs
    start = 2
    with torch.no_grad():
        with cache_activations(lm, "dec.*") as noise:
            lm.model(noise_feats, decoder_input_ids=ids)
        clean = lm.model(feats, decoder_input_ids=ids).logits
        with hooks.patch(lm, {"dec.1.cross_attn_out": hooks.replace(noise)}):
            patched = lm.model(feats, decoder_input_ids=ids).logits
    right = float((hand_logprob(patched, ids, start) - hand_logprob(clean, ids, start)).mean())
    assert_three_ways(exercises.check_single_patch, right, right + 0.5, lm=lm, features=feats,
                      decoder_input_ids=ids, reference_cache=noise, point="dec.1.cross_attn_out", start=start)


def test_most_damaging_head_against_one_forward_per_head(lm, inputs):
    feats, noise_feats, ids = inputs
    start = 2
    with torch.no_grad():
        with cache_activations(lm, "dec.*.cross_head_out") as noise:
            lm.model(noise_feats, decoder_input_ids=ids)
        metric = lambda logits: hand_logprob(logits, ids, start).mean()  # noqa: E731 (rows have equal lengths)
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


def test_compression_ratio():
    import zlib

    text = "I went to the store. " * 6
    right = len(text.encode()) / len(zlib.compress(text.encode()))
    result = exercises.check_compression_ratio(right, text)
    assert result.ok and "above" in result.message
    assert exercises.check_compression_ratio(..., text).ok is None
    with pytest.raises(WrongAnswer):
        exercises.check_compression_ratio(len(text) / 10, text)


def test_logit_difference_against_the_logits(lm, inputs):
    feats, _, ids = inputs
    with torch.no_grad():
        logits = lm.model(feats[:1], decoder_input_ids=ids[:1]).logits
    right = float(logits[0, 3, 5] - logits[0, 3, 2])
    wrong = float(logits[0, 4, 5] - logits[0, 4, 2])  # one position late: the classic off-by-one
    assert abs(right - wrong) > 1e-3
    assert_three_ways(exercises.check_logit_difference, right, wrong, lm=lm, features=feats[:1],
                      decoder_input_ids=ids[:1], position=3, spoken=5, expected=2)


@pytest.mark.real
def test_encoder_layer_transcript_by_hand_on_real_tiny_en():
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    tiny = load_model("tiny.en")
    wave = clip_audio(asterisk_prompts(min_words=6, max_duration_s=8.0, progress=False).path.iloc[0])
    layer = tiny.dims.n_encoder_layers - 1
    feats, _ = tiny.features([wave])
    with torch.no_grad(), cache_activations(tiny, f"enc.{layer}.resid_post") as cached:
        tiny.model.model.encoder(feats)
    with torch.no_grad():  # the cache is filled when its block ends
        states = tiny.model.model.encoder.layer_norm(cached[f"enc.{layer}.resid_post"])
        ids = run.greedy(tiny, states, max_new_tokens=32).ids
    right = tiny.tokenizer.decode(tiny.text_ids(ids)[0], skip_special_tokens=True).strip()
    assert right == run.transcribe(tiny, [wave], max_new_tokens=32)[0].strip()  # the last layer is the normal transcript
    assert_three_ways(exercises.check_encoder_layer_transcript, right, right + " extra", lm=tiny, wave=wave,
                      layer=layer, max_new_tokens=32)


def test_snr_mix():
    import numpy as np

    rng = np.random.default_rng(1)
    speech = rng.standard_normal(16000).astype(np.float32) * 0.1
    noise = rng.standard_normal(16000).astype(np.float32)
    scale = np.sqrt(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)) / 10 ** (5 / 20)
    right = speech + scale * noise
    assert_three_ways(exercises.check_snr_mix, right, speech + 2 * scale * noise, speech=speech, snr_db=5)
    with pytest.raises(WrongAnswer, match="nothing was added"):
        exercises.check_snr_mix(speech.copy(), speech, snr_db=5)


def test_probe_accuracy_against_a_hand_written_cross_validation():
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 6)
    y = np.where(groups % 2 == 0, "a", "b")
    X = rng.standard_normal((60, 8)) + (y == "a")[:, None] * 0.8
    from sklearn.model_selection import GroupKFold

    accuracies = []  # the scaler fitted on each training fold only, by hand
    for train, test in GroupKFold(5).split(X, y, groups):
        scaler = StandardScaler().fit(X[train])
        model = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(X[train]), y[train])
        accuracies.append(model.score(scaler.transform(X[test]), y[test]))
    right = float(np.mean(accuracies))
    assert_three_ways(exercises.check_probe_accuracy, right, right - 0.1, features=X, labels=y, groups=groups)


def test_word_error_rate():
    reference, hypothesis = "The cat sat on the mat.", "the cat sit on the mat mat"
    assert_three_ways(exercises.check_word_error_rate, 2 / 6, 1 / 6, reference=reference, hypothesis=hypothesis)


def test_speaker_split():
    import pandas as pd

    table = pd.DataFrame({"speaker": [f"s{i}" for i in range(8) for _ in range(5)],
                          "gender": ["female" if i < 4 else "male" for i in range(8) for _ in range(5)]})
    right = ["s0", "s5"]  # 10 of 40 clips, one speaker of each gender
    assert_three_ways(exercises.check_speaker_split, right, ["s0", "s1"], table=table, label="gender")
    with pytest.raises(WrongAnswer, match="no test speaker"):
        exercises.check_speaker_split(["s0", "s1", "s2"], table, "gender")
    with pytest.raises(WrongAnswer, match="holds 12%"):
        exercises.check_speaker_split(["s0"], table, "gender", test_share=(0.2, 0.5))
    with pytest.raises(WrongAnswer, match="not speakers"):
        exercises.check_speaker_split(["nobody"], table, "gender")


def test_layer_similarity_against_the_encoders_hidden_states():
    from asrinterp_utils.audio import n_encoder_frames

    from ._toy_lm import toy_clip

    lm = toy_loaded_model(seed=3)
    with torch.no_grad():  # the random-init encoder layers barely move the residual stream: make them write more
        for layer in lm.model.model.encoder.layers:
            layer.fc2.weight.mul_(40)
            layer.self_attn.out_proj.weight.mul_(40)
    wave = toy_clip(1)[:8000]  # 0.5 s of the 3 s toy window: most frames are padding
    feats, _ = lm.features([wave])
    encoder = lm.model.model.encoder
    with torch.no_grad():
        out = encoder(feats, output_hidden_states=True)
        # hidden_states: the embeddings, then each layer's output; the last one has the final LayerNorm applied
        layers = [encoder.layer_norm(h[0]) for h in out.hidden_states[1:-1]] + [out.hidden_states[-1][0]]
        final = out.last_hidden_state[0]
    n = n_encoder_frames(len(wave))
    right = [float(torch.nn.functional.cosine_similarity(h[:n], final[:n], dim=-1).mean()) for h in layers]
    assert abs(right[-1] - 1) < 1e-5
    all_frames = [float(torch.nn.functional.cosine_similarity(h, final, dim=-1).mean()) for h in layers]
    assert max(abs(a - b) for a, b in zip(right, all_frames)) > 1e-3  # the padding frames change the answer
    assert_three_ways(exercises.check_layer_similarity, right, all_frames, lm=lm, wave=wave)


def test_real_frame_mean_against_a_full_cache(lm):
    from asrinterp_utils.audio import n_encoder_frames

    from ._toy_lm import toy_clip

    wave = toy_clip(2)
    feats, _ = lm.features([wave])
    with torch.no_grad(), cache_activations(lm, "enc.1.resid_post") as cache:
        lm.model.model.encoder(feats)
    acts = cache["enc.1.resid_post"][0]  # (frames, d_model)
    n = n_encoder_frames(len(wave))
    assert n < acts.shape[0]
    right, wrong = acts[:n].mean(0), acts.mean(0)  # real frames only / the padding too
    assert_three_ways(exercises.check_real_frame_mean, right.numpy(), wrong, lm=lm, wave=wave,
                      point="enc.1.resid_post")
    with pytest.raises(WrongAnswer, match="vector of 16"):
        exercises.check_real_frame_mean(acts[:n], lm, wave, "enc.1.resid_post")


def test_transcript_logprob_against_the_logits(lm, inputs):
    feats, _, ids = inputs
    with torch.no_grad():
        logits = lm.model(feats[:1], decoder_input_ids=ids[:1]).logits
    right = float(hand_logprob(logits, ids[:1], 2)[0])
    wrong = float(torch.log_softmax(logits[0, 2:], -1).gather(-1, ids[0, 2:, None]).mean())  # off by one position
    assert abs(right - wrong) > 1e-3
    assert_three_ways(exercises.check_transcript_logprob, right, wrong, lm=lm, features=feats[:1],
                      decoder_input_ids=ids[:1], start=2)


def test_longest_repeat():
    text = "So I said, to the night, to the night, to the night, to the night. And then."
    assert_three_ways(exercises.check_longest_repeat, (("to", "the", "night"), 4), (("to", "the", "night"), 3),
                      text=text)
    ends_mid_loop = "to the night to the night to the night to"
    assert exercises.check_longest_repeat(("the night to", 3), ends_mid_loop).ok  # a tie (a rotation): also right
    with pytest.raises(WrongAnswer, match="does not occur"):
        exercises.check_longest_repeat(("and then", 4), text)
    with pytest.raises(WrongAnswer, match="a pair"):
        exercises.check_longest_repeat("to the night", text)


def test_noise_patch_against_one_hooked_forward(lm, inputs):
    from ._toy_lm import toy_clip

    feats, _, ids = inputs
    noise_wave = toy_clip(0, seed=5)
    noise_feats, _ = lm.features([noise_wave])
    with torch.no_grad():
        with cache_activations(lm, "enc.1.resid_post") as noise:
            lm.model.model.encoder(noise_feats)
        clean = lm.model(feats[:1], decoder_input_ids=ids[:1]).logits[0, 3]
        with hooks.patch(lm, {"enc.1.resid_post": hooks.replace(noise)}):
            patched = lm.model(feats[:1], decoder_input_ids=ids[:1]).logits[0, 3]
    right = float((patched[5] - patched[2]) - (clean[5] - clean[2]))
    assert abs(right) > 1e-3  # the patch matters in the toy
    assert_three_ways(exercises.check_noise_patch, right, float(patched[5] - patched[2]), lm=lm,
                      features=feats[:1], decoder_input_ids=ids[:1], noise_wave=noise_wave, point="enc.1.resid_post",
                      position=3, spoken=5, expected=2)
