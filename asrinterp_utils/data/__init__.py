"""The speech bank: one function per source, each returning a DataFrame with one row per clip.

Every source gives at least the columns in :data:`COLUMNS` (``clip_id, path, text, speaker, gender, accent,
source, duration_s, licence``; ``path`` is an absolute 16 kHz mono wav) and :func:`clip_audio` reads any row.

Real human speech (:mod:`asrinterp_utils.data.real`): :func:`asterisk_prompts`, :func:`pocketsphinx_clips`.
"""
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
