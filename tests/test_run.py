"""The execution layer (asrinterp_utils/run.py) against known answers: Hugging Face's own forward and ``generate``,
the same rows decoded alone, and the batch laid out other ways (copies sharing keys and values, routed rows,
followers sharing a batch row, rows leaving the batch), on the toy LoadedModel and on the real tiny.en."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from asrinterp_utils import hooks, patching, run
from asrinterp_utils.cache import cache_activations

from ._toy_lm import toy_clips, toy_loaded_model

MAX_NEW = 12


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


@pytest.fixture(scope="module")
def states(lm):
    return run.encode(lm, toy_clips(4)).states


def test_encode_matches_the_hugging_face_encoder_and_restores_attention(lm):
    enc = run.encode(lm, toy_clips(3), batch_size=2)
    with torch.no_grad():
        plain = lm.model.model.encoder(enc.features).last_hidden_state  # eager, the model's own setting
    assert enc.states.shape == plain.shape and torch.allclose(enc.states, plain, atol=1e-4)
    assert enc.n_frames.tolist() == lm.features(toy_clips(3))[1].tolist()
    assert lm.model.config._attn_implementation == "eager" and hooks.active_hook_count(lm) == 0
    assert torch.equal(enc.select([2, 0]).states, enc.states[[2, 0]])


def test_encoding_under_a_cache_runs_as_one_call(lm):
    """A cache outside encode_features records one forward: a batch split in two would be stitched by position."""
    feats, _ = lm.features(toy_clips(5))
    with cache_activations(lm, "enc.0.resid_post") as cache:
        states = run.encode_features(lm, feats, batch_size=2)
    assert cache["enc.0.resid_post"].shape[:2] == (5, states.shape[1])


def test_a_truncated_encoder_pass_returns_that_layers_residual_and_fills_earlier_caches(lm):
    feats, _ = lm.features(toy_clips(3))
    n_layers = len(lm.model.model.encoder.layers)
    with cache_activations(lm, ["enc.0.resid_post", "enc.0.mlp_out", f"enc.{n_layers - 1}.resid_post"]) as full:
        whole = run.encode_features(lm, feats)
    with cache_activations(lm, "enc.0.mlp_out") as early:
        stopped = run.encode_features(lm, feats, stop_at_layer=1, batch_size=2)
    assert torch.equal(stopped, full["enc.0.resid_post"]) and torch.equal(early["enc.0.mlp_out"], full["enc.0.mlp_out"])
    assert not torch.allclose(stopped, whole)  # stopped early: not the encoder output (the test can fail)
    last = run.encode_features(lm, feats, stop_at_layer=n_layers)  # every layer, but no final LayerNorm
    torch.testing.assert_close(last, full[f"enc.{n_layers - 1}.resid_post"])
    assert hooks.active_hook_count(lm) == 0 and not lm.model.model.encoder.layers[0]._forward_hooks
    for bad in (0, n_layers + 1, 1.5, True):
        with pytest.raises(ValueError, match="stop_at_layer"):
            run.encode_features(lm, feats, stop_at_layer=bad)


@torch.no_grad()
@pytest.mark.parametrize("kv_rows", [None, [3, 2, 1, 0], [0, 1, 2, 3, 0, 1, 2, 3, 2], [1, 1, 1], [0] * 12 + [3, 1, 2]])
def test_teacher_force_equals_one_forward_per_row(lm, states, kv_rows):
    """Routed rows (copies, a permutation, uneven groups, groups split into runs) read the right keys and values."""
    kv = list(range(len(states))) if kv_rows is None else kv_rows
    ids = torch.randint(3, 8, (len(kv), 6), generator=torch.Generator().manual_seed(0))
    ids[:, :2] = torch.tensor([1, 3])
    got = run.teacher_force(lm, states, ids, kv_rows=kv_rows)
    for r, k in enumerate(kv):
        want = lm.model(encoder_outputs=(states[k:k + 1],), decoder_input_ids=ids[r:r + 1]).logits
        assert torch.allclose(got[r:r + 1], want, atol=1e-4), (kv_rows, r)


def test_runs_split_key_rows_at_the_least_estimated_cost():
    """Against every way of cutting a short row of key rows into runs (a row read by nobody may stay out)."""
    import itertools
    import random

    def cost(runs, counts):
        return sum(run.RUN_COST + (j - i) * (run.KEY_ROW_COST + max(counts[i:j])) for i, j in runs)

    def every_split(counts):
        n = len(counts)
        for labels in itertools.product(range(-1, n), repeat=n):  # each row: left out (-1) or the run it starts at
            runs, i = [], 0
            while i < n:
                if labels[i] == -1:
                    if counts[i]:
                        break
                    i += 1
                    continue
                j = i + 1
                while j < n and labels[j] == labels[i]:
                    j += 1
                runs.append((i, j))
                i = j
            else:
                yield runs

    rng = random.Random(0)
    for _ in range(60):
        counts = [rng.choice([0, 1, 1, 2, 3, 12]) for _ in range(rng.randint(1, 5))]
        got = run._runs(counts)
        assert sorted(r for i, j in got for r in range(i, j)) == sorted(set(r for i, j in got for r in range(i, j)))
        assert all(any(i <= r < j for i, j in got) for r, c in enumerate(counts) if c), counts
        assert cost(got, counts) == pytest.approx(min(cost(s, counts) for s in every_split(counts))), counts
    assert run._runs([5] * 8) == [(0, 8)]  # equal groups: one run
    assert run._runs([12, 1, 1, 1]) == [(0, 1), (1, 4)]  # twelve rows on one key row, one on each of the others
    assert run._runs([0, 0, 4, 0]) == [(2, 3)]


@torch.no_grad()
def test_attention_patterns_of_rows_routed_in_several_runs_are_their_own(lm, states):
    kv = [0] * 12 + [3, 1, 2]
    assert len(run._Route(torch.tensor(kv), len(states)).runs) > 1
    ids = torch.randint(3, 8, (len(kv), 5), generator=torch.Generator().manual_seed(1))
    ids[:, :2] = torch.tensor([1, 3])
    with cache_activations(lm, "dec.1.cross_pattern") as routed:
        run.teacher_force(lm, states, ids, kv_rows=kv)
    for r in (0, 11, 12, 13, 14):
        with cache_activations(lm, "dec.1.cross_pattern") as alone:
            run.teacher_force(lm, states[kv[r]:kv[r] + 1], ids[r:r + 1])
        torch.testing.assert_close(routed["dec.1.cross_pattern"][r:r + 1], alone["dec.1.cross_pattern"])


@torch.no_grad()
def test_greedy_equals_a_loop_of_full_forwards_without_a_cache(lm, states):
    """The known answer: at each step, one full forward over the tokens so far, argmax (the toy suppresses nothing)."""
    ours = run.greedy(lm, states, max_new_tokens=MAX_NEW)
    for b in range(len(states)):
        ids, text = [1, 3], []
        for _ in range(MAX_NEW):
            token = int(lm.model(encoder_outputs=(states[b:b + 1],), decoder_input_ids=torch.tensor([ids])
                                 ).logits[0, -1].argmax())
            if token == 2:
                break
            ids.append(token)
            text.append(token)
        assert ours.text_ids[b] == text, b
    assert len(set(map(tuple, ours.text_ids))) > 1  # the clips decode differently: the test can fail
    assert any(ours.hit_limit) and not all(ours.hit_limit)  # some rows run to the limit, some end


@torch.no_grad()
def test_greedy_rows_do_not_depend_on_the_batch_or_its_layout(lm, states):
    alone = [run.greedy(lm, states[b:b + 1], max_new_tokens=MAX_NEW).text_ids[0] for b in range(len(states))]
    assert run.greedy(lm, states, max_new_tokens=MAX_NEW).text_ids == alone
    assert run.greedy(lm, states, max_new_tokens=MAX_NEW, compact=False).text_ids == alone
    copies = run.greedy(lm, states, max_new_tokens=MAX_NEW, kv_rows=[2, 0, 3, 2, 1, 0])
    assert copies.text_ids == [alone[k] for k in [2, 0, 3, 2, 1, 0]]


@torch.no_grad()
def test_followers_take_their_leaders_tokens_and_end_with_them(lm, states):
    """Rows 4..7 read other states but follow rows 0..3: their tokens are their leaders'. Followers of one leader
    set that read the same states share a batch row; merged or not, the leaders' transcripts are the same."""
    alone = run.greedy(lm, states, max_new_tokens=MAX_NEW).text_ids
    kv = [0, 1, 2, 3, 3, 3, 3, 3]
    follow = [0, 1, 2, 3, 0, 1, 2, 3]
    merged = run.greedy(lm, states, max_new_tokens=MAX_NEW, kv_rows=kv, follow=follow)
    separate = run.greedy(lm, states, max_new_tokens=MAX_NEW, kv_rows=kv, follow=follow, compact=False)
    assert merged.text_ids[:4] == alone == separate.text_ids[:4]
    assert merged.text_ids[4:] == alone == separate.text_ids[4:]
    with pytest.raises(ValueError, match="no chains"):
        run.greedy(lm, states, max_new_tokens=4, kv_rows=[0, 1, 2], follow=[0, 0, 1])


@torch.no_grad()
def test_patched_rows_leaving_the_batch_keep_their_patches(lm, states):
    """A from_rows patch from followers, and a zero-ablation of some rows: with rows leaving the batch and followers
    merged, the same tokens as with the batch kept whole."""
    B = len(states)
    plan = {"dec.*.cross_attn_out": hooks.from_rows(list(range(B, 2 * B)), rows=list(range(B))),
            "dec.0.mlp_out": hooks.zero(rows=[1, 2])}
    kwargs = dict(max_new_tokens=MAX_NEW, kv_rows=list(range(B)) + [3] * B, follow=list(range(B)) * 2, patches=plan)
    compact = run.greedy(lm, states, **kwargs)
    whole = run.greedy(lm, states, compact=False, **kwargs)
    assert compact.text_ids == whole.text_ids
    reference = run.greedy(lm, states[3:4], max_new_tokens=MAX_NEW).text_ids[0]
    assert compact.text_ids[0] == reference  # all of cross-attention from clip 3 gives clip 3's transcript
    assert hooks.active_hook_count(lm) == 0


@torch.no_grad()
def test_a_batch_mean_ablation_keeps_the_batch_whole(lm, states):
    """mean_ablate() without a value is the mean over the batch: rows leaving would change it, so they stay."""
    plan = {"dec.0.mlp_out": hooks.mean_ablate()}
    compact = run.greedy(lm, states, max_new_tokens=MAX_NEW, patches=plan)
    whole = run.greedy(lm, states, max_new_tokens=MAX_NEW, patches=plan, compact=False)
    assert compact.text_ids == whole.text_ids
    assert run._remappable(run._normalise(plan)) is False


@torch.no_grad()
def test_pattern_caching_switches_to_eager_and_matches(lm, states):
    ids = run.greedy(lm, states[:2], max_new_tokens=4).ids
    with cache_activations(lm, "dec.0.cross_pattern") as cache:
        logits = run.teacher_force(lm, states[:2], ids)
    assert cache["dec.0.cross_pattern"].shape[:2] == (2, lm.dims.n_decoder_heads)
    assert torch.allclose(cache["dec.0.cross_pattern"].sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(logits, run.teacher_force(lm, states[:2], ids), atol=1e-4)


def test_bad_arguments_name_what_is_wrong(lm, states):
    with pytest.raises(ValueError, match="kv_rows"):
        run.greedy(lm, states, max_new_tokens=4, kv_rows=[0, 9])
    with pytest.raises(ValueError, match="max_new_tokens"):
        run.greedy(lm, states, max_new_tokens=0)
    with pytest.raises(ValueError, match="states must be"):
        run.greedy(lm, states[0], max_new_tokens=4)
    with pytest.raises(ValueError, match="one row per kv_rows"):
        run.teacher_force(lm, states, torch.ones(3, 4, dtype=torch.long))


def test_attention_functions_are_registered_on_first_use_not_at_import():
    code = ("import asrinterp_utils, asrinterp_utils.patching, asrinterp_utils.lens\n"
            "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as A\n"
            "print(any(k.startswith('asrinterp') for k in A._global_mapping))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.real
def test_generate_ids_equals_hugging_face_generate_on_tiny_en():
    from asrinterp_utils.data import asterisk_prompts, clip_audio
    from asrinterp_utils.models import load_model

    tiny = load_model("tiny.en")
    table = asterisk_prompts(min_words=6, max_duration_s=8.0, progress=False).head(4)
    waves = [clip_audio(p) for p in table.path]
    ours = run.generate_ids(tiny, waves, max_new_tokens=40)
    feats, _ = tiny.features(waves)
    with torch.no_grad():
        hf = tiny.model.generate(feats, max_new_tokens=40, do_sample=False, num_beams=1, return_timestamps=False)
    n_prompt = len(tiny.prompt_ids())
    assert tiny.text_ids(ours) == [r[:r.index(50256)] if 50256 in r else r for r in
                                   (row[n_prompt:] if row[:n_prompt] == tiny.prompt_ids() else row
                                    for row in hf.tolist())]
    assert patching  # the patching module imports run without a cycle


def test_preallocated_self_attention_cache_grows_and_selects_rows_like_concatenation():
    layer = run._preallocated_layer_class()(capacity=2)
    steps = [torch.randn(3, 2, 1, 4) for _ in range(5)]  # past the capacity: it grows
    for k in steps[:3]:
        keys, values = layer.update(k, k * 2)
    assert torch.equal(keys, torch.cat(steps[:3], dim=2)) and torch.equal(values, 2 * keys)
    layer.batch_select_indices(torch.tensor([2, 0]))
    for k in steps[3:]:
        keys, _ = layer.update(k[[2, 0]], k[[2, 0]])
    assert torch.equal(keys, torch.cat(steps, dim=2)[[2, 0]]) and layer.get_seq_length() == 5


def test_the_allocator_setting_can_be_turned_off(monkeypatch):
    from asrinterp_utils import runtime

    monkeypatch.setenv("ASRINTERP_MALLOC", "default")
    assert runtime.configure_allocator() is False


@torch.no_grad()
def test_cross_attention_keys_and_values_are_the_projections_laid_out_by_frame(lm, states):
    """Each decoder layer's cross-attention keys and values equal its k_proj/v_proj of the encoder output, as
    ``(rows, heads, frames, d_head)`` views of ``(rows, heads, d_head, frames)`` storage; selecting rows keeps that."""
    cross = run.cross_attention_kv(lm, states)
    contiguous = run.cross_attention_kv(lm, states, frame_minor=False)
    for layer, held, plain in zip(lm.model.model.decoder.layers, cross.layers, contiguous.layers):
        attn = layer.encoder_attn
        shape = (len(states), -1, attn.num_heads, attn.head_dim)
        keys = attn.k_proj(states).view(shape).transpose(1, 2)
        values = attn.v_proj(states).view(shape).transpose(1, 2)
        assert held.keys.shape == keys.shape and torch.allclose(held.keys, keys, atol=1e-5)
        assert torch.allclose(held.values, values, atol=1e-5)
        assert plain.keys.is_contiguous() and torch.allclose(plain.keys, keys) and torch.allclose(plain.values, values)
        assert held.keys.transpose(2, 3).is_contiguous() and held.values.transpose(2, 3).is_contiguous()
        held.batch_select_indices(torch.tensor([2, 0]))
        assert torch.allclose(held.keys, keys[[2, 0]], atol=1e-5)
        assert held.keys.transpose(2, 3).is_contiguous()
    with pytest.raises(RuntimeError, match="projected once"):
        cross.layers[0].update(keys, values)


@torch.no_grad()
@pytest.mark.parametrize("tokens", [1, 5])
def test_frame_minor_cross_attention_equals_fused_attention(tokens):
    query, key, value = (torch.randn(3, 4, n, 8) for n in (tokens, 50, 50))
    fused = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=0.5)
    ours, weights = run._cross_attention(query, key.transpose(2, 3).contiguous().transpose(2, 3), value, 0.5,
                                          eager=True)
    assert torch.allclose(ours, fused, atol=1e-5)
    assert weights.shape == (3, 4, tokens, 50) and torch.allclose(weights.sum(-1), torch.ones(3, 4, tokens))
    contiguous, no_weights = run._cross_attention(query, key, value, 0.5, eager=False)  # the fused kernel
    assert torch.allclose(contiguous, fused) and no_weights is None


def test_greedy_refuses_positions_past_its_limit_and_warns_of_positions_no_row_reached():
    import warnings

    from asrinterp_utils.hooks import zero

    lm = toy_loaded_model()
    states = run.encode(lm, toy_clips(2, seed=1)).states  # on the toy model both rows end after 12 tokens of 30
    plain = run.greedy(lm, states, max_new_tokens=30)
    n_fed = plain.ids.shape[1] - 1  # positions run through the decoder: the prompt and every token but the last
    assert n_fed < len(lm.prompt_ids()) + 30 - 1
    with pytest.warns(UserWarning, match=rf"dec.0.mlp_out: positions \[{n_fed}\].*ended after"):
        again = run.greedy(lm, states, max_new_tokens=30, patches={"dec.0.mlp_out": zero(positions=[n_fed])})
    assert torch.equal(again.ids, plain.ids)  # it never applied
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the last position fed is reached: no warning
        run.greedy(lm, states, max_new_tokens=30, patches={"dec.0.mlp_out": zero(positions=[n_fed - 1])})
    limit = len(lm.prompt_ids()) + 30 - 1
    with pytest.raises(ValueError, match=rf"positions \[{limit}\].*can never apply"):
        run.greedy(lm, states, max_new_tokens=30, patches={"dec.0.mlp_out": zero(positions=[limit - 1, limit])})


def test_teacher_force_refuses_patches_at_positions_past_its_tokens():
    from asrinterp_utils.hooks import zero

    lm = toy_loaded_model()
    states = run.encode(lm, toy_clips(2, seed=3)).states
    ids = run.greedy(lm, states, max_new_tokens=4).ids
    last = ids.shape[1] - 1
    patched = run.teacher_force(lm, states, ids, patches={"dec.0.mlp_out": zero(positions=[last])})
    assert not torch.allclose(patched[:, last], run.teacher_force(lm, states, ids)[:, last])
    with pytest.raises(ValueError, match=rf"positions \[{last + 1}\].*change nothing"):
        run.teacher_force(lm, states, ids, patches={"dec.0.mlp_out": zero(positions=[last + 1])})
    with pytest.raises(ValueError, match="absolute and non-negative"):  # -1 would match no position, silently
        run.teacher_force(lm, states, ids, patches={"dec.0.mlp_out": zero(positions=[-1])})


@torch.no_grad()
def test_the_packed_unembedding_gives_the_plain_product_or_stands_aside(lm, monkeypatch):
    proj_out = hooks.hf_model(lm).proj_out
    hidden = torch.randn(5, proj_out.in_features)
    plain = run._unembed(proj_out, hidden)
    packed = run._pack_unembedding(proj_out, 5, max_steps=64)
    if packed is None:
        pytest.skip("this PyTorch has no MKL")
    monkeypatch.setattr(run, "_PACKED_EXACT", {})
    assert torch.equal(run._unembed(proj_out, hidden, packed), plain)  # the first call of a shape checks it
    assert list(run._PACKED_EXACT) == [(5, *proj_out.weight.shape)]
    assert torch.equal(run._unembed(proj_out, hidden, packed), plain)  # packed if the check found it exact
    run._PACKED_EXACT[(5, *proj_out.weight.shape)] = False  # a shape found inexact is never packed again
    assert torch.equal(run._unembed(proj_out, hidden, object()), plain)  # (MKL would refuse a non-tensor)
    assert run._pack_unembedding(proj_out, 1, max_steps=64) is None  # one row: the plain product is as fast
    assert run._pack_unembedding(proj_out, 5, max_steps=4) is None  # too few steps to pay the packing back
    with torch.enable_grad():
        assert run._pack_unembedding(proj_out, 5, max_steps=64) is None  # mkl_linear keeps no graph


@torch.no_grad()
def test_greedy_sees_weight_edits_between_calls_and_gives_the_tokens_of_the_plain_unembedding(lm, states,
                                                                                              monkeypatch):
    weight = hooks.hf_model(lm).proj_out.weight
    before = run.greedy(lm, states, max_new_tokens=run._PACK_MIN_STEPS)
    saved = weight.data.clone()
    try:
        weight.data.mul_(-1.0)  # a .data edit, which bumps no version counter: argmax turns argmin
        edited = run.greedy(lm, states, max_new_tokens=run._PACK_MIN_STEPS)
        monkeypatch.setattr(run, "_pack_unembedding", lambda proj_out, n_rows, max_steps: None)
        assert torch.equal(run.greedy(lm, states, max_new_tokens=run._PACK_MIN_STEPS).ids, edited.ids)
    finally:
        weight.data.copy_(saved)
    assert edited.text_ids[0][:1] != before.text_ids[0][:1]  # the edit was seen
    assert torch.equal(run.greedy(lm, states, max_new_tokens=run._PACK_MIN_STEPS).ids, before.ids)
