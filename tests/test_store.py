"""The content-addressed store: a result is computed once per model, clip samples and settings, read back
afterwards, recomputed when damaged, and never mixed up with another clip's or another setting's."""
from __future__ import annotations

import pytest

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
