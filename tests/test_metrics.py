"""Normalised WER: formatting differences are not errors, word differences are."""
from asrinterp_utils.metrics import clip_wers, normalize_text, target_word_outcome, word_error_rate


def test_normalisation():
    assert normalize_text("Press 3 to re-record your message.") == "press three to re record your message"
    assert normalize_text("  It's 42, isn't it?  ") == "it's forty two isn't it"
    assert normalize_text("'quoted' words") == "quoted words"


def test_wer_ignores_formatting_and_counts_words():
    assert word_error_rate("press 3 to rerecord", "Press three to rerecord.") == 0.0
    assert word_error_rate("the cat sat", "the hat sat") == 1 / 3
    assert word_error_rate(["a b", "c d"], ["a b", "c"]) == 1 / 4  # corpus WER: edits over all reference words
    assert clip_wers(["a b", "c d"], ["a b", "c"]) == [0.0, 0.5]
    assert word_error_rate("", "anything") == 1.0  # an empty reference is scored, not a crash


def test_target_word_outcome_prefers_the_spoken_word_and_normalises():
    assert target_word_outcome("The BOAT sailed.", "boat", "ship") == "spoken"
    assert target_word_outcome("the ship sailed", "boat", "ship") == "expected"
    assert target_word_outcome("a boat, not a ship", "boat", "ship") == "spoken"
    assert target_word_outcome("the vessel sailed", "boat", "ship") == "other"
    assert target_word_outcome("boats", "boat", "ship") == "other"      # whole words only
