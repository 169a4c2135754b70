"""The generated back matter: claims and verdicts from the chapters' saved results, benchmark tables, chapter
times. The fixture results are a real fast-mode run of the chapters (tests/data/results_fast)."""
from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest

from asrinterp_utils import reports, stats

FIXTURE = Path(__file__).parent / "data" / "results_fast"


@pytest.fixture
def results():
    return reports.load_results("fast", FIXTURE)


def test_every_claim_has_numbers_and_a_verdict(results):
    claims = reports.reproduction_claims(results)
    assert len(claims) >= 12
    verdicts = {c.verdict for c in claims}
    assert reports.NOT_TESTABLE in verdicts  # the audio-LLM lens
    for c in claims:
        assert c.claim and c.reported and c.rule
        if c.verdict != reports.NOT_TESTABLE:
            assert c.ours and all(c.ours.values()), c.claim
    frame = reports.claims_frame(claims)
    assert list(frame.columns[:4]) == ["section", "claim", "reported (large-v3, by summaries)", "tiny.en"]


def test_verdicts_follow_the_numbers(results):
    """Change a saved number and the verdict changes with it: the report reads, it does not decide."""
    changed = copy.deepcopy(results)
    for row in changed["semantic_bias"]["sweep"]["tiny.en"]:
        row.update({"mean change": 0.5, "flipped to spoken": 3, "flipped away from spoken": 0})
    changed["semantic_bias"]["crossfit"]["tiny.en"].update(mean_change=0.5, ci_low=0.1, ci_high=0.9)
    before = {c.claim: c.verdict for c in reports.reproduction_claims(results)}
    after = {c.claim: c.verdict for c in reports.reproduction_claims(changed)}
    claim = next(k for k in before if k.startswith("White-noise patches of encoder"))
    assert before[claim] == reports.NOT_SUPPORTED and after[claim] == reports.SUPPORTED


def test_mixed_verdict_names_the_models():
    claim = reports.Claim("s", "c", "r", "rule", "chapters/x", holds={"tiny.en": True, "base": False})
    assert claim.verdict == "mixed (tiny.en: supported, base: not supported)"
    assert not claim.from_interval
    assert reports.Claim("s", "c", "r", "rule", "x", holds={"tiny.en": None}).verdict == reports.NOT_TESTABLE


def test_verdicts_from_intervals_respect_them():
    """Supported only when the interval clears the null; inconclusive when it does not but holds the paper's value;
    not supported when it excludes both the null's far side and the paper's value."""
    def claim(low, high, reported=0.9):
        return reports.Claim("s", "c", "r", "rule", "x", reported_value=reported, null={"m": 0.5},
                             estimates={"m": stats.Estimate((low + high) / 2, low, high, n=40, method="test")})
    assert claim(0.55, 0.8).verdict == reports.SUPPORTED and claim(0.55, 0.8).from_interval
    assert claim(0.45, 0.95).verdict == reports.INCONCLUSIVE  # holds the null and the reported 0.9
    assert claim(0.3, 0.6).verdict == reports.NOT_SUPPORTED  # holds the null, excludes the reported 0.9
    assert claim(0.3, 0.6, reported=None).verdict == reports.INCONCLUSIVE  # nothing reported to exclude


def test_interval_claims_from_saved_results_and_their_forest(results):
    claims = reports.reproduction_claims(results)
    judged = [c for c in claims if c.estimates]
    assert {c.section for c in judged} >= {"Linear probes on the encoder", "Predicting hallucinations",
                                           "Repetition hallucinations"}
    for c in judged:
        for model, est in c.estimates.items():
            assert est.low <= est.value <= est.high and model in c.ours
    loops = next(c for c in claims if c.claim.startswith("A single cross-attention head"))
    saved = results["repetition_hallucinations"]["tiny.en"]
    assert loops.estimates["tiny.en"].n == saved["held_out"]["head"]["loops"]  # Wilson, over the held-out loops
    forest = reports.forest_frame(claims)
    assert len(forest) == sum(len(c.estimates) for c in claims)
    assert (forest.low <= forest.value).all() and (forest.value <= forest.high).all()
    gender = forest[forest.claim.str.contains("gender")].iloc[0]  # judged against chance
    row = next(r for r in results["probing_encoder"]["best_layers"] if r["task"] == "gender"
               and r["source"] == gender.model)
    assert (gender.value, gender.null, gender.reported) == (row["accuracy"], row["chance"], 0.946)


def test_missing_results_say_which_chapter_to_run(tmp_path):
    (tmp_path / "logit_lens.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="08_repetition_hallucinations"):
        reports.load_results("fast", tmp_path)


def test_a_changed_results_structure_names_the_file(results):
    broken = copy.deepcopy(results)
    del broken["encoder_lens"]["per_model"]
    with pytest.raises(KeyError, match="encoder_lens.json"):
        reports.reproduction_claims(broken)


def test_benchmark_tables(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({
        "benchmark": "a", "date": "2026-01-01", "machine": {"cores": 2, "torch": "2", "transformers": "5"},
        "seconds": {"ours": 1.0, "naive": 10.0}, "speedup_ours_over_naive": 10.0, "max_abs_difference": 0.0,
        "generation_targets": 5}))
    (tmp_path / "b.json").write_text(json.dumps({
        "gpu": "H100", "torch": "2", "checks": {"equals_cpu": True},
        "models": {"m": {"seconds": {"forward": {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0, "repeats": 3}}}}}))
    bench = reports.load_benchmarks(tmp_path)
    summary = reports.benchmark_summary(bench).set_index("benchmark")
    assert summary.loc["a", "ratios"] == "speedup_ours_over_naive = 10.00"  # not generation_targets
    assert "max_abs_difference = 0" in summary.loc["a", "checks"]
    assert summary.loc["b", "machine"].startswith("H100")
    assert "checks.equals_cpu = True" in summary.loc["b", "checks"]
    seconds = reports.benchmark_seconds(bench)
    assert sorted(seconds.seconds) == [1.0, 2.0, 10.0]  # medians only
    with pytest.raises(FileNotFoundError):
        reports.load_benchmarks(tmp_path / "empty")


def test_chapter_times_from_the_execution_cache(tmp_path):
    db = tmp_path / "global.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE nbcache (pk INTEGER, hashkey TEXT, uri TEXT, description TEXT, data TEXT, "
                    "created TEXT, accessed TEXT)")
        con.executemany("INSERT INTO nbcache VALUES (?, ?, ?, '', ?, ?, ?)", [
            (1, "a", "/x/chapters/01_a.md", json.dumps({"execution_seconds": 5.0}), "2026-01-01 10:00:00", ""),
            (2, "b", "/x/chapters/01_a.md", json.dumps({"execution_seconds": 7.0, "at_once": 2}),
             "2026-01-02 10:00:00", ""),
            (3, "c", "/x/reports/performance.md", json.dumps({"execution_seconds": 1.0}), "2026-01-02 11:00:00",
             "")])
    times = reports.chapter_times(db)
    assert list(times.page) == ["chapters/01_a", "reports/performance"]
    assert list(times.seconds) == [7.0, 1.0]  # the latest run of each page
    assert list(times.at_once) == [2, 1]  # run beside another chapter by scripts/execute_chapters.py, or alone
    assert reports.chapter_times(tmp_path / "none.db").empty


def test_semantic_bias_is_judged_by_its_cross_fitted_interval_when_saved(results):
    saved = copy.deepcopy(results)
    saved["semantic_bias"]["crossfit"] = {m: {"best": "enc.1.mlp_out", "mean_change": 0.8, "ci_low": 0.2,
                                              "ci_high": 1.4, "n_sentences": 10} for m in saved["semantic_bias"]["sweep"]}
    claim = next(c for c in reports.reproduction_claims(saved) if c.section == "Semantic bias in the encoder")
    assert claim.from_interval and claim.verdict == reports.SUPPORTED and "cross-fitted +0.80" in claim.ours["tiny.en"]
    for fit in saved["semantic_bias"]["crossfit"].values():
        fit.update(ci_low=-0.5)
    claim = next(c for c in reports.reproduction_claims(saved) if c.section == "Semantic bias in the encoder")
    assert claim.verdict == reports.INCONCLUSIVE  # the paper gave no number: the interval cannot exclude it
    forest = reports.forest_frame([claim])
    assert set(forest.scale) == {"change in logit difference"} and (forest.null == 0).all()


def test_target_word_accuracy_is_judged_on_held_out_clips_when_saved(results):
    saved = copy.deepcopy(results)
    saved["semantic_bias"]["held_out_generation"] = {
        m: {"best": "enc.1.mlp_out", "clips": 120, "sentences": 20, "change": 0.05, "ci_low": 0.01, "ci_high": 0.09,
            "gained": 8, "lost": 2, "mcnemar_p": 0.11, "counts": {}} for m in saved["semantic_bias"]["sweep"]}
    claims = [c for c in reports.reproduction_claims(saved) if c.section == "Semantic bias in the encoder"]
    assert len(claims) == 2 and claims[1].scale == "change in target-word accuracy"
    accuracy = claims[1]
    assert accuracy.from_interval and accuracy.verdict == reports.SUPPORTED
    assert "120 held-out clips: +0.050 [+0.010, +0.090]" in accuracy.ours["tiny.en"]
    for h in saved["semantic_bias"]["held_out_generation"].values():
        h.update(change=-0.02, ci_low=-0.08, ci_high=0.03)
    accuracy = [c for c in reports.reproduction_claims(saved) if c.section == "Semantic bias in the encoder"][1]
    assert accuracy.verdict == reports.INCONCLUSIVE
    saved["semantic_bias"].pop("held_out_generation")  # an older chapter's results: the logit-difference claim only
    assert len([c for c in reports.reproduction_claims(saved) if c.section == "Semantic bias in the encoder"]) == 1


def test_loops_resolved_are_judged_held_out_and_else_cross_fitted(results):
    saved = copy.deepcopy(results)
    for r in saved["repetition_hallucinations"].values():
        if r.get("loops"):
            r["held_out"]["head"].update(resolved=0, loops=30)
    head = next(c for c in reports.reproduction_claims(saved) if c.claim.startswith("A single cross-attention head"))
    for model, est in head.estimates.items():
        assert est.successes == 0 and est.n == 30 and "held out" in head.ours[model]
    assert head.verdict == reports.NOT_SUPPORTED  # 0 of 30: the interval excludes the paper's 78 %
    for r in saved["repetition_hallucinations"].values():  # an older chapter's results: cross-fitted only
        if r.get("loops"):
            r.pop("held_out")
            r["crossfit"] = {"head": {"target": r["best_head"]["target"], "resolved": 0, "loops": r["loops"]}}
    head = next(c for c in reports.reproduction_claims(saved) if c.claim.startswith("A single cross-attention head"))
    for model, est in head.estimates.items():
        assert est.successes == 0 and "cross-fitted" in head.ours[model]
    assert head.verdict == reports.NOT_SUPPORTED  # 0 of n: the interval excludes the paper's 78 %


def test_the_best_head_is_judged_against_a_typical_head_when_saved(results):
    """The null of "a single head resolves many loops" is the share a typical head resolves: a best head whose
    interval clears 0 but not the typical share is not called special."""
    saved = copy.deepcopy(results)
    looping = [m for m, r in saved["repetition_hallucinations"].items() if r.get("loops")]
    assert looping, "the fixture must hold a model with loops"
    for model in looping:
        r = saved["repetition_hallucinations"][model]
        r["held_out"]["head"].update(resolved=30, loops=40, typical=0.0)
    head = next(c for c in reports.reproduction_claims(saved) if c.claim.startswith("A single cross-attention head"))
    assert all(head.model_verdict(m) == reports.SUPPORTED for m in looping)  # 75 % [60, 86] clears 0
    for model in looping:
        saved["repetition_hallucinations"][model]["held_out"]["head"]["typical"] = 0.7
    head = next(c for c in reports.reproduction_claims(saved) if c.claim.startswith("A single cross-attention head"))
    for model in looping:
        assert head.null[model] == 0.7 and head.model_verdict(model) != reports.SUPPORTED
        assert "a typical head 70 %" in head.ours[model]
    forest = reports.forest_frame([head])
    assert set(forest[forest.model.isin(looping)].null) == {0.7}


def test_beyond_the_paper_sets_reported_numbers_beside_ours(results):
    table = reports.beyond_the_paper(results)
    assert list(table.columns[:3]) == ["finding", "source", "reported"] and "tiny.en" in table.columns
    assert set(table.chapter) == {"chapters/10_sparse_features", "chapters/11_repairing_hallucinations"}
    heads = table[table.finding.str.startswith("masking a few decoder")].iloc[0]
    assert "75 %" in heads.reported and "self_head_out" in heads["tiny.en"] and "held-out clips" in heads["tiny.en"]
    saved = results["repairing_hallucinations"]["tiny.en"]["held_out"]
    assert f"{saved['none']['wer']:.3f} -> {saved['steer']['wer']:.3f}" in table.iloc[-1]["tiny.en"]
    steering = table[table.finding.str.contains("speech versus non-speech")].iloc[0]
    assert "70 %" in steering.reported and "AUROC" in steering["tiny.en"] and "not steered" in steering["tiny.en"]
    changed = copy.deepcopy(results)
    changed["sparse_features"]["tiny.en"]["fve_held_out"] = 0.123456
    assert "0.123" in reports.beyond_the_paper(changed).iloc[0]["tiny.en"]  # it reads the saved numbers


def test_an_early_cross_attention_layer_does_not_support_the_late_layer_claim(results):
    early = copy.deepcopy(results)
    early["repetition_hallucinations"]["tiny.en"]["best_component"]["target"] = "dec.0.cross_attn_out"
    early["repetition_hallucinations"]["tiny.en"]["clean_wer"]["dec.0.cross_attn_out"] = 0.1
    claim = next(c for c in reports.reproduction_claims(early) if c.claim.startswith("Patching a late decoder"))
    assert "layer 0 of 4" in claim.ours["tiny.en"] and claim.verdict == reports.NOT_SUPPORTED
    late = next(c for c in reports.reproduction_claims(results) if c.claim.startswith("Patching a late decoder"))
    assert "layer 3 of 4" in late.ours["tiny.en"] and late.verdict != reports.NOT_SUPPORTED  # the test can fail
