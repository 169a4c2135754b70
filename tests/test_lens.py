"""Lenses with known answers: the last layer's lens is the model's output; LayerNorm statistics are each layer's own;
the saturation layer of a planted agreement pattern; the encoder lens at the last layer is the normal transcript."""
from __future__ import annotations

import pytest
import torch

from asrinterp_utils import lens, run
from asrinterp_utils.cache import cache_activations


@torch.no_grad()
def test_last_layer_lens_equals_the_logits(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with cache_activations(toy, "dec.1.resid_post") as c:
        logits = toy(feats, decoder_input_ids=ids).logits
    assert torch.allclose(lens.lens_logits(toy, c["dec.1.resid_post"]), logits, atol=1e-5)
    result = lens.logit_lens(toy, feats, ids, top_k=3)
    assert result.kl.shape == (3, 2, 7) and result.top_ids.shape == (3, 2, 7, 3)
    assert result.agrees[-1].all() and torch.all(result.kl[-1] < 1e-6) and torch.all(result.final_rank[-1] == 0)
    assert torch.equal(result.final_ids, logits.argmax(-1))
    assert torch.all(result.kl >= 0) and torch.all(result.final_prob <= 1)
    table = result.per_layer()
    assert list(table.layer) == [0, 1, 2] and table.top1_agreement.iloc[-1] == 1.0


@torch.no_grad()
def test_layernorm_statistics_are_each_layers_own(toy):
    """LayerNorm is invariant to rescaling its own input; a lens that reused another layer's statistics is not."""
    x = torch.randn(1, 4, 16)
    assert torch.allclose(lens.lens_logits(toy, 5 * x + 0.0), lens.lens_logits(toy, x), atol=1e-4)


def test_saturation_layer_on_a_planted_pattern():
    agrees = torch.tensor([[[False, True, True, False]],
                           [[True, True, False, False]],
                           [[False, True, True, True]],
                           [[True, True, True, True]]])  # (layers=4, batch=1, tokens=4)
    zeros = torch.zeros(4, 1, 4)
    result = lens.LogitLensResult(top_ids=zeros, top_probs=zeros, final_prob=zeros, final_rank=zeros, kl=zeros,
                                  entropy=zeros, agrees=agrees, final_ids=torch.zeros(1, 4))
    assert result.saturation_layer().tolist() == [[3, 0, 2, 2]]


@pytest.mark.real
def test_encoder_lens_last_layer_reproduces_the_transcript():
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    lm = load_model("tiny.en")
    waves = [clip_audio(p) for p in asterisk_prompts(min_words=6, max_duration_s=6, progress=False).path[:2]]
    table = lens.encoder_lens(lm, waves)
    assert sorted(table.layer.unique()) == [0, 1, 2, 3]
    last = table[table.layer == 3].sort_values("clip").transcript.tolist()
    assert last == run.transcribe(lm, waves)
    # and the logit lens on real speech: agreement rises to 1 at the output
    feats, _ = lm.features(waves)
    result = lens.logit_lens(lm, feats, run.generate_ids(lm, waves))
    agreement = result.per_layer().top1_agreement
    assert agreement.iloc[-1] == 1.0 and agreement.iloc[0] < agreement.iloc[-1]


@pytest.mark.real
def test_corpus_lens_equals_the_logit_lens_of_each_clip_at_its_text_positions():
    """corpus_logit_lens reads only the positions that predict text tokens (batched, padding skipped): the same
    numbers as logit_lens on each clip alone at those positions."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    lm = load_model("tiny.en")
    prompts = asterisk_prompts(min_words=3, max_duration_s=6, progress=False)
    waves = [clip_audio(p) for p in prompts.sort_values("duration_s").path.iloc[[0, -1, 5]]]  # unequal lengths
    corpus = lens.corpus_logit_lens(lm, waves, batch_size=3, progress=False, max_new_tokens=48)
    table = corpus.layers.merge(corpus.tokens, left_on="token_row", right_index=True)
    n_prompt = len(lm.prompt_ids())
    for clip, wave in enumerate(waves):
        ids = run.generate_ids(lm, [wave], max_new_tokens=48)
        alone = lens.logit_lens(lm, lm.features([wave])[0], ids, top_k=1)
        mine = table[table["clip"] == clip]
        n_text = ids.shape[1] - n_prompt - int(ids[0, -1] == lm.tokenizer.eos_token_id)
        assert mine.position.nunique() == n_text > 0
        for row in mine.itertuples():
            assert row.lens_token == int(alone.top_ids[row.layer, 0, row.position, 0])
            assert row.top1_agreement == bool(alone.agrees[row.layer, 0, row.position])
            assert row.kl_to_final == pytest.approx(float(alone.kl[row.layer, 0, row.position]), abs=1e-4)
            # a rank deep in the tail can move by one where two logits tie to float rounding (the corpus lens may
            # read encoder states the store filed from another batch); anything more is a real difference
            assert abs(row.final_token_rank - int(alone.final_rank[row.layer, 0, row.position])) <= 1
    assert len(corpus.transcripts) == 3


@pytest.mark.real
def test_decoding_from_given_encoder_states_equals_normal_decoding():
    """run.greedy on the encoder's own output reproduces run.generate_ids(audio), for the
    English-only and the multilingual model (the encoder lens rests on this)."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    waves = [clip_audio(p) for p in asterisk_prompts(min_words=6, max_duration_s=6, progress=False).path[2:4]]
    for name in ("tiny.en", "base"):
        lm = load_model(name)
        feats, _ = lm.features(waves)
        with torch.no_grad():
            states = lm.model.model.encoder(feats).last_hidden_state
        assert torch.equal(run.greedy(lm, states).ids, run.generate_ids(lm, waves)), name


@pytest.mark.real
def test_greedy_decoding_from_states_does_not_depend_on_the_batch():
    """Early encoder layers of base made Whisper's generate emit timestamp tokens and decode far past the limit with a
    batch of one; run.greedy gives every row the same tokens alone as in a batch, and stays within the limit."""
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    lm = load_model("base", attn_implementation="sdpa")
    wave = clip_audio(asterisk_prompts(min_words=6, max_duration_s=6, progress=False).path.iloc[0])
    feats, _ = lm.features([wave])
    names = [f"enc.{i}.resid_post" for i in range(3)]
    with torch.no_grad(), cache_activations(lm, names, device=None) as cache:
        lm.model.model.encoder(feats)
    states = lm.model.model.encoder.layer_norm(torch.cat([cache[n] for n in names]))
    together = run.greedy(lm, states, max_new_tokens=24).ids
    assert together.shape[1] <= len(lm.prompt_ids()) + 24
    assert (together[:, len(lm.prompt_ids()):] < lm.model.generation_config.no_timestamps_token_id).all()
    for row in range(len(states)):
        alone = run.greedy(lm, states[row:row + 1], max_new_tokens=24).ids[0]
        assert torch.equal(alone, together[row, :len(alone)]) and (together[row, len(alone):] == 50257).all()
    with cache_activations(lm, "dec.0.resid_post"):  # hooks attached: ended rows stay in the batch, same tokens
        assert torch.equal(run.greedy(lm, states, max_new_tokens=24).ids, together)


def test_token_kinds():
    from asrinterp_utils.models import load_model

    tok = load_model("tiny.en").tokenizer
    ids = tok.encode(" The quizzically zygomorphic hit 42 walls, then stopped.", add_special_tokens=False)
    table = lens.token_kinds(tok, ids)
    by_word = table.groupby("word").kind.apply(list).to_dict()
    assert by_word["the"] == ["function"] and by_word["then"] == ["function"]
    assert len(by_word["zygomorphic"]) > 1  # a rare word splits into several tokens
    assert by_word["zygomorphic"][0] == "content" and set(by_word["zygomorphic"][1:]) == {"continuation"}
    assert set(by_word["42"]) == {"digit"}
    assert table.kind.tolist()[-1] == "punctuation" and table.kind.tolist().count("punctuation") == 2


def _planted_residuals(n_lens=3, d=16, n=400, seed=0):
    """Residuals where the final layer is an exact affine function of each earlier one."""
    g = torch.Generator().manual_seed(seed)
    final = torch.randn(n, d, generator=g) * 3
    earlier = []
    for _ in range(n_lens - 1):
        m = torch.eye(d) + 0.5 * torch.randn(d, d, generator=g) / d ** 0.5
        earlier.append((final - 0.3) @ torch.linalg.inv(m))  # earlier @ m + 0.3 = final
    res = torch.stack([*earlier, final])
    return lens.DecoderResiduals(res, torch.arange(n) % 20, torch.zeros(n, dtype=torch.long))


def test_tuned_lens_known_answers(toy):
    data = _planted_residuals()
    zero = lens.TunedLens(3, 16)
    x = torch.randn(5, 16)
    assert torch.equal(zero(0, x), x)  # untrained: the logit lens
    ls = lens.TunedLens(3, 16).init_least_squares(data, ridge=0.0)
    assert torch.allclose(ls(1, data.residuals[1]), data.residuals[-1], atol=1e-3)  # the planted map, recovered
    table = lens.compare_lenses(toy, data, ls)
    tuned = table[table.lens == "tuned lens"]
    assert (tuned.kl_to_final < 1e-4).all() and (tuned.top1_agreement == 1.0).all()
    logit = table[table.lens == "logit lens"]
    assert logit.kl_to_final.iloc[0] > 100 * tuned.kl_to_final.iloc[0]
    with pytest.raises(IndexError, match="needs none"):
        ls(2, x)


def test_fitting_the_tuned_lens_lowers_held_out_kl():
    from .conftest import random_whisper

    toy = random_whisper(seed=3)
    with torch.no_grad():
        toy.model.decoder.layer_norm.weight.mul_(30)  # sharp output distributions, so KL has room to fall
    data = _planted_residuals(n=600)
    train, val = data.subset(range(15)), data.subset(range(15, 20))
    assert len(train) + len(val) == len(data) and not set(train.clip.tolist()) & set(val.clip.tolist())
    trainable = [p.requires_grad for p in toy.parameters()]
    fit = lens.fit_tuned_lens(toy, train, val, epochs=4, lr=1e-2, init="zero", progress=False)
    first, last = fit.history[fit.history.epoch == 0], fit.history[fit.history.epoch == fit.history.epoch.max()]
    assert last.val_kl.mean() < 0.5 * first.val_kl.mean()
    assert [p.requires_grad for p in toy.parameters()] == trainable  # the model is left as it was


def test_held_out_kl_and_agreement_match_the_lens_statistics(toy):
    """compare_lenses' lean KL and agreement are lens_statistics' kl and agrees, position by position averaged."""
    data = _planted_residuals(n=300, seed=2)
    tuned = lens.TunedLens(3, 16)
    with torch.no_grad():
        for t in tuned.translators:
            t.weight.add_(0.1 * torch.randn_like(t.weight))
    table = lens.compare_lenses(toy, data, tuned).set_index(["lens", "layer"])
    for name, translator in (("logit lens", None), ("tuned lens", tuned)):
        with torch.no_grad():
            layers = [lambda layer=layer: lens.lens_logits(toy, data.residuals[layer] if translator is None
                                                           else translator(layer, data.residuals[layer]))[None]
                      for layer in range(2)]
            stats = lens.lens_statistics(lens.lens_logits(toy, data.residuals[-1])[None], layers, top_k=1)
        for layer in range(3):
            assert table.loc[(name, layer), "kl_to_final"] == pytest.approx(float(stats.kl[layer].mean()), rel=1e-5,
                                                                            abs=1e-7)
            assert table.loc[(name, layer), "top1_agreement"] == int(stats.agrees[layer].sum()) / len(data)


def test_fit_tuned_lens_refuses_empty_or_mismatched_residuals(toy):
    data = _planted_residuals()
    with pytest.raises(ValueError, match="val holds no positions"):
        lens.fit_tuned_lens(toy, data, data.subset([]), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"clips \[999\] have no positions here.*numbered 0\.\.19"):
        data.subset([3, 999])
    with pytest.raises(ValueError, match="train holds no positions"):
        lens.fit_tuned_lens(toy, data.subset([]), None, epochs=1, progress=False)
    wide = lens.DecoderResiduals(torch.zeros(3, 10, 8), torch.zeros(10, dtype=torch.long),
                                 torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="width 8.*width 16"):
        lens.fit_tuned_lens(toy, wide, None, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs must be a whole number"):
        lens.fit_tuned_lens(toy, data, None, epochs=1.5, progress=False)
    with pytest.raises(ValueError, match="no positions"):
        lens.compare_lenses(toy, data.subset([]), lens.TunedLens(3, 16))
