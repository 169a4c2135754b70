"""Batched patch sweeps give the same numbers as one forward per target."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import hooks, patching, run
from asrinterp_utils.cache import cache_activations


@pytest.fixture(scope="module")
def source(toy, toy_inputs):
    _, other, ids = toy_inputs
    with torch.no_grad(), cache_activations(toy, "*") as cache:
        toy(other, decoder_input_ids=ids)
    return cache


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_decoder_sweep_equals_naive(toy, toy_inputs, source, batch_size):
    feats, _, ids = toy_inputs
    targets = (patching.head_targets(toy, "cross_head_out", source=source)
               + patching.head_targets(toy, "self_head_out")
               + patching.component_targets(toy, "dec.*.mlp_out", source=source, positions=[3, 4]))
    metric = patching.token_logprob(start=2)
    fast = patching.run_sweep(toy, feats, ids, targets, metric, batch_size=batch_size)
    slow = patching.run_sweep(toy, feats, ids, targets, metric, method="naive")
    assert fast.labels == slow.labels and fast.values.shape == (len(targets), 2)
    assert torch.allclose(fast.values, slow.values, atol=1e-5)
    assert torch.equal(fast.baseline, slow.baseline)
    assert fast.values.std() > 0  # the patches do something
    assert hooks.active_hook_count(toy) == 0 and toy.config._attn_implementation == "eager"


def test_batched_encoder_sweep_equals_naive(toy, toy_inputs, source):
    feats, _, ids = toy_inputs
    targets = patching.head_targets(toy, "head_out", source=source) + [
        patching.PatchTarget("enc+dec", {"enc.0.mlp_out": hooks.zero(), "dec.1.mlp_out": hooks.scale(2.0)})]
    metric = patching.logit_diff(position=4, good=5, bad=6)
    fast = patching.run_sweep(toy, feats, ids, targets, metric, batch_size=2)
    slow = patching.run_sweep(toy, feats, ids, targets, metric, method="naive")
    assert torch.allclose(fast.values, slow.values, atol=1e-5)


def test_sweep_result_table(toy, toy_inputs):
    feats, _, ids = toy_inputs
    result = patching.run_sweep(toy, feats, ids, patching.head_targets(toy, "cross_head_out", layers=[1]),
                                patching.token_logprob(start=2))
    frame = result.to_frame()
    assert list(frame.columns) == ["target", "clip", "metric", "baseline", "delta"]
    assert len(frame) == 2 * 2 and frame.target.iloc[0] == "dec.1.cross_head_out[h0]"
    with pytest.raises(ValueError, match="rows are set by the sweep"):
        patching.run_sweep(toy, feats, ids, [patching.PatchTarget("x", {"dec.0.mlp_out": hooks.zero(rows=[0])})],
                           patching.token_logprob(start=2))


def test_attribution_is_exact_for_a_metric_linear_in_the_activation(toy, toy_inputs, source):
    """Logits are linear in dec.final (after the last LayerNorm), so grad . (reference - clean) equals the exact
    change of a logit difference; on attention heads the estimate is only first-order, but tracks the exact one."""
    feats, _, ids = toy_inputs
    metric = patching.logit_diff(position=4, good=5, bad=6)
    attr = patching.attribution_patching(toy, feats, ids, "dec.final", source, metric)
    exact = patching.run_sweep(toy, feats, ids, patching.component_targets(toy, "dec.final", source=source), metric)
    assert torch.allclose(attr.baseline, exact.baseline, atol=1e-5)
    assert torch.allclose(attr.estimates["dec.final"], exact.values[0] - exact.baseline, atol=1e-4)

    attr = patching.attribution_patching(toy, feats, ids, "dec.*.cross_head_out", source, metric)
    labels, estimates = attr.labels_and_values()
    targets = patching.head_targets(toy, "cross_head_out", source=source)
    exact = patching.run_sweep(toy, feats, ids, targets, metric)
    assert labels == exact.labels and estimates.shape == exact.values.shape
    deltas = (exact.values - exact.baseline).flatten()
    r = torch.corrcoef(torch.stack([estimates.flatten(), deltas]))[0, 1]
    assert r > 0.5, r
    assert hooks.active_hook_count(toy) == 0


def test_an_encoded_run_serves_decoder_sweeps_without_an_encoder_pass(toy, toy_inputs, source, monkeypatch):
    """Given the clips' Encoded run, a decoder-only sweep and attribution patching read its encoder output (the
    same numbers as from the features) and run no encoder; encoder targets still run it from the features."""
    feats, _, ids = toy_inputs
    encoded = run.Encoded(feats, torch.tensor([150, 150]), run.encode_features(toy, feats))
    metric = patching.token_logprob(start=2)
    targets = patching.head_targets(toy, "cross_head_out", source=source)
    from_features = patching.run_sweep(toy, feats, ids, targets, metric)
    attr_features = patching.attribution_patching(toy, feats, ids, "dec.*.cross_head_out", source, metric)
    calls = []
    real_encode = run.encode_features
    monkeypatch.setattr(run, "encode_features", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    from_encoded = patching.run_sweep(toy, encoded, ids, targets, metric)
    attr_encoded = patching.attribution_patching(toy, encoded, ids, "dec.*.cross_head_out", source, metric)
    assert calls == []
    assert torch.equal(from_encoded.values, from_features.values)
    assert torch.equal(from_encoded.baseline, from_features.baseline)
    assert torch.allclose(attr_encoded.labels_and_values()[1], attr_features.labels_and_values()[1], atol=1e-6)
    encoder_targets = patching.head_targets(toy, "head_out", source=source)
    assert torch.allclose(patching.run_sweep(toy, encoded, ids, encoder_targets, metric).values,
                          patching.run_sweep(toy, feats, ids, encoder_targets, metric).values, atol=1e-6)
    assert calls  # the encoder targets ran the encoder
    with pytest.raises(ValueError, match="3 rows of decoder_input_ids"):
        patching.run_sweep(toy, encoded, ids[[0, 1, 1]], targets, metric)
    with pytest.raises(ValueError, match="1 rows of encoder states"):
        patching.run_sweep(toy, run.Encoded(feats, encoded.n_frames, encoded.states[:1]), ids, targets, metric)


def test_logit_diff_per_clip_matches_one_clip_at_a_time():
    logits = torch.randn(6, 5, 9)  # 3 targets x 2 clips stacked
    metric = patching.logit_diff(position=[1, 3], good=[4, 5], bad=[0, 2])
    values = metric(logits, None)
    for row in range(6):
        clip = row % 2
        single = patching.logit_diff([1, 3][clip], [4, 5][clip], [0, 2][clip])(logits[row:row + 1], None)
        assert torch.equal(values[row:row + 1], single)
    assert patching.logit_diff(2, 4, 0)(logits, None).shape == (6,)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_encoder_only_sweep_reuses_the_prefix_and_equals_naive(batch_size):
    """Encoder-only targets run from their first patched layer on; the numbers equal one full forward each,
    for targets at layer 0 (nothing to reuse), deeper layers, several layers at once and enc.final. (The toy
    LoadedModel, whose audio steers the decoder.)"""
    from ._toy_lm import toy_clips, toy_loaded_model

    lm = toy_loaded_model()
    feats, _ = lm.features(toy_clips(2))
    other, _ = lm.features(toy_clips(2, seed=5))
    ids = torch.tensor([[1, 3, 4, 5, 6, 7], [1, 3, 6, 5, 4, 0]])
    with torch.no_grad(), cache_activations(lm, "enc.*") as source:
        lm.model.model.encoder(other)
    targets = (patching.component_targets(lm, "enc.*.mlp_out", source=source)
               + patching.head_targets(lm, "head_out", source=source, layers=[1])
               + patching.component_targets(lm, ["enc.0.resid_pre", "enc.final"], source=source)
               + [patching.PatchTarget("two layers", {"enc.1.attn_out": hooks.zero(),
                                                      "enc.0.mlp_out": hooks.scale(0.5)})])
    metric = patching.token_logprob(start=2)
    fast = patching.run_sweep(lm, feats, ids, targets, metric, batch_size=batch_size)
    slow = patching.run_sweep(lm, feats, ids, targets, metric, method="naive")
    assert fast.labels == slow.labels
    assert torch.allclose(fast.values, slow.values, atol=1e-4)
    assert torch.allclose(fast.baseline, slow.baseline, atol=1e-5)
    assert (fast.values - fast.baseline).abs().max() > 1e-2  # the patches do something
    assert hooks.active_hook_count(lm) == 0


def test_whole_encoder_residual_from_another_run_gives_that_run_at_every_layer():
    """Known answer the semantic-bias chapter relies on: replacing the whole residual stream after any encoder
    layer by another run's makes the encoder output that run's, so every layer gives the decoder reading the other
    run's encoder output."""
    from ._toy_lm import toy_clips, toy_loaded_model

    lm = toy_loaded_model()
    feats, _ = lm.features(toy_clips(2))
    other, _ = lm.features(toy_clips(2, seed=5))
    ids = torch.tensor([[1, 3, 4, 5, 6, 7], [1, 3, 6, 5, 4, 0]])
    with torch.no_grad(), cache_activations(lm, "enc.*.resid_post") as source:
        other_states = lm.model.model.encoder(other).last_hidden_state
    metric = patching.token_logprob(start=2)
    sweep = patching.run_sweep(lm, feats, ids, patching.component_targets(lm, "enc.*.resid_post", source=source),
                               metric)
    with torch.no_grad():
        expected = metric(run.teacher_force(lm.model, other_states, ids), ids)
    assert len(sweep.labels) == lm.dims.n_encoder_layers
    for row in sweep.values:
        assert torch.allclose(row, expected, atol=1e-4)
    assert (expected - sweep.baseline).abs().max() > 1e-2


def test_kl_metric_is_zero_for_no_change_and_positive_for_a_patch(toy, toy_inputs, source):
    feats, _, ids = toy_inputs
    with torch.no_grad():
        base_logits = toy(feats, decoder_input_ids=ids).logits
    metric = patching.kl_from(base_logits, start=2)
    targets = patching.component_targets(toy, "dec.*.mlp_out") + [patching.PatchTarget("none", {})]  # zero-ablate
    result = patching.run_sweep(toy, feats, ids, targets, metric, batch_size=2)
    assert torch.allclose(result.baseline, torch.zeros(2), atol=1e-5)
    assert torch.allclose(result.values[-1], torch.zeros(2), atol=1e-5)
    assert (result.values[:-1] > 1e-6).all()  # KL >= 0, and strictly positive for a change


@pytest.mark.parametrize("kind", ["token_logprob", "kl_from"])
def test_transcript_metrics_ignore_the_padding_after_a_shorter_transcript(kind):
    """A batch of greedy transcripts pads the shorter ones with end-of-text copies. With ``end_of_text`` a clip's
    value is the same padded in a batch as alone: its own tokens and its end are scored, the copies are not."""
    def make(base, **end):
        return (patching.token_logprob(start=2, **end) if kind == "token_logprob"
                else patching.kl_from(base, start=2, **end))

    torch.manual_seed(0)
    short = torch.tensor([[1, 2, 5, 9]])                # prompt (2 tokens), one text token, the end
    padded = torch.tensor([[1, 2, 5, 9, 9, 9], [1, 2, 4, 6, 7, 9]])
    logits, base = torch.randn(2, 6, 12), torch.randn(2, 6, 12)
    alone = make(base[:1, :4], end_of_text=9)(logits[:1, :4], short)
    in_batch = make(base, end_of_text=9)(logits, padded)
    everything = make(base)(logits, padded)
    assert torch.allclose(in_batch[0], alone[0])
    assert not torch.allclose(in_batch[0], everything[0])        # without end_of_text the copies count
    assert torch.allclose(in_batch[1], everything[1])             # a row that fills the batch: nothing to drop


def test_best_held_out_keeps_a_planted_winner_and_removes_the_optimism_of_noise():
    rng = torch.Generator().manual_seed(0)
    baseline = torch.zeros(40)
    planted = torch.randn(12, 40, generator=rng) * 0.1
    planted[3] -= 1.0                                      # one target lowers the metric on every clip
    result = patching.SweepResult([f"t{i}" for i in range(12)], planted, baseline)
    speakers = [i // 4 for i in range(40)]
    best = result.best_held_out(speakers, largest=False)
    assert best.target == "t3" and best.agreement == 1.0 and best.chosen == ["t3"]
    assert best.estimate.value == pytest.approx(float(planted[3].mean()))
    assert best.estimate.low <= best.estimate.value <= best.estimate.high < 0
    assert set(best.as_row()) >= {"best on all clips", "in sample", "cross-fitted (95 % interval)"}
    noise = patching.SweepResult([f"t{i}" for i in range(12)], torch.randn(12, 40, generator=rng), baseline)
    best = noise.best_held_out(speakers)
    assert best.in_sample > best.estimate.value             # the best of 12 on the clips that chose it
    assert best.estimate.low < 0 < best.estimate.high
