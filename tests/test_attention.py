"""Alignment scores on planted patterns with known answers."""
from __future__ import annotations

import numpy as np

from asrinterp_utils.attention import alignment_score, alignment_table


def one_hot_path(peaks, n_frames):
    pattern = np.zeros((len(peaks), n_frames))
    pattern[np.arange(len(peaks)), peaks] = 1.0
    return pattern


def test_planted_patterns():
    n = 200
    sweep = one_hot_path(np.linspace(0, n - 1, 10).astype(int), n)
    assert np.isclose(alignment_score(sweep), 1.0, atol=0.01)
    assert np.isclose(alignment_score(sweep[::-1]), -1.0, atol=0.01)
    assert alignment_score(one_hot_path([5] * 10, n)) == 0.0
    positional = one_hot_path(np.arange(10), n)  # frame t at token t: monotonic, but spans 9 of 200 frames
    assert 0 < alignment_score(positional) < 0.05
    assert np.isnan(alignment_score(sweep[:2]))


def test_alignment_table_respects_lengths_and_start():
    n = 100
    good = one_hot_path(np.linspace(0, 49, 8).astype(int), n)  # sweeps the 50 real frames
    layer = np.zeros((1, 2, 10, n))
    layer[0, 0, 2:] = good  # tokens 2..9 align; tokens 0-1 are the prompt
    layer[0, 0, :2, 99] = 1.0  # the prompt attends to padding: must be ignored
    layer[0, 1, :, 3] = 1.0
    table = alignment_table([layer], n_tokens=[10], n_frames=[50], start=2)
    assert list(table.columns) == ["layer", "head", "alignment"]
    assert np.isclose(table.alignment[0], 1.0 * 49 / 50, atol=0.02) and table.alignment[1] == 0.0
