"""Reading attention patterns: which cross-attention heads line the transcript up with the audio.

A cross-attention *alignment head* moves its peak forward through the encoder frames as the decoder moves through
the words, and covers the whole utterance while doing so. A head that attends to frame t at token t is monotonic
too, but it tracks position rather than sound, and its peaks span only a few frames; the score below therefore
multiplies monotonicity by span.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def alignment_score(pattern: np.ndarray) -> float:
    """How well one head's cross-attention ``pattern (tokens, frames)`` (real frames only) follows the audio.

    Spearman correlation between token index and the frame of peak attention, times the share of the frames that
    the peaks span. 1: the peak sweeps monotonically across the whole clip; 0: it never moves; negative: it
    sweeps backwards. NaN for fewer than 3 tokens.
    """
    pattern = np.asarray(pattern)
    if pattern.ndim != 2:
        raise ValueError(f"alignment_score: pattern must be one head's (tokens, frames); got shape {pattern.shape}")
    if pattern.shape[0] < 3:
        return float("nan")
    peaks = pattern.argmax(axis=-1)
    if np.all(peaks == peaks[0]):
        return 0.0
    rho = spearmanr(np.arange(len(peaks)), peaks)[0]
    return float(rho * (peaks.max() - peaks.min()) / pattern.shape[-1])


def alignment_table(patterns: Sequence, n_tokens: Sequence[int], n_frames: Sequence[int], start: int = 0
                    ) -> pd.DataFrame:
    """Alignment score of every (layer, head), averaged over clips.

    Args:
        patterns: per decoder layer, the cross-attention ``(batch, heads, tokens, frames)`` (e.g. the cached
            ``dec.{L}.cross_pattern``, teacher-forced on the model's transcript).
        n_tokens: ``(batch,)`` tokens to score per clip (the transcript ends there).
        n_frames: ``(batch,)`` real encoder frames per clip.
        start: first token position to score (the prompt length: prompt tokens do not read the audio).

    Returns a DataFrame with columns ``layer, head, alignment``.
    """
    patterns = [np.asarray(pat) for pat in patterns]
    n_tokens, n_frames = np.asarray(n_tokens).ravel(), np.asarray(n_frames).ravel()
    for layer, pat in enumerate(patterns):
        if pat.ndim != 4:
            raise ValueError(f"alignment_table: patterns[{layer}] must be (batch, heads, tokens, frames); got shape "
                             f"{pat.shape}")
        batch, _, tokens, frames = pat.shape
        if len(n_tokens) != batch or len(n_frames) != batch:
            raise ValueError(f"alignment_table: patterns[{layer}] holds {batch} clips but n_tokens has "
                             f"{len(n_tokens)} entries and n_frames {len(n_frames)}: one of each per clip")
        if n_frames.min() < 1 or n_frames.max() > frames:
            raise ValueError(f"alignment_table: n_frames must be 1..{frames} (the frames of patterns[{layer}]); got "
                             f"{n_frames.min()}..{n_frames.max()}")
        if n_tokens.max() > tokens or n_tokens.min() < start:
            raise ValueError(f"alignment_table: n_tokens must be {start}..{tokens} (from start to the tokens of "
                             f"patterns[{layer}]); got {n_tokens.min()}..{n_tokens.max()}")
    rows = []
    for layer, pat in enumerate(patterns):
        for head in range(pat.shape[1]):
            scores = [alignment_score(pat[b, head, start:int(n_tokens[b]), :int(n_frames[b])])
                      for b in range(pat.shape[0])]
            scores = [s for s in scores if not np.isnan(s)]
            rows.append({"layer": layer, "head": head, "alignment": float(np.mean(scores)) if scores else np.nan})
    return pd.DataFrame(rows)
