"""The TTS voice bank (asrinterp_utils.data.tts) and the text material (asrinterp_utils.data.texts).

Synthesis tests need the Debian-main engines (``apt-get install espeak-ng flite festival festvox-kallpc16k
festvox-kdlpc16k festvox-us-slt-hts``) and skip an engine that is not installed. The whole file runs in well under a
minute (one short sentence per voice, once).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from asrinterp_utils.data import tts
from asrinterp_utils.data.real import COLUMNS, MissingDependencyError
from asrinterp_utils.data.texts import (
    CARRIER_SENTENCES,
    CONTEXT_BIAS_ITEMS,
    HARVARD_SENTENCES,
    SEMANTIC_CATEGORIES,
    context_bias_items,
    harvard_sentences,
    semantic_items,
)

SENTENCE = "The birch canoe slid on the smooth planks."
BINARIES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "text2wave"}
MAIN = [v for v in tts.VOICES if not v.optional]


def _installed(engine: str) -> bool:
    return shutil.which(BINARIES[engine]) is not None


def _needs(engine: str):
    return pytest.mark.skipif(not _installed(engine), reason=f"{engine} not installed (apt-get install {engine})")


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-12)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


# ----------------------------------------------------------------------------------------------------------------
# Catalogue
# ----------------------------------------------------------------------------------------------------------------
def test_catalogue_well_formed():
    ids = [v.voice_id for v in tts.VOICES]
    assert len(ids) == len(set(ids))
    for v in tts.VOICES:
        assert v.gender in tts.GENDERS, v
        assert v.accent in tts.ACCENTS, v
        assert v.engine in tts.ENGINES, v
        assert v.voice_id.startswith(v.engine + "/"), v
        assert v.speaker and v.engine_voice and v.licence, v
        assert v.optional == (v.engine in {"mbrola", "rhvoice", "pico", "piper"}), v
        if not v.optional:
            assert v.accent in tts.MAIN_ACCENTS, v
    # the Debian-main catalogue: 8 accents x (2 F + 2 M) espeak-ng variants, 4 flite, 3 festival
    assert Counter(v.engine for v in MAIN) == {"espeak-ng": 32, "flite": 4, "festival": 3}
    for accent in tts.MAIN_ACCENTS:
        genders = Counter(v.gender for v in MAIN if v.engine == "espeak-ng" and v.accent == accent)
        assert genders == {"female": 2, "male": 2}, accent
    assert {v.gender for v in MAIN} == {"female", "male"}


def test_speaker_identity_shared_across_engines():
    by_speaker: dict[str, set[str]] = {}
    for v in tts.VOICES:
        by_speaker.setdefault(v.speaker, set()).add(v.voice_id)
    assert {"flite/slt", "festival/cmu_us_slt_arctic_hts", "rhvoice/slt"} <= by_speaker["cmu-slt"]
    assert {"flite/kal16", "festival/kal_diphone"} <= by_speaker["cmu-kal"]
    assert {"flite/awb", "rhvoice/alan"} <= by_speaker["cmu-awb"]
    # an espeak-ng variant is one "speaker" across all eight accents
    assert len(by_speaker["espeak-ng:f2"]) == 8
    # one speaker has one gender
    for spk, ids in by_speaker.items():
        assert len({tts.get_voice(i).gender for i in ids}) == 1, spk


def test_voice_table_and_lookup():
    df = tts.voice_table()
    assert len(df) == len(tts.VOICES)
    assert {"voice_id", "engine", "engine_voice", "speaker", "gender", "accent", "optional", "available",
            "install"} <= set(df.columns)
    assert len(tts.voice_table(include_optional=False)) == len(MAIN)
    assert tts.get_voice("flite/slt").speaker == "cmu-slt"
    with pytest.raises(KeyError, match="flite/slt"):
        tts.get_voice("flite/slt2")


def test_available_voices_finds_installed_main_voices():
    avail = tts.available_voices()
    ids = {v.voice_id for v in avail}
    for engine in BINARIES:
        expected = {v.voice_id for v in MAIN if v.engine == engine}
        if _installed(engine):
            assert expected <= ids, sorted(expected - ids)
        else:
            assert not expected & ids
    assert all(not v.optional for v in tts.available_voices(include_optional=False))
    # optional voices are reported only with their engine present; none is ever required
    for v in avail:
        if v.optional:
            assert tts.is_available(v)


# ----------------------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def main_audio(tmp_path_factory):
    """One sentence from every installed Debian-main voice: {voice_id: (samples, returned duration, path)}."""
    root = tmp_path_factory.mktemp("tts")
    out = {}
    for v in tts.available_voices(include_optional=False):
        path = root / (v.voice_id.replace("/", "_") + ".wav")
        dur = tts.synthesize(SENTENCE, v, path)
        out[v.voice_id] = (sf.read(str(path), dtype="float32")[0], dur, path)
    if not out:
        pytest.skip("no TTS engine installed")
    return out


def test_every_main_voice_gives_plausible_audio(main_audio):
    for vid, (x, dur, path) in main_audio.items():
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV"), vid
        assert dur == pytest.approx(info.frames / 16000), vid
        assert 1.5 < dur < 5.0, (vid, dur)  # 8 words
        assert _rms_db(x) > -35, (vid, _rms_db(x))  # not silent
        assert np.mean(np.abs(x) >= 0.999) < 1e-4, vid  # no clipping (festival diphones touch full scale rarely)


@pytest.mark.parametrize("voice_id", ["espeak-ng/en-gb-scotland+f2", "flite/slt", "festival/kal_diphone"])
def test_one_voice_per_engine(voice_id, tmp_path):
    v = tts.get_voice(voice_id)
    if not _installed(v.engine):
        pytest.skip(f"{v.engine} not installed")
    path = tmp_path / "a.wav"
    dur = tts.synthesize("Please say apple again.", v, path)
    x, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000 and x.ndim == 1
    assert 0.8 < dur < 3.5
    assert _rms_db(x) > -35
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]  # no temporary file left


@pytest.mark.parametrize("voice_id", ["espeak-ng/en-us+m3", "flite/rms", "festival/cmu_us_slt_arctic_hts"])
def test_deterministic(voice_id, tmp_path):
    v = tts.get_voice(voice_id)
    if not _installed(v.engine):
        pytest.skip(f"{v.engine} not installed")
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    tts.synthesize("Ten pins were set in order.", v, a)
    tts.synthesize("Ten pins were set in order.", v, b)
    assert a.read_bytes() == b.read_bytes()


@_needs("espeak-ng")
def test_seed_and_rate(tmp_path):
    v = "espeak-ng/en-us+f4"
    p = {k: tmp_path / f"{k}.wav" for k in ("s0", "s1", "s1b", "s2", "slow")}
    d0 = tts.synthesize(SENTENCE, v, p["s0"])
    tts.synthesize(SENTENCE, v, p["s1"], seed=1)
    tts.synthesize(SENTENCE, v, p["s1b"], seed=1)
    tts.synthesize(SENTENCE, v, p["s2"], seed=2)
    assert p["s1"].read_bytes() == p["s1b"].read_bytes()
    assert len({p[k].read_bytes() for k in ("s0", "s1", "s2")}) == 3
    slow = tts.synthesize(SENTENCE, v, p["slow"], words_per_minute=100)
    assert slow > 1.3 * d0


@_needs("flite")
def test_rate_flite(tmp_path):
    d = tts.synthesize(SENTENCE, "flite/slt", tmp_path / "a.wav")
    slow = tts.synthesize(SENTENCE, "flite/slt", tmp_path / "b.wav", words_per_minute=120)
    assert slow > 1.3 * d


@_needs("espeak-ng")
def test_atomic_write(tmp_path, monkeypatch):
    final = tmp_path / "out" / "clip.wav"
    tts.synthesize(SENTENCE, "espeak-ng/en-us+f2", final)
    before = final.read_bytes()
    assert [p.name for p in final.parent.iterdir()] == ["clip.wav"]

    # an exception between writing the audio and renaming it: the old file stays, no temporary file is left
    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(tts.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        tts.synthesize("Something else entirely.", "espeak-ng/en-us+f2", final)
    assert final.read_bytes() == before
    assert [p.name for p in final.parent.iterdir()] == ["clip.wav"]
    fresh = tmp_path / "out" / "fresh.wav"
    with pytest.raises(OSError):
        tts.synthesize(SENTENCE, "espeak-ng/en-us+f2", fresh)
    assert not fresh.exists()
    assert [p.name for p in final.parent.iterdir()] == ["clip.wav"]


@_needs("flite")
def test_engine_failure_reports_stderr(tmp_path, monkeypatch):
    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 3, stdout="", stderr="flite: cannot open audio device")

    monkeypatch.setattr(tts, "_run", failing)
    monkeypatch.setattr(tts, "_check_installed", lambda v: None)  # the engine's inventory is not what fails here
    with pytest.raises(tts.TTSError, match="cannot open audio device"):
        tts.synthesize(SENTENCE, "flite/slt", tmp_path / "a.wav")
    assert list(tmp_path.iterdir()) == []


@_needs("festival")
def test_festival_scheme_error_is_an_error(tmp_path, monkeypatch):
    # festival exits 0 on a Scheme error (an unknown voice): that must not pass as success
    ghost = tts.Voice("festival/no_such_voice", "festival", "no_such_voice", "x", "male", "us")
    monkeypatch.setattr(tts, "_check_installed", lambda v: None)
    with pytest.raises(tts.TTSError, match="SIOD ERROR"):
        tts.synthesize(SENTENCE, ghost, tmp_path / "a.wav")
    assert list(tmp_path.iterdir()) == []


def test_missing_engine_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    for vid, package in [("espeak-ng/en-us+f2", "espeak-ng"), ("flite/slt", "flite"),
                         ("festival/kal_diphone", "festival festvox-kallpc16k"),
                         ("mbrola/us1", "mbrola-us1"), ("rhvoice/slt", "rhvoice")]:
        with pytest.raises(MissingDependencyError, match=re.escape(package)):
            tts.synthesize(SENTENCE, vid, tmp_path / "a.wav")
    assert not (tmp_path / "a.wav").exists()
    assert tts.available_voices() == []


def test_missing_festival_voice_names_its_package(tmp_path, monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(tts, "_festival_voice_dir", lambda name: None)
    with pytest.raises(MissingDependencyError, match="festvox-us-slt-hts"):
        tts.synthesize(SENTENCE, "festival/cmu_us_slt_arctic_hts", tmp_path / "a.wav")


def test_tts_clips_bank(tmp_path, monkeypatch):
    voices = [v for v in ("espeak-ng/en-029+m6", "flite/kal16") if tts.is_available(v)]
    if not voices:
        pytest.skip("neither espeak-ng nor flite installed")
    texts = ["Two blue fish swam in the tank.", "Ten pins were set in order."]
    df = tts.tts_clips(texts, voices, out_dir=tmp_path, workers=1)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == len(texts) * len(voices) and df["clip_id"].is_unique
    assert (df["source"] == "tts").all() and set(df["text"]) == set(texts)
    for row in df.itertuples():
        assert sf.info(row.path).samplerate == 16000
    # a rerun reads the cache and synthesizes nothing
    monkeypatch.setattr(tts, "synthesize", lambda *a, **k: pytest.fail("cache miss"))
    again = tts.tts_clips(texts, voices, out_dir=tmp_path, workers=1)
    assert again["path"].tolist() == df["path"].tolist()
    assert not list(tmp_path.rglob(".*.tmp.wav"))


# ----------------------------------------------------------------------------------------------------------------
# Label check: F0
# ----------------------------------------------------------------------------------------------------------------
def test_median_f0_on_known_signals():
    from scipy.signal import sawtooth

    t = np.arange(32000) / 16000
    for f0 in (85.0, 120.0, 210.0, 300.0):
        x = 0.3 * sawtooth(2 * np.pi * f0 * t)
        assert tts.median_f0(x) == pytest.approx(f0, rel=0.01)
        assert tts.median_f0((x * 32767).astype(np.int16)) == pytest.approx(f0, rel=0.01)
    assert np.isnan(tts.median_f0(np.zeros(16000)))


def test_female_voices_have_higher_f0_than_male(main_audio):
    f0 = {vid: tts.median_f0(x) for vid, (x, _, _) in main_audio.items()}
    fem = {v: f for v, f in f0.items() if tts.get_voice(v).gender == "female"}
    mal = {v: f for v, f in f0.items() if tts.get_voice(v).gender == "male"}
    if not fem or not mal:
        pytest.skip("need at least one female and one male voice installed")
    assert min(fem.values()) > max(mal.values()), (fem, mal)
    assert all(150 < f < 250 for f in fem.values()), fem
    assert all(75 < f < 140 for f in mal.values()), mal
    # each espeak-ng variant really is applied in every accent (espeak-ng 1.51 ignores it in "en-gb+f2")
    espeak = [v for v in f0 if v.startswith("espeak-ng/")]
    assert len({main_audio[v][2].read_bytes() for v in espeak}) == len(espeak)


# ----------------------------------------------------------------------------------------------------------------
# Texts
# ----------------------------------------------------------------------------------------------------------------
def test_harvard_sentences():
    assert len(HARVARD_SENTENCES) >= 100 and len(HARVARD_SENTENCES) % 10 == 0
    assert len(set(HARVARD_SENTENCES)) == len(HARVARD_SENTENCES)
    for s in HARVARD_SENTENCES:
        assert s.endswith(".") and s[0].isupper() and s == " ".join(s.split()), s
        assert 5 <= len(s.split()) <= 12, s
    assert HARVARD_SENTENCES[0] == "The birch canoe slid on the smooth planks."
    assert HARVARD_SENTENCES[99] == "The bill was paid every third week."
    assert harvard_sentences(3) == list(HARVARD_SENTENCES[:3])
    assert harvard_sentences() == list(HARVARD_SENTENCES)
    assert harvard_sentences(lists=[2])[0] == "The boy was there when the sun rose."
    with pytest.raises(ValueError):
        harvard_sentences(lists=[99])


def test_semantic_items():
    assert len(SEMANTIC_CATEGORIES) >= 5
    all_words = [w for ws in SEMANTIC_CATEGORIES.values() for w in ws]
    assert all(len(ws) >= 8 for ws in SEMANTIC_CATEGORIES.values())
    assert len(all_words) == len(set(all_words))  # categories disjoint
    assert len(CARRIER_SENTENCES) >= 12
    carrier_words = {w for c in CARRIER_SENTENCES for w in _words(c.replace("{word}", ""))}
    assert not carrier_words & set(all_words)  # the carrier never says a category word
    for c in CARRIER_SENTENCES:
        assert c.count("{word}") == 1
    df = semantic_items()
    assert list(df.columns) == ["text", "word", "category", "carrier_id"]
    assert len(df) == len(all_words) * len(CARRIER_SENTENCES)
    for row in df.itertuples():
        assert row.word in _words(row.text)
        assert row.word in SEMANTIC_CATEGORIES[row.category]
    # every word in every carrier
    assert (df.groupby("word")["carrier_id"].nunique() == len(CARRIER_SENTENCES)).all()
    assert len(semantic_items(n_carriers=2)) == 2 * len(all_words)


def test_context_bias_items():
    assert 30 <= len(CONTEXT_BIAS_ITEMS) <= 40
    for item in CONTEXT_BIAS_ITEMS:
        assert set(item) == {"carrier", "expected_word", "spoken_word"}
        assert item["carrier"].count("{word}") == 1
        assert item["expected_word"] != item["spoken_word"]
    df = context_bias_items()
    assert df["carrier"].is_unique
    assert all(r.spoken_word in _words(r.spoken_text) for r in df.itertuples())
