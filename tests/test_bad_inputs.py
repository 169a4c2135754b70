"""A table of bad inputs to the public API: each must raise the package's error type with a message that names
the argument, hook point or file and says what to do. A regression (a silent wrong answer, or an error from deep
inside torch) shows up here. On the toy model (fast), except where a real tokenizer or the model loader is the
point."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from asrinterp_utils import (attention, audio, extract, hooks, lens, metrics, patching, plotting, probes, repair,
                             repetition, run, sae, stats, widgets)
from asrinterp_utils.audio import AudioError
from asrinterp_utils.cache import CachePassError, cache_activations
from asrinterp_utils.data import bank
from asrinterp_utils.hooks import HookPointError

from ._toy_lm import toy_clips, toy_loaded_model

LM = toy_loaded_model()
CLIPS = toy_clips(2)
FEATS, _ = LM.features(CLIPS)
STATES = run.encode_features(LM, FEATS)
IDS = torch.tensor([[1, 3, 4, 5], [1, 3, 5, 6]])
METRIC = patching.token_logprob(start=2)
TWO_CLIP_SWEEP = patching.GenerationSweep(labels=["dec.0.mlp_out"], token_ids=[[[3], [4]]], texts=[["a", "b"]],
                                          baseline_ids=[[3], [4]], baseline_texts=["a", "b"],
                                          reference_texts=["", ""], max_new_tokens=8)
RESIDUALS = lens.DecoderResiduals(torch.zeros(3, 4, 16), torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long))
RNG = np.random.default_rng(0)
TMP = Path(tempfile.mkdtemp(prefix="asrinterp-bad-inputs-"))  # extraction folders of the table's rows
atexit.register(shutil.rmtree, TMP, ignore_errors=True)


def teacher_forced_under(plan):
    with hooks.patch(LM, plan):
        run.teacher_force(LM, STATES, IDS)


def two_encoder_passes(pool=None):
    with cache_activations(LM, "enc.0.resid_post", pool=pool):
        run.encode_features(LM, FEATS[:1])
        run.encode_features(LM, FEATS[1:])


def greedy_then_teacher_force():
    with cache_activations(LM, "dec.1.mlp_out"):
        run.teacher_force(LM, STATES, run.greedy(LM, STATES, max_new_tokens=3).ids)


def missing_cache_key():
    with cache_activations(LM, "enc.0.resid_post") as cache:
        run.encode_features(LM, FEATS)
    return cache["enc.1.resid_post"]


def pooled_with_lengths(n_frames):
    with cache_activations(LM, "enc.0.resid_post", pool="mean", n_frames=n_frames):
        run.encode_features(LM, FEATS)


def pooled_with_three_lengths():
    with cache_activations(LM, "enc.0.resid_post", pool="mean", n_frames=[10, 20, 30]):
        run.encode_features(LM, FEATS)


def other_configuration_in_one_folder():
    extract.extract_features(LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "e", progress=False)
    extract.extract_features(LM, CLIPS, "enc.1.mlp_out", out_dir=TMP / "e", progress=False)


def stereo(shape):
    return RNG.uniform(-0.5, 0.5, shape).astype(np.float32)


CASES = [
    # audio
    ("audio: NaN samples", lambda: audio.validate_audio(np.array([0.0, np.nan], np.float32)), AudioError, "NaN"),
    ("audio: empty", lambda: audio.validate_audio(np.zeros(0, np.float32)), AudioError, "empty"),
    ("audio: 8 kHz", lambda: audio.validate_audio(np.zeros(800, np.float32), sample_rate=8000), AudioError,
     "8000 Hz.*to_whisper_audio"),
    ("audio: longer than 30 s", lambda: audio.validate_audio(np.zeros(16_000 * 31, np.float32)), AudioError,
     "31.0 s.*chunk_audio"),
    ("audio: 2-D array", lambda: audio.validate_audio(stereo((100, 2))), AudioError, r"shape \(100, 2\)"),
    ("audio: integer samples", lambda: audio.validate_audio(np.zeros(100, np.int16)), AudioError, "int16"),
    ("audio: int16 cast to float", lambda: audio.validate_audio(stereo(1000) * 30000), AudioError, "32768"),
    ("audio: channels-first read as channels-last", lambda: audio.to_whisper_audio(stereo((2, 16_000)), 16_000),
     AudioError, "channels_last=False"),
    ("audio: channels-last read as channels-first",
     lambda: audio.to_whisper_audio(stereo((16_000, 2)), 16_000, channels_last=False), AudioError,
     "channels_last=True"),
    ("audio: 3-D array", lambda: audio.to_whisper_audio(np.zeros((2, 2, 9)), 16_000), AudioError, r"\(2, 2, 9\)"),
    ("audio: rate 0", lambda: audio.to_whisper_audio(np.zeros(10, np.float32), 0), AudioError, "sample rate"),
    ("audio: missing file", lambda: audio.load_audio("/nonexistent/clip.wav"), AudioError, "/nonexistent/clip.wav"),
    # models
    ("model: device that is not here", lambda: __import__("asrinterp_utils.models").models.load_model(
        "tiny.en", device="cuda:3"), ValueError, "cuda:3.*this machine has"),
    ("model: not a device", lambda: __import__("asrinterp_utils.models").models.load_model(
        "tiny.en", device="gpu0"), ValueError, "gpu0"),
    ("model: dtype", lambda: __import__("asrinterp_utils.models").models.load_model("tiny.en", dtype="float8"),
     ValueError, "float8.*bfloat16"),
    ("model: features of one clip, not a list", lambda: LM.features(CLIPS[0]), TypeError, r"\[audio\]"),
    ("model: no clips", lambda: LM.features([]), ValueError, "audio_list is empty"),
    ("model: a bad clip in the list", lambda: LM.features([CLIPS[0], np.zeros((3, 3, 3))]), AudioError,
     r"audio_list\[1\]"),
    # the execution layer
    ("encode: batch_size 0", lambda: run.encode(LM, CLIPS, batch_size=0), ValueError, "batch_size"),
    ("encode: wrong mel bins", lambda: run.encode_features(LM, torch.zeros(1, 40, 300)), ValueError,
     r"\(batch, 80, 300\).*\(1, 40, 300\)"),
    ("greedy: 2-D states", lambda: run.greedy(LM, STATES[0], max_new_tokens=4), ValueError, r"states.*\(150, 16\)"),
    ("greedy: states of another width", lambda: run.greedy(LM, torch.zeros(1, 150, 7), max_new_tokens=4), ValueError,
     "states"),
    ("greedy: max_new_tokens 0", lambda: run.greedy(LM, STATES, max_new_tokens=0), ValueError, "max_new_tokens"),
    ("greedy: max_new_tokens past the context", lambda: run.greedy(LM, STATES, max_new_tokens=500), ValueError,
     "max_new_tokens.*64 positions"),
    ("greedy: kv_rows out of range", lambda: run.greedy(LM, STATES, kv_rows=[0, 5], max_new_tokens=4), ValueError,
     "kv_rows"),
    ("greedy: kv_rows that are not integers", lambda: run.greedy(LM, STATES, kv_rows=[0.5, 1.2], max_new_tokens=3),
     ValueError, "kv_rows must be integer row indices"),
    ("greedy: follow given as floats", lambda: run.greedy(LM, STATES, follow=[0.0, 1.0], max_new_tokens=3),
     ValueError, "follow must give integer row indices"),
    ("patch: rows given as floats", lambda: run.teacher_force(LM, STATES, IDS,
                                                               patches={"dec.0.mlp_out": hooks.zero(rows=[0.5])}),
     IndexError, r"rows must be integer indices.*\[0.5\]"),
    ("patch: a negative position", lambda: run.teacher_force(LM, STATES, IDS,
                                                              patches={"dec.0.mlp_out": hooks.zero(positions=[-1])}),
     ValueError, "absolute and non-negative"),
    ("greedy: max_new_tokens not a whole number", lambda: run.greedy(LM, STATES, max_new_tokens=3.7), ValueError,
     "max_new_tokens must be a whole number"),
    ("greedy: follow of the wrong length", lambda: run.greedy(LM, STATES, follow=[0], max_new_tokens=4), ValueError,
     "follow"),
    ("greedy: follow chains", lambda: run.greedy(LM, STATES, kv_rows=[0, 1, 1], follow=[0, 0, 1], max_new_tokens=4),
     ValueError, "no chains"),
    ("teacher_force: ids for fewer clips", lambda: run.teacher_force(LM, STATES, IDS[:1]), ValueError,
     "decoder_input_ids"),
    ("teacher_force: 1-D ids", lambda: run.teacher_force(LM, STATES, IDS[0]), ValueError, "decoder_input_ids"),
    ("teacher_force: longer than the decoder", lambda: run.teacher_force(LM, STATES, torch.ones(2, 500).long()),
     ValueError, "500 tokens.*64 positions"),
    ("teacher_force: token id past the vocabulary", lambda: run.teacher_force(LM, STATES, torch.full((2, 4), 99)),
     ValueError, "0..7"),
    ("teacher_force: float token ids", lambda: run.teacher_force(LM, STATES, IDS.float()), ValueError,
     "decoder_input_ids must be integer token ids"),
    ("teacher_force: NaN encoder states", lambda: run.teacher_force(LM, STATES * float("nan"), IDS), ValueError,
     "states hold .* non-finite"),
    ("greedy: NaN encoder states", lambda: run.greedy(LM, STATES * float("nan"), max_new_tokens=3), ValueError,
     "states hold .* non-finite"),
    ("encode: NaN features", lambda: run.encode_features(LM, FEATS * float("nan")), ValueError,
     "features hold .* non-finite.*lm.features"),
    ("teacher_force: a patch at a position past the tokens",
     lambda: run.teacher_force(LM, STATES, IDS, patches={"dec.1.mlp_out": hooks.zero(positions=[2, 50])}), ValueError,
     r"dec.1.mlp_out: positions \[50\] \(the run has 4 decoder positions\).*change nothing"),
    ("teacher_force: an encoder patch past the frames",
     lambda: run.teacher_force(LM, STATES, IDS, patches={"enc.0.resid_post": hooks.zero(positions=slice(150, None))}),
     ValueError, r"enc.0.resid_post: positions \[150\] \(the run has 150 encoder frames\)"),
    ("greedy: a patch at a position no step reaches",
     lambda: run.greedy(LM, STATES, max_new_tokens=3, patches={"dec.*.mlp_out": hooks.zero(positions=[30])}),
     ValueError, r"dec.\*.mlp_out: positions \[30\].*max_new_tokens=3"),
    # hook points and interventions
    ("hooks: misspelt point", lambda: hooks.parse_hook_point(LM, "dec.0.mlp_outt"), HookPointError, "dec.0.mlp_out"),
    ("hooks: layer out of range", lambda: hooks.parse_hook_point(LM, "dec.9.mlp_out"), HookPointError,
     "layer 9.*0..1"),
    ("hooks: pattern that matches nothing", lambda: hooks.resolve_hook_points(LM, "dec.*.nothing"), HookPointError,
     "dec.*.nothing"),
    ("patch: head out of range", lambda: teacher_forced_under({"dec.0.cross_head_out": hooks.zero(heads=[7])}),
     IndexError, r"dec\.0\.cross_head_out.*heads \[7\]"),
    ("patch: row out of range", lambda: teacher_forced_under({"dec.0.mlp_out": hooks.zero(rows=[5])}), IndexError,
     r"dec\.0\.mlp_out.*rows \[5\]"),
    ("patch: steering vector of the wrong width", lambda: teacher_forced_under({"dec.0.mlp_out": hooks.add(
        torch.ones(5))}), ValueError, r"dec\.0\.mlp_out.*\(5,\).*\(2, 4, 16\)"),
    ("patch: value for another batch", lambda: teacher_forced_under({"dec.0.mlp_out": hooks.replace(
        torch.ones(3, 4, 16))}), ValueError, r"dec\.0\.mlp_out.*batch 3"),
    ("patch: heads on a point without heads", lambda: teacher_forced_under({"dec.0.mlp_out": hooks.zero(heads=[0])}),
     HookPointError, "per-head point"),
    ("patch: writing an attention pattern", lambda: teacher_forced_under({"dec.0.cross_pattern": hooks.zero()}),
     HookPointError, "read-only"),
    ("patch: a string instead of an intervention", lambda: teacher_forced_under({"dec.0.mlp_out": "zero"}),
     TypeError, "'dec.0.mlp_out' is a str"),
    ("patch: not a dict", lambda: teacher_forced_under([hooks.zero()]), TypeError, "dict"),
    # caches
    ("cache: unknown pool", lambda: cache_activations(LM, "enc.0.resid_post", pool="median").__enter__(), ValueError,
     "median"),
    ("cache: a point that was not cached", missing_cache_key, KeyError, "enc.1.resid_post.*Nearest"),
    ("cache: two encoder passes in one block", two_encoder_passes, CachePassError,
     r"enc\.0\.resid_post: a second encoder pass"),
    ("cache: two encoder passes, pooled", lambda: two_encoder_passes("mean"), CachePassError, "second encoder pass"),
    ("cache: greedy then teacher forcing in one block", greedy_then_teacher_force, CachePassError,
     "second decoder pass"),
    ("cache: n_frames for another batch", pooled_with_three_lengths, ValueError, "n_frames has 3 entries.*2 rows"),
    ("cache: n_frames past the frames", lambda: pooled_with_lengths([10_000, 10]), ValueError,
     r"n_frames \[10000, 10\] exceed the 150 frames"),
    ("cache: a clip with no frames", lambda: pooled_with_lengths([0, 10]), ValueError, "n_frames must be at least 1"),
    ("cache: fractional n_frames", lambda: pooled_with_lengths([10.7, 10]), ValueError,
     "n_frames must be whole numbers"),
    # lenses
    ("lens: token ids for fewer clips", lambda: lens.logit_lens(LM, FEATS, IDS[:1]), ValueError,
     "2 clips.*1 rows"),
    ("lens: encoder layer out of range", lambda: lens.encoder_lens(LM, CLIPS, layers=[9]), ValueError,
     r"0\.\.1.*\[9\]"),
    ("lens: references for fewer clips", lambda: lens.encoder_lens(LM, CLIPS, references=["a"]), ValueError,
     "1 references for 2 clips"),
    ("lens: texts for more clips", lambda: lens.decoder_residuals(LM, CLIPS, ["a", "b", "c"], progress=False),
     ValueError, "3 texts for 2 clips"),
    ("lens: positions given to subset as clips", lambda: RESIDUALS.subset(range(5)), ValueError,
     r"clips \[2, 3, 4\] have no positions.*not position indices"),
    ("lens: an empty split to fit on", lambda: lens.fit_tuned_lens(LM, RESIDUALS, RESIDUALS.subset([]),
                                                                   progress=False), ValueError,
     "val holds no positions"),
    ("lens: a tuned lens of another model", lambda: lens.compare_lenses(LM, RESIDUALS, lens.TunedLens(6, 16)),
     ValueError, "6 lens layers, the residuals 3"),
    ("lens: layer logits of another batch", lambda: lens.lens_statistics(
        torch.zeros(1, 3, 8), [lambda: torch.zeros(2, 3, 8)]), ValueError, r"layer 0 gave logits of shape \(2, 3, 8\)"),
    # patching
    ("patching: features and ids of different batches", lambda: patching.run_sweep(
        LM, FEATS[:1], IDS, patching.component_targets(LM, "dec.*.mlp_out"), METRIC), ValueError,
     "decoder_input_ids"),
    ("patching: an Encoded run whose states are of fewer clips", lambda: patching.run_sweep(
        LM, run.Encoded(FEATS, torch.tensor([150, 150]), torch.zeros(1, 150, 16)), IDS,
        patching.component_targets(LM, "dec.*.mlp_out"), METRIC), ValueError, "1 rows of encoder states"),
    ("patching: attribution on features and ids of different batches", lambda: patching.attribution_patching(
        LM, FEATS[:1], IDS, "dec.*.mlp_out", None, METRIC), ValueError, "attribution_patching: 1 clips"),
    ("patching: token_logprob starting past the tokens", lambda: patching.token_logprob(start=10)(
        torch.zeros(2, 4, 8), IDS), ValueError, "start must be in 1..3"),
    ("patching: kl_from on logits of other clips", lambda: patching.kl_from(torch.zeros(2, 4, 8), start=2)(
        torch.zeros(3, 4, 8), IDS), ValueError, r"logits \(3, 4, 8\) do not repeat the clips of base_logits"),
    ("patching: kl_from starting past the tokens", lambda: patching.kl_from(torch.zeros(2, 4, 8), start=4),
     ValueError, "kl_from: start must be in 1..3 for 4 tokens"),
    ("patching: unknown method", lambda: patching.run_sweep(LM, FEATS, IDS, [], METRIC, method="fast"), ValueError,
     "'fast'"),
    ("patching: a metric that reduces over clips", lambda: patching.run_sweep(
        LM, FEATS, IDS, patching.component_targets(LM, "dec.*.mlp_out"), lambda logits, ids: logits.sum()),
     ValueError, r"one number per clip, shape \(2,\); it gave \(\)"),
    ("patching: an encoder sweep's metric that reduces over clips", lambda: patching.run_sweep(
        LM, FEATS, IDS, patching.component_targets(LM, "enc.*.mlp_out"), lambda logits, ids: logits.sum()),
     ValueError, r"one number per clip"),
    ("patching: logit_diff position past the tokens", lambda: patching.logit_diff(10, 1, 2)(torch.zeros(2, 4, 8),
                                                                                          IDS), ValueError,
     "position must be in 0..3"),
    ("patching: logit_diff values for another number of clips", lambda: patching.logit_diff([1, 2, 3], 1, 2)(
        torch.zeros(2, 4, 8), IDS), ValueError, "3 values of position for 2 rows"),
    ("patching: encoder and decoder targets in one generation sweep", lambda: patching.generate_sweep(
        LM, CLIPS, [patching.PatchTarget("x", {"enc.0.mlp_out": hooks.zero(), "dec.0.mlp_out": hooks.zero()})]),
     ValueError, "either encoder points or decoder points"),
    ("patching: one reference for two clips", lambda: patching.clean_and_reference(LM, CLIPS, reference=CLIPS[:1]),
     ValueError, "one reference clip per clip"),
    ("patching: REFERENCE outside a generation sweep's replace", lambda: patching.generate_sweep(
        LM, CLIPS, [patching.PatchTarget("x", {"dec.0.mlp_out": hooks.add(patching.REFERENCE)})], max_new_tokens=2),
     ValueError, "REFERENCE is a source for replace"),
    # probes
    ("probes: fewer labels than clips", lambda: probes.probe_layers(RNG.random((10, 2, 4)), np.array([0, 1] * 4),
                                                                    np.arange(10)), ValueError, "labels 8"),
    ("probes: fewer groups than clips", lambda: probes.probe_layers(RNG.random((10, 2, 4)), np.array([0, 1] * 5),
                                                                    np.arange(9)), ValueError, "groups 9"),
    ("probes: a negative C", lambda: probes.probe_layers(RNG.random((10, 2, 4)), np.array([0, 1] * 5), np.arange(10),
                                                        Cs=(-1.0, 1.0)), ValueError, "positive inverse regularisation"),
    ("probes: negative n_bootstrap", lambda: probes.probe_layers(RNG.random((10, 2, 4)), np.array([0, 1] * 5),
                                                                np.arange(10), n_bootstrap=-5), ValueError,
     "n_bootstrap must be 0"),
    ("probes: one class", lambda: probes.probe_layers(RNG.random((10, 2, 4)), np.zeros(10), np.arange(10)),
     ValueError, "two classes"),
    ("probes: NaN features", lambda: probes.probe_layers(np.full((10, 2, 4), np.nan), np.array([0, 1] * 5),
                                                         np.arange(10)), ValueError, "NaN"),
    # extraction
    ("extract: a decoder point on the encoder side", lambda: extract.extract_features(
        LM, CLIPS, "dec.0.mlp_out", out_dir=TMP / "a", side="encoder"), ValueError, r"not encoder points"),
    ("extract: out_dir is a file", lambda: extract.extract_features(LM, CLIPS, "enc.0.mlp_out", out_dir=__file__,
                                                                     progress=False), ValueError, "is a file"),
    ("extract: unknown side", lambda: extract.extract_features(LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "b",
                                                               side="middle"), ValueError, "'middle'"),
    ("extract: unknown pool", lambda: extract.extract_features(LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "c",
                                                               pool="median"), ValueError, "'median'"),
    ("extract: attention patterns pooled", lambda: extract.extract_features(LM, CLIPS, "enc.0.attn_pattern",
                                                                            out_dir=TMP / "d"), ValueError,
     "cannot be pooled"),
    ("extract: another configuration in the same folder", other_configuration_in_one_folder,
     extract.ConfigMismatchError, r"enc\.0\.mlp_out.*enc\.1\.mlp_out"),
    ("extract: shards of no clips (refused before the folder is claimed)", lambda: extract.extract_features(
        LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "f", shard_size=0), ValueError, "shard_size must be .* got 0"),
    ("extract: spans given as single times", lambda: extract.extract_features(
        LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "g", spans=[0.5, 1.0]), ValueError, r"one \(start_s, end_s\) pair"),
    ("extract: one batch of no clips", lambda: extract.pool_batch(LM, [], ["enc.0.mlp_out"]), ValueError,
     "audio holds no clips"),
    ("extract: one batch pooled at the last token of the encoder", lambda: extract.pool_batch(
        LM, CLIPS, ["enc.0.mlp_out"], pool="last"), ValueError, 'needs side="decoder"'),
    ("extract: one batch with a span too few", lambda: extract.pool_batch(
        LM, CLIPS, ["enc.0.mlp_out"], spans=[(0.0, 0.5)]), ValueError, "spans has 1 entries for 2 clips"),
    ("extract: the log-mel baseline in batches of none", lambda: extract.log_mel_features(LM, CLIPS, batch_size=0),
     ValueError, "batch_size must be"),
    ("extract: a table without paths", lambda: extract.table_features(LM, pd.DataFrame({"x": [1]}), "enc.0.mlp_out"),
     ValueError, "'path' column"),
    # data
    ("data: a dataset the bank does not have", lambda: bank.speech_dataset("klingon"), KeyError,
     "'klingon'.*the bank has"),
    ("data: spread by a missing column", lambda: bank.spread(pd.DataFrame({"a": [1]}), 1, "b"), KeyError,
     "no column 'b'"),
    ("data: truncation keeping more than the clip", lambda: bank.truncated_clips(
        pd.DataFrame({"path": [], "text": []}), keep_fraction=1.5), ValueError, "keep_fraction"),
    ("data: a speaker split without speakers", lambda: bank.speaker_split(pd.DataFrame({"a": [1]})), KeyError,
     "no column 'speaker'"),
    ("data: a LibriSpeech split that does not exist", lambda: __import__(
        "asrinterp_utils.data.online").data.online.librispeech("dev-klingon"), ValueError,
     "'dev-klingon'.*validation.clean"),
    ("data: LibriSpeech, keeping no clips", lambda: __import__(
        "asrinterp_utils.data.online").data.online.librispeech(n=0), ValueError, r"n \(how many clips to keep\)"),
    ("data: LibriSpeech from a local copy that is not there", lambda: __import__(
        "asrinterp_utils.data.online").data.online.librispeech(data_dir=TMP / "no-librispeech"), FileNotFoundError,
     "no-librispeech' does not exist"),
    ("data: an accented corpus with a negative timeout", lambda: __import__(
        "asrinterp_utils.data.online").data.online.accented_english(timeout_s=-1), ValueError,
     "timeout_s must be a positive number"),
    ("data: an accented corpus with no known column mapping", lambda: __import__(
        "asrinterp_utils.data.online").data.online.accented_english("someone/unknown-accents"), ValueError,
     "'someone/unknown-accents'.*edinburghcstr/edacc.*spec="),
    ("data: an accented-corpus spec with a misspelt key", lambda: __import__(
        "asrinterp_utils.data.online").data.online.accented_english(spec={"colums": {}}), ValueError,
     r"\['colums'\].*'columns'"),
    ("data: an accented-corpus spec mapping an unknown field", lambda: __import__(
        "asrinterp_utils.data.online").data.online.accented_english(spec={"columns": {"speeker": "spk"}}),
     ValueError, r"\['speeker'\].*'speaker'"),
    # metrics
    ("metrics: corpus WER of lists of different lengths", lambda: metrics.word_error_rate(["a b"], ["a", "b"]),
     ValueError, "1 references but 2 hypotheses"),
    ("metrics: WER of more hypotheses than references", lambda: metrics.clip_wers(["a"], ["a", "b"]), ValueError,
     "1 references but 2 hypotheses"),
    ("metrics: per-clip WER of one string", lambda: metrics.clip_wers("abc", ["a", "b", "c"]), TypeError,
     "references is one string.*character by character.*word_error_rate"),
    ("metrics: repeats counted in a string", lambda: metrics.longest_repeat("a a a a"), TypeError,
     r"words is one string.*text\.split\(\)"),
    ("metrics: one repeat counted as a loop", lambda: metrics.is_repetitive("a b c", min_repeats=1), ValueError,
     "min_repeats must be a whole number >= 2"),
    ("metrics: the same word spoken and expected", lambda: metrics.target_word_outcome("x", "Boat", "boat."),
     ValueError, "same word after normalising"),
    ("metrics: non-speech transcripts as one string", lambda: metrics.nonspeech_transcripts("thank you"),
     TypeError, "transcripts is one string"),
    ("probes: transfer test groups for other clips", lambda: probes.probe_transfer(
        RNG.normal(size=(8, 1, 3)), ["a", "b"] * 4, [0, 0, 1, 1, 2, 2, 3, 3], RNG.normal(size=(4, 1, 3)),
        ["a", "b"] * 2, test_groups=[0, 1]), ValueError, r"test_groups \(2\) must give one group per test clip \(4\)"),
    ("probes: good and bad without a good clip", lambda: probes.good_and_bad(pd.DataFrame({"wer": [0.5, 1.0]}), "wer"),
     ValueError, "0 clips with zero WER and 2 with a positive one"),
    ("probes: an interval with its ends swapped", lambda: probes.compare_with_baselines(0.9, 0.7, 0.5, 0.6, 0.6),
     ValueError, r"\[0\.9, 0\.7\] has its ends swapped"),
    # repetition loops
    ("repetition: references for another number of loops", lambda: repetition.loop_resolution(
        TWO_CLIP_SWEEP, references=["a b c"]), ValueError, "1 references for the sweep's 2 clips"),
    ("repetition: candidates without their audio", lambda: repetition.mine_loops(
        LM, pd.DataFrame({"candidate_id": ["x"], "kind": ["speed2x"], "text": ["a"], "repeats_in_audio": [1]}),
        progress=False), ValueError, r"lacks the columns \['audio'\].*candidate_inputs"),
    # statistics
    ("stats: a share given where a count is due", lambda: stats.proportion(2.7, 10), ValueError,
     "counts \\(whole numbers\\)"),
    ("stats: a confidence given in percent", lambda: stats.proportion(3, 10, confidence=95), ValueError,
     "between 0 and 1"),
    ("stats: a bootstrap's confidence given in percent", lambda: stats.bootstrap_mean([1.0, 2.0], confidence=95),
     ValueError, "between 0 and 1"),
    ("stats: groups of another length than the values", lambda: stats.bootstrap_mean([1.0, 2.0, 3.0], groups=[0, 1]),
     ValueError, "groups has 2 entries for 3 values"),
    ("stats: more folds than groups", lambda: stats.cross_fitted_best(np.ones((4, 2)), n_folds=5), ValueError,
     "n_folds must be .* \\(4\\)"),
    ("stats: a paired comparison of different items", lambda: stats.paired_difference([1, 2], [1]), ValueError,
     "a has 2 items and b 1"),
    ("execution: an encoder pass stopped past the last layer", lambda: run.encode_features(LM, FEATS, stop_at_layer=9),
     ValueError, "stop_at_layer must be .* from 1 to 2"),
    ("sae: more active latents than latents", lambda: sae.TopKSAE(16, 8, 9), ValueError, r"k \(9\)"),
    ("sae: activations of another width", lambda: sae.TopKSAE(16, 32, 4).encode(torch.zeros(2, 8)), ValueError,
     r"\(\.\.\., 16\)"),
    ("sae: a per-head point", lambda: sae.collect_activations(LM, CLIPS, "enc.0.head_out"), ValueError,
     "enc.0.head_out is laid out"),
    ("sae: an SAE of another point's width", lambda: sae.spliced_cost(LM, sae.TopKSAE(8, 16, 2), "enc.1.mlp_hidden",
                                                                       CLIPS), ValueError, "8-dimensional"),
    ("sae: a label association without both classes held out", lambda: sae.label_association(
        np.ones((4, 3)), [True, False, True, True], [0, 1, 2, 3], [True, True, False, False]), ValueError,
     "evaluation split needs clips of both classes"),
    ("sae: a per-value table of a label with one value", lambda: sae.best_latent_per_value(
        np.ones((4, 3)), ["a"] * 4, [0, 1, 2, 3], [True, True, False, False]), ValueError, "at least two values"),
    ("sae: no SAE in the folder", lambda: sae.load(TMP / "no-sae"), FileNotFoundError, "cfg.json"),
    ("sae: a batch of no clips", lambda: sae.collect_activations(LM, CLIPS, "enc.0.resid_post", batch_size=0),
     ValueError, "batch_size must be"),
    ("repair: the no-speech rule with lists of different lengths", lambda: repair.silence_rule([0.9, 0.1], [-2.0]),
     ValueError, "2 no-speech probabilities but 1"),
    ("repair: a no-speech threshold given in percent", lambda: repair.silence_rule([0.9], [-2.0],
                                                                                  no_speech_threshold=60),
     ValueError, "between 0 and 1"),
    ("repair: a sweep of an encoder point over one encoder output", lambda: repair.rule_sweep(
        LM, torch.zeros(1, 150, 16), [patching.PatchTarget("x", {"enc.0.resid_post": hooks.zero()})], token=5),
     ValueError, "enc.0.resid_post, an encoder point"),
    ("repair: a sweep whose targets share a label", lambda: repair.rule_sweep(
        LM, torch.zeros(1, 150, 16), [patching.PatchTarget("x", {"dec.0.resid_post": hooks.zero()})] * 2, token=5),
     ValueError, r"\['x'\] repeat"),
    ("repair: steering with two operations", lambda: repair.steer_direction(torch.ones(4), add=1.0, clamp=0.0),
     ValueError, "exactly one of"),
    ("repair: speech cost with fewer references than outputs", lambda: repair.speech_cost(
        pd.DataFrame({"output": ["a", "b"], "silent": [False, False]}), ["a"]), ValueError, "2 outputs but 1"),
    ("repair: a no-speech token from a model without a tokenizer", lambda: repair.no_speech_token(LM), ValueError,
     "pass the token id"),
    ("sae: top activations of a latent the SAE does not have", lambda: sae.top_activations(
        sae.TopKSAE(16, 8, 2), sae.Activations(torch.zeros(3, 16), np.zeros(3, int), np.arange(3), "enc.0.resid_post"),
        [0, 8]), ValueError, r"latent must be in 0\.\.7; got \[8\]"),
    ("sae: top activations of rows that do not know their clip", lambda: sae.top_activations(
        sae.TopKSAE(16, 8, 2), torch.zeros(3, 16), 0), ValueError, "give the Activations"),
    ("widgets: an explorer of no views", lambda: widgets.text_explorer({}), ValueError, "non-empty dict"),
    ("widgets: an explorer keyed by single numbers", lambda: widgets.text_explorer({0: "a", 1: "b"}), ValueError,
     r"\(row, col\) pair .* got 0"),
    ("widgets: an image explorer given a figure, not PNG bytes", lambda: widgets.image_explorer({(0, 0): "fig"}),
     ValueError, r"view at \(0, 0\) must be PNG bytes"),
    ("widgets: an explorer with a hole in its grid", lambda: widgets.text_explorer(
        {(0, 0): "a", (1, 1): "b"}), ValueError, "full grid"),
    ("widgets: a choice among no images", lambda: widgets.choice_explorer([]), ValueError, "non-empty list"),
    ("attention: alignment with lengths for fewer clips than the patterns hold", lambda: attention.alignment_table(
        [torch.rand(2, 2, 4, 10)], [3], [10, 10]), ValueError, "holds 2 clips but n_tokens has 1"),
    ("attention: alignment over more frames than the pattern has", lambda: attention.alignment_table(
        [torch.rand(2, 2, 4, 10)], [3, 3], [20, 20]), ValueError, r"n_frames must be 1\.\.10"),
    ("attention: alignment over more tokens than the pattern has", lambda: attention.alignment_table(
        [torch.rand(2, 2, 4, 10)], [9, 9], [10, 10]), ValueError, r"n_tokens must be 0\.\.4"),
    ("attention: one head's score of a 1-D pattern", lambda: attention.alignment_score(np.ones(5)), ValueError,
     r"\(tokens, frames\)"),
    ("patching: heads of a point that has none", lambda: patching.head_targets(LM, "mlp_out"), ValueError,
     "per-head point.*'mlp_out'"),
    ("patching: heads of a layer the model does not have", lambda: patching.head_targets(LM, layers=[5]),
     ValueError, r"layers must be in 0\.\.1"),
    ("patching: combining nothing", lambda: patching.combine(), ValueError, "at least one PatchTarget"),
    ("hooks: an intervention on no positions", lambda: hooks.zero(positions=[]), ValueError,
     "positions selects nothing"),
    ("hooks: an intervention on no heads (an all-False mask)", lambda: hooks.zero(heads=torch.zeros(4, dtype=bool)),
     ValueError, "heads selects nothing"),
    ("hooks: a steering vector holding NaN", lambda: hooks.add(torch.full((16,), float("nan"))), ValueError,
     "NaN or infinity"),
    ("hooks: scaling by infinity", lambda: hooks.scale(float("inf")), ValueError, "NaN or infinity"),
    ("stats: a verdict on a NaN estimate", lambda: stats.verdict(stats.Estimate(float("nan"), 0.0, 1.0, 3, "x")),
     ValueError, "must be finite"),
    ("probes: the best layer of an empty table", lambda: probes.best_layer(
        pd.DataFrame({"layer": [], "accuracy": []})), ValueError, "no layer with an accuracy"),
    ("sae: per-clip means for fewer clips than the rows name", lambda: sae.clip_means(
        sae.TopKSAE(8, 16, 2), sae.Activations(torch.randn(4, 8), np.arange(4), np.arange(4), "enc.0.resid_post"),
        n_clips=2), ValueError, r"clips 0\.\.3, but n_clips is 2"),
    ("repetition: a loop judged against audio that says it no times", lambda: repetition.is_hallucinated_loop(
        "a a a a a", "a", hit_limit=False, repeats_in_audio=0), ValueError, "repeats_in_audio"),
    ("metrics: normalising no text", lambda: metrics.normalize_text(None), TypeError, "got NoneType"),
    ("metrics: the compression ratio of bytes", lambda: metrics.compression_ratio(b"abc"), TypeError,
     "decode it first"),
    ("metrics: repeats of n-grams of no words", lambda: metrics.longest_repeat(["a"], max_n=0), ValueError,
     "max_n"),
    ("execution: an encoder batch of 2.5 clips", lambda: run.encode(LM, CLIPS, batch_size=2.5), ValueError,
     "batch_size must be a whole number"),
    ("lens: token kinds without a tokenizer", lambda: lens.token_kinds(None, [1, 2]), ValueError,
     r"lm\.tokenizer"),
    ("lens: the encoder lens of no clips", lambda: lens.encoder_lens(LM, []), ValueError, "audio_list is empty"),
    ("lens: the corpus lens in batches of none", lambda: lens.corpus_logit_lens(LM, CLIPS, batch_size=0),
     ValueError, "batch_size must be"),
    ("lens: decoder residuals of no clips", lambda: lens.decoder_residuals(LM, []), ValueError,
     "audio_list is empty"),
    ("plotting: a heatmap of nothing", lambda: plotting.patch_heatmap({}, value_label="x"), ValueError,
     "non-empty \\(layers, components\\)"),
    ("audio: a folder given as a file", lambda: audio.load_audio(TMP), AudioError, "a folder, not an audio file"),
    ("plotting: a pattern with more rows than token labels", lambda: plotting.cross_attention_heatmap(
        np.ones((4, 30)), ["a", "b"], 20), ValueError, "one row per token label"),
    ("plotting: more real frames than the pattern has", lambda: plotting.cross_attention_heatmap(
        np.ones((2, 30)), ["a", "b"], 31), ValueError, "n_frames must be 1..30"),
]


@pytest.mark.parametrize("what, call, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(what, call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert hooks.active_hook_count(LM) == 0  # no hook left behind by the failure


def test_a_refused_extraction_leaves_no_folder_behind():
    with pytest.raises(ValueError, match="shard_size"):
        extract.extract_features(LM, CLIPS, "enc.0.mlp_out", out_dir=TMP / "refused", shard_size=0)
    assert not (TMP / "refused").exists()


def test_the_table_is_large_enough_to_mean_something():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
