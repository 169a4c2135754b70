"""Transcript metrics: text normalisation and word error rate (jiwer) on normalised text.

Whisper writes "Press 3 to re-record your message." where a script says "press 3 to rerecord your message": the
words are right, the spelling conventions differ. WER is computed on normalised text: lower case, punctuation and
hyphens removed, numbers from 0 to 99 spelled out, whitespace collapsed.
"""
from __future__ import annotations

import re
from typing import Sequence

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
    refs = [normalize_text(r) or "<empty>" for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    return float(jiwer.wer(refs, hyps))


def clip_wers(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """WER of each clip on normalised text."""
    return [word_error_rate(r, h) for r, h in zip(references, hypotheses)]
