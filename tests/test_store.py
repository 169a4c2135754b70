"""The content-addressed store: a result is computed once per model, clip samples and settings, read back
afterwards, recomputed when damaged, and never mixed up with another clip's or another setting's."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import run, store

from ._toy_lm import toy_clips, toy_loaded_model


@pytest.fixture()
def lm(tmp_path, monkeypatch):
    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    return toy_loaded_model()


def test_transcripts_are_computed_once_then_read(lm, monkeypatch):
    clips = toy_clips(3)
    first = store.transcripts(lm, clips, max_new_tokens=8)
    direct = run.greedy(lm, run.encode(lm, clips).states, max_new_tokens=8)
    assert [t.text_ids for t in first] == direct.text_ids and [t.hit_limit for t in first] == direct.hit_limit

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(run, "greedy", refuse)
    assert store.transcripts(lm, clips, max_new_tokens=8) == first  # all read from the store
    with pytest.raises(AssertionError, match="decoded again"):
        store.transcripts(lm, clips, max_new_tokens=9)  # another setting is another key


def test_only_missing_or_damaged_records_are_recomputed(lm, monkeypatch):
    clips = toy_clips(3)
    first = store.transcripts(lm, clips, max_new_tokens=8)
    settings = {"max_new_tokens": 8, "decoder": "greedy-no-timestamps"}
    store.result_path("transcript", lm, clips[1], settings).write_text("{not json")
    calls = []
    greedy = run.greedy
    monkeypatch.setattr(run, "greedy", lambda m, s, **kw: calls.append(len(s)) or greedy(m, s, **kw))
    changed = clips[2] * 0.5
    again = store.transcripts(lm, [clips[0], clips[1], changed], max_new_tokens=8)
    assert calls == [2]  # the damaged record and the changed clip, in one batch
    assert again[:2] == first[:2]
    assert store.clip_digest(changed) != store.clip_digest(clips[2])


def test_encoder_lens_rows_are_stored_per_clip_and_read_back(tmp_path, monkeypatch):
    from asrinterp_utils import lens
    from asrinterp_utils.models import load_model

    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    tiny = load_model("tiny.en")
    clips = toy_clips(3, seed=3)
    first = lens.encoder_lens(tiny, clips[:2], layers=[2, 3], max_new_tokens=6, progress=False)
    calls = []
    greedy = run.greedy
    monkeypatch.setattr(run, "greedy", lambda m, s, **kw: calls.append(len(s)) or greedy(m, s, **kw))
    again = lens.encoder_lens(tiny, clips, layers=[2, 3], max_new_tokens=6, progress=False)
    assert calls == [2]  # only the new clip's two layers were decoded
    assert again.head(4).equals(first)
    fresh = lens.encoder_lens(tiny, clips, layers=[2, 3], max_new_tokens=6, progress=False, use_store=False)
    assert fresh.equals(again) and calls == [2, 6]


def _refuse(*args, **kwargs):
    raise AssertionError("encoded again")


def test_encoder_output_is_filed_once_then_read_back_exactly(lm, monkeypatch):
    clips = toy_clips(3, seed=5)
    direct = run.encode(lm, clips)
    first = store.encoded(lm, clips[:2])
    assert torch.equal(first.states, direct.states[:2]) and torch.equal(first.n_frames, direct.n_frames[:2])
    calls = []
    encode_features = run.encode_features
    monkeypatch.setattr(run, "encode_features", lambda m, f, **kw: calls.append(len(f)) or encode_features(m, f, **kw))
    again = store.encoded(lm, clips)
    assert calls == [1]  # only the new clip ran through the encoder
    assert torch.equal(again.features, direct.features)
    # the new clip ran alone, not in a batch of three: equal to rounding (BLAS blocks differ with the batch)
    assert torch.allclose(again.states, direct.states, atol=1e-5)
    monkeypatch.setattr(run, "encode_features", _refuse)
    assert torch.equal(store.encoded(lm, clips).states, again.states)  # all three read back, bit for bit


def test_a_damaged_encoder_output_is_computed_again(lm):
    clips = toy_clips(2, seed=6)
    first = store.encoded(lm, clips)
    path = store._states_path(lm, clips[0])
    path.write_bytes(b"not a tensor")
    assert torch.allclose(store.encoded(lm, clips).states, first.states, atol=1e-5)
    assert torch.load(path, weights_only=True).shape == first.states.shape[1:]  # filed again, whole


def test_the_store_is_bypassed_under_a_patch_and_files_nothing(lm, monkeypatch):
    from asrinterp_utils.hooks import patch, zero

    clips = toy_clips(2, seed=7)
    with patch(lm, {"enc.0.resid_post": zero()}):
        patched = store.encoded(lm, clips)
    assert not any(store._states_path(lm, c).exists() for c in clips)  # a patched output is never filed
    plain = store.encoded(lm, clips)
    assert not torch.allclose(plain.states, patched.states)
    with patch(lm, {"enc.0.resid_post": zero()}):  # and a stored plain output is never read under a patch
        assert torch.equal(store.encoded(lm, clips).states, patched.states)


def test_encoder_side_extraction_files_the_output_that_decoder_side_work_reads(lm, tmp_path, monkeypatch):
    from asrinterp_utils.extract import extract_features

    clips = toy_clips(3, seed=8)
    extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "enc", progress=False)
    direct = run.encode(lm, clips)
    monkeypatch.setattr(run, "encode_features", _refuse)
    filed = store.encoded(lm, clips)  # every clip's output came from the extraction
    assert torch.allclose(filed.states, direct.states, atol=1e-6)
    transcripts = store.transcripts(lm, clips, max_new_tokens=4)  # decodes without running the encoder
    assert len(transcripts) == 3


def test_decoded_lays_stored_transcripts_out_as_greedy_does(lm):
    clips = toy_clips(4, seed=9)
    for limit in (3, 12):  # rows cut at the limit, and rows that end
        direct = run.greedy(lm, run.encode(lm, clips).states, max_new_tokens=limit)
        first, again = store.decoded(lm, clips, max_new_tokens=limit), store.decoded(lm, clips, max_new_tokens=limit)
        for d in (first, again):
            assert torch.equal(d.ids, direct.ids) and d.text_ids == direct.text_ids
            assert d.hit_limit == direct.hit_limit and d.n_prompt == direct.n_prompt


def test_stored_transcripts_are_not_read_under_a_patch(lm):
    from asrinterp_utils.hooks import patch, zero

    clips = toy_clips(3, seed=10)
    plain = store.transcripts(lm, clips, max_new_tokens=6)
    with patch(lm, {"enc.1.resid_post": zero()}):
        patched = store.transcripts(lm, clips, max_new_tokens=6)
        direct = run.greedy(lm, run.encode(lm, clips).states, max_new_tokens=6)
    assert [t.text_ids for t in patched] == direct.text_ids  # the patched model's, not the stored plain ones
    assert [t.text_ids for t in plain] != direct.text_ids
    assert store.transcripts(lm, clips, max_new_tokens=6) == plain  # and the patched ones were not stored


def test_encoder_lens_files_the_encoder_output_and_ignores_the_store_under_a_patch(tmp_path, monkeypatch):
    from asrinterp_utils import lens
    from asrinterp_utils.hooks import patch, zero
    from asrinterp_utils.models import load_model

    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    tiny = load_model("tiny.en")
    clips = toy_clips(2, seed=11)
    plain = lens.encoder_lens(tiny, clips, layers=[1, 3], max_new_tokens=4, progress=False)
    direct = run.encode(tiny, clips).states
    monkeypatch.setattr(run, "encode_features", _refuse)
    assert torch.allclose(store.encoded(tiny, clips).states, direct, atol=1e-5)  # filed by the lens
    monkeypatch.undo()
    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    with patch(tiny, {"enc.3.resid_post": zero()}):
        patched = lens.encoder_lens(tiny, clips, layers=[1, 3], max_new_tokens=4, progress=False)
    assert patched[patched.layer == 1].transcript.tolist() == plain[plain.layer == 1].transcript.tolist()
    assert patched[patched.layer == 3].transcript.tolist() != plain[plain.layer == 3].transcript.tolist()


def test_transcripts_use_the_encoder_output_they_are_given(lm, monkeypatch):
    clips = toy_clips(3, seed=12)
    given = store.encoded(lm, clips)
    monkeypatch.setattr(store, "encoded", _refuse)  # the caller's states are used, not read again
    decoded = store.decoded(lm, clips, max_new_tokens=5, states=given.states)
    direct = run.greedy(lm, given.states, max_new_tokens=5)
    assert torch.equal(decoded.ids, direct.ids)
    with pytest.raises(ValueError, match="2 rows of encoder states for 3 clips"):
        store.transcripts(lm, clips, max_new_tokens=6, states=given.states[:2])


def test_encoder_means_are_filed_by_every_plain_pass_and_equal_the_extracted_pool(lm, tmp_path, monkeypatch):
    from asrinterp_utils.cache import cache_activations
    from asrinterp_utils.extract import extract_features

    clips = toy_clips(3, seed=10)
    feats, n_frames = lm.features(clips)
    with cache_activations(lm, "enc.*.resid_post", pool="mean", n_frames=n_frames) as cache:
        run.encode_features(lm, feats)
    direct = torch.stack([cache[f"enc.{i}.resid_post"] for i in range(len(cache))], dim=1).float()
    store.encoded(lm, clips[:2])  # files the first two clips' means from its pass
    calls = []
    encode_features = run.encode_features
    monkeypatch.setattr(run, "encode_features", lambda m, f, **kw: calls.append(len(f)) or encode_features(m, f, **kw))
    means = store.encoder_means(lm, clips)
    assert calls == [1]  # only the third clip ran
    assert means.shape == direct.shape and torch.allclose(means, direct, atol=1e-5)
    monkeypatch.setattr(run, "encode_features", _refuse)
    extracted = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "x",
                                 progress=False).load()  # read from the store: no encoder runs
    assert torch.allclose(torch.from_numpy(extracted), direct, atol=1e-5)


def test_encoder_means_are_never_read_under_a_patch(lm, tmp_path):
    from asrinterp_utils.extract import extract_features
    from asrinterp_utils.hooks import patch, zero

    clips = toy_clips(2, seed=11)
    plain = store.encoder_means(lm, clips)
    with patch(lm, {"enc.0.resid_post": zero()}):
        patched = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path / "p", progress=False).load()
        with pytest.raises(RuntimeError, match="hook of this package is attached"):
            store.encoder_means(lm, clips)
    assert torch.all(torch.from_numpy(patched[:, 0]) == 0) and not torch.allclose(torch.from_numpy(patched), plain)
    assert torch.equal(store.encoder_means(lm, clips), plain)  # the patched pass filed nothing over them


def test_stored_means_come_back_in_the_order_the_points_are_named(lm):
    from asrinterp_utils.cache import cache_activations
    from asrinterp_utils.extract import pool_batch

    clips = toy_clips(2, seed=12)
    names = ["enc.1.resid_post", "enc.0.resid_post"]
    store.encoded(lm, clips)  # files the means
    pooled, _ = pool_batch(lm, clips, names)
    feats, n_frames = lm.features(clips)
    with cache_activations(lm, names, pool="mean", n_frames=n_frames) as cache:
        run.encode_features(lm, feats)
    assert torch.allclose(pooled, torch.stack([cache[n] for n in names], dim=1), atol=1e-5)


def test_an_encoder_lens_over_every_layer_files_the_means_that_extraction_reads(tmp_path, monkeypatch):
    from asrinterp_utils import lens
    from asrinterp_utils.extract import pool_batch
    from asrinterp_utils.models import load_model

    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    tiny = load_model("tiny.en")
    clips = toy_clips(2, seed=13)
    lens.encoder_lens(tiny, clips, layers=[0], max_new_tokens=2, progress=False)  # not every layer: no means
    assert not any(store._means_path(tiny, c).exists() for c in clips)
    lens.encoder_lens(tiny, clips, max_new_tokens=2, progress=False)
    points = [f"enc.{i}.resid_post" for i in range(4)]
    with monkeypatch.context() as m:
        m.setattr(run, "encode_features", _refuse)
        from_lens, _ = pool_batch(tiny, clips, points)
    for clip in clips:
        store._means_path(tiny, clip).unlink()
    assert torch.allclose(from_lens, store.encoder_means(tiny, clips), atol=1e-4)  # recomputed by a plain pass


def test_a_model_with_edited_weights_never_reads_the_original_models_results(lm):
    """The key holds a fingerprint of the weights' values: zeroing a weight in place (or another model under the same
    name) gives another key, so nothing stored for the original weights is read back as its result."""
    clips = toy_clips(2)
    before = store.encoded(lm, clips).states
    first = store.transcripts(lm, clips, max_new_tokens=8)
    with torch.no_grad():
        lm.model.model.encoder.layers[0].fc1.weight.mul_(0)  # an in-place edit, under the same name
    after = store.encoded(lm, clips).states
    assert torch.equal(after, run.encode(lm, clips).states)
    assert not torch.allclose(after, before)
    assert [t.text_ids for t in store.transcripts(lm, clips, max_new_tokens=8)] == \
        run.greedy(lm, after, max_new_tokens=8).text_ids
    other = toy_loaded_model(seed=7)  # same name and source, other weights
    assert other.name == lm.name and not torch.allclose(store.encoded(other, clips).states, before)
    assert first  # the original's records are still there for the original weights


def test_the_weights_fingerprint_follows_the_values_not_the_name():
    from asrinterp_utils.models import weights_fingerprint

    a, b, c = toy_loaded_model(seed=1), toy_loaded_model(seed=1), toy_loaded_model(seed=2)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)
    original = weights_fingerprint(a)
    saved = {k: v.clone() for k, v in a.model.state_dict().items()}
    with torch.no_grad():
        a.model.proj_out.weight[0, 0] += 1.0  # one number, in place
    assert weights_fingerprint(a) != original
    a.model.load_state_dict(saved)
    assert weights_fingerprint(a) == original  # the same values again
