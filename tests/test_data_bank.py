"""The speech bank: named datasets built from a spec, cached, resumable, split by speaker."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asrinterp_utils.audio import rms
from asrinterp_utils.data import bank, noise, tts

pytestmark = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("espeak-ng") is None,
                                reason="needs the espeak-ng and flite Debian packages")

SMALL = bank.BankSpec("small", label="gender", n_texts=2, engines=("espeak-ng", "flite"), fast_n_texts=2,
                      fast_max_voices=6)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path / "cache"))


def test_dataset_rows_audio_and_labels():
    table = bank.speech_dataset(SMALL, fast=True, progress=False)
    assert len(table) == 6 * 2 and table.voice_id.nunique() == 6
    assert set(table.gender) == {"female", "male"} and table.speaker.nunique() == 6
    for column in ("clip_id", "path", "text", "speaker", "gender", "accent", "source", "duration_s", "licence",
                   "voice_id", "engine", "seed", "split"):
        assert column in table.columns, column
    for row in table.itertuples():
        wave, rate = sf.read(row.path, dtype="float32")
        assert rate == 16000 and wave.ndim == 1 and abs(len(wave) / 16000 - row.duration_s) < 1e-3
        assert abs(rms(wave) - bank.TARGET_RMS) < 0.01  # loudness normalised across voices
    assert not set(table.speaker[table.split == "test"]) & set(table.speaker[table.split == "train"])


def test_rebuild_reuses_the_cache_and_a_new_spec_reuses_clips(monkeypatch):
    first = bank.speech_dataset(SMALL, fast=True, progress=False)
    calls = []
    real_synth = tts.synthesize
    monkeypatch.setattr(tts, "synthesize", lambda *a, **k: calls.append(a) or real_synth(*a, **k))
    again = bank.speech_dataset(SMALL, fast=True, progress=False)
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    assert calls == []
    bigger = bank.BankSpec("small", label="gender", n_texts=3, engines=("espeak-ng", "flite"), fast_n_texts=3,
                           fast_max_voices=6)
    grown = bank.speech_dataset(bigger, fast=True, progress=False)
    assert len(grown) == 6 * 3 and len(calls) == 6  # only the new sentence was synthesised


def test_a_moved_cache_still_finds_its_clips(monkeypatch, tmp_path):
    """The table stores absolute paths; read from a cache moved to another folder, every path must point into the
    new folder (it pointed at the old one, and every chapter failed to open its audio)."""
    first = bank.speech_dataset(SMALL, fast=True, progress=False)
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "cache"), str(moved))
    monkeypatch.setenv("ASRINTERP_CACHE", str(moved))
    again = bank.speech_dataset(SMALL, fast=True, progress=False)
    assert list(again.clip_id) == list(first.clip_id)
    assert all(p.startswith(str(moved)) and Path(p).is_file() for p in again.path)
    pd.testing.assert_frame_equal(first.drop(columns="path"), again.drop(columns="path"), check_dtype=False)


def test_clip_ids_do_not_depend_on_the_cache_folder(monkeypatch, tmp_path):
    """Real recordings are converted into the cache; their ids once hashed that path, so the same clip had another id
    in another cache, and the folds and splits drawn from ids changed with ``$ASRINTERP_CACHE``."""
    spec = bank.BankSpec("with_real", label="text", n_texts=1, engines=("flite",), real=True, fast_n_texts=1,
                         fast_max_voices=1)
    ids = []
    for root in ("one", "elsewhere/two"):
        monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path / root))
        table = bank.recipes(spec, fast=True)
        assert table.real_path.dropna().str.startswith(str(tmp_path / root)).any()  # converted into this cache
        ids.append(list(table.clip_id))
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0])


def test_interrupted_build_leaves_nothing_half_written_and_resumes(monkeypatch, tmp_path):
    made = []
    real_make = bank._make_clip

    def flaky(row, pool):
        if len(made) >= 4:
            raise KeyboardInterrupt
        made.append(row["clip_id"])
        return real_make(row, pool)
    monkeypatch.setattr(bank, "_make_clip", flaky)
    with pytest.raises(KeyboardInterrupt):
        bank.speech_dataset(SMALL, fast=True, progress=False, workers=1)
    cache = tmp_path / "cache" / "bank"
    assert not list(cache.rglob("*.csv")), "no table is written for an unfinished build"
    assert not [p for p in cache.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    monkeypatch.setattr(bank, "_make_clip", real_make)
    table = bank.speech_dataset(SMALL, fast=True, progress=False)
    assert len(table) == 12


def test_two_builders_of_one_dataset_build_it_once(monkeypatch):
    """Two callers asking for the same missing dataset at once (two pytest workers, two chapters): one builds it, the
    other waits for its table; every clip is made once."""
    import threading

    made = []
    real_make = bank._make_clip
    monkeypatch.setattr(bank, "_make_clip", lambda row, pool: made.append(row["clip_id"]) or real_make(row, pool))
    tables = [None, None]

    def ask(i):
        tables[i] = bank.speech_dataset(SMALL, fast=True, progress=False, workers=1)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pd.testing.assert_frame_equal(tables[0], tables[1], check_dtype=False)
    assert len(made) == len(set(made)) == len(tables[0]) == 12


def test_noise_dataset_hits_the_requested_snr():
    spec = bank.BankSpec("noisy", label="noisy", n_texts=1, engines=("flite",), snr_db=(10.0, 0.0),
                         noise_kinds=("white", "pink"), fast_n_texts=1, fast_max_voices=1)
    table = bank.speech_dataset(spec, fast=True, progress=False)
    assert len(table) == 1 + 2 * 2 and table.noisy.sum() == 4
    clean = sf.read(table[~table.noisy].path.iloc[0], dtype="float32")[0]
    for row in table[table.noisy].itertuples():
        mixed = sf.read(row.path, dtype="float32")[0]
        assert abs(noise.measure_snr(clean, mixed) - row.snr_db) < 0.1  # 16-bit wav rounding included


def test_speaker_split_is_disjoint_and_stratified():
    table = pd.DataFrame({"speaker": [f"s{i}" for i in range(10) for _ in range(3)],
                          "gender": ["female" if i < 5 else "male" for i in range(10) for _ in range(3)]})
    split = bank.speaker_split(table, stratify="gender", test_fraction=0.4)
    assert not set(table.speaker[split == "test"]) & set(table.speaker[split == "train"])
    assert set(table.gender[split == "test"]) == {"female", "male"}
    assert (split == "test").sum() == 4 * 3


def test_named_specs_are_well_formed():
    assert set(bank.SPECS) == {"transcribed", "gender", "accent", "noise", "semantic", "context_bias",
                               "other_languages"}
    assert len({s.key() for s in bank.SPECS.values()}) == 7
    recipe = bank.recipes(bank.SPECS["semantic"], fast=True)
    assert recipe.category.nunique() >= 5 and recipe.clip_id.is_unique
    accent = bank.recipes(bank.SPECS["accent"], fast=True)
    assert accent.accent.nunique() >= 4 and set(accent.engine) == {"espeak-ng"}
    bias = bank.recipes(bank.SPECS["context_bias"], fast=True)
    assert len(bias) > 0 and bias.clip_id.is_unique
    for row in bias.itertuples():  # the spoken word is said; the expected one is only the context's guess
        assert row.spoken_word in row.text and row.expected_word not in row.text.split()
        assert row.expected_text.replace(row.expected_word, row.spoken_word) == row.text
    # each voice of another language reads its own language's sentences, and no English dataset has those voices
    other = bank.recipes(bank.SPECS["other_languages"], fast=False)
    assert (other.accent == other.language).all() and other.language.nunique() == 8
    assert len(other) == 8 * 2 * 6 and other.clip_id.is_unique
    assert not {v.voice_id for v in tts.OTHER_LANGUAGE_VOICES} & set(bank.recipes(bank.SPECS["gender"]).voice_id)


def test_truncated_clips_keep_the_first_part_and_the_reference(tmp_path):
    from asrinterp_utils.data.real import clip_audio, write_wav_atomic

    wave = (0.1 * np.sin(np.arange(16000 * 2) / 10)).astype(np.float32)
    write_wav_atomic(tmp_path / "a.wav", wave)
    table = pd.DataFrame({"clip_id": ["x/a"], "path": [str(tmp_path / "a.wav")], "text": ["one two three"],
                          "duration_s": [2.0]})
    cut = bank.truncated_clips(table, keep_fraction=0.25)
    assert cut.text.tolist() == ["one two three"] and cut.clip_id.tolist() == ["x/a/cut0.25"]
    assert cut.duration_s.tolist() == [0.5] and cut.keep_fraction.tolist() == [0.25]
    np.testing.assert_allclose(clip_audio(cut.path[0]), wave[:8000], atol=1e-4)   # 16-bit wav rounding
    again = bank.truncated_clips(table, keep_fraction=0.25)                      # cached: the same file
    assert again.path.tolist() == cut.path.tolist()
    with pytest.raises(ValueError, match="keep_fraction"):
        bank.truncated_clips(table, keep_fraction=1.0)


def test_non_speech_clips_cover_real_and_generated_sources_at_the_bank_level():
    clips = bank.non_speech_clips(6, duration_s=1.0, seed=3)
    assert len(clips) == 6 and (clips.text == "").all() and (clips.source == "non-speech").all()
    assert clips.speaker.tolist() == clips.noise.tolist()            # one group per noise source
    assert clips.noise.nunique() == 6                                # taken in turn: no source twice in 6
    for path in clips.path:
        x, sr = sf.read(path, dtype="float32")
        assert sr == 16000 and len(x) == 16000
        assert abs(rms(x) - bank.TARGET_RMS) < 0.01
    assert bank.non_speech_clips(6, duration_s=1.0, seed=3).path.tolist() == clips.path.tolist()


def test_spread_takes_evenly_from_every_value_and_first_texts_keeps_whole_texts():
    table = pd.DataFrame({"source": ["a"] * 10 + ["b"] * 2 + ["c"] * 3, "text": [f"t{i % 4}" for i in range(15)]})
    picked = bank.spread(table, 6, "source")
    assert picked.source.value_counts().to_dict() == {"a": 2, "b": 2, "c": 2}
    assert picked.equals(bank.spread(table, 6, "source"))  # deterministic for a seed
    assert len(bank.spread(table, 100, "source")) == 15
    with pytest.raises(KeyError, match="no column 'speaker'"):
        bank.spread(table, 3, "speaker")
    first = bank.first_texts(table, 2)
    assert set(first.text) == {"t0", "t1"} and len(first) == (table.text.isin(["t0", "t1"])).sum()


def test_noise_ladder_puts_each_utterance_at_every_level_and_grows_by_texts():
    kinds, levels = ["white", "pink", "babble"], [20.0, 10.0, 5.0, 0.0]
    rows = []
    for voice in ("v1", "v2"):
        for text in ("t0", "t1", "t2"):
            rows.append({"text": text, "voice_id": voice, "noisy": False, "noise": "none", "snr_db": np.inf})
            rows += [{"text": text, "voice_id": voice, "noisy": True, "noise": k, "snr_db": s}
                     for k in kinds for s in levels]
    table = pd.DataFrame(rows).assign(path=lambda d: [f"clip{i}.wav" for i in range(len(d))])
    two, three = bank.noise_ladder(table, 2), bank.noise_ladder(table, 3)
    assert len(two) == 2 * 2 * (1 + len(levels)) and set(two.text) == {"t0", "t1"}
    for _, utterance in two.groupby(["text", "voice_id"]):  # the clean clip and one copy at every level
        assert sorted(utterance.snr_db) == sorted(levels + [np.inf])
    rungs = two[two.noisy]
    assert rungs.groupby("snr_db").noise.nunique().min() >= 2  # kinds rotate within a level
    assert list(three.path[:len(two)]) == list(two.path)  # more texts extend the ladder: the same clips first
    assert set(three.path) - set(two.path) == set(three[three.text == "t2"].path)
    with pytest.raises(KeyError, match="no column 'noisy'"):
        bank.noise_ladder(table.drop(columns="noisy"), 2)
    with pytest.raises(ValueError, match="n_texts"):
        bank.noise_ladder(table, 0)
