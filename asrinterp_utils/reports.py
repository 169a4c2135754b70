"""The book's generated back matter: the reproduction report and the performance page.

Both pages are built from JSON that other code wrote, never from numbers typed into a page:

* **Reproduction report.** Each chapter saves its headline numbers with :func:`asrinterp_utils.runtime.save_results`
  under ``cache_dir("results", mode)``. :func:`reproduction_claims` reads them and states, for every claim of the
  paper, what the paper reports (as recovered by summaries; ``../shared/notes/paper.md``), what we measured on each
  model, and a verdict computed here from our numbers. Where the chapter saved an interval (or the counts that give
  one), the verdict respects it (:func:`asrinterp_utils.stats.verdict`): *supported* only when the interval clears
  the claim's null, *inconclusive* when it does not but still holds the paper's value; otherwise it applies the
  rule given with the claim to the point values, and says so.
* **Performance page.** Each script in ``benchmarks/`` writes one JSON file to ``benchmarks/results/``.
  :func:`benchmark_summary` lists them with their machine, versions, timings, ratios and correctness checks.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import stats

SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE = "supported", "not supported", "not testable here"
INCONCLUSIVE = "inconclusive"

# The results file each chapter saves, and the chapter that writes it (for messages and links).
RESULT_FILES = {
    "logit_lens": "chapters/03_logit_lens",
    "encoder_lens": "chapters/04_encoder_lens",
    "probing_encoder": "chapters/05_probing_the_encoder",
    "predicting_hallucinations": "chapters/06_predicting_hallucinations",
    "activation_patching": "chapters/07_activation_patching",
    "repetition_hallucinations": "chapters/08_repetition_hallucinations",
    "semantic_bias": "chapters/09_semantic_bias",
    "sparse_features": "chapters/10_sparse_features",
    "repairing_hallucinations": "chapters/11_repairing_hallucinations",
}


@dataclass
class Claim:
    """One claim of the paper beside our numbers.

    ``ours`` maps a model name to what we measured (text). Per model, either ``estimates`` holds the measured
    effect with its interval (:class:`~asrinterp_utils.stats.Estimate`), judged against ``null[model]`` (no effect:
    chance for a probe, 0 for a share of loops resolved) and the paper's ``reported_value``; or ``holds`` says
    whether the point values meet the claim's ``rule`` (None: not testable). :attr:`verdict` combines the models.
    """

    section: str
    claim: str
    reported: str
    rule: str
    chapter: str
    ours: dict[str, str] = field(default_factory=dict)
    holds: dict[str, bool | None] = field(default_factory=dict)
    note: str = ""
    estimates: dict[str, stats.Estimate] = field(default_factory=dict)
    null: dict[str, float] = field(default_factory=dict)
    reported_value: float | None = None
    scale: str = "accuracy or share"

    def model_verdict(self, model: str) -> str | None:
        """The verdict on one model: from its interval when there is one (``supported``, ``inconclusive``, ``not
        supported``), else from the rule (``supported``/``not supported``); None when not testable there."""
        if model in self.estimates:
            return stats.verdict(self.estimates[model], null=self.null.get(model, 0.0), reported=self.reported_value)
        held = self.holds.get(model)
        return None if held is None else (SUPPORTED if held else NOT_SUPPORTED)

    @property
    def verdict(self) -> str:
        """The models' verdict when they agree, ``mixed (...)`` naming each model's when they do not, or ``not
        testable here``."""
        per_model = {m: self.model_verdict(m) for m in dict.fromkeys([*self.estimates, *self.holds])}
        tested = {m: v for m, v in per_model.items() if v is not None}
        if not tested:
            return NOT_TESTABLE
        if len(set(tested.values())) == 1:
            return next(iter(tested.values()))
        return "mixed (" + ", ".join(f"{m}: {v}" for m, v in tested.items()) + ")"

    @property
    def from_interval(self) -> bool:
        """Whether the verdict rests on intervals (on every model tested) rather than on point values."""
        return bool(self.estimates) and all(m in self.estimates for m, h in self.holds.items() if h is not None)


def load_results(mode: str = "full", folder: str | Path | None = None) -> dict[str, dict]:
    """The chapters' saved results, ``{name: json}``, from ``folder`` or ``cache_dir("results", mode)``.

    Raises FileNotFoundError naming the chapters to run when a results file is missing.
    """
    from .runtime import cache_dir

    if mode not in ("full", "fast"):
        raise ValueError(f"mode must be 'full' or 'fast', got {mode!r}")
    folder = Path(folder) if folder is not None else cache_dir("results", mode)
    missing = [name for name in RESULT_FILES if not (folder / f"{name}.json").is_file()]
    if missing:
        chapters = ", ".join(RESULT_FILES[m] for m in missing)
        raise FileNotFoundError(
            f"no saved results for {missing} in {folder}: run these chapters first ({chapters}); `make book` runs "
            f"every chapter in full mode, `make test` in fast mode")
    return {name: json.loads((folder / f"{name}.json").read_text(encoding="utf-8")) for name in RESULT_FILES}


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _by_model(records: list[dict], key: str = "model") -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        out.setdefault(r[key], []).append(r)
    return out


def _logit_lens(results: dict) -> list[Claim]:
    claim = Claim(
        "Logit lens", "Decoder predictions form gradually across layers and settle at a saturation layer",
        "qualitative (no numbers recovered)",
        "a share of tokens already has the final top-1 one layer before the output (agreement strictly between 0 and "
        "1) and the mean saturation depth is below 1", RESULT_FILES["logit_lens"])
    for row in results["per_model"]:
        agree, depth = row["top-1 agreement one layer before the output"], row["mean saturation depth"]
        claim.ours[row["model"]] = (f"top-1 agreement one layer before the output {agree:.2f}; mean saturation depth "
                                    f"{depth:.2f}; {row['tokens saturating only at the output']} of tokens settle only "
                                    f"at the output")
        claim.holds[row["model"]] = 0 < agree < 1 and depth < 1
    audio_llm = Claim("Logit lens", "The same lens works on Qwen2-Audio's language model", "qualitative",
                      "needs audio-LLM weights, which this machine does not have (the code path is tested on a "
                      "random-initialised model)", RESULT_FILES["logit_lens"])
    return [claim, audio_llm]


def _encoder_lens(results: dict) -> list[Claim]:
    late = Claim("Encoder lens", "A faithful transcript appears only from the late encoder layers",
                 "qualitative", "the first layer with median WER <= 0.5 is in the last third of the encoder",
                 RESULT_FILES["encoder_lens"])
    fluent = Claim("Encoder lens", "Intermediate encoder layers give fluent but unrelated text",
                   "qualitative; example \"Yes, I need to go to the bathroom\"",
                   "at least 10 % of the transcripts below the last layer are fluent but unfaithful",
                   RESULT_FILES["encoder_lens"])
    for row in results["per_model"]:
        n, first = row["encoder layers"], row["first layer with median WER <= 0.5"]
        late.ours[row["model"]] = (f"first layer with median WER <= 0.5: {first} (layers 0-{n - 1}); median WER at "
                                   f"the last layer {row['median WER, last layer']:.2f}")
        late.holds[row["model"]] = first is not None and first >= n - max(1, n // 3)
        below = row["transcripts below the last layer"]
        share = row["fluent unfaithful below the last layer"] / below if below else 0.0
        fluent.ours[row["model"]] = (f"{row['fluent unfaithful below the last layer']} of {below} fluent but "
                                     f"unfaithful ({row['loops below the last layer']} loops)")
        fluent.holds[row["model"]] = share >= 0.1
    return [late, fluent]


PROBE_REPORTED = {  # attribute: (reported for large-v3 by summaries, task name in the probing results, its value)
    "speaker gender": ("94.6 % at layer 25 of 32", "gender", 0.946),
    "clean vs noisy audio": ("90.0 % at layer 27 of 32", "noise", 0.900),
    "accent": ("97.0 % at layer 22 of 32 (four real accents)", "accent", 0.970),
    "semantic category": ("\"high\", no number", "semantic category", None),
}


def _crossfitted(r: dict) -> bool:
    """Whether the chapter saved the cross-fitted accuracy with its interval (None or NaN: it did not)."""
    return all(r.get(k) is not None and r[k] == r[k] for k in ("crossfit_accuracy", "crossfit_low", "crossfit_high"))


def _accuracy(r: dict) -> stats.Estimate:
    """A saved probe accuracy with its speaker-bootstrap interval: the best layer cross-fitted (chosen on half the
    speakers, scored on the other half) where the chapter saved it, else the in-sample best layer's."""
    if _crossfitted(r):
        return stats.Estimate(r["crossfit_accuracy"], r["crossfit_low"], r["crossfit_high"], n=0,
                              method="cross-fitted best layer, bootstrap over speakers")
    return stats.Estimate(r["accuracy"], r["ci_low"], r["ci_high"], n=0, method="best layer in sample, bootstrap")


def _accuracy_text(r: dict) -> str:
    """``93 % [74 %, 100 %]`` of the estimate the verdict uses, saying which."""
    est = _accuracy(r)
    how = "cross-fitted" if _crossfitted(r) else "in sample"
    return f"{_pct(est.value)} [{_pct(est.low)}, {_pct(est.high)}] {how}"


def _probing(results: dict) -> list[Claim]:
    claims, depths = [], {}
    rows = [r for r in results["best_layers"]]
    log_mel = {r["task"]: r for r in rows if r["source"] == "log-mel"}
    for attribute, (reported, task, value) in PROBE_REPORTED.items():
        claim = Claim("Linear probes on the encoder", f"The encoder linearly encodes {attribute}", reported,
                      "the best layer's 95 % interval lies above chance (the layer chosen on half the speakers and "
                      "scored on the other half, where saved)", RESULT_FILES["probing_encoder"],
                      note="espeak's rule-based accents, not the paper's speakers" if task == "accent" else "",
                      reported_value=value)
        for r in rows:
            if r["task"] != task or r["source"] in ("log-mel",) or r["source"].startswith("random-init"):
                continue
            base = log_mel.get(task)
            claim.ours[r["source"]] = (f"{_accuracy_text(r)}; best layer {r['layer']} of {r['n_layers']} "
                                       f"(in sample {_pct(r['accuracy'])}; chance {_pct(r['chance'])}"
                                       + (f"; log-mel input {_pct(base['accuracy'])}" if base else "") + ")")
            claim.estimates[r["source"]], claim.null[r["source"]] = _accuracy(r), r["chance"]
            depths.setdefault(r["source"], []).append((task, r["layer"], r["n_layers"]))
        claims.append(claim)
    late = Claim("Linear probes on the encoder", "Probe accuracy peaks late in the encoder",
                 "layers 22-27 of 32 for gender, noise and accent",
                 "the best layer is in the second half of the encoder for most of gender, noise and accent",
                 RESULT_FILES["probing_encoder"])
    for model, found in depths.items():
        found = [(t, layer, n) for t, layer, n in found if t in ("gender", "noise", "accent")]
        late.ours[model] = "; ".join(f"{t} {layer} of {n}" for t, layer, n in found)
        late.holds[model] = sum(layer >= n / 2 for _, layer, n in found) > len(found) / 2
    return claims + [late]


def _hallucinations(results: dict) -> list[Claim]:
    probe = Claim("Predicting hallucinations", "A linear probe on the decoder residual stream separates good from "
                  "bad transcripts", "93.4 % at decoder layer 22 of 32",
                  "the best decoder probe's 95 % interval lies above chance", RESULT_FILES["predicting_hallucinations"],
                  note="our good/bad label is confounded with the input condition; see the chapter",
                  reported_value=0.934)
    chosen = results.get("good_vs_bad_chosen", {})  # pooling and layer cross-fitted together, where saved
    for model, rows in _by_model(results["good_vs_bad"]).items():
        decoder = [r for r in rows if r["source"] != "log-mel input"]
        best = chosen.get(model) or max(decoder, key=lambda r: r["accuracy"])
        mel = next((r for r in rows if r["source"] == "log-mel input"), None)
        probe.ours[model] = (f"{_accuracy_text(best)} ({best['source']}, layer {best['layer']} of "
                             f"{best['n_layers']})"
                             + (f"; log-mel input {_pct(mel['accuracy'])}" if mel else ""))
        probe.estimates[model], probe.null[model] = _accuracy(best), best["chance"]
    speech = Claim("Predicting hallucinations", "Speech and non-speech inputs are linearly separable in the decoder",
                   "reported by one summary, no number", "the probe's 95 % interval lies above chance",
                   RESULT_FILES["predicting_hallucinations"])
    for model, entry in results["speech_vs_nonspeech"].items():
        r = entry["speech_vs_nonspeech"]
        speech.ours[model] = (f"{_accuracy_text(r)}, layer {r['layer']} ({r['source']}); on confidently "
                              f"transcribed non-speech "
                              f"{_pct(entry['confident_nonspeech_accuracy'])}")
        speech.estimates[model], speech.null[model] = _accuracy(r), r["chance"]
    return [probe, speech]


def _repetition(results: dict) -> list[Claim]:
    chapter = RESULT_FILES["repetition_hallucinations"]
    layer = Claim("Repetition hallucinations", "Patching a late decoder layer's cross-attention with its white-noise "
                  "value resolves repetition loops", "layer 23 of 32: 76 % of loops",
                  "the best single component is a cross-attention output in the second half of the decoder's layers "
                  "(late, as the paper's layer 23 of 32 is), and the Wilson interval of the share of loops it "
                  "resolves (chosen on the selection loops, counted on held-out evaluation loops) lies above the "
                  "share a typical component resolves (the mean over all components)",
                  chapter, note="'stub': the patched transcript has two words or fewer", reported_value=0.76)
    head = Claim("Repetition hallucinations", "A single cross-attention head resolves many loops",
                 "layer 18, head 13: about 78 %", "the Wilson interval of the share of loops the best head resolves "
                 "(chosen on the selection loops, counted on held-out evaluation loops) lies above the share a "
                 "typical head resolves (the mean over all heads)", chapter,
                 reported_value=0.78)
    combo = Claim("Repetition hallucinations", "Combining the layer and the head resolves more",
                  "about 89 %", "the best combination resolves more held-out loops than the best single head",
                  chapter)
    clean = Claim("Repetition hallucinations", "The best component's patch leaves clean speech intact",
                  "not reported (our check)", "WER on clean clips rises by at most 0.05", chapter)
    for model, r in results.items():
        if not r.get("loops"):
            for c in (layer, head, combo, clean):
                c.ours[model], c.holds[model] = "no loops found", None
            continue
        comp, h, both = r["best_component"], r["best_head"], r["best_combination"]
        fitted, held = r.get("crossfit", {}), r.get("held_out", {})
        n_chosen_on = r.get("selection_loops", r["loops"])

        def resolved(kind: str, best: dict) -> tuple[stats.Estimate, str, float]:
            """Counted on held-out evaluation loops where the chapter saved them; else cross-fitted (chosen on half
            the loops, counted on the other half); else the share read off the loops that chose the target, which
            is optimistic. With the null: the share a typical target resolves (0 where not saved)."""
            if kind in held:
                typical = held[kind].get("typical")
                return (stats.proportion(held[kind]["resolved"], held[kind]["loops"]), "held out",
                        float(typical) if typical is not None else 0.0)
            typical = float(fitted.get(kind, {}).get("typical", 0.0))
            if kind in fitted:
                return stats.proportion(fitted[kind]["resolved"], fitted[kind]["loops"]), "cross-fitted", typical
            return stats.proportion(round(best["resolved"] * n_chosen_on), n_chosen_on), "in sample", typical

        (comp_est, comp_how, comp_null), (head_est, head_how, head_null) = (resolved("component", comp),
                                                                            resolved("head", h))
        n_layers, at = int(r["n_decoder_layers"]), int(comp["target"].split(".")[1])
        late = at >= n_layers / 2
        layer.ours[model] = (f"`{comp['target']}` (layer {at} of {n_layers}): {_pct(comp['resolved'])} of "
                             f"{n_chosen_on} loops in sample; "
                             f"{_pct(comp_est.value)} [{_pct(comp_est.low)}, {_pct(comp_est.high)}] {comp_how} "
                             f"(stub {_pct(comp['stub'])}; a typical component {_pct(comp_null)})")
        if comp["target"].endswith("cross_attn_out") and late:
            layer.estimates[model], layer.null[model] = comp_est, comp_null
        else:
            layer.holds[model] = False  # the best component is not a late cross-attention output
        head.ours[model] = (f"`{h['target']}`: {_pct(h['resolved'])} in sample; {_pct(head_est.value)} "
                            f"[{_pct(head_est.low)}, {_pct(head_est.high)}] {head_how} (stub {_pct(h['stub'])}; "
                            f"a typical head {_pct(head_null)})")
        head.estimates[model], head.null[model] = head_est, head_null
        if "combination" in held and "head" in held:
            both_est, _, _ = resolved("combination", both)
            combo.ours[model] = (f"{both['target']}: {_pct(both_est.value)} [{_pct(both_est.low)}, "
                                 f"{_pct(both_est.high)}] held out, against {_pct(head_est.value)} for the head")
            combo.holds[model] = both_est.value > head_est.value
        else:
            combo.ours[model] = f"{both['target']}: {_pct(both['resolved'])} (stub {_pct(both['stub'])})"
            combo.holds[model] = both["resolved"] > h["resolved"]
        wer = r["clean_wer"]
        before, after = wer["(unpatched)"], wer[comp["target"]]
        clean.ours[model] = f"WER {before:.2f} unpatched, {after:.2f} with `{comp['target']}` patched"
        clean.holds[model] = after - before <= 0.05
    return [layer, head, combo, clean]


def _semantic_bias(results: dict) -> list[Claim]:
    claim = Claim("Semantic bias in the encoder", "White-noise patches of encoder components can make the model "
                  "more faithful to the spoken word", "yes (components and sizes not given)",
                  "the best encoder patch raises the mean logit difference (spoken - expected word) and flips more "
                  "clips to the spoken word than away from it", RESULT_FILES["semantic_bias"],
                  note="our own context-bias stimuli read by TTS voices; the paper's are not public")
    crossfit = results.get("crossfit", {})
    if crossfit:
        claim.rule = ("the best encoder patch, chosen on half the sentences and measured on the other half, raises the "
                      "mean logit difference (spoken - expected word): its 95 % interval (sentences resampled) lies "
                      "above 0")
    for model, rows in results["sweep"].items():
        best = max(rows, key=lambda r: r["mean change"])
        claim.ours[model] = (f"best `{best['target']}`: mean change {best['mean change']:+.2f}; flipped "
                             f"{best['flipped to spoken']} to spoken, {best['flipped away from spoken']} away")
        fit = crossfit.get(model)
        if fit is None:
            claim.holds[model] = best["mean change"] > 0 and best["flipped to spoken"] > best["flipped away from spoken"]
            continue
        claim.estimates[model] = stats.Estimate(fit["mean_change"], fit["ci_low"], fit["ci_high"], fit["n_sentences"],
                                                "cross-fitted, bootstrap over sentences")
        claim.null[model], claim.scale = 0.0, "change in logit difference"
        claim.ours[model] += (f"; cross-fitted {fit['mean_change']:+.2f} [{fit['ci_low']:+.2f}, "
                              f"{fit['ci_high']:+.2f}]")
    claims = [claim]
    held_out = results.get("held_out_generation", {})
    if held_out:
        accuracy = Claim("Semantic bias in the encoder", "The best encoder patch from white noise improves "
                         "target-word accuracy in the transcripts", "yes (components and sizes not given)",
                         "the encoder patch chosen on the sweep's clips, applied in free generation to the other "
                         "clips, raises the share of transcripts with the spoken word: the 95 % interval of the "
                         "paired change (sentences resampled) lies above 0", RESULT_FILES["semantic_bias"],
                         note="our own context-bias stimuli read by TTS voices; the paper's are not public",
                         scale="change in target-word accuracy")
        for model, h in held_out.items():
            accuracy.estimates[model] = stats.Estimate(h["change"], h["ci_low"], h["ci_high"], h["sentences"],
                                                       "held-out clips, paired bootstrap over sentences")
            accuracy.null[model] = 0.0
            accuracy.ours[model] = (f"`{h['best']}` on {h['clips']} held-out clips: {h['change']:+.3f} "
                                    f"[{h['ci_low']:+.3f}, {h['ci_high']:+.3f}] ({h['gained']} gained the spoken "
                                    f"word, {h['lost']} lost it; McNemar p "
                                    + (f"= {h['mcnemar_p']:.2f})" if h["mcnemar_p"] >= 0.01 else "< 0.01)"))
        claims.append(accuracy)
    return claims


EXTRACTORS: dict[str, Callable[[dict], list[Claim]]] = {
    "logit_lens": _logit_lens, "encoder_lens": _encoder_lens, "probing_encoder": _probing,
    "predicting_hallucinations": _hallucinations, "repetition_hallucinations": _repetition,
    "semantic_bias": _semantic_bias,
}


def reproduction_claims(results: dict[str, dict]) -> list[Claim]:
    """Every claim of the paper, with our numbers and a verdict, from :func:`load_results`' output.

    Raises KeyError naming the results file whose structure does not match (a chapter changed what it saves).
    """
    claims = []
    for name, extract in EXTRACTORS.items():
        try:
            claims += extract(results[name])
        except (KeyError, TypeError, ValueError) as err:
            raise KeyError(f"{name}.json (saved by {RESULT_FILES[name]}) lacks what the report reads: {err!r}; "
                           "rerun that chapter, or update asrinterp_utils.reports") from err
    return claims


# ---------------------------------------------------------------------------------------------------------------
# Beyond the paper: what later work reports, beside what the book's later chapters measured
# ---------------------------------------------------------------------------------------------------------------

def beyond_the_paper(results: dict[str, dict]):
    """The findings of work after the paper that the book's later chapters take up, as their authors report them,
    beside our numbers: one row per finding, ``finding, source, reported, <one column per model>, chapter``.
    Nothing is judged here: the reported numbers are changes in behaviour of larger models under interventions
    that these chapters do not all make, so the table sets them side by side and says what was measured."""
    import pandas as pd

    sparse = results["sparse_features"]
    models = sorted(sparse, key=lambda m: (m != "tiny.en", m))

    def best(model: str, task: str) -> str:
        rows = sparse[model]["associations"][task]
        if not rows:
            return "no latent"
        r = rows[0]
        lower = r.get("direction") == "lower in label"  # chosen for firing less in the label: AUROC below 0.5
        auroc = stats.interval_text(r["auroc"], r["ci_low"], r["ci_high"])
        return (f"latent {int(r['latent'])}: held-out AUROC {auroc} "
                f"({'fires less in the label; ' if lower else ''}chosen among {sparse[model]['d_sae']} on other "
                f"speakers and sources, measured on {int(r['groups'])} held-out speakers and sources)")

    def carried(model: str) -> str:
        """How many values of each per-value table have a held-out interval on the side of 0.5 they were chosen on."""
        parts = []
        for key, what in (("accents", "accents"), ("noise_kinds", "kinds of noise under speech"),
                          ("semantic_categories", "word categories")):
            table = sparse[model].get(key) or []
            if table:
                parts.append(f"{sum(bool(r['carries']) for r in table)} of {len(table)} {what}")
        return ("best latent per value, held-out interval clear of 0.5 on its chosen side: " + ", ".join(parts)
                if parts else "not measured")

    rows = [
        {"finding": "a sparse autoencoder on a Whisper encoder layer keeps most of the activation",
         "source": "AudioSAE (arXiv 2602.05027): SAEs on every encoder layer",
         "reported": "trained on every layer; reconstruction figures not collected here",
         **{m: (f"`{sparse[m]['point']}`, {sparse[m]['d_sae']} latents, k = {sparse[m]['k']}: held-out FVE "
                f"{sparse[m]['fve_held_out']:.3f}; spliced in, loss recovered {sparse[m]['loss_recovered']:.3f}, "
                f"WER {sparse[m]['wer_clean']:.3f} -> {sparse[m]['wer_spliced']:.3f} on "
                f"{sparse[m]['splice_clips']} clips") for m in models}},
        {"finding": "one SAE feature is about speech versus non-speech",
         "source": "AudioSAE (arXiv 2602.05027)",
         "reported": "steering one feature cuts false speech detections by 70 %",
         **{m: best(m, "non-speech") + "; not steered" for m in models}},
        {"finding": "SAE features carry a voice's sex (female against male; few held-out speakers, so possibly the "
                    "speakers themselves)",
         "source": "(this book's question; no anchor)", "reported": "-",
         **{m: best(m, "female (speech only)") for m in models}},
        {"finding": "single SAE latents carry the bank's other labels to clips they were not chosen on",
         "source": "(this book's question; no anchor)", "reported": "-",
         **{m: carried(m) for m in models}},
    ]
    rows = [{**r, "chapter": RESULT_FILES["sparse_features"]} for r in rows]
    repairs = results["repairing_hallucinations"]

    def repaired(model: str, label: str, what: str) -> str:
        held = repairs[model]["held_out"]
        before, after = held["none"]["hallucination"], held[label]["hallucination"]
        change = held[label]["wer_change"]
        before_, after_, change_ = (stats.interval_text(e["value"], e["low"], e["high"])
                                    for e in (before, after, change))
        return (f"{what}: non-speech with text {before_} -> {after_} on {after['n']} held-out clips; WER "
                f"{held['none']['wer']:.3f} -> {held[label]['wer']:.3f} (per-clip change {change_}); "
                "loops still looping "
                f"{held['none']['loops']['successes']} -> {held[label]['loops']['successes']} of "
                f"{held[label]['loops']['n']}")

    heads = {m: next(k for k in repairs[m]["held_out"] if k.startswith("mask")) for m in repairs}
    rows += [{**r, "chapter": RESULT_FILES["repairing_hallucinations"]} for r in [
        {"finding": "masking a few decoder self-attention heads cuts hallucinations on non-speech audio",
         "source": "Calm-Whisper (arXiv 2505.12969): heads found by masking, then fine-tuned",
         "reported": "3 of 20 heads carry over 75 % of large-v3's non-speech hallucinations; fine-tuned, over 80 % "
                     "fewer at under 0.1 % WER cost",
         **{m: repaired(m, heads[m], f"{heads[m]} ({', '.join(repairs[m]['heads'])}), chosen on other sources "
                                     "and speakers") if m in repairs else "not run" for m in models}},
        {"finding": "steering the model's activations cuts hallucinations",
         "source": "Aparin et al. (arXiv 2606.07473), AudioSAE (arXiv 2602.05027): SAE-feature steering",
         "reported": "hallucination rate 72.6 % -> 14.1 % (small), 86.9 % -> 27.3 % (large-v3); 70 % fewer false "
                     "speech detections",
         **{m: repaired(m, "steer", f"a difference-of-means direction ({repairs[m]['steering']}), chosen on other "
                                   "sources and speakers") if m in repairs else "not run" for m in models}},
    ]]
    return pd.DataFrame(rows)


def claims_frame(claims: list[Claim], models: list[str] | None = None):
    """One row per claim: ``section, claim, reported (large-v3), <one column per model>, verdict, rule, note``."""
    import pandas as pd

    models = models or sorted({m for c in claims for m in c.ours}, key=lambda m: (m != "tiny.en", m))
    return pd.DataFrame([{"section": c.section, "claim": c.claim, "reported (large-v3, by summaries)": c.reported,
                          **{m: c.ours.get(m) or "not run" for m in models}, "verdict": c.verdict,
                          "verdict from": ("intervals" if c.from_interval else
                                           "" if c.verdict == NOT_TESTABLE else "point values"),
                          "rule": c.rule, "note": c.note, "chapter": c.chapter} for c in claims])


def forest_frame(claims: list[Claim]):
    """The claims judged by intervals, long (one row per claim and model), for
    :func:`asrinterp_utils.plotting.forest`: ``claim, model, value, low, high, null, verdict, reported, scale``, on
    the claim's own ``scale`` (a probe's accuracy or a share of loops resolved; a change in logit difference), with
    its ``null`` (chance, or 0) and the paper's ``reported`` value (NaN when it gave none)."""
    import pandas as pd

    columns = ["claim", "model", "value", "low", "high", "null", "verdict", "reported", "scale"]
    rows = [{"claim": c.claim, "model": model, "value": est.value, "low": est.low, "high": est.high,
             "null": c.null.get(model, 0.0), "verdict": c.model_verdict(model),
             "reported": c.reported_value if c.reported_value is not None else float("nan"), "scale": c.scale}
            for c in claims for model, est in c.estimates.items()]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------------------------

def load_benchmarks(folder: str | Path) -> dict[str, dict]:
    """Every ``*.json`` in ``folder`` (``benchmarks/results``), by file stem."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no benchmark results in {folder}: run the scripts in benchmarks/ first")
    return {f.stem: json.loads(f.read_text(encoding="utf-8")) for f in files}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with dotted keys (``{"a": {"b": 1}} -> {"a.b": 1}``); lists are kept whole."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


RATIO_WORDS = {"speedup", "ratio", "over"}
CHECK_WORDS = {"identical", "difference", "diff", "abs", "equals", "matches", "agrees", "agreement", "passed", "met",
               "gives"}


def _words(key: str) -> set[str]:
    return set(re.split(r"[._\s\[\]]+", key.lower()))


def _machine(result: dict) -> str:
    machine = result.get("machine", result)
    device = machine.get("gpu") or (f"CPU, {machine['cores']} cores" if "cores" in machine else
                                    machine.get("device", "?"))
    return f"{device}; torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}"


def benchmark_summary(benchmarks: dict[str, dict]):
    """One row per benchmark: ``benchmark, date, machine, ratios, checks`` (ratios: every key naming a speed-up or
    ratio, to 2 decimals; checks: every key naming an equality or error bound)."""
    import pandas as pd

    rows = []
    for name, result in benchmarks.items():
        flat = flatten({k: v for k, v in result.items() if k != "machine"})
        ratios = {k: v for k, v in flat.items() if _words(k) & RATIO_WORDS and not _words(k) & CHECK_WORDS
                  and isinstance(v, (int, float)) and not isinstance(v, bool)}
        checks = {k: v for k, v in flat.items()
                  if _words(k) & CHECK_WORDS and isinstance(v, (bool, int, float, str))}
        rows.append({"benchmark": name, "date": result.get("date", ""), "machine": _machine(result),
                     "ratios": "; ".join(f"{k} = {v:.2f}" for k, v in ratios.items()),
                     "checks": "; ".join(f"{k} = {v:.2g}" if isinstance(v, float) else f"{k} = {v}"
                                         for k, v in checks.items())})
    return pd.DataFrame(rows)


def benchmark_seconds(benchmarks: dict[str, dict]):
    """Long table of every timing: ``benchmark, what, seconds``. Timings are the numbers under a ``seconds`` or
    ``timing_s`` key, or keys ending in ``median_s``; of a repeated measurement only the median is kept."""
    import pandas as pd

    rows = []
    for name, result in benchmarks.items():
        for key, value in flatten({k: v for k, v in result.items() if k != "machine"}).items():
            parts = key.split(".")
            under_timing = any(p in ("seconds", "timing_s") for p in parts[:-1])
            if parts[-1] in ("min_s", "max_s", "repeats") or "ratio" in _words(parts[-1]):
                continue
            if (under_timing or parts[-1].endswith("median_s") or parts[-1] == "seconds") \
                    and isinstance(value, (int, float)) and not isinstance(value, bool):
                what = ".".join(p for p in parts if p not in ("seconds", "timing_s", "median_s")) or name
                rows.append({"benchmark": name, "what": what, "seconds": float(value)})
    return pd.DataFrame(rows, columns=["benchmark", "what", "seconds"])


def chapter_times(cache_db: str | Path):
    """How long each page took to execute in the last book build, from the build's execution cache
    (``_build/.jupyter_cache/global.db`` for ``make book``): ``page, seconds, executed`` (UTC) and ``at_once`` (how
    many chapters ran beside each other, ``scripts/execute_chapters.py``; 1 for a page the build ran alone), one row
    per page (its latest run), in page order. Empty when there is no cache yet."""
    import sqlite3

    import pandas as pd

    path = Path(cache_db)
    columns = ["page", "seconds", "executed", "at_once"]
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        records = db.execute("SELECT uri, data, created FROM nbcache ORDER BY created").fetchall()
    latest: dict[str, dict] = {}
    for uri, data, created in records:
        record = json.loads(data or "{}")
        seconds = record.get("execution_seconds")
        if seconds is not None:
            latest[Path(uri).stem if "/" not in uri else "/".join(Path(uri).parts[-2:])] = {
                "seconds": float(seconds), "executed": str(created)[:19], "at_once": int(record.get("at_once", 1))}
    rows = [{"page": page.removesuffix(".md").removesuffix(".ipynb"), **v} for page, v in sorted(latest.items())]
    return pd.DataFrame(rows, columns=columns)
