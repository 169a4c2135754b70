"""Real speech sources (asrinterp_utils.data.real): decoding, cache reuse, recovery and clear errors.

Needs the Debian packages asterisk-core-sounds-en, asterisk-core-sounds-en-g722, pocketsphinx-testdata and ffmpeg
(``make`` installs them); tests that need a missing package are skipped with the apt line as the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asrinterp_utils.data import (
    ATTRIBUTIONS,
    COLUMNS,
    MissingDependencyError,
    asterisk_prompts,
    clip_audio,
    pocketsphinx_clips,
)
from asrinterp_utils.data import real


def _available(fn) -> bool:
    try:
        fn()
    except MissingDependencyError:
        return False
    return True


HAVE_ASTERISK = _available(lambda: real._find_asterisk_transcripts(real._find_asterisk_sounds()))
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
HAVE_POCKETSPHINX = _available(real._find_pocketsphinx_data)

needs_asterisk = pytest.mark.skipif(
    not (HAVE_ASTERISK and HAVE_FFMPEG),
    reason="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722 ffmpeg",
)
needs_pocketsphinx = pytest.mark.skipif(not HAVE_POCKETSPHINX, reason="apt-get install pocketsphinx-testdata")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ASRINTERP_CACHE", str(root))
    return root


@pytest.fixture
def ffmpeg_calls(monkeypatch) -> list[list[str]]:
    """Records every ffmpeg command (one per batch of prompts) while still running it."""
    calls: list[list[str]] = []
    original = real._run_ffmpeg

    def counting(cmd):
        calls.append(list(cmd))
        return original(cmd)

    monkeypatch.setattr(real, "_run_ffmpeg", counting)
    return calls


def _decoded(calls) -> list[str]:
    """The .g722 inputs of the recorded ffmpeg commands."""
    return [c[i + 1] for c in calls for i, a in enumerate(c) if a == "-i"]


def _ffprobe_duration(path: str) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip())


def _asterisk_dir(cache: Path) -> Path:
    return cache / "speech" / "asterisk"


# ------------------------------------------------------------------------------------------------ pure functions
@pytest.mark.parametrize(
    "raw, clean",
    [
        ("[ascending tones]", ""),
        ("[sound of monkeys screaming]", ""),
        ("(10 seconds of silence)", ""),
        ("<beep ascending>", ""),
        ("at [@]", "at"),
        ("space [ ]", "space"),
        ('IAX (note: does not say "2")', "IAX"),
        (
            "Please leave your message after the tone.  When done hang up or press the pound key. "
            "(simple tone sound plays)",
            "Please leave your message after the tone. When done hang up or press the pound key.",
        ),
        ("... for ...", "for"),
        ("If this is correct, press...", "If this is correct, press"),
        (" Press 5 to leave a message", "Press 5 to leave a message"),
        ("3 to mute or umute all", "3 to mute or unmute all"),
        ("exclaimation-point [!]", "exclamation point"),
    ],
)
def test_clean_asterisk_text(raw, clean):
    assert real.clean_asterisk_text(raw) == clean


def test_parse_asterisk_transcripts():
    text = "; Core Asterisk Sounds in English\n\nbeep: [this is a simple beep tone]\ndigits/1: one\nvm-x:  a: b \n"
    assert real.parse_asterisk_transcripts(text) == {"beep": "[this is a simple beep tone]", "digits/1": "one",
                                                     "vm-x": "a: b"}  # fmt: skip


def test_attributions_name_licence_and_authors():
    assert "Allison Smith" in ATTRIBUTIONS["asterisk"] and "Digium" in ATTRIBUTIONS["asterisk"]
    assert "CC BY-SA 3.0" in ATTRIBUTIONS["asterisk"]
    assert "BSD" in ATTRIBUTIONS["pocketsphinx"] and "Carnegie Mellon" in ATTRIBUTIONS["pocketsphinx"]


# ------------------------------------------------------------------------------------------------ clear errors
def test_missing_ffmpeg_is_a_clear_error(cache, tmp_path, monkeypatch):
    if not HAVE_ASTERISK:
        pytest.skip("apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(MissingDependencyError, match="apt-get install ffmpeg"):
        asterisk_prompts(limit=2, progress=False)
    assert not any(_asterisk_dir(cache).rglob("*.wav"))


def test_missing_asterisk_audio_is_a_clear_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(real.ASTERISK_SOUNDS_ENV, str(tmp_path))  # a folder without .g722 files
    with pytest.raises(MissingDependencyError, match="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722"):
        asterisk_prompts(limit=2)
    assert issubclass(MissingDependencyError, RuntimeError)


def test_missing_asterisk_transcripts_is_a_clear_error(cache, tmp_path, monkeypatch):
    (tmp_path / "hello.g722").write_bytes(b"\0" * 800)
    monkeypatch.setenv(real.ASTERISK_SOUNDS_ENV, str(tmp_path))
    monkeypatch.setenv(real.ASTERISK_TRANSCRIPTS_ENV, str(tmp_path / "nope.txt.gz"))
    with pytest.raises(MissingDependencyError, match="asterisk-core-sounds-en"):
        asterisk_prompts(limit=2)


def test_missing_pocketsphinx_is_a_clear_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv(real.POCKETSPHINX_DATA_ENV, str(tmp_path))
    with pytest.raises(MissingDependencyError, match="apt-get install pocketsphinx-testdata"):
        pocketsphinx_clips()


# ------------------------------------------------------------------------------------------------ Asterisk
@needs_asterisk
def test_catalogue_has_subfolders_and_no_silent_clips():
    sounds = real._find_asterisk_sounds()
    clips, raw = real._asterisk_catalogue(sounds, real._find_asterisk_transcripts(sounds))
    ids = {c.clip_id for c in clips}
    assert {"digits/1", "letters/a", "vm-intro", "silence/1", "beep"} <= ids
    speech = {c.clip_id for c in clips if c.text}
    assert "silence/1" not in speech and "beep" not in speech and "tt-monkeys" not in speech
    assert "letters/at" in speech and len(speech) > 500


@needs_asterisk
def test_limited_build(cache, ffmpeg_calls):
    df = asterisk_prompts(limit=8, progress=False)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == 8 and df.clip_id.is_unique
    assert len(_decoded(ffmpeg_calls)) == 8  # only the selection is decoded
    assert all(src.endswith(".g722") for src in _decoded(ffmpeg_calls))
    root = _asterisk_dir(cache)
    for row in df.itertuples():
        p = Path(row.path)
        assert p.is_absolute() and p.is_file() and p.is_relative_to(root)
        assert p.relative_to(root).with_suffix("").as_posix() == row.clip_id
        info = sf.info(row.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert row.duration_s == pytest.approx(info.frames / 16000)
        assert row.text and row.text == row.text.strip() and "  " not in row.text
        assert not any(ch in row.text for ch in "[]()<>")
        assert row.n_words >= 1
    for path, dur in zip(df.path[:3], df.duration_s[:3]):
        assert _ffprobe_duration(path) == pytest.approx(dur, abs=1e-3)
    assert set(df.speaker) == {"allison-smith"} and set(df.gender) == {"female"} and set(df.accent) == {"us"}
    assert set(df.source) == {"asterisk"} and set(df.licence) == {real.ASTERISK_LICENCE}
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["clips"]) == set(df.clip_id)
    assert not list(root.rglob("*.tmp*"))


@needs_asterisk
def test_filters(cache):
    df = asterisk_prompts(min_words=40, max_duration_s=30.0, progress=False)
    assert len(df) > 0 and (df.n_words >= 40).all() and (df.duration_s <= 30.0).all()
    assert "demo-instruct" not in set(df.clip_id)  # 73 s


@needs_asterisk
def test_rerun_reuses_cache(cache, ffmpeg_calls):
    first = asterisk_prompts(limit=8, progress=False)
    mtimes = {p: os.stat(p).st_mtime_ns for p in first.path}
    n = len(ffmpeg_calls)
    t0 = time.perf_counter()
    second = asterisk_prompts(limit=8, progress=False)
    elapsed = time.perf_counter() - t0
    assert len(ffmpeg_calls) == n  # no ffmpeg the second time
    assert elapsed < 1.0
    pd.testing.assert_frame_equal(first, second)
    assert {p: os.stat(p).st_mtime_ns for p in second.path} == mtimes
    # a larger selection decodes only the new prompts
    bigger = asterisk_prompts(limit=10, progress=False)
    assert len(bigger) == 10
    assert len(_decoded(ffmpeg_calls[n:])) == 2


@needs_asterisk
def test_damaged_cache_is_repaired(cache, ffmpeg_calls):
    df = asterisk_prompts(limit=8, progress=False)
    root = _asterisk_dir(cache)
    truncated, deleted = Path(df.path[1]), Path(df.path[2])
    with open(truncated, "r+b") as fh:
        fh.truncate(truncated.stat().st_size // 2)
    deleted.unlink()
    (root / "manifest.json").unlink()
    stray_wav = root / f".{Path(df.path[0]).stem}.0123456789ab.tmp.wav"
    stray_wav.write_bytes(b"RIFF half a wav")
    stray_manifest = root / ".manifest.json.abc123.tmp"
    stray_manifest.write_text("{")
    untouched = {p: os.stat(p).st_mtime_ns for p in df.path if p not in (str(truncated), str(deleted))}
    n = len(ffmpeg_calls)

    again = asterisk_prompts(limit=8, progress=False)

    redone = sorted(Path(p).stem for p in _decoded(ffmpeg_calls[n:]))
    assert redone == sorted([truncated.stem, deleted.stem])  # only the damaged ones
    pd.testing.assert_frame_equal(df, again)
    assert {p: os.stat(p).st_mtime_ns for p in untouched} == untouched
    assert not stray_wav.exists() and not stray_manifest.exists()
    assert (root / "manifest.json").is_file()
    for row in again.itertuples():
        assert sf.info(row.path).frames == round(row.duration_s * 16000)
        assert len(clip_audio(row.path)) == round(row.duration_s * 16000)


@needs_asterisk
def test_interrupted_build_resumes(cache, monkeypatch):
    original = real._run_ffmpeg
    calls: list[list[str]] = []
    lock = threading.Lock()

    def dies_on_second_batch(cmd):
        with lock:
            calls.append(cmd)
            k = len(calls)
        if k == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during this batch
        return original(cmd)

    monkeypatch.setattr(real, "_run_ffmpeg", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        asterisk_prompts(limit=8, workers=2, progress=False)  # two batches of four
    root = _asterisk_dir(cache)
    done = json.loads((root / "manifest.json").read_text())["clips"]
    assert len(done) == 4  # the finished batch is recorded
    assert len(list(root.rglob("*.wav"))) == 4 and not list(root.rglob(".*.tmp*"))

    calls.clear()
    monkeypatch.setattr(real, "_run_ffmpeg", lambda cmd: (calls.append(cmd), original(cmd))[1])
    df = asterisk_prompts(limit=8, workers=2, progress=False)
    assert len(df) == 8
    assert len(_decoded(calls)) == 4 and not set(done) & {Path(p).stem for p in _decoded(calls)}


@needs_asterisk
def test_clip_audio(cache):
    df = asterisk_prompts(limit=2, progress=False)
    row = df.iloc[0]
    a = clip_audio(row)
    assert a.dtype == np.float32 and a.ndim == 1 and len(a) == round(row.duration_s * 16000)
    assert 0.01 < np.abs(a).max() <= 1.0
    np.testing.assert_array_equal(a, clip_audio(row.path))
    np.testing.assert_array_equal(a, clip_audio(row.to_dict()))


# ------------------------------------------------------------------------------------------------ pocketsphinx
@needs_pocketsphinx
def test_pocketsphinx_clips(cache):
    df = pocketsphinx_clips()
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS and df.clip_id.is_unique
    assert len(df) >= 12
    assert {"librivox", "cards", "goforward", "tidigits"} <= set(df.subset)
    assert set(df.gender) == {"male"} and set(df.source) == {"pocketsphinx"}
    assert set(df.licence) == {"BSD-2-Clause"}
    for row in df.itertuples():
        assert Path(row.path).is_absolute() and row.text
        info = sf.info(row.path)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert row.duration_s == pytest.approx(info.frames / 16000)
    goforward = df.set_index("clip_id").loc["goforward"]
    assert goforward.text == "go forward ten meters"
    assert goforward.duration_s == pytest.approx(Path(goforward.source_path).stat().st_size / 2 / 16000)
    # the raw file became a wav in the cache whose samples are exactly the raw ones
    assert Path(goforward.path).is_relative_to(cache)
    raw = np.fromfile(goforward.source_path, dtype="<i2")
    np.testing.assert_array_equal(sf.read(goforward.path, dtype="int16")[0], raw)
    # a second call rewrites nothing
    mtime = os.stat(goforward.path).st_mtime_ns
    pd.testing.assert_frame_equal(df, pocketsphinx_clips())
    assert os.stat(goforward.path).st_mtime_ns == mtime
