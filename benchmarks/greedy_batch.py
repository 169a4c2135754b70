"""How many clips to decode together: greedy transcripts of a mixed set of loop-mining candidates, in batches of 8,
16 and 48 (``run.GREEDY_BATCH``), on tiny.en and base.

The candidates are chapter 8's: 16 clips of the bank's ``transcribed`` set played 2.5 and 3 times as fast and
stuttered, 48 inputs of which about a quarter loop to the 64-token limit. The encoder output is computed once
before timing (it does not depend on the decode batch); every figure is the median of three decodes of all 48
inputs, and every batch size must give the same tokens. Rows that end leave the batch, so a larger batch only
spreads each step's fixed cost (Python, kernel launches, the small matrices of one token) over more rows.

    python benchmarks/greedy_batch.py
"""
from __future__ import annotations

from _common import timeit, write

BATCHES = (8, 16, 48)
MAX_NEW_TOKENS = 64


def main() -> None:
    from asrinterp_utils import repetition, run
    from asrinterp_utils.data import bank
    from asrinterp_utils.models import load_model

    source = bank.speech_dataset("transcribed", fast=False, progress=False)
    candidates = repetition.candidate_inputs(source, kinds=("speed2.5x", "speed3x", "stutter"), n_clips=16)
    audio = list(candidates.audio)
    results = {}
    for name in ("tiny.en", "base"):
        lm = load_model(name)
        states = run.encode(lm, audio).states
        tokens, seconds = {}, {}
        for batch in BATCHES:
            def decode(batch=batch):
                out = []
                for start in range(0, len(audio), batch):
                    out += run.greedy(lm, states[start:start + batch], max_new_tokens=MAX_NEW_TOKENS).text_ids
                tokens[batch] = out
            seconds[batch] = timeit(decode, repeats=3, warmup=0)["median_s"]
        hit = sum(len(t) >= MAX_NEW_TOKENS for t in tokens[BATCHES[0]])
        results[name] = {
            "seconds_by_batch": {str(b): round(s, 2) for b, s in seconds.items()},
            "speedup_48_over_8": round(seconds[8] / seconds[48], 2),
            "identical_tokens": all(tokens[b] == tokens[BATCHES[0]] for b in BATCHES),
            "inputs": len(audio), "ran_to_the_limit": hit}
    write("greedy_batch", {"description": __doc__.split("\n\n")[0], "max_new_tokens": MAX_NEW_TOKENS,
                           "package_default": run.GREEDY_BATCH, "results": results})


if __name__ == "__main__":
    main()
