"""Noise for robustness experiments: generated noise, real recordings that Debian ships, babble, and SNR mixing.

Everything here is 16 kHz mono float32, deterministic for a given ``seed``.

* :func:`generate_noise` -- ``white``, ``pink`` (1/f power), ``brown`` (1/f^2 power) and ``hum`` (50 Hz mains hum
  with harmonics), numpy only.
* :func:`real_noise_sources` -- a DataFrame of real recordings from two Debian (main) packages:

  =====================  ========  ===================================================================  ===========
  package                ``kind``  content                                                              licence
  =====================  ========  ===================================================================  ===========
  sonic-pi-samples       ambience  Sonic Pi's sample library (44.1 kHz): drones, vinyl hiss, loops,     CC0-1.0
                                   percussion, a crow; the ``category`` column has the file's prefix
                                   (``ambi``, ``vinyl``, ``loop``, ``drum``, ``tabla``, ...)
  asterisk-moh-opsound   music     five music-on-hold pieces (8 kHz: upsampled to 16 kHz, so nothing    CC-BY-SA-3.0
  -wav                             above 4 kHz), 18 min
  =====================  ========  ===================================================================  ===========

  ``apt-get install sonic-pi-samples asterisk-moh-opsound-wav``; a missing package raises
  :class:`~asrinterp_utils.data.real.MissingDependencyError` naming it. Files shorter than
  :data:`MIN_DURATION_S` (0.5 s: too short to loop into anything but a buzz) or quieter than
  :data:`MIN_RMS_DBFS` (-50 dBFS over the whole file: near-silent) are left out. The environment variables
  ``ASRINTERP_SONIC_PI_SAMPLES`` and ``ASRINTERP_MOH_DIR`` point at the folders when the packages were unpacked
  elsewhere (``apt-get download PKG && dpkg-deb -x PKG.deb DIR``).
* :func:`noise_clip` -- exactly ``n_samples`` of a generated kind or a real ``noise_id``, from a random offset
  (short files are looped with a 50 ms equal-power crossfade). Decoded real files are cached as 16 kHz wavs under
  ``cache_dir("noise")`` (written atomically; a changed source file gets a new cache entry).
* :func:`babble` -- several different speech clips summed.
* :func:`mix_at_snr` and :func:`measure_snr` -- mixing at an exact SNR and measuring it.

SNR definition
--------------
``SNR = 10 log10(P_speech / P_noise)`` where ``P`` is the mean square over the *whole clip* (pauses included, so
it is the global SNR, not the active-speech level of ITU-T P.56: for a clip with long pauses the noise is quieter,
relative to the speech while it is active, than the number suggests). Before scaling, :func:`mix_at_snr` removes
from the noise its projection onto the speech (over a whole clip this component is tiny, typically 30-50 dB below
the noise: the chance correlation of two independent signals). The mixture is then exactly
``speech + noise`` with ``noise`` orthogonal to ``speech``, so the SNR holds exactly and
:func:`measure_snr` -- the scale-invariant SNR (SI-SNR) -- recovers it to float precision, even when the clipping
guard has scaled the whole mixture down.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import SAMPLE_RATE, load_audio, rms, to_whisper_audio
from ..runtime import cache_dir
from .real import MissingDependencyError, _build_lock, _dpkg_files, _missing, write_wav_atomic

__all__ = [
    "GENERATED_KINDS",
    "HUM_HARMONICS",
    "MIN_DURATION_S",
    "MIN_RMS_DBFS",
    "MOH_LICENCE",
    "MissingDependencyError",
    "NOISE_ATTRIBUTIONS",
    "NOISE_COLUMNS",
    "SONIC_PI_LICENCE",
    "babble",
    "generate_noise",
    "measure_snr",
    "mix_at_snr",
    "noise_clip",
    "real_noise_sources",
]

GENERATED_KINDS = ("white", "pink", "brown", "hum")
"""Kinds that :func:`generate_noise` makes."""
NOISE_COLUMNS = ["noise_id", "kind", "path", "licence", "duration_s"]
"""Columns that :func:`real_noise_sources` always returns (it adds ``source``, ``category``, ``credit``,
``sample_rate``, ``rms_dbfs``)."""

MIN_DURATION_S = 0.5
"""Real files shorter than this are left out."""
MIN_RMS_DBFS = -50.0
"""Real files whose RMS over the whole file is below this (dB re full scale) are left out as near-silent."""

MAINS_HZ = 50.0
HUM_HARMONICS = {1: 1.0, 2: 0.25, 3: 0.5, 4: 0.12, 5: 0.3, 6: 0.06, 7: 0.15}
"""Relative amplitudes of the mains harmonics in ``hum`` (odd harmonics stronger, as from a saturating
transformer; the 50 Hz fundamental is the strongest)."""

# Pink and brown follow the 1/f^alpha law above this frequency and are flat below it, so that a long clip does not
# wander (brown noise would otherwise put most of its power into a sub-audible drift).
_SHAPING_FLOOR_HZ = 20.0
_SHAPING_ALPHA = {"white": 0.0, "pink": 1.0, "brown": 2.0}
_XFADE_S = 0.05

SONIC_PI_LICENCE = "CC0-1.0"
MOH_LICENCE = "CC-BY-SA-3.0"
NOISE_ATTRIBUTIONS = {
    "sonic-pi": (
        "Sonic Pi samples (freesound.org contributors, placed in the public domain under CC0 1.0, trimmed for Sonic "
        "Pi), distributed by Debian in sonic-pi-samples. Resampled to 16 kHz mono."
    ),
    "moh": (
        "Asterisk 'opsound' music on hold: 'Cold Day', 'Robot Dity', 'The Simplicity' by Paul Shuler (Macroform); "
        "'Morning Coffee' by Manolo Camp; 'System' by Reno Project. Licensed under the Creative Commons "
        "Attribution-ShareAlike 3.0 licence (CC BY-SA 3.0), distributed by Debian in asterisk-moh-opsound-wav. "
        "Resampled from 8 kHz to 16 kHz and cut into segments."
    ),
}
_MOH_CREDITS = {
    "macroform": "Paul Shuler (Macroform)",
    "manolo_camp": "Manolo Camp",
    "reno_project": "Reno Project",
}


# ----------------------------------------------------------------------------------------------------------------
# Generated noise
# ----------------------------------------------------------------------------------------------------------------
def generate_noise(kind: str, n_samples: int, *, seed: int = 0, level_rms: float = 0.1) -> np.ndarray:
    """``n_samples`` of generated noise at 16 kHz, float32, with RMS exactly ``level_rms``.

    ``kind``:

    * ``white`` -- Gaussian, flat spectrum.
    * ``pink`` -- power spectral density ~ 1/f (-3 dB per octave), made by shaping the spectrum of white noise.
    * ``brown`` -- PSD ~ 1/f^2 (-6 dB per octave).
      Pink and brown follow their law above 20 Hz and are flat below it; the DC component is removed.
    * ``hum`` -- 50 Hz mains hum: the harmonics in :data:`HUM_HARMONICS` with random phases.

    The same ``(kind, n_samples, seed)`` always gives the same samples; different kinds use independent streams.
    """
    if kind not in GENERATED_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; expected one of {', '.join(GENERATED_KINDS)}")
    n = int(n_samples)
    if n <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    rng = np.random.default_rng([int(seed), GENERATED_KINDS.index(kind)])
    if kind == "hum":
        t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
        phases = rng.uniform(0.0, 2 * np.pi, size=len(HUM_HARMONICS))
        x = sum(a * np.sin(2 * np.pi * MAINS_HZ * k * t + ph) for (k, a), ph in zip(HUM_HARMONICS.items(), phases))
    else:
        x = rng.standard_normal(n)
        alpha = _SHAPING_ALPHA[kind]
        if alpha:
            spec = np.fft.rfft(x)
            f = np.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE)
            gain = (np.maximum(f, _SHAPING_FLOOR_HZ) / _SHAPING_FLOOR_HZ) ** (-alpha / 2.0)
            gain[0] = 0.0
            x = np.fft.irfft(spec * gain, n=n)
    x = np.asarray(x, dtype=np.float64)
    level = rms(x)
    if level == 0.0:  # n == 1 after removing DC
        return np.zeros(n, dtype=np.float32)
    return (x * (float(level_rms) / level)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Real recordings
# ----------------------------------------------------------------------------------------------------------------
SONIC_PI_ENV = "ASRINTERP_SONIC_PI_SAMPLES"
MOH_ENV = "ASRINTERP_MOH_DIR"
_SOURCES = {
    # name: (apt package, default folders, file pattern, env var, kind, licence)
    "sonic-pi": ("sonic-pi-samples", ("/usr/share/sonic-pi/samples",), "*.flac", SONIC_PI_ENV, "ambience",
                 SONIC_PI_LICENCE),
    "moh": ("asterisk-moh-opsound-wav", ("/usr/share/asterisk/moh",), "*.wav", MOH_ENV, "music", MOH_LICENCE),
}  # fmt: skip


def _find_source_dir(name: str) -> Path:
    apt, dirs, pattern, env, _, _ = _SOURCES[name]
    value = os.environ.get(env)
    candidates = [value] if value else list(dirs)
    for c in candidates:
        p = Path(c)
        if p.is_dir() and any(p.glob(pattern)):
            return p.resolve()
    if not value:
        suffix = pattern.lstrip("*")
        found = sorted({str(Path(f).parent) for f in _dpkg_files(apt) if f.endswith(suffix)}, key=len)
        if found:
            return Path(found[0]).resolve()
    where = f"${env}={value}" if value else ", ".join(dirs)
    raise _missing(f"{apt} ({pattern} in {where})", apt)


@lru_cache(maxsize=512)
def _file_stats(path: str, size: int, mtime_ns: int) -> tuple[int, int, float]:
    """``(sample_rate, frames, rms_dbfs)`` of a file, its channels averaged (cached on size and mtime)."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    level = rms(data.mean(axis=1))
    return int(sr), int(data.shape[0]), 20 * math.log10(level) if level > 0 else -math.inf


def _credit(name: str, stem: str) -> str:
    if name == "sonic-pi":
        return "freesound.org contributors (CC0), via Sonic Pi"
    for prefix, who in _MOH_CREDITS.items():
        if stem.startswith(prefix):
            return who
    return "unknown"


def real_noise_sources(
    sources: Iterable[str] = ("sonic-pi", "moh"),
    *,
    min_duration_s: float = MIN_DURATION_S,
    min_rms_dbfs: float = MIN_RMS_DBFS,
) -> pd.DataFrame:
    """Real noise recordings from Debian packages, one row per usable file.

    Columns :data:`NOISE_COLUMNS` -- ``noise_id`` (``"sonic-pi/ambi_drone"``, ``"moh/macroform-cold_day"``),
    ``kind`` (``"ambience"`` or ``"music"``), ``path`` (the original file, at its own rate: read it through
    :func:`noise_clip`, which resamples to 16 kHz), ``licence``, ``duration_s`` -- plus ``source``, ``category``
    (the Sonic Pi file prefix, ``"music"`` for music on hold), ``credit``, ``sample_rate`` and ``rms_dbfs``.

    Files shorter than ``min_duration_s`` or with RMS below ``min_rms_dbfs`` are left out. Raises
    :class:`MissingDependencyError` naming the apt package of a requested source that is not installed.
    Reading all files to measure their level takes about a second the first time in a process.
    """
    rows = []
    for name in sources:
        if name not in _SOURCES:
            raise ValueError(f"unknown noise source {name!r}; expected one of {', '.join(_SOURCES)}")
        folder = _find_source_dir(name)
        _, _, pattern, _, kind, licence = _SOURCES[name]
        for path in sorted(folder.glob(pattern)):
            st = path.stat()
            sr, frames, level_db = _file_stats(str(path), st.st_size, st.st_mtime_ns)
            duration = frames / sr
            if duration < min_duration_s or level_db < min_rms_dbfs:
                continue
            credit = _credit(name, path.stem)
            rows.append(
                {
                    "noise_id": f"{name}/{path.stem}",
                    "kind": kind,
                    "path": str(path),
                    "licence": licence if name == "sonic-pi" else f"{licence}, {credit}",
                    "duration_s": duration,
                    "source": name,
                    "category": path.stem.split("_")[0] if name == "sonic-pi" else "music",
                    "credit": credit,
                    "sample_rate": sr,
                    "rms_dbfs": level_db,
                }
            )
    cols = NOISE_COLUMNS + ["source", "category", "credit", "sample_rate", "rms_dbfs"]
    return pd.DataFrame(rows, columns=cols)


def _decoded(noise_id: str) -> np.ndarray:
    """The whole real file ``noise_id`` at 16 kHz mono float32, decoded once into ``cache_dir("noise")``."""
    name, _, stem = noise_id.partition("/")
    if name not in _SOURCES or not stem:
        raise ValueError(
            f"unknown noise source {noise_id!r}: expected one of {', '.join(GENERATED_KINDS)} or a noise_id from "
            "real_noise_sources() such as 'sonic-pi/ambi_drone' or 'moh/macroform-cold_day'"
        )
    folder = _find_source_dir(name)
    src = folder / (stem + _SOURCES[name][2].lstrip("*"))
    if not src.is_file():
        raise ValueError(f"no noise file {noise_id!r} (looked for {src}); see real_noise_sources()")
    st = src.stat()
    key = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    root = cache_dir("noise", name)
    dst = root / f"{stem}.{key}.wav"
    try:
        x, sr = sf.read(str(dst), dtype="float32")
        if sr == SAMPLE_RATE and x.ndim == 1 and x.size:
            return x
    except (OSError, RuntimeError, sf.LibsndfileError):
        pass
    data, sr = sf.read(str(src), dtype="float32", always_2d=True)
    x = to_whisper_audio(data, sr, name=str(src))
    with _build_lock(root):
        for old in root.glob(f"{stem}.*.wav"):  # earlier versions of the source
            if old != dst:
                old.unlink(missing_ok=True)
        # float wav: no requantisation of quiet material, and read back bit-exactly
        write_wav_atomic(dst, x, subtype="FLOAT")
    return x


def _fit_length(x: np.ndarray, n: int, rng: np.random.Generator, xfade_s: float = _XFADE_S) -> np.ndarray:
    """Exactly ``n`` samples of ``x`` from a random offset; a shorter ``x`` is looped with an equal-power crossfade
    of ``xfade_s`` (at most a quarter of ``x``) between its end and its start."""
    x = np.asarray(x, dtype=np.float64)
    length = len(x)
    if length == 0:
        raise ValueError("cannot make a segment from an empty signal")
    if length >= n:
        off = int(rng.integers(0, length - n + 1))
        return x[off : off + n]
    xf = min(int(round(xfade_s * SAMPLE_RATE)), length // 4)
    if xf >= 1:
        t = (np.arange(xf) + 0.5) / xf
        seam = x[:xf] * np.sin(0.5 * np.pi * t) + x[length - xf :] * np.cos(0.5 * np.pi * t)
        cycle = np.concatenate([seam, x[xf : length - xf]])  # one period of the loop, length - xf samples
    else:
        cycle = x
    off = int(rng.integers(0, len(cycle)))
    reps = -(-(off + n) // len(cycle))
    return np.tile(cycle, reps)[off : off + n]


def noise_clip(source: str, n_samples: int, *, seed: int = 0) -> np.ndarray:
    """Exactly ``n_samples`` of noise at 16 kHz (float32).

    ``source`` is a generated kind (:data:`GENERATED_KINDS`, returned at RMS 0.1 by :func:`generate_noise`) or a
    ``noise_id`` of :func:`real_noise_sources` (returned at the file's own level). For a real file the segment
    starts at an offset drawn from ``seed``; a file shorter than ``n_samples`` is looped with a 50 ms equal-power
    crossfade. The level does not matter for :func:`mix_at_snr`, which rescales the noise.
    """
    n = int(n_samples)
    if n <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    if source in GENERATED_KINDS:
        return generate_noise(source, n, seed=seed)
    x = _decoded(str(source))
    rng = np.random.default_rng([int(seed), _stable_hash(str(source))])
    return _fit_length(x, n, rng).astype(np.float32)


def _stable_hash(s: str) -> int:
    return int.from_bytes(hashlib.sha1(s.encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------------------------------------------
# Babble
# ----------------------------------------------------------------------------------------------------------------
def babble(
    waves: Sequence[Union[np.ndarray, str, os.PathLike]],
    n_samples: int,
    *,
    n_talkers: int = 4,
    seed: int = 0,
    level_rms: float = 0.1,
) -> np.ndarray:
    """Babble noise: ``n_talkers`` different clips from ``waves`` summed, ``n_samples`` long, RMS ``level_rms``.

    ``waves`` are 16 kHz mono arrays (or paths to audio files). ``n_talkers`` of them are drawn without
    replacement (so give clips of different speakers for speaker-independent babble); each is brought to the same
    RMS, cut from a random offset or looped (50 ms crossfade) to ``n_samples``, and the sum is scaled to
    ``level_rms``. Deterministic for a given ``seed``.
    """
    n = int(n_samples)
    if n <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    if n_talkers < 1:
        raise ValueError(f"n_talkers must be at least 1, got {n_talkers}")
    if len(waves) < n_talkers:
        raise ValueError(f"babble needs at least n_talkers={n_talkers} different clips, got {len(waves)}")
    rng = np.random.default_rng([int(seed), 0xBABB1E])
    chosen = rng.choice(len(waves), size=n_talkers, replace=False)
    out = np.zeros(n, dtype=np.float64)
    for i in chosen:
        w = waves[int(i)]
        x = load_audio(w, allow_long=True) if isinstance(w, (str, os.PathLike)) else np.asarray(w, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"babble: clip {int(i)} must be mono (n_samples,), got shape {x.shape}")
        level = rms(x)
        if level == 0.0:
            raise ValueError(f"babble: clip {int(i)} is silent")
        out += _fit_length(x / level, n, rng)
    return (out * (float(level_rms) / max(rms(out), 1e-12))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# SNR
# ----------------------------------------------------------------------------------------------------------------
def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(
    speech: np.ndarray,
    noise: Union[np.ndarray, str],
    snr_db: float | None,
    *,
    seed: int = 0,
    max_peak: float | None = 0.99,
) -> np.ndarray:
    """``speech`` plus noise at exactly ``snr_db`` (see the module docstring for the definition), float32.

    ``noise`` is an array (any length: a random segment is cut, or it is looped with a crossfade, to the length
    of ``speech``; the offset comes from ``seed``) or a source name for :func:`noise_clip`. The noise's projection
    onto the speech is removed, then it is scaled so that ``10 log10(P_speech / P_noise) = snr_db`` with powers
    as mean squares over the whole clip.

    ``snr_db`` of ``None`` or ``inf`` returns a clean copy of ``speech``.

    Clipping guard: when the mixture's peak exceeds ``max_peak`` (default 0.99; ``None`` turns the guard off),
    the whole mixture is scaled down to that peak and a warning says by how much. Speech and noise are scaled
    together, so the SNR is unchanged (and :func:`measure_snr`, being scale-invariant, still reports it), but the
    mixture is then quieter than ``speech``.
    """
    s = np.asarray(speech, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"speech must be a non-empty mono array (n_samples,), got shape {s.shape}")
    if snr_db is None or (np.isinf(snr_db) and snr_db > 0):
        return s.astype(np.float32)
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, +inf or None, got {snr_db}")
    p_s = _power(s)
    if p_s == 0.0:
        raise ValueError("speech is silent (zero power): the SNR is undefined")
    rng = np.random.default_rng([int(seed), 0x5A12])
    if isinstance(noise, str):
        nz = noise_clip(noise, len(s), seed=seed).astype(np.float64)
    else:
        nz = np.asarray(noise, dtype=np.float64)
        if nz.ndim != 1:
            raise ValueError(f"noise must be mono (n_samples,), got shape {nz.shape}")
        nz = _fit_length(nz, len(s), rng)
    nz = nz - (np.dot(nz, s) / np.dot(s, s)) * s  # orthogonal to the speech
    p_n = _power(nz)
    if p_n == 0.0:
        raise ValueError("noise is silent (or a multiple of the speech): cannot mix at a finite SNR")
    gain = math.sqrt(p_s / (p_n * 10.0 ** (float(snr_db) / 10.0)))
    mix = s + gain * nz
    if max_peak is not None:
        peak = float(np.max(np.abs(mix)))
        if peak > max_peak:
            scale = max_peak / peak
            warnings.warn(
                f"mix_at_snr: the mixture at {snr_db:g} dB SNR peaks at {peak:.3f}; scaled by {scale:.3f} "
                f"({20 * math.log10(scale):.1f} dB) to avoid clipping (the SNR is unchanged)",
                RuntimeWarning,
                stacklevel=2,
            )
            mix *= scale
    return mix.astype(np.float32)


def measure_snr(speech: np.ndarray, mixture: np.ndarray) -> float:
    """SNR (dB) of ``mixture`` relative to the clean ``speech``: scale-invariant SNR over the whole clip.

    ``a = <mixture, speech> / <speech, speech>``; the speech part is ``a * speech`` and the noise is what remains,
    ``mixture - a * speech``; the result is ``10 log10(P(a * speech) / P(noise))``. It does not change when the
    mixture is scaled (the clipping guard of :func:`mix_at_snr`), and for a mixture made by :func:`mix_at_snr`
    it equals the requested ``snr_db``. A clean copy gives ``inf``.
    """
    s = np.asarray(speech, dtype=np.float64)
    m = np.asarray(mixture, dtype=np.float64)
    if s.shape != m.shape or s.ndim != 1:
        raise ValueError(f"speech and mixture must be mono arrays of the same length, got {s.shape} and {m.shape}")
    ss = float(np.dot(s, s))
    if ss == 0.0:
        raise ValueError("speech is silent (zero power): the SNR is undefined")
    a = float(np.dot(m, s)) / ss
    resid = _power(m - a * s)
    target = a * a * ss / len(s)
    if resid == 0.0:
        return math.inf
    if target == 0.0:
        return -math.inf
    return 10.0 * math.log10(target / resid)

