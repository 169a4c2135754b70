"""Transcript metrics: text normalisation and word error rate (jiwer) on normalised text.

Whisper writes "Press 3 to re-record your message." where a script says "press 3 to rerecord your message": the
words are right, the spelling conventions differ. WER is computed on normalised text: lower case, punctuation and
hyphens removed, numbers from 0 to 99 spelled out, whitespace collapsed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .runtime import check_whole

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])


def normalize_text(text: str) -> str:
    """Lower case; ``-`` and ``/`` to spaces; other punctuation removed (apostrophes inside words kept); whole numbers
    from 0 to 99 spelled out; whitespace collapsed.

    >>> normalize_text("Press 3 to re-record your message.")
    'press three to re record your message'
    """
    _require_string("normalize_text", text)
    text = text.lower().replace("-", " ").replace("/", " ")
    text = re.sub(r"\b(\d{1,2})\b", lambda m: _number_words(int(m.group(1))), text)
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def word_error_rate(references: Sequence[str] | str, hypotheses: Sequence[str] | str) -> float:
    """Corpus WER (total edits / total reference words) on normalised text, with jiwer."""
    import jiwer

    refs = [references] if isinstance(references, str) else list(references)
    hyps = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(refs) != len(hyps) or not refs:
        raise ValueError(f"word_error_rate: {len(refs)} references but {len(hyps)} hypotheses; give one hypothesis "
                         "per reference, in the same order (and at least one)")
    refs = [normalize_text(r) or "<empty>" for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    return float(jiwer.wer(refs, hyps))


def clip_wers(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """WER of each clip on normalised text (one hypothesis per reference)."""
    _refuse_string("clip_wers", "references", references, "for one clip use word_error_rate(reference, hypothesis)")
    _refuse_string("clip_wers", "hypotheses", hypotheses, "for one clip use word_error_rate(reference, hypothesis)")
    if len(references) != len(hypotheses):
        raise ValueError(f"clip_wers: {len(references)} references but {len(hypotheses)} hypotheses; give one "
                         "hypothesis per reference, in the same order")
    return [word_error_rate(r, h) for r, h in zip(references, hypotheses)]


def _refuse_string(function: str, name: str, value: Any, what_to_do: str) -> None:
    """A string where a sequence of strings (or words) is expected would be read character by character."""
    if isinstance(value, str):
        raise TypeError(f"{function}: {name} is one string ({value[:40]!r}); it takes a list, one item per "
                        f"{'word' if name == 'words' else 'clip'}, and a string would be read character by character: "
                        f"{what_to_do}")


def _require_string(function: str, text: Any) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{function}: text must be a str (one transcript); got {type(text).__name__}"
                        + (": decode it first" if isinstance(text, bytes) else ""))


# ---------------------------------------------------------------------------------------------------------------
# Repetition loops and what kind of text a transcript is
# ---------------------------------------------------------------------------------------------------------------

COMPRESSION_RATIO_THRESHOLD = 2.4
"""Whisper's own test for a degenerate, repetitive output (``compression_ratio_threshold`` in its decoding)."""


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length, as Whisper computes it; 0 for empty text. Repetitive text compresses
    well: a ratio above :data:`COMPRESSION_RATIO_THRESHOLD` marks a loop."""
    import zlib

    _require_string("compression_ratio", text)
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class RepeatRun:
    """The longest run of one n-gram repeated back to back: ``ngram`` (the repeated words), ``repeats`` (how many
    times in a row), ``start`` (index of its first word)."""

    ngram: tuple[str, ...]
    repeats: int
    start: int


def longest_repeat(words: Sequence[str], max_n: int = 8) -> RepeatRun:
    """The n-gram (n <= ``max_n``) repeated most times consecutively in ``words``; ties go to the shorter n-gram.

    >>> longest_repeat("to the night to the night to the night".split())
    RepeatRun(ngram=('to', 'the', 'night'), repeats=3, start=0)
    """
    _refuse_string("longest_repeat", "words", words, "give text.split() (or use is_repetitive(text))")
    check_whole(max_n, "longest_repeat: max_n", 1, " (the longest n-gram to look for)")
    best = RepeatRun((), 0, 0)
    for n in range(1, max_n + 1):
        for start in range(len(words) - n + 1):
            gram = tuple(words[start:start + n])
            reps = 1
            while tuple(words[start + reps * n:start + (reps + 1) * n]) == gram:
                reps += 1
            if reps > best.repeats:
                best = RepeatRun(gram, reps, start)
    return best


def is_repetitive(text: str, *, min_repeats: int = 4,
                  compression_threshold: float = COMPRESSION_RATIO_THRESHOLD) -> bool:
    """A repetition loop: some n-gram repeated ``min_repeats`` or more times back to back (on normalised words), or a
    compression ratio above Whisper's threshold."""
    check_whole(min_repeats, "is_repetitive: min_repeats", 2,
                " (an n-gram said once is not a repeat, so every text would count)")
    words = normalize_text(text).split()
    return longest_repeat(words).repeats >= min_repeats or compression_ratio(text) > compression_threshold


TRANSCRIPT_KINDS = ("faithful", "loop", "fluent_unfaithful", "fragment")
"""The kinds :func:`transcript_kind` tells apart."""


def transcript_kind(reference: str, hypothesis: str, *, max_faithful_wer: float = 0.5,
                    min_fluent_words: int = 3) -> str:
    """What a (lens) transcript is, against its reference, as one of :data:`TRANSCRIPT_KINDS`:

    - ``loop``: :func:`is_repetitive`, whatever its WER;
    - ``faithful``: WER at most ``max_faithful_wer``;
    - ``fluent_unfaithful``: at least ``min_fluent_words`` words, not a loop, WER above the limit: fluent text the
      audio does not support (a hallucination);
    - ``fragment``: anything else (empty, or a word or two that are wrong).

    The thresholds are choices, not standards; the book states them where it uses them.
    """
    if is_repetitive(hypothesis):
        return "loop"
    if word_error_rate(reference, hypothesis) <= max_faithful_wer:
        return "faithful"
    if len(normalize_text(hypothesis).split()) >= min_fluent_words:
        return "fluent_unfaithful"
    return "fragment"


TARGET_OUTCOMES = ("spoken", "expected", "other")
"""The outcomes :func:`target_word_outcome` tells apart."""


def target_word_outcome(transcript: str, spoken: str, expected: str) -> str:
    """Which of two words a transcript wrote, as one of :data:`TARGET_OUTCOMES`: ``spoken`` when the word said in
    the audio is among its normalised words (:func:`normalize_text`), else ``expected`` when the word its context
    predicts is, else ``other``. ``spoken`` and ``expected`` are normalised the same way (``"Rabbit."`` is
    ``rabbit``); a word of several parts (``"ice cream"``) must appear as that run of words."""
    words = normalize_text(transcript).split()
    targets = {}
    for name, word in (("spoken", spoken), ("expected", expected)):
        targets[name] = normalize_text(str(word)).split()
        if not targets[name]:
            raise ValueError(f"target_word_outcome: {name} word {word!r} is empty after normalising; give the word")
    if targets["spoken"] == targets["expected"]:
        raise ValueError(f"target_word_outcome: spoken {spoken!r} and expected {expected!r} are the same word after "
                         "normalising, so the outcome cannot tell them apart")

    def said(target: list[str]) -> bool:
        n = len(target)
        return any(words[i:i + n] == target for i in range(len(words) - n + 1))

    return "spoken" if said(targets["spoken"]) else "expected" if said(targets["expected"]) else "other"


@dataclass(frozen=True)
class NonSpeechTranscripts:
    """What a model wrote for clips with no speech in them (every non-empty transcript is a hallucination):
    ``n`` clips, the share that got any transcript, the most common transcript (lower-cased, stripped) and its
    count, and the share that are sentences of ``min_words`` words or more."""

    n: int
    share_written: float
    most_common: str
    most_common_count: int
    share_sentences: float
    min_words: int


def nonspeech_transcripts(transcripts: Sequence[str], *, min_words: int = 4) -> NonSpeechTranscripts:
    """Summarise the transcripts of non-speech clips (noise, music, silence): :class:`NonSpeechTranscripts`.

    >>> s = nonspeech_transcripts(["", " Thank you.", "thank you.", "I'm going to go to the store."])
    >>> s.share_written, s.most_common, s.most_common_count, s.share_sentences
    (0.75, 'thank you.', 2, 0.25)
    """
    _refuse_string("nonspeech_transcripts", "transcripts", transcripts, "give a list of transcripts")
    texts = [str(t).strip() for t in transcripts]
    if not texts:
        raise ValueError("nonspeech_transcripts: no transcripts given")
    lowered = [t.lower() for t in texts]
    most_common = max(dict.fromkeys(lowered), key=lowered.count)  # ties: the first one met
    words = [len(normalize_text(t).split()) for t in texts]
    return NonSpeechTranscripts(n=len(texts), share_written=sum(t != "" for t in texts) / len(texts),
                                most_common=most_common, most_common_count=lowered.count(most_common),
                                share_sentences=sum(w >= min_words for w in words) / len(texts), min_words=min_words)
