"""Noise (asrinterp_utils.data.noise): generated spectra, real recordings, babble and exact SNR mixing.

The real-recording tests need the Debian packages sonic-pi-samples and asterisk-moh-opsound-wav and are skipped,
with the apt line as the reason, when they are missing.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import welch

from asrinterp_utils.data import MissingDependencyError
from asrinterp_utils.data import noise as N
from asrinterp_utils.data.noise import (
    babble,
    generate_noise,
    measure_snr,
    mix_at_snr,
    noise_clip,
    real_noise_sources,
)

SR = 16_000
SNRS = [20, 10, 5, 0, -5]


def _available(name: str) -> bool:
    try:
        N._find_source_dir(name)
    except MissingDependencyError:
        return False
    return True


HAVE_SONIC_PI = _available("sonic-pi")
HAVE_MOH = _available("moh")
needs_real = pytest.mark.skipif(
    not (HAVE_SONIC_PI and HAVE_MOH), reason="apt-get install sonic-pi-samples asterisk-moh-opsound-wav"
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ASRINTERP_CACHE", str(root))
    return root


def _slope_db_per_octave(x: np.ndarray, lo: float = 100.0, hi: float = 4000.0) -> float:
    f, p = welch(x, fs=SR, nperseg=2048)
    keep = (f >= lo) & (f <= hi)
    return float(np.polyfit(np.log2(f[keep]), 10 * np.log10(p[keep]), 1)[0])


def _speech_like(seconds: float = 2.0, peak: float = 0.3, seed: int = 0) -> np.ndarray:
    """A voiced-speech stand-in: a 120 Hz harmonic complex, syllable-rate amplitude modulation, a pause."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 120 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 20))
    x *= 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (t < 0.75 * seconds)
    return (peak * x / np.max(np.abs(x))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Generated noise
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -10 * math.log10(2)), ("brown", -20 * math.log10(2))])
def test_spectral_slopes(kind, slope):
    x = generate_noise(kind, 4 * SR, seed=3)
    assert x.dtype == np.float32 and x.shape == (4 * SR,)
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-5)
    assert _slope_db_per_octave(x) == pytest.approx(slope, abs=0.3)


def test_determinism_and_level():
    for kind in N.GENERATED_KINDS:
        a = generate_noise(kind, 8000, seed=7, level_rms=0.05)
        assert np.array_equal(a, generate_noise(kind, 8000, seed=7, level_rms=0.05))
        assert not np.array_equal(a, generate_noise(kind, 8000, seed=8, level_rms=0.05))
        assert N.rms(a) == pytest.approx(0.05, rel=1e-5)
    # kinds draw independent streams: pink is not white filtered
    w, p = generate_noise("white", 8000, seed=1), generate_noise("pink", 8000, seed=1)
    assert abs(np.corrcoef(w, p)[0, 1]) < 0.1
    with pytest.raises(ValueError, match="unknown noise kind"):
        generate_noise("purple", 100)


def test_hum_has_a_50hz_peak():
    x = generate_noise("hum", 2 * SR, seed=0)
    f, p = welch(x, fs=SR, nperseg=SR)  # 1 Hz bins
    assert f[np.argmax(p)] == 50.0
    db = 10 * np.log10(p / p.max())
    for k in (2, 3, 5):
        assert db[int(50 * k)] > -25  # the harmonics are there
    assert db[75] < -60 and db[1000] < -60  # and nothing between or above them


# ----------------------------------------------------------------------------------------------------------------
# SNR mixing
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum"])
def test_mix_at_snr_is_exact(kind):
    speech = _speech_like(peak=0.2)
    for snr in SNRS:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # quiet speech: the clipping guard must not act
            mix = mix_at_snr(speech, kind, snr, seed=2)
        assert mix.dtype == np.float32 and mix.shape == speech.shape
        assert measure_snr(speech, mix) == pytest.approx(snr, abs=0.1)
        # with no guard the plain definition holds too: noise = mixture - speech
        noise = mix.astype(np.float64) - speech
        assert 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(snr, abs=0.1)
        assert abs(measure_snr(speech, mix) - snr) < 1e-3  # in fact to float precision


def test_mix_at_snr_guards_against_clipping():
    speech = _speech_like(peak=0.95)
    with pytest.warns(RuntimeWarning, match="to avoid clipping"):
        mix = mix_at_snr(speech, generate_noise("white", len(speech), seed=1), -5, seed=0)
    assert np.max(np.abs(mix)) <= 0.99 + 1e-6
    assert measure_snr(speech, mix) == pytest.approx(-5, abs=0.1)  # scale-invariant: the guard keeps the SNR
    unguarded = mix_at_snr(speech, generate_noise("white", len(speech), seed=1), -5, seed=0, max_peak=None)
    assert np.max(np.abs(unguarded)) > 1.0


def test_mix_clean_and_noise_lengths():
    speech = _speech_like(peak=0.2)
    for clean in (None, math.inf):
        out = mix_at_snr(speech, "white", clean)
        assert np.array_equal(out, speech) and out is not speech
        assert measure_snr(speech, out) == math.inf
    short = generate_noise("pink", 3000, seed=0)  # looped
    long = generate_noise("pink", 10 * len(speech), seed=0)  # cropped at a seeded offset
    for nz in (short, long):
        a = mix_at_snr(speech, nz, 5, seed=1)
        assert a.shape == speech.shape and measure_snr(speech, a) == pytest.approx(5, abs=0.1)
        assert np.array_equal(a, mix_at_snr(speech, nz, 5, seed=1))
    assert not np.array_equal(mix_at_snr(speech, long, 5, seed=1), mix_at_snr(speech, long, 5, seed=2))
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(np.zeros(100, np.float32), "white", 0)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(speech, np.zeros(100), 0)


# ----------------------------------------------------------------------------------------------------------------
# Babble
# ----------------------------------------------------------------------------------------------------------------
def test_babble_sums_several_talkers():
    freqs = [200, 300, 500, 700, 1100, 1300]
    t = np.arange(SR // 2) / SR  # 0.5 s "talkers", looped to 2 s
    waves = [(0.1 * (1 + i) * np.sin(2 * np.pi * f * t)).astype(np.float32) for i, f in enumerate(freqs)]
    out = babble(waves, 2 * SR, n_talkers=4, seed=5)
    assert out.shape == (2 * SR,) and out.dtype == np.float32 and N.rms(out) == pytest.approx(0.1, rel=1e-4)
    assert np.array_equal(out, babble(waves, 2 * SR, n_talkers=4, seed=5))
    spec = np.abs(np.fft.rfft(out))
    bins = {f: spec[int(f * 2)] for f in freqs}  # 0.5 Hz bins
    present = [f for f, v in bins.items() if v > 0.1 * spec.max()]
    assert len(present) == 4  # four different talkers, each brought to the same level
    levels = [bins[f] for f in present]
    assert max(levels) / min(levels) < 1.5
    with pytest.raises(ValueError, match="at least n_talkers"):
        babble(waves[:2], 1000, n_talkers=3)


# ----------------------------------------------------------------------------------------------------------------
# Real recordings
# ----------------------------------------------------------------------------------------------------------------
@needs_real
def test_real_sources_listed():
    df = real_noise_sources()
    assert list(df.columns[:5]) == N.NOISE_COLUMNS
    assert df.noise_id.is_unique
    by = df.groupby("source")
    assert by.size()["moh"] == 5 and by.size()["sonic-pi"] >= 100
    assert set(df[df.source == "sonic-pi"].kind) == {"ambience"} and set(df[df.source == "moh"].kind) == {"music"}
    assert (df.duration_s >= N.MIN_DURATION_S).all() and (df.rms_dbfs >= N.MIN_RMS_DBFS).all()
    assert set(df[df.source == "sonic-pi"].licence) == {"CC0-1.0"}
    assert df[df.source == "moh"].licence.str.startswith("CC-BY-SA-3.0, ").all()
    assert "sonic-pi/vinyl_hiss" in set(df.noise_id) and "sonic-pi/misc_crow" not in set(df.noise_id)  # 0.48 s
    assert all(Path(p).is_file() for p in df.path)


@needs_real
def test_real_clip_decoded_at_16k_and_cached(cache):
    nid = "moh/manolo_camp-morning_coffee"  # the shortest piece: 73 s at 8 kHz
    a = noise_clip(nid, 3 * SR, seed=0)
    assert a.dtype == np.float32 and a.shape == (3 * SR,) and N.rms(a) > 0.01
    (wav,) = (cache / "noise" / "moh").glob("manolo_camp-morning_coffee.*.wav")
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels) == (SR, 1)
    assert info.frames == 2 * sf.info(real_noise_sources(["moh"]).set_index("noise_id").path[nid]).frames
    assert not [p for p in wav.parent.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert np.array_equal(a, noise_clip(nid, 3 * SR, seed=0))  # from the cache
    assert not np.array_equal(a, noise_clip(nid, 3 * SR, seed=1))  # another offset
    f, p = welch(a, fs=SR, nperseg=1024)
    assert p[f > 4200].sum() < 1e-3 * p.sum()  # an 8 kHz recording has nothing above 4 kHz


@needs_real
def test_short_real_file_is_looped():
    nid = "sonic-pi/ambi_soft_buzz"  # 0.78 s
    whole = N._decoded(nid)
    n = 3 * SR
    x = noise_clip(nid, n, seed=4)
    period = len(whole) - int(round(N._XFADE_S * SR))
    assert x.shape == (n,) and period < n // 2
    np.testing.assert_allclose(x[: n - period], x[period:], atol=1e-6)  # periodic with the loop length


@needs_real
def test_real_noise_mixes_at_snr():
    speech = _speech_like(peak=0.2)
    for nid in ("moh/manolo_camp-morning_coffee", "sonic-pi/ambi_drone"):
        for snr in SNRS:
            assert measure_snr(speech, mix_at_snr(speech, nid, snr, seed=3)) == pytest.approx(snr, abs=0.1)


def test_missing_package_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("ASRINTERP_MOH_DIR", str(tmp_path))  # an empty folder
    with pytest.raises(MissingDependencyError, match="apt-get install asterisk-moh-opsound-wav"):
        real_noise_sources(["moh"])
    with pytest.raises(MissingDependencyError, match="asterisk-moh-opsound-wav"):
        noise_clip("moh/macroform-cold_day", 100)
    with pytest.raises(ValueError, match="noise_id"):
        noise_clip("nonsense", 100)
