"""Patched generation with a reference run stepping beside the patched one (patching.generate_sweep), on the toy
LoadedModel: known answers (nothing patched = plain greedy decoding; all of cross-attention from the reference =
the reference's own transcript; a reference equal to the clip changes nothing) and batched = naive."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import hooks, patching, run

from ._toy_lm import toy_clips, toy_loaded_model

MAX_NEW = 12


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


@pytest.fixture(scope="module")
def clips():
    return toy_clips(3)


def _greedy(lm, clips):
    feats, _ = lm.features(clips)
    with torch.no_grad():
        states = run.encode_features(lm, feats)
    return lm.text_ids(run.greedy(lm, states, max_new_tokens=MAX_NEW).ids)


def test_unpatched_equals_greedy_and_all_cross_attention_gives_the_reference(lm, clips):
    others = toy_clips(3, seed=7)
    targets = [patching.PatchTarget("nothing", {}),
               patching.PatchTarget("all cross", {"dec.*.cross_attn_out": hooks.replace(patching.REFERENCE)})]
    result = patching.generate_sweep(lm, clips, targets, reference=others, max_new_tokens=MAX_NEW)
    clean, reference = _greedy(lm, clips), _greedy(lm, others)
    assert clean != reference  # the test can fail
    assert result.baseline_ids == clean
    assert result.token_ids[0] == clean
    assert result.token_ids[1] == reference
    assert [r for r in result.reference_texts] == [" ".join(map(str, ids)) for ids in reference]
    assert hooks.active_hook_count(lm) == 0 and lm.model.config._attn_implementation == "eager"


def test_a_reference_equal_to_the_clip_changes_nothing(lm, clips):
    targets = patching.component_targets(lm, "dec.*.*_attn_out", source=patching.REFERENCE)
    result = patching.generate_sweep(lm, clips, targets, reference=clips, max_new_tokens=MAX_NEW)
    assert all(ids == result.baseline_ids for ids in result.token_ids)


def test_batched_equals_naive_for_heads_and_combinations(lm, clips):
    heads = patching.head_targets(lm, "cross_head_out", source=patching.REFERENCE)
    components = patching.component_targets(lm, "dec.*.mlp_out", source=patching.REFERENCE)
    targets = heads + components + [patching.combine(heads[0], components[1])]
    fast = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW, batch_rows=8)
    slow = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW, method="naive")
    assert fast.token_ids == slow.token_ids and fast.baseline_ids == slow.baseline_ids
    assert any(ids != fast.baseline_ids for ids in fast.token_ids)  # some patch changes a transcript
    table = fast.to_frame()
    assert len(table) == len(targets) * len(clips)
    assert set(table.columns) >= {"target", "clip", "text", "loop", "baseline_loop", "hit_limit"}


def test_encoder_targets_batched_equals_naive_and_final_gives_the_reference(lm, clips):
    targets = patching.component_targets(lm, "enc.*.mlp_out", source=patching.REFERENCE)
    targets.append(patching.PatchTarget("enc.final", {"enc.final": hooks.replace(patching.REFERENCE)}))
    fast = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW, encoder_rows=4)
    slow = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW, method="naive")
    assert fast.token_ids == slow.token_ids
    assert fast.texts[-1] == fast.reference_texts  # the decoder hears only the reference


def test_without_reference_texts_an_encoder_sweep_gives_the_same_transcripts_from_a_shorter_reference_pass(
        lm, clips, monkeypatch):
    targets = patching.component_targets(lm, "enc.0.mlp_out", source=patching.REFERENCE)
    full = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW)
    depths = []
    encode = run.encode_features

    def counting(*args, stop_at_layer=None, **kwargs):
        depths.append(stop_at_layer)
        return encode(*args, stop_at_layer=stop_at_layer, **kwargs)

    monkeypatch.setattr(run, "encode_features", counting)
    short = patching.generate_sweep(lm, clips, targets, max_new_tokens=MAX_NEW, reference_texts=False)
    assert short.token_ids == full.token_ids and short.baseline_ids == full.baseline_ids
    assert short.reference_texts is None and full.reference_texts is not None
    assert 1 in depths  # the reference pass stopped after layer 0, the only layer the target reads
    assert short.baseline_ids == _greedy(lm, clips)  # the unpatched transcripts, read from the store or decoded


def test_mixed_sides_and_bad_sources_are_refused(lm, clips):
    mixed = patching.PatchTarget("both", {"enc.0.mlp_out": hooks.replace(patching.REFERENCE),
                                          "dec.0.mlp_out": hooks.replace(patching.REFERENCE)})
    one = patching.component_targets(lm, "dec.0.mlp_out", source=patching.REFERENCE)
    for rows in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_rows must be a whole number"):
            patching.generate_sweep(lm, clips, one, max_new_tokens=MAX_NEW, batch_rows=rows)
    with pytest.raises(ValueError, match="not both"):
        patching.generate_sweep(lm, clips, [mixed], max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="one reference clip per clip"):
        patching.generate_sweep(lm, clips, [], reference=clips[:1], max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="REFERENCE is a source for replace"):
        patching.generate_sweep(lm, clips, [patching.PatchTarget("x", {"dec.0.mlp_out": hooks.add(
            patching.REFERENCE)})], max_new_tokens=MAX_NEW)


def test_from_rows_copies_other_rows_and_checks_counts(lm):
    feats, _ = lm.features(toy_clips(2))
    core = lm.model.model
    with torch.no_grad():
        plain = core.encoder(feats).last_hidden_state
        with hooks.patch(lm, {"enc.final": hooks.from_rows([1], rows=[0])}):
            copied = core.encoder(feats).last_hidden_state
        assert torch.equal(copied[0], plain[1]) and torch.equal(copied[1], plain[1])
        with pytest.raises(ValueError, match="one source row per patched row"):
            with hooks.patch(lm, {"enc.final": hooks.from_rows([1, 0], rows=[0])}):
                core.encoder(feats)


def test_encoded_clips_are_reused_across_sweeps_with_the_same_results(lm, clips):
    """encode_clips once, then several sweeps (decoder and encoder targets): the same transcripts as sweeps that
    encode the audio themselves; the unpatched transcripts are computed once and kept."""
    others = toy_clips(3, seed=7)
    encoded = patching.encode_clips(lm, clips, reference=others)
    decoder_targets = patching.component_targets(lm, "dec.*.cross_attn_out", source=patching.REFERENCE)
    encoder_targets = patching.component_targets(lm, "enc.*.mlp_out", source=patching.REFERENCE)
    for targets in (decoder_targets, encoder_targets):
        reused = patching.generate_sweep(lm, encoded, targets, max_new_tokens=MAX_NEW)
        fresh = patching.generate_sweep(lm, clips, targets, reference=others, max_new_tokens=MAX_NEW)
        assert reused.token_ids == fresh.token_ids and reused.baseline_ids == fresh.baseline_ids
        assert reused.reference_texts == fresh.reference_texts
    cached = dict(encoded._decoded)
    patching.generate_sweep(lm, encoded, decoder_targets[:1], max_new_tokens=MAX_NEW)
    assert encoded._decoded.keys() == cached.keys()  # nothing decoded again
    with pytest.raises(ValueError, match="reference of EncodedClips"):
        patching.generate_sweep(lm, encoded, decoder_targets, reference=clips)
    with pytest.raises(ValueError, match="another model"):
        patching.generate_sweep(toy_loaded_model(seed=2), encoded, decoder_targets)


def test_with_reference_swaps_the_references_and_keeps_the_unpatched_transcripts(lm, clips):
    """Another reference for the same clips (another draw of noise): the same results as a sweep that encodes the
    clips with that reference itself, without decoding the unpatched clips again."""
    encoded = patching.encode_clips(lm, clips)
    targets = patching.component_targets(lm, "dec.*.cross_attn_out", source=patching.REFERENCE)
    first = patching.generate_sweep(lm, encoded, targets, max_new_tokens=MAX_NEW)
    draw = patching.white_noise_references(clips, draw=2)
    swapped = encoded.with_reference(lm, draw)
    assert ("baseline", "dec", MAX_NEW) in swapped._decoded and ("reference", MAX_NEW) not in swapped._decoded
    reused = patching.generate_sweep(lm, swapped, targets, max_new_tokens=MAX_NEW)
    fresh = patching.generate_sweep(lm, clips, targets, reference=draw, max_new_tokens=MAX_NEW)
    assert reused.token_ids == fresh.token_ids and reused.baseline_ids == fresh.baseline_ids == first.baseline_ids
    assert reused.reference_texts == fresh.reference_texts
    with pytest.raises(ValueError, match="one reference clip per clip"):
        encoded.with_reference(lm, draw[:1])
