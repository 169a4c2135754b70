"""The speech bank: one function per source, each returning a DataFrame with one row per clip.

Every source gives at least the columns in :data:`COLUMNS` (``clip_id, path, text, speaker, gender, accent,
source, duration_s, licence``; ``path`` is an absolute 16 kHz mono wav) and :func:`clip_audio` reads any row.

Real human speech (:mod:`~asrinterp_utils.data.real`): :func:`asterisk_prompts`, :func:`pocketsphinx_clips`.
Synthetic voices (:mod:`~asrinterp_utils.data.tts`), texts (:mod:`~asrinterp_utils.data.texts`), noise and mixing
at a measured SNR (:mod:`~asrinterp_utils.data.noise`), real corpora when online
(:mod:`~asrinterp_utils.data.online`), and the named, cached, labelled datasets built from all of them
(:mod:`~asrinterp_utils.data.bank`: ``speech_dataset("gender")``).
"""
from . import bank, noise, online, texts, tts
from .real import (
    ASTERISK_ATTRIBUTION,
    ASTERISK_LICENCE,
    ATTRIBUTIONS,
    COLUMNS,
    POCKETSPHINX_ATTRIBUTION,
    POCKETSPHINX_LICENCE,
    SAMPLE_RATE,
    MissingDependencyError,
    asterisk_prompts,
    clip_audio,
    pocketsphinx_clips,
)

__all__ = [
    "bank",
    "noise",
    "online",
    "texts",
    "tts",
    "ASTERISK_ATTRIBUTION",
    "ASTERISK_LICENCE",
    "ATTRIBUTIONS",
    "COLUMNS",
    "MissingDependencyError",
    "POCKETSPHINX_ATTRIBUTION",
    "POCKETSPHINX_LICENCE",
    "SAMPLE_RATE",
    "asterisk_prompts",
    "clip_audio",
    "pocketsphinx_clips",
]
