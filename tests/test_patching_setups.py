"""The chapters' patching setups, as package calls: a clean run beside its reference run (known answers on the toy),
the word-choice measure of the semantic-bias chapter (on tiny.en), and sweep results as layer grids."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrinterp_utils import hooks, patching, run

from ._toy_lm import toy_clips, toy_loaded_model


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


def test_layer_grid_places_components_and_heads_and_drops_other_labels():
    grid = patching.layer_grid({"dec.0.mlp_out": 1.0, "dec.1.mlp_out": 2.0, "dec.1.self_attn_out": 3.0,
                                "dec.0+dec.1": 9.0, "unpatched": 0.0}, columns=["self_attn_out", "mlp_out"])
    assert grid.index.name == "decoder layer" and list(grid.columns) == ["self_attn_out", "mlp_out"]
    assert grid.loc[1, "self_attn_out"] == 3.0 and grid.loc[0, "mlp_out"] == 1.0
    assert math.isnan(grid.loc[0, "self_attn_out"])  # no label for it
    heads = patching.layer_grid({"enc.2.head_out[h1]": 5.0, "enc.2.head_out[h0]": 4.0})
    assert heads.index.name == "encoder layer" and list(heads.columns) == [0, 1] and heads.loc[2, 1] == 5.0
    with pytest.raises(ValueError, match="mix encoder and decoder"):
        patching.layer_grid({"enc.0.mlp_out": 1.0, "dec.0.mlp_out": 1.0})


def test_sweep_result_grid_is_the_mean_change_per_layer_and_component():
    result = patching.SweepResult(["dec.0.mlp_out", "dec.1.mlp_out"], torch.tensor([[1.0, 3.0], [0.0, 4.0]]),
                                  torch.tensor([1.0, 1.0]))
    assert result.grid().mlp_out.tolist() == [1.0, 1.0]
    assert result.grid(clips=[1]).mlp_out.tolist() == [2.0, 3.0]


def test_clean_and_reference_known_answers(lm):
    clips = toy_clips(3)
    pair = patching.clean_and_reference(lm, clips, max_new_tokens=6)
    states = run.encode(lm, clips).states
    assert torch.equal(pair.ids, run.greedy(lm, states, max_new_tokens=6).ids)
    assert torch.allclose(pair.clean_metric, pair.metric(run.teacher_force(lm, states, pair.ids), pair.ids))
    # the clean run's encodings come from the store, where earlier tests may have filed some of these clips encoded
    # in another batch: batches agree to float rounding (about 1e-6 on this toy's sharp attention; bit for bit for
    # the real models on the book's CPU)
    assert torch.allclose(pair.clean.states, states, atol=1e-5)
    assert pair.reference.features.shape == pair.clean.features.shape
    assert not torch.allclose(pair.clean_metric, pair.reference_metric)  # the noise run scores differently
    # Cross-attention is the only way audio enters the decoder: all of it from the reference gives the reference.
    with hooks.patch(lm, {"dec.*.cross_attn_out": hooks.replace(pair.reference_cache)}):
        patched = pair.metric(run.teacher_force(lm, pair.clean.states, pair.ids), pair.ids)
    assert torch.allclose(patched, pair.reference_metric, atol=1e-5)
    # One teacher-forced pass per run: the cache holds the transcript's positions once, not once per step.
    assert pair.clean_cache["dec.0.mlp_out"].shape[:2] == pair.ids.shape


def test_a_subset_of_clean_and_reference_gives_those_clips_numbers(lm):
    pair = patching.clean_and_reference(lm, toy_clips(3), max_new_tokens=6)
    targets = patching.head_targets(lm, "cross_head_out", source=pair.reference_cache)
    whole = patching.run_sweep(lm, pair.clean, pair.ids, targets, pair.metric)
    part = pair.subset([0, 2])
    sub_targets = patching.head_targets(lm, "cross_head_out", source=part.reference_cache)
    some = patching.run_sweep(lm, part.clean, part.ids, sub_targets, part.metric)
    assert torch.allclose(some.values, whole.values[:, [0, 2]], atol=1e-5)
    assert torch.equal(part.clean_metric, pair.clean_metric[[0, 2]]) and len(part.clean) == 2
    with pytest.raises(ValueError, match="clip indices in 0..2"):
        pair.subset([3])


def test_clean_and_reference_checks_its_references(lm):
    with pytest.raises(ValueError, match="one reference clip per clip"):
        patching.clean_and_reference(lm, toy_clips(2), reference=toy_clips(1))
    with pytest.raises(ValueError, match="'white_noise'"):
        patching.clean_and_reference(lm, toy_clips(2), reference="pink")


@pytest.fixture(scope="module")
def tiny():
    from asrinterp_utils.models import load_model

    return load_model("tiny.en")


def test_word_choice_feeds_the_sentence_up_to_the_word_and_measures_it(tiny):
    texts = ["She hit the nail with a hammer.", "The cat sat on the mat."]
    choice = patching.word_choice(tiny, texts, ["hammer", "mat"], ["wrench", "hat"])
    prompt = len(tiny.prompt_ids())
    for i, text in enumerate(texts):
        row = choice.ids[i].tolist()
        assert row[choice.positions[i] + 1] == choice.spoken[i]  # the position predicts the spoken word
        assert tiny.tokenizer.decode(row[prompt:choice.positions[i] + 1]).strip() == text.split(
            [" hammer", " mat"][i])[0]
    assert choice.distinct.tolist() == [True, True]
    logits = torch.randn(2, choice.ids.shape[1], tiny.dims.n_vocab)
    expected = [logits[i, choice.positions[i], choice.spoken[i]] - logits[i, choice.positions[i],
                                                                          choice.competing[i]] for i in range(2)]
    assert torch.allclose(choice.metric(logits, choice.ids), torch.stack(expected))
    with pytest.raises(ValueError, match="'saw' is not a word of"):
        patching.word_choice(tiny, ["The seesaw."], ["saw"], ["see"])
    with pytest.raises(ValueError, match="one entry per clip"):
        patching.word_choice(tiny, texts, ["hammer"], ["wrench", "hat"])


def test_transcribe_and_score_equals_separate_calls(tiny):
    from asrinterp_utils.data.real import clip_audio
    from asrinterp_utils.data import bank

    table = bank.speech_dataset("transcribed", fast=True, progress=False).head(3)
    clips = [clip_audio(p) for p in table.path]
    words = [t.split()[-1].strip(".,?!").lower() for t in table.text]
    choice = patching.word_choice(tiny, list(table.text), words, ["the"] * 3)
    texts, diffs = patching.transcribe_and_score(tiny, clips, choice, batch_size=2)
    states = run.encode(tiny, clips).states
    assert texts == run.greedy(tiny, states, max_new_tokens=48).texts(tiny.tokenizer)
    direct = choice.metric(run.teacher_force(tiny, states, choice.ids), choice.ids).numpy()
    np.testing.assert_allclose(diffs, direct, atol=1e-4)
