"""Repetition: candidate transformations, the hallucinated-loop rule and the loop-resolution table."""
from __future__ import annotations

import numpy as np
import pytest

from asrinterp_utils import repetition
from asrinterp_utils.patching import GenerationSweep


def test_transformations_change_length_as_promised():
    x = np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    assert len(repetition.transform(x, "speed2x")) == 8_000
    assert len(repetition.transform(x, "speed3x")) == pytest.approx(16_000 / 3, abs=1)
    assert len(repetition.transform(x, "slow0.5x")) == 32_000
    stutter = repetition.transform(x, "stutter")
    assert len(stutter) == 6 * 4_000 and np.array_equal(stutter[4_000:8_000], x[:4_000])
    assert np.array_equal(repetition.transform(x, "reversed"), x[::-1])
    assert len(repetition.transform(x, "cut+silence")) == 8_000 + 20 * 16_000
    long = np.zeros(40 * 16_000, dtype=np.float32)
    assert len(repetition.transform(long, "slow0.5x")) == 30 * 16_000  # capped at Whisper's window
    with pytest.raises(ValueError, match="unknown transformation"):
        repetition.transform(x, "sideways")


@pytest.mark.parametrize("text, reference, hit_limit, repeats_in_audio, expected", [
    ("the box the box the box the box the box", "the box is red", False, 1, True),
    ("the box the box the box the box the box", "", False, 6, False),  # the audio repeats six times
    ("the box " * 20, "", True, 6, True),  # runaway past the audio
    ("press four press four press four press four", "press four press four press four press four", False, 1,
     False),  # faithful to a repetitive reference
    ("a short fluent sentence", "something else", True, 1, False),  # hit the limit but no loop
])
def test_hallucinated_loop_rule(text, reference, hit_limit, repeats_in_audio, expected):
    assert repetition.is_hallucinated_loop(text, reference, hit_limit=hit_limit,
                                           repeats_in_audio=repeats_in_audio) is expected


def test_loop_resolution_counts_per_target():
    loop = "no no no no no no no no"
    sweep = GenerationSweep(
        labels=["a", "b"], token_ids=[[[1, 2], [1] * 10], [[1] * 10, []]],
        texts=[["hello there", loop], [loop, ""]], baseline_ids=[[1] * 10, [1] * 10],
        baseline_texts=[loop, loop], reference_texts=["", ""], max_new_tokens=10)
    table = repetition.loop_resolution(sweep, references=["hello there", "good night"]).set_index("target")
    assert table.loc["a", "resolved"] == 0.5 and table.loc["a", "still_looping"] == 0.5
    assert table.loc["b", "resolved"] == 0.5 and table.loc["b", "empty"] == 0.5
    assert table.loc["a", "wer"] < table.loc["a", "baseline_wer"]
    assert list(table.index) == ["a", "b"]
    per_clip = repetition.resolved_by_clip(sweep)  # clips x targets, the table's resolved column per clip
    assert per_clip.to_dict("list") == {"a": [True, False], "b": [False, True]}
    assert list(per_clip.mean()) == list(table.resolved)


def test_split_loops_keeps_sources_together_and_every_kind_on_both_sides():
    import pandas as pd

    rows = [{"source_clip_id": f"s{i}", "kind": kind} for i in range(12) for kind in ("speed3x", "stutter")
            if (i + (kind == "stutter")) % 3]                              # sources with one or both kinds
    rows += [{"source_clip_id": f"lang{i}", "kind": "other language"} for i in range(4)]
    loops = pd.DataFrame(rows)
    selection, evaluation = repetition.split_loops(loops, 8, seed=0)
    assert len(selection) >= 8 and len(selection) + len(evaluation) == len(loops)
    assert not set(selection.source_clip_id) & set(evaluation.source_clip_id)
    assert set(selection.kind) == set(evaluation.kind) == {"speed3x", "stutter", "other language"}
    again, _ = repetition.split_loops(loops, 8, seed=0)
    assert again.equals(selection)                                        # deterministic
    assert not repetition.split_loops(loops, 8, seed=1)[0].equals(selection)
    with pytest.raises(ValueError, match="n_select must be"):
        repetition.split_loops(loops, len(loops))
    with pytest.raises(ValueError, match="too few"):
        repetition.split_loops(loops[loops.source_clip_id == "s1"], 1)


def test_white_noise_draws():
    from asrinterp_utils import patching
    from asrinterp_utils.audio import rms, white_noise_like

    clips = [np.sin(np.linspace(0, 300, n)).astype(np.float32) * a for n, a in ((8000, 0.1), (12000, 0.5))]
    first = patching.white_noise_references(clips)
    assert all(np.array_equal(a, white_noise_like(c, seed=i)) for i, (a, c) in enumerate(zip(first, clips)))
    other = patching.white_noise_references(clips, draw=3)
    assert [len(x) for x in other] == [8000, 12000] and not np.allclose(other[0], first[0])
    assert rms(other[1]) == pytest.approx(rms(clips[1]), rel=1e-4)
    assert np.array_equal(other[1], patching.white_noise_references(clips, draw=3)[1])
    with pytest.raises(ValueError, match="draw must be"):
        patching.white_noise_references(clips, draw=-1)
