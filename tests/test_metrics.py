"""Normalised WER: formatting differences are not errors, word differences are."""
import pytest

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
    # the two words are normalised like the transcript, and a word of several parts is matched as a run of words
    assert target_word_outcome("the boat sailed", "Boat.", "SHIP") == "spoken"
    assert target_word_outcome("I ate ice cream", "sorbet", "ice-cream") == "expected"
    assert target_word_outcome("ice and cream", "sorbet", "ice cream") == "other"


def test_nonspeech_transcripts_counts_what_was_written():
    from asrinterp_utils.metrics import nonspeech_transcripts

    s = nonspeech_transcripts(["", " Thank you.", "thank you.", "I'm going to go to the store.", "  "])
    assert (s.n, s.share_written, s.most_common, s.most_common_count) == (5, 0.6, "", 2)
    assert s.share_sentences == 0.2 and s.min_words == 4
    assert nonspeech_transcripts(["a b c", "a b c d"], min_words=3).share_sentences == 1.0
    with pytest.raises(ValueError, match="no transcripts"):
        nonspeech_transcripts([])
