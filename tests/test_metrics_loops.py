"""Repetition loops and transcript kinds, with known answers."""
from __future__ import annotations

from asrinterp_utils import metrics


def test_longest_repeat_finds_the_planted_run():
    words = "so we went to the night to the night to the night and home".split()
    run = metrics.longest_repeat(words)
    assert run == metrics.RepeatRun(("to", "the", "night"), 3, 3)
    assert metrics.longest_repeat([]).repeats == 0


def test_repetition_and_compression_ratio():
    assert metrics.is_repetitive("to to to to to")
    assert not metrics.is_repetitive("the birch canoe slid on the smooth planks")
    long_loop = "I will guide you through it. " * 12
    assert metrics.compression_ratio(long_loop) > metrics.COMPRESSION_RATIO_THRESHOLD
    assert metrics.compression_ratio("") == 0.0


def test_transcript_kinds():
    ref = "Welcome to Comedian Mail."
    assert metrics.transcript_kind(ref, "welcome to comedian mail") == "faithful"
    assert metrics.transcript_kind(ref, "a a a a a a a") == "loop"
    assert metrics.transcript_kind(ref, "This is a great video.") == "fluent_unfaithful"
    assert metrics.transcript_kind(ref, "You") == "fragment"
    assert metrics.transcript_kind(ref, "") == "fragment"
    assert set(metrics.TRANSCRIPT_KINDS) == {"faithful", "loop", "fluent_unfaithful", "fragment"}
