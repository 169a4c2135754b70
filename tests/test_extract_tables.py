"""Feature sources for probes: several pools in one decoder pass, the attention backend, a random-initialised
twin, the log-mel baseline, and the cached features of a dataset table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from asrinterp_utils import run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.data.real import write_wav_atomic
from asrinterp_utils.extract import extract_features, log_mel_features, table_features
from asrinterp_utils.models import attention_backend, random_init_model

SMALL = dict(batch_size=2, shard_size=5, progress=False)
MAX_NEW = 10


def test_several_pools_in_one_pass_equal_one_pool_at_a_time(toy_lm, toy_lm_clips, tmp_path):
    lm, clips = toy_lm, toy_lm_clips
    both = extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path / "both", side="decoder",
                            pool=("mean", "last", "max"), max_new_tokens=MAX_NEW, **SMALL)
    assert both.shape == (len(clips), 3, 2, 16) and both.pool == ("mean", "last", "max")
    together = both.load()
    for k, pool in enumerate(("mean", "last", "max")):
        alone = extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path / pool, side="decoder", pool=pool,
                                 max_new_tokens=MAX_NEW, **SMALL)
        np.testing.assert_allclose(together[:, k], alone.load(), rtol=1e-5, atol=1e-6)
        assert alone.token_ids() == both.token_ids()


def test_the_stored_tokens_are_the_greedy_hypothesis(toy_lm, toy_lm_clips, tmp_path):
    lm, clips = toy_lm, toy_lm_clips
    store = extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path, side="decoder", max_new_tokens=MAX_NEW,
                             **SMALL)
    feats, _ = lm.features(clips)
    with torch.no_grad():
        states = lm.model.model.encoder(feats).last_hidden_state
        ids = run.greedy(lm, states, max_new_tokens=MAX_NEW).ids[:, len(lm.prompt_ids()):].tolist()
    end = lm.model.generation_config.eos_token_id
    expected = [row[:row.index(end) + 1] if end in row else row for row in ids]
    assert store.token_ids() == expected
    assert [len(t) for t in expected] == store.n_positions().tolist()


def test_several_pools_are_refused_on_the_encoder_side(toy_lm, toy_lm_clips, tmp_path):
    lm, clips = toy_lm, toy_lm_clips
    with pytest.raises(ValueError, match="decoder side"):
        extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, pool=("mean", "max"), **SMALL)
    with pytest.raises(ValueError, match="pool must be"):
        extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path, side="decoder", pool=("mean", "mean"))


def test_sdpa_extraction_equals_eager_and_restores_the_backend(toy_lm, toy_lm_clips, tmp_path):
    lm, clips = toy_lm, toy_lm_clips
    assert lm.model.config._attn_implementation == "eager"
    fast = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "sdpa", **SMALL)
    assert lm.model.config._attn_implementation == "eager"  # restored
    slow = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "eager", attention=None, **SMALL)
    np.testing.assert_allclose(fast.load(), slow.load(), rtol=1e-4, atol=1e-4)
    with attention_backend(lm, "sdpa"):
        assert lm.model.config._attn_implementation == "sdpa"
    assert lm.model.config._attn_implementation == "eager"


def test_random_init_twin_has_the_shape_but_not_the_weights(toy_lm, toy_lm_clips):
    lm, clips = toy_lm, toy_lm_clips
    a, b, again = random_init_model(lm, seed=0), random_init_model(lm, seed=1), random_init_model(lm, seed=0)
    assert "random init" in a.name and a.name != lm.name and a.dims == lm.dims
    for (name, p), (_, q), (_, r), (_, orig) in zip(a.model.named_parameters(), b.model.named_parameters(),
                                                    again.model.named_parameters(), lm.model.named_parameters()):
        assert p.shape == orig.shape, name
        assert torch.equal(p, r), name  # the seed decides the weights
    weights = dict(a.model.named_parameters())
    assert not torch.equal(weights["model.encoder.layers.0.fc1.weight"],
                           dict(lm.model.named_parameters())["model.encoder.layers.0.fc1.weight"])
    assert not torch.equal(weights["model.encoder.layers.0.fc1.weight"],
                           dict(b.model.named_parameters())["model.encoder.layers.0.fc1.weight"])
    feats, _ = a.features(clips[:2])
    assert torch.isfinite(a.model.model.encoder(feats).last_hidden_state).all()


def test_log_mel_baseline_is_mean_and_std_over_real_frames(toy_lm, toy_lm_clips):
    lm, clips = toy_lm, toy_lm_clips
    out = log_mel_features(lm, clips, batch_size=3)
    assert out.shape == (len(clips), 1, 160)
    mel, n_frames = lm.features(clips[2:3])
    real = mel[0, :, :2 * int(n_frames[0])].float()
    np.testing.assert_allclose(out[2, 0, :80], real.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2, 0, 80:], real.std(dim=1, unbiased=False).numpy(), rtol=1e-4, atol=1e-5)


def test_table_features_are_row_aligned_shared_and_cached(toy_lm, toy_lm_clips, tmp_path, monkeypatch):
    lm, clips = toy_lm, toy_lm_clips
    paths = []
    for i, clip in enumerate(clips[:4]):
        path = tmp_path / f"clip{i}.wav"
        write_wav_atomic(path, clip)
        paths.append(str(path))
    table = pd.DataFrame({"path": [paths[0], paths[1], paths[0], paths[2], paths[3]]})  # a clip used twice
    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path / "cache"))
    first = table_features(lm, table, "enc.*.resid_post", progress=False)
    assert first.features.shape == (5, 2, 16) and first.store.n_clips == 4
    np.testing.assert_array_equal(first.features[0], first.features[2])
    assert first.transcripts is None
    calls = []
    monkeypatch.setattr("asrinterp_utils.extract._pool_batch", lambda *a, **k: calls.append(1))
    again = table_features(lm, table, "enc.*.resid_post", progress=False)  # read from the cache: no forward
    assert calls == [] and again.store.out_dir == first.store.out_dir
    np.testing.assert_array_equal(again.features, first.features)
    with pytest.raises(ValueError, match="'path' column"):
        table_features(lm, pd.DataFrame({"wav": paths}), "enc.*.resid_post")


@pytest.mark.real
def test_decoder_table_features_of_tiny_en_carry_its_transcripts(tmp_path):
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    tiny = load_model("tiny.en")
    table = asterisk_prompts(min_words=4, max_duration_s=5, progress=False).head(3)
    tf = table_features(tiny, table, "dec.*.resid_post", side="decoder", pool=("mean", "last"),
                        out_dir=tmp_path, progress=False)
    assert tf.features.shape == (3, 2, 4, 384) and tf.pools == ("mean", "last")
    assert tf.transcripts == [t.strip() for t in run.transcribe(tiny, [clip_audio(p) for p in table.path])]


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_word_spans_pool_only_the_frames_of_each_span(toy_lm, toy_lm_clips, tmp_path, pool):
    """Against a full cache of the encoder, reduced by hand over frames floor(start/0.02) .. ceil(end/0.02)."""
    lm, clips = toy_lm, toy_lm_clips[:5]
    spans = [(0.0, 0.5), (0.1, 0.3), (0.21, 0.39), (0.5, 1.0), (0.02, 0.04)]
    store = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "words", pool=pool, spans=spans,
                             **SMALL)
    feats, n_frames = lm.features(clips)
    with torch.no_grad(), cache_activations(lm, "enc.*.resid_post") as cache:
        lm.model.model.encoder(feats)
    full = cache.stack("enc.*.resid_post").transpose(0, 1).numpy()  # (clips, points, frames, d)
    frames = [(0, 25), (5, 15), (10, 20), (25, 50), (1, 2)]
    assert all(b <= n for (_, b), n in zip(frames, n_frames.tolist()))
    reduce = np.mean if pool == "mean" else np.max
    expected = np.stack([reduce(full[i, :, a:b], axis=1) for i, (a, b) in enumerate(frames)])
    np.testing.assert_allclose(store.load(), expected, rtol=1e-4, atol=1e-4)
    assert store.n_positions().tolist() == [b - a for a, b in frames]
    with pytest.raises(ValueError, match="one \\(start_s, end_s\\) per clip"):
        extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "bad", spans=spans[:2], **SMALL)
    with pytest.raises(ValueError, match="outside the clip"):
        extract_features(lm, clips[:1], "enc.*.resid_post", out_dir=tmp_path / "far", spans=[(60.0, 61.0)], **SMALL)
