"""Batched patch sweeps give the same numbers as one forward per target."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import hooks, patching
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


@torch.no_grad()
def test_shared_cross_attention_keys_and_values(toy, toy_inputs):
    """K stacked copies reading one set of cross-attention keys/values equal K independent forwards."""
    feats, _, ids = toy_inputs
    plain = toy(feats, decoder_input_ids=ids).logits
    encoder_out = toy.model.encoder(feats).last_hidden_state
    kv = patching.cross_attention_kv(toy, encoder_out)
    assert torch.equal(patching.decoder_logits(toy, ids, encoder_out), plain)
    assert torch.allclose(patching.decoder_logits(toy, ids, encoder_out, kv), plain, atol=1e-6)
    assert torch.allclose(patching.decoder_logits(toy, ids.repeat(3, 1), encoder_out, kv), plain.repeat(3, 1, 1),
                          atol=1e-6)
    assert toy.config._attn_implementation == "eager"


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
