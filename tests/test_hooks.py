"""The hook toolkit on small random-initialised Whisper models: parity, caching, patching, generation, errors."""
from __future__ import annotations

import contextlib

import pytest
import torch

from asrinterp_utils import hooks
from asrinterp_utils.cache import ActivationCache, cache_activations
from asrinterp_utils.hooks import HookPointError, add, apply, mean_ablate, patch, replace, scale, zero

from .conftest import random_whisper


def writable(model, cache):
    return [n for n in cache if not hooks.parse_hook_point(model, n).is_pattern]


@torch.no_grad()
def test_every_hook_attached_leaves_logits_unchanged(toy, toy_inputs):
    feats, _, ids = toy_inputs
    plain = toy(feats, decoder_input_ids=ids).logits
    with cache_activations(toy, "*") as cache:
        hooked = toy(feats, decoder_input_ids=ids).logits
    assert len(cache) == len(hooks.all_hook_points(toy))
    assert torch.equal(plain, hooked)
    assert hooks.active_hook_count(toy) == 0


@torch.no_grad()
def test_cached_residuals_equal_output_hidden_states(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with cache_activations(toy, ["*.resid_pre", "*.final", "*.resid_post"]) as cache:
        out = toy(feats, decoder_input_ids=ids, output_hidden_states=True)
    n = len(toy.model.encoder.layers)
    for i in range(n):
        assert torch.equal(cache[f"enc.{i}.resid_pre"], out.encoder_hidden_states[i])
        assert torch.equal(cache[f"dec.{i}.resid_pre"], out.decoder_hidden_states[i])
    # HF applies the final LayerNorm to the last hidden state only
    assert torch.equal(cache["enc.final"], out.encoder_last_hidden_state)
    assert torch.equal(cache["enc.final"], out.encoder_hidden_states[n])
    assert torch.allclose(toy.model.encoder.layer_norm(cache[f"enc.{n - 1}.resid_post"]), cache["enc.final"])
    assert torch.equal(toy.proj_out(cache["dec.final"]), out.logits)


@torch.no_grad()
def test_residual_bookkeeping_adds_up(toy, toy_inputs):
    """resid_post_attn = resid_pre + attn_out and resid_post = resid_post_attn + mlp_out (and the decoder's three)."""
    feats, _, ids = toy_inputs
    with cache_activations(toy, "*") as c:
        toy(feats, decoder_input_ids=ids)
    close = lambda a, b: torch.allclose(a, b, atol=1e-5)  # noqa: E731
    assert close(c["enc.0.resid_pre"] + c["enc.0.attn_out"], c["enc.0.resid_post_attn"])
    assert close(c["enc.0.resid_post_attn"] + c["enc.0.mlp_out"], c["enc.0.resid_post"])
    assert close(c["dec.1.resid_pre"] + c["dec.1.self_attn_out"], c["dec.1.resid_post_self"])
    assert close(c["dec.1.resid_post_self"] + c["dec.1.cross_attn_out"], c["dec.1.resid_post_cross"])
    assert close(c["dec.1.resid_post_cross"] + c["dec.1.mlp_out"], c["dec.1.resid_post"])
    # per-head outputs through out_proj give the attention output
    heads = c["dec.0.cross_head_out"]  # (batch, tokens, heads, d_head)
    out_proj = toy.model.decoder.layers[0].encoder_attn.out_proj
    assert close(out_proj(heads.flatten(2)), c["dec.0.cross_attn_out"])
    pattern = c["dec.0.cross_pattern"]
    assert pattern.shape == (2, 2, 7, 150)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 2, 7), atol=1e-5)


@torch.no_grad()
def test_patching_with_own_clean_values_changes_nothing(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with cache_activations(toy, "*") as clean:
        logits = toy(feats, decoder_input_ids=ids).logits
    with patch(toy, {n: replace(clean) for n in writable(toy, clean)}):
        patched = toy(feats, decoder_input_ids=ids).logits
    assert torch.allclose(patched, logits, atol=1e-5)
    for name in writable(toy, clean):  # each point on its own
        with patch(toy, {name: replace(clean)}):
            assert torch.allclose(toy(feats, decoder_input_ids=ids).logits, logits, atol=1e-5), name


@torch.no_grad()
def test_patching_with_a_source_reproduces_its_downstream_values(toy, toy_inputs):
    feats, other, ids = toy_inputs
    with cache_activations(toy, "*") as source:
        source_logits = toy(other, decoder_input_ids=ids).logits
    # everything the decoder sees comes through enc.final
    with patch(toy, {"enc.final": replace(source)}):
        assert torch.allclose(toy(feats, decoder_input_ids=ids).logits, source_logits, atol=1e-5)
    # the last encoder block's output decides enc.final
    with patch(toy, {"enc.1.resid_post": source}), cache_activations(toy, "enc.final") as c:
        toy(feats, decoder_input_ids=ids)
    assert torch.allclose(c["enc.final"], source["enc.final"], atol=1e-5)
    # a mid-block residual write lands exactly where it was asked
    with patch(toy, {"enc.0.resid_post_attn": source}), cache_activations(toy, "enc.0.*") as c:
        toy(feats, decoder_input_ids=ids)
    assert torch.allclose(c["enc.0.resid_post_attn"], source["enc.0.resid_post_attn"], atol=1e-5)
    assert torch.allclose(c["enc.0.resid_post"], source["enc.0.resid_post"], atol=1e-5)
    assert not torch.allclose(c["enc.0.resid_pre"], source["enc.0.resid_pre"])


@torch.no_grad()
def test_per_head_and_per_position_selection(toy, toy_inputs):
    feats, other, ids = toy_inputs
    with cache_activations(toy, "*") as clean:
        clean_logits = toy(feats, decoder_input_ids=ids).logits
    with cache_activations(toy, "*") as source:
        toy(other, decoder_input_ids=ids)
    with patch(toy, {"dec.0.cross_head_out": replace(source, heads=[1])}), \
            cache_activations(toy, "dec.0.cross_head_out") as c:
        toy(feats, decoder_input_ids=ids)
    got = c["dec.0.cross_head_out"]
    assert torch.allclose(got[:, :, 1], source["dec.0.cross_head_out"][:, :, 1])
    assert torch.allclose(got[:, :, 0], clean["dec.0.cross_head_out"][:, :, 0])
    # a decoder patch at position 4 leaves the causal past alone
    with patch(toy, {"dec.0.resid_pre": zero(positions=[4])}):
        logits = toy(feats, decoder_input_ids=ids).logits
    assert torch.allclose(logits[:, :4], clean_logits[:, :4], atol=1e-6)
    assert not torch.allclose(logits[:, 4:], clean_logits[:, 4:])
    # rows: only the chosen batch row changes
    with patch(toy, {"dec.0.mlp_out": zero(rows=[1])}):
        logits = toy(feats, decoder_input_ids=ids).logits
    assert torch.allclose(logits[0], clean_logits[0], atol=1e-6) and not torch.allclose(logits[1], clean_logits[1])


@torch.no_grad()
def test_intervention_modes(toy, toy_inputs):
    feats, _, ids = toy_inputs
    name = "dec.1.mlp_out"
    with cache_activations(toy, name) as clean:
        toy(feats, decoder_input_ids=ids)
    x = clean[name]

    def patched(iv):
        with patch(toy, {name: iv}), cache_activations(toy, name) as c:
            toy(feats, decoder_input_ids=ids)
        return c[name]
    assert torch.equal(patched(zero()), torch.zeros_like(x))
    assert torch.allclose(patched(scale(0.5)), 0.5 * x)
    v = torch.randn(x.shape[-1])
    assert torch.allclose(patched(add(v)), x + v, atol=1e-6)
    assert torch.allclose(patched(mean_ablate()), x.mean(dim=(0, 1), keepdim=True).expand_as(x), atol=1e-6)
    assert torch.allclose(patched(mean_ablate(v)), v.expand_as(x))
    assert torch.allclose(patched(apply(lambda a, ctx: -a)), -x)
    assert torch.allclose(patched(replace(2.0)), torch.full_like(x, 2.0))


@torch.no_grad()
def test_patch_during_generation_equals_teacher_forced_patch(toy, toy_inputs):
    """Decoder patches during generate (KV cache, one token a step) act like the same patch in one forward."""
    feats, other, ids = toy_inputs
    prompt = ids[:, :2]
    with cache_activations(toy, "dec.*") as source:
        toy(other, decoder_input_ids=ids)
    kw = dict(decoder_input_ids=prompt, max_new_tokens=5, do_sample=False, num_beams=1)
    push = 3 * torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(0))  # position-dependent steering
    interventions = {"dec.0.cross_attn_out": replace(source), "dec.1.self_head_out": zero(heads=[0], positions=[3]),
                     "dec.1.mlp_out": add(push)}
    plain = toy.generate(feats, **kw)
    with patch(toy, interventions), cache_activations(toy, ["dec.*.resid_post", "dec.0.self_pattern"]) as gen_cache:
        generated = toy.generate(feats, **kw)
    assert not torch.equal(plain, generated), "the patch should change the output of this toy model"
    full = torch.cat([prompt, generated], dim=1)[:, :ids.shape[1]]
    with patch(toy, interventions), cache_activations(toy, ["dec.*.resid_post", "dec.0.self_pattern"]) as tf_cache:
        logits = toy(feats, decoder_input_ids=full).logits
    # each generated token is the argmax of the teacher-forced patched logits
    n_new = full.shape[1] - prompt.shape[1]
    assert torch.equal(logits[:, prompt.shape[1] - 1:-1].argmax(-1)[:, :n_new], full[:, prompt.shape[1]:])
    # and the activations cached step by step equal the teacher-forced ones
    n = gen_cache["dec.1.resid_post"].shape[1]  # the last generated token is never fed back
    assert n == full.shape[1] - 1
    assert torch.allclose(gen_cache["dec.1.resid_post"], tf_cache["dec.1.resid_post"][:, :n], atol=1e-5)
    assert torch.allclose(gen_cache["dec.0.self_pattern"], tf_cache["dec.0.self_pattern"][:, :, :n, :n], atol=1e-5)
    assert hooks.active_hook_count(toy) == 0


def test_source_shorter_than_the_run_gives_a_clear_error(toy, toy_inputs):
    feats, other, ids = toy_inputs
    with torch.no_grad(), cache_activations(toy, "dec.0.mlp_out") as short:
        toy(other, decoder_input_ids=ids[:, :3])
    with pytest.raises(IndexError, match="covers 3 positions"), torch.no_grad():
        with patch(toy, {"dec.0.mlp_out": replace(short)}):
            toy(feats, decoder_input_ids=ids)
    assert hooks.active_hook_count(toy) == 0


def test_no_hook_survives_an_exception(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with pytest.raises(RuntimeError, match="boom"):
        with cache_activations(toy, "*"), patch(toy, {"dec.*.mlp_out": zero()}):
            assert hooks.active_hook_count(toy) > 0
            raise RuntimeError("boom")
    assert hooks.active_hook_count(toy) == 0

    def explode(act, ctx):
        raise ValueError("inside a hook")
    with pytest.raises(ValueError, match="inside a hook"), torch.no_grad():
        with patch(toy, {"enc.1.mlp_out": apply(explode)}):
            toy(feats, decoder_input_ids=ids)
    assert hooks.active_hook_count(toy) == 0


def test_bad_names_and_unsupported_operations(toy):
    with pytest.raises(HookPointError, match="Did you mean 'dec.1.cross_attn_out'"):
        hooks.parse_hook_point(toy, "dec.1.cros_attn_out")
    with pytest.raises(HookPointError, match="decoder has 2 layers"):
        hooks.parse_hook_point(toy, "dec.7.mlp_out")
    with pytest.raises(HookPointError, match="Unknown hook point"):
        hooks.parse_hook_point(toy, "blocks.0.hook_resid_pre")
    with pytest.raises(HookPointError, match="matches no hook point"):
        hooks.resolve_hook_points(toy, "dec.9*.mlp_out")
    with pytest.raises(HookPointError, match="decoder points: resid_pre"):
        hooks.resolve_hook_points(toy, "dec.*.nothing_here")
    with pytest.raises(HookPointError, match="read-only.*dec.0.cross_head_out"):
        with patch(toy, {"dec.0.cross_pattern": zero()}):
            pass
    with pytest.raises(HookPointError, match="needs a per-head point"), torch.no_grad():
        with patch(toy, {"dec.0.mlp_out": zero(heads=[0])}):
            toy(torch.zeros(1, 80, 300), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
    assert hooks.active_hook_count(toy) == 0


def test_wildcards_and_table(toy):
    names = [p.name for p in hooks.resolve_hook_points(toy, "dec.*.cross_attn_out")]
    assert names == ["dec.0.cross_attn_out", "dec.1.cross_attn_out"]
    assert [p.name for p in hooks.resolve_hook_points(toy, ["enc.final", "enc.0.resid_pre"])] == \
        ["enc.0.resid_pre", "enc.final"]  # forward order
    table = hooks.hook_point_table(toy)
    assert len(table) == 2 * (8 + 12) + 2
    row = table.set_index("name").loc["dec.1.cross_head_out"]
    assert row["hf_module"] == "model.decoder.layers.1.encoder_attn.out_proj" and row["shape"].endswith("d_head)")


def test_patterns_switch_an_sdpa_model_to_eager_attention_while_they_are_read(toy_inputs):
    """SDPA computes no probabilities: a pattern hook runs the model eagerly, and its own backend comes back when
    the last pattern hook is removed (nested sessions included); the patterns equal an eager model's."""
    feats, _, ids = toy_inputs
    sdpa, eager = random_whisper(attn="sdpa"), random_whisper(attn="eager")
    eager.load_state_dict(sdpa.state_dict())
    config = sdpa.config
    with torch.no_grad():
        with cache_activations(eager, ["enc.0.attn_pattern", "dec.1.cross_pattern"]) as want:
            eager(feats, decoder_input_ids=ids)
        with cache_activations(sdpa, "enc.0.attn_pattern") as outer:
            assert config._attn_implementation == "eager"
            with cache_activations(sdpa, "dec.1.cross_pattern") as inner:
                sdpa(feats, decoder_input_ids=ids)
            assert config._attn_implementation == "eager"  # the outer session still reads a pattern
            with cache_activations(sdpa, "enc.0.resid_post"):  # no pattern: leaves the backend alone
                pass
            assert config._attn_implementation == "eager"
        assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(outer["enc.0.attn_pattern"], want["enc.0.attn_pattern"])
    torch.testing.assert_close(inner["dec.1.cross_pattern"], want["dec.1.cross_pattern"])
    with pytest.raises(RuntimeError), cache_activations(sdpa, "dec.0.cross_pattern"):
        raise RuntimeError("an error inside the block")
    assert config._attn_implementation == "sdpa" and hooks.active_hook_count(sdpa) == 0


@torch.no_grad()
def test_large_v3_shaped_config():
    """128 mel bins and the 51,866-token vocabulary of large-v3, at a toy width: shapes and parity hold."""
    big = random_whisper(n_mels=128, vocab=51866, heads=4, d_model=32, frames=1500)
    feats = torch.randn(1, 128, 3000)
    ids = torch.tensor([[50258, 50259, 50360, 50364, 400]])
    plain = big(feats, decoder_input_ids=ids).logits
    with cache_activations(big, ["enc.*.head_out", "dec.*.cross_pattern", "dec.final"]) as c:
        logits = big(feats, decoder_input_ids=ids).logits
    assert torch.equal(plain, logits) and logits.shape == (1, 5, 51866)
    assert c["enc.1.head_out"].shape == (1, 1500, 4, 8)
    assert c["dec.1.cross_pattern"].shape == (1, 4, 5, 1500)


@torch.no_grad()
def test_pooling_ignores_padding_frames(toy, toy_inputs):
    feats, _, ids = toy_inputs
    n_frames = torch.tensor([20, 150])
    n_tokens = torch.tensor([4, 7])
    with cache_activations(toy, ["enc.*.resid_post", "dec.0.mlp_out"]) as full:
        toy(feats, decoder_input_ids=ids)
    for pool in ("mean", "max"):
        with cache_activations(toy, ["enc.*.resid_post", "dec.0.mlp_out"], pool=pool, n_frames=n_frames,
                               n_tokens=n_tokens) as pooled:
            toy(feats, decoder_input_ids=ids)
        for name, lengths in (("enc.1.resid_post", n_frames), ("dec.0.mlp_out", n_tokens)):
            for b, n in enumerate(lengths.tolist()):
                x = full[name][b, :n]
                want = x.mean(0) if pool == "mean" else x.amax(0)
                assert torch.allclose(pooled[name][b], want, atol=1e-5), (pool, name, b)
        assert pooled.stack("enc.*.resid_post").shape == (2, 2, 16)


@torch.no_grad()
def test_pooled_during_generation_matches_full(toy, toy_inputs):
    feats, _, ids = toy_inputs
    kw = dict(decoder_input_ids=ids[:, :2], max_new_tokens=4, do_sample=False, num_beams=1)
    with cache_activations(toy, "dec.1.resid_post") as full:
        toy.generate(feats, **kw)
    with cache_activations(toy, "dec.1.resid_post", pool="mean") as pooled:
        toy.generate(feats, **kw)
    assert torch.allclose(pooled["dec.1.resid_post"], full["dec.1.resid_post"].mean(1), atol=1e-5)


@torch.no_grad()
def test_disk_cache_equals_memory_and_detects_interruption(toy, toy_inputs, tmp_path):
    feats, _, ids = toy_inputs
    with cache_activations(toy, ["enc.*.resid_post", "dec.0.self_pattern"]) as mem:
        toy(feats, decoder_input_ids=ids)
    with cache_activations(toy, ["enc.*.resid_post", "dec.0.self_pattern"], to_disk=tmp_path / "c") as disk:
        toy(feats, decoder_input_ids=ids)
    assert set(disk) == set(mem)
    for n in mem:
        assert torch.equal(disk[n], mem[n])
    again = ActivationCache.load(tmp_path / "c")
    assert torch.equal(again["enc.1.resid_post"], mem["enc.1.resid_post"])
    # a run interrupted inside the block leaves no manifest, and load refuses it
    with pytest.raises(KeyboardInterrupt):
        with cache_activations(toy, "enc.*.resid_post", to_disk=tmp_path / "d"):
            toy(feats, decoder_input_ids=ids)
            raise KeyboardInterrupt
    with pytest.raises(FileNotFoundError, match="did not finish"):
        ActivationCache.load(tmp_path / "d")
    assert not list((tmp_path / "c").glob(".*tmp*")), "no temporary file is left behind"
    # a pooled cache saves and loads too
    with cache_activations(toy, "enc.*.resid_post", pool="mean", to_disk=tmp_path / "p") as pooled:
        toy(feats, decoder_input_ids=ids)
    assert ActivationCache.load(tmp_path / "p").pooled == "mean"
    assert torch.equal(ActivationCache.load(tmp_path / "p")["enc.0.resid_post"], pooled["enc.0.resid_post"])


def test_cache_key_error_is_helpful(toy, toy_inputs):
    feats, _, ids = toy_inputs
    with torch.no_grad(), cache_activations(toy, "dec.0.mlp_out") as c:
        toy(feats, decoder_input_ids=ids)
    with pytest.raises(KeyError, match="Nearest cached"):
        c["dec.0.mlp_ou"]


@torch.no_grad()
def test_dtype_follows_the_model(toy_inputs):
    """A half-precision model takes float32 patch values and caches in its own dtype unless told otherwise."""
    feats, other, ids = toy_inputs
    half = random_whisper().to(torch.bfloat16)
    full = random_whisper()  # the same weights in float32
    with cache_activations(full, "dec.0.mlp_out") as source32:
        full(other, decoder_input_ids=ids)
    with patch(half, {"dec.0.mlp_out": replace(source32)}), cache_activations(half, "dec.0.mlp_out") as c:
        half(feats.bfloat16(), decoder_input_ids=ids)
    assert c["dec.0.mlp_out"].dtype == torch.bfloat16
    assert torch.allclose(c["dec.0.mlp_out"].float(), source32["dec.0.mlp_out"], atol=1e-2)
    with cache_activations(half, "enc.0.resid_post", dtype=torch.float32, pool="mean") as pooled:
        half(feats.bfloat16(), decoder_input_ids=ids)
    assert pooled["enc.0.resid_post"].dtype == torch.float32


@torch.no_grad()
@pytest.mark.parametrize("name", ["dec.1.mlp_out", "dec.0.resid_post_cross", "enc.1.resid_pre", "dec.1.cross_head_out"])
def test_interventions_apply_in_the_order_written(toy, toy_inputs, name):
    """Nested patches: the outer one first, then the inner; two keys naming one point: in the dict's order; a list:
    in its order. Zero then add(v) reads v; add(v) then zero reads 0."""
    feats, _, ids = toy_inputs

    def read(*plans):
        with contextlib.ExitStack() as stack:
            for plan in plans:
                stack.enter_context(patch(toy, plan))
            cache = stack.enter_context(cache_activations(toy, name))
            toy(feats, decoder_input_ids=ids)
        return cache[name]
    v = torch.full((read({})).shape[-1:], 3.0)
    alias = name.replace(".1.", ".*.").replace(".0.", ".*.")  # a wildcard naming the same point (and others)
    assert torch.allclose(read({name: zero()}, {name: add(v)}), v.expand_as(read({})))
    assert torch.equal(read({name: add(v)}, {name: zero()}), torch.zeros_like(read({})))
    assert torch.allclose(read({name: [zero(), add(v)]}), v.expand_as(read({})))
    assert torch.allclose(read({name: zero(), alias: add(v)}), v.expand_as(read({})))
    assert torch.equal(read({alias: add(v), name: zero()}), torch.zeros_like(read({})))


@torch.no_grad()
def test_a_cache_block_records_one_pass_and_refuses_a_second(toy, toy_inputs):
    """Two passes are neither stitched along positions nor averaged into one pool: the second one is refused,
    naming the point; the decoder's continuing steps (generation) still extend the first."""
    from asrinterp_utils import run
    from asrinterp_utils.cache import CachePassError

    feats, _, ids = toy_inputs
    for pool in (None, "mean"):
        with pytest.raises(CachePassError, match=r"enc\.0\.resid_post: a second encoder pass"):
            with cache_activations(toy, "enc.0.resid_post", pool=pool):
                toy.model.encoder(feats)
                toy.model.encoder(feats)
        with pytest.raises(CachePassError, match=r"dec\.1\.mlp_out: a second decoder pass \(it starts at position 0"):
            with cache_activations(toy, "dec.1.mlp_out", pool=pool):
                toy(feats, decoder_input_ids=ids)
                toy(feats, decoder_input_ids=ids)
    with pytest.raises(CachePassError, match=r"dec\.1\.mlp_out: a second decoder pass"):
        with cache_activations(toy, "dec.1.mlp_out"):  # greedy's steps, then a teacher-forced pass: two passes
            states = run.encode_features(toy, feats)
            run.teacher_force(toy, states, run.greedy(toy, states, max_new_tokens=3).ids)
    with cache_activations(toy, "dec.1.mlp_out") as steps:  # one pass, one token at a time
        decoded = run.greedy(toy, run.encode_features(toy, feats), max_new_tokens=4)
    assert steps["dec.1.mlp_out"].shape[:2] == (2, decoded.ids.shape[1] - 1)


@torch.no_grad()
def test_pooling_lengths_must_match_the_batch(toy, toy_inputs):
    feats, _, _ = toy_inputs
    with pytest.raises(ValueError, match=r"enc\.0\.resid_post: n_frames has 3 entries but the forward pass has 2 rows"):
        with cache_activations(toy, "enc.0.resid_post", pool="mean", n_frames=[10, 20, 30]):
            toy.model.encoder(feats)


def test_interpolated_cache_runs_from_one_run_to_the_other():
    clean = ActivationCache({"dec.0.cross_head_out": torch.zeros(2, 3, 4), "dec.0.mlp_out": torch.ones(2, 3)})
    noise = ActivationCache({"dec.0.cross_head_out": torch.full((2, 3, 4), 2.0), "dec.0.mlp_out": torch.ones(2, 3)})
    half = clean.interpolate(noise, 0.25, "dec.*.cross_head_out")
    assert list(half) == ["dec.0.cross_head_out"] and torch.equal(half["dec.0.cross_head_out"],
                                                                   torch.full((2, 3, 4), 0.5))
    assert torch.equal(clean.interpolate(noise, 0.0)["dec.0.mlp_out"], clean["dec.0.mlp_out"])
    assert torch.equal(clean.interpolate(noise, 1.0)["dec.0.cross_head_out"], noise["dec.0.cross_head_out"])
    with pytest.raises(KeyError, match="no cached point"):
        clean.interpolate(noise, 0.5, "enc.*")
    with pytest.raises(ValueError, match="dec.0.mlp_out is"):
        clean.interpolate(ActivationCache({"dec.0.mlp_out": torch.ones(5)}), 0.5, "dec.0.mlp_out")
