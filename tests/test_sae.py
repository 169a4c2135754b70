"""Sparse autoencoders (asrinterp_utils/sae.py) against known answers: planted sparse directions are recovered, an
exact reconstruction spliced into a run changes nothing, the saved files are SAELens's layout, and activations come
from real frames and real tokens only (on the toy LoadedModel)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asrinterp_utils import run, sae
from asrinterp_utils.cache import cache_activations

from ._toy_lm import toy_clips, toy_loaded_model


@pytest.fixture(scope="module")
def lm():
    return toy_loaded_model()


def planted(n: int = 12000, d: int = 24, n_features: int = 48, active: int = 3, scale: float = 40.0, seed: int = 0):
    """Rows that are sums of ``active`` of ``n_features`` unit directions with positive weights, plus a little
    noise, scaled far from unit norm: ``(rows (n, d), directions (n_features, d))``."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_features, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    rows = np.zeros((n, d))
    for i in range(n):
        chosen = rng.choice(n_features, size=active, replace=False)
        rows[i] = rng.uniform(0.5, 2.0, size=active) @ directions[chosen]
    rows += 0.01 * rng.standard_normal((n, d))
    return torch.tensor(scale * rows, dtype=torch.float32), directions


def exact_sae(d: int) -> sae.TopKSAE:
    """An SAE that reconstructs every row exactly: latents relu(x) and relu(-x), all of them active."""
    model = sae.TopKSAE(d, 2 * d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        model.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        model.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return model


def test_planted_sparse_directions_are_recovered():
    rows, directions = planted()
    fit = sae.train_topk(rows, d_sae=96, k=3, epochs=15, batch_size=256, lr=3e-3, seed=0)
    decoder = fit.sae.W_dec / fit.sae.W_dec.norm(dim=1, keepdim=True)
    best = (torch.tensor(directions, dtype=torch.float32) @ decoder.T).max(dim=1).values  # per planted direction
    assert float((best > 0.9).float().mean()) >= 0.9, best
    assert fit.metrics.fve > 0.9 and fit.metrics.l0 <= 3
    assert fit.losses[-1] < fit.losses[0]
    # the scale was folded back in: raw rows go in, raw rows come out
    torch.testing.assert_close(fit.sae(rows[:5]), rows[:5], atol=0.2 * 40, rtol=0.2)
    # a random SAE of the same shape recovers nothing like it (the test can fail)
    untrained = sae.TopKSAE(24, 96, 3)
    with torch.no_grad():
        untrained.W_dec.copy_(torch.randn(96, 24, generator=torch.Generator().manual_seed(1)))
    decoder = untrained.W_dec / untrained.W_dec.norm(dim=1, keepdim=True)
    assert float(((torch.tensor(directions, dtype=torch.float32) @ decoder.T).max(1).values > 0.9).float().mean()) < 0.5


def test_encoding_is_topk_of_relu_and_training_is_seeded():
    rows, _ = planted(n=600)
    model = sae.train_topk(rows, d_sae=32, k=4, epochs=1, batch_size=128, seed=3).sae
    z = model.encode(rows)
    assert z.shape == (600, 32) and bool((z >= 0).all()) and int((z > 0).sum(1).max()) <= 4
    torch.testing.assert_close(model.decode(z), z @ model.W_dec + model.b_dec)
    again = sae.train_topk(rows, d_sae=32, k=4, epochs=1, batch_size=128, seed=3).sae
    assert torch.equal(again.W_enc, model.W_enc)
    other = sae.train_topk(rows, d_sae=32, k=4, epochs=1, batch_size=128, seed=4).sae
    assert not torch.equal(other.W_enc, model.W_enc)


def test_metrics_of_an_exact_and_of_a_null_reconstruction():
    rows = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    exact = sae.evaluate(exact_sae(8), rows)
    assert exact.fve == pytest.approx(1.0, abs=1e-6) and exact.mse == pytest.approx(0.0, abs=1e-6)
    null = sae.TopKSAE(8, 16, 2)  # all weights 0: reconstructs b_dec = 0
    metrics = sae.evaluate(null, rows)
    assert metrics.l0 == 0 and metrics.dead_fraction == 1.0 and metrics.fve < 0.05


def test_save_writes_saelens_layout_and_load_gives_the_same_sae(tmp_path):
    rows, _ = planted(n=400)
    model = sae.train_topk(rows, d_sae=32, k=4, epochs=1, seed=0).sae
    folder = sae.save(model, tmp_path / "sae", hook_name="enc.1.resid_post", model_name="toy", trained_on="toy")
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"W_enc": (24, 32), "W_dec": (32, 24), "b_enc": (32,),
                                                               "b_dec": (24,)}
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (24, 32, 4)
    assert cfg["dtype"] == "float32" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "enc.1.resid_post" and cfg["metadata"]["sae_lens_version"]
    loaded, _ = sae.load(folder)
    assert torch.equal(loaded.encode(rows), model.encode(rows)) and torch.equal(loaded(rows), model(rows))
    sae.save(loaded, folder, hook_name="enc.1.resid_post", model_name="toy")  # replacing a saved SAE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "jumprelu"}))
    with pytest.raises(ValueError, match="topk"):
        sae.load(folder)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        sae.load(tmp_path / "nothing")


def test_saelens_loads_a_saved_sae_when_it_is_installed(tmp_path):
    saelens = pytest.importorskip("sae_lens")
    rows, _ = planted(n=400)
    model = sae.train_topk(rows, d_sae=32, k=4, epochs=1, seed=0).sae
    folder = sae.save(model, tmp_path / "sae", hook_name="enc.1.resid_post", model_name="toy")
    theirs = saelens.SAE.load_from_disk(str(folder))
    torch.testing.assert_close(theirs.encode(rows), model.encode(rows))


def test_encoder_activations_are_the_real_frames_only(lm):
    clips = toy_clips(3)
    acts = sae.collect_activations(lm, clips, "enc.1.resid_post", batch_size=2)
    features, n_frames = lm.features(clips)
    assert len(acts) == int(n_frames.sum()) < 3 * 150  # the padding of the window is never kept
    with cache_activations(lm, "enc.1.resid_post") as cache:
        run.encode_features(lm, features)
    second = acts.values[torch.as_tensor(acts.clip == 1)]
    torch.testing.assert_close(second, cache["enc.1.resid_post"][1, :int(n_frames[1])])
    assert acts.position[acts.clip == 1].tolist() == list(range(int(n_frames[1])))


def test_decoder_activations_are_the_prompt_and_the_transcript(lm):
    clips = toy_clips(3)
    acts = sae.collect_activations(lm, clips, "dec.0.mlp_out", max_new_tokens=8)
    decoded = run.greedy(lm, run.encode(lm, clips).states, max_new_tokens=8)
    assert len(acts) == sum(decoded.n_prompt + len(t) for t in decoded.text_ids)
    assert acts.values.shape[1] == 16


def test_an_exact_reconstruction_spliced_in_changes_nothing_and_zeros_do(lm):
    clips = toy_clips(3)
    for point in ("enc.1.resid_post", "dec.0.resid_post"):
        cost = sae.spliced_cost(lm, exact_sae(16), point, clips, max_new_tokens=8)
        assert cost.loss_spliced == pytest.approx(cost.loss_clean, abs=1e-4)
        assert cost.texts_spliced == cost.texts_clean and cost.changed == 0
        assert cost.loss_zero != pytest.approx(cost.loss_clean, abs=1e-3)  # zeroing the point costs (can fail)
        assert cost.loss_recovered == pytest.approx(1.0, abs=1e-3)
    null = sae.spliced_cost(lm, sae.TopKSAE(16, 32, 2), "enc.1.resid_post", clips, max_new_tokens=8)
    assert null.loss_spliced == pytest.approx(null.loss_zero, abs=1e-4)  # reconstructing 0 is zero ablation


def test_bad_arguments_name_what_is_wrong(lm):
    with pytest.raises(ValueError, match="k"):
        sae.TopKSAE(8, 4, 5)
    with pytest.raises(ValueError, match="d_in"):
        sae.TopKSAE(0, 4, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        sae.TopKSAE(8, 16, 2).encode(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="non-finite"):
        sae.train_topk(torch.full((4, 8), float("nan")), d_sae=16, k=2)
    with pytest.raises(ValueError, match="batch, positions, width"):
        sae.collect_activations(lm, toy_clips(1), "dec.0.cross_head_out")
    with pytest.raises(ValueError, match="16-dimensional"):
        sae.spliced_cost(lm, sae.TopKSAE(8, 16, 2), "enc.1.resid_post", toy_clips(1))
    with pytest.raises(ValueError, match="references"):
        sae.spliced_cost(lm, exact_sae(16), "enc.1.resid_post", toy_clips(2), references=["a"])


def test_a_planted_label_latent_is_chosen_on_one_split_and_measured_on_the_other():
    rng = np.random.default_rng(0)
    n_clips, d_sae = 80, 12
    labels = np.arange(n_clips) % 2 == 0
    groups = np.arange(n_clips) // 4  # 4 clips per speaker, both classes within a speaker
    features = rng.random((n_clips, d_sae))
    features[:, 7] += 2.0 * labels  # latent 7 fires more on the label
    select = groups % 2 == 0
    table = sae.label_association(features, labels, groups, select, top=3, n_resamples=200)
    assert table.latent.iloc[0] == 7 and table.auroc.iloc[0] == pytest.approx(1.0)
    assert table.ci_low.iloc[0] > 0.9 and table.n_label.iloc[0] == int(labels[~select].sum())
    noise_only = sae.label_association(rng.random((n_clips, d_sae)), labels, groups, select, top=3, n_resamples=200)
    holds_chance = (noise_only.ci_low < 0.5) & (noise_only.ci_high > 0.5)
    assert holds_chance.sum() >= 2  # latents chosen on noise: held out, their intervals mostly hold chance
    with pytest.raises(ValueError, match="both classes"):
        sae.label_association(features, labels, groups, labels)


def test_each_value_of_a_label_gets_its_own_planted_latent():
    rng = np.random.default_rng(1)
    n_clips, d_sae = 90, 10
    values = np.array(["a", "b", "c"])[np.arange(n_clips) % 3]
    groups = np.arange(n_clips) // 6  # 6 clips per group, every value in each group
    features = rng.random((n_clips, d_sae))
    for value, latent in (("a", 2), ("b", 5), ("c", 8)):
        features[:, latent] += 2.0 * (values == value)
    table = sae.best_latent_per_value(features, values, groups, groups % 2 == 0, n_resamples=100)
    assert table.value.tolist() == ["a", "b", "c"] and table.latent.tolist() == [2, 5, 8]
    assert (table.auroc == 1.0).all() and (table.direction == "higher in label").all() and table.carries.all()
    assert (table.n_label == 14).all() and (table.n_outside == 28).all()  # 7 held-out groups of 6
    with pytest.raises(ValueError, match="at least two values"):
        sae.best_latent_per_value(features, np.full(n_clips, "a"), groups, groups % 2 == 0)
    with pytest.raises(ValueError, match="one value per clip"):
        sae.best_latent_per_value(features, values[:10], groups, groups % 2 == 0)


def test_clip_means_and_top_activations_follow_the_rows():
    model = exact_sae(2)  # latents relu(x), relu(-x)
    values = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, -1.0]])
    acts = sae.Activations(values, np.array([0, 0, 1, 2]), np.array([0, 1, 0, 7]), "enc.0.resid_post")
    means = sae.clip_means(model, acts, n_clips=4)
    assert means.shape == (4, 4) and means[0, 0] == pytest.approx(2.0) and means[3].sum() == 0  # clip 3: no rows
    top = sae.top_activations(model, acts, 0, n=5)
    assert top["clip"].tolist() == [2, 0] and top.activation.tolist() == [5.0, 3.0]  # one row per clip, largest first
    assert top.seconds.tolist() == pytest.approx([7 * 0.02, 1 * 0.02])
    with pytest.raises(ValueError, match="latent"):
        sae.top_activations(model, acts, 9)
    both = sae.top_activations(model, acts, [1, 0], n=5)  # several latents: encoded once, a latent column first
    assert both.columns[0] == "latent" and both.latent.tolist() == [1, 0, 0]  # latent 1, relu(x[1]): clip 1 only
    assert both[both.latent == 0].drop(columns="latent").reset_index(drop=True).equals(top)
    assert both[both.latent == 1]["clip"].tolist() == [1] and both.activation.iloc[0] == 2.0
    part = acts.of_clips([2, 0])
    assert part.clip.tolist() == [0, 0, 2] and torch.equal(part.values, values[[0, 1, 3]])


def test_steering_by_zero_changes_nothing_and_clamping_sets_the_latent(lm):
    rows, _ = planted(n=400, d=16)
    model = sae.train_topk(rows, d_sae=32, k=4, epochs=1, seed=0).sae
    clips = toy_clips(2)
    states = run.encode(lm, clips).states
    ids = run.greedy(lm, states, max_new_tokens=6).ids
    clean = run.teacher_force(lm, states, ids)
    still = run.teacher_force(lm, states, ids, patches={"dec.0.resid_post": sae.steer(model, 3, add=0.0)})
    assert torch.equal(still, clean)  # a zero-strength intervention changes nothing
    pushed = run.teacher_force(lm, states, ids, patches={"dec.0.resid_post": sae.steer(model, 3, add=5.0)})
    assert not torch.allclose(pushed, clean)  # the test can fail
    x = rows[:50]
    latent = int(model.encode(x).sum(0).argmax())  # a latent that fires on these rows
    from asrinterp_utils.hooks import HookContext, HookPoint

    ctx = HookContext(HookPoint("dec.0.resid_post", "dec", 0, "resid_post"), torch.arange(50))
    clamped = sae.steer(model, latent, clamp=0.0).value(x[None], ctx)[0]
    z = model.encode(x)[:, latent]
    torch.testing.assert_close(clamped, x - z[:, None] * model.W_dec[latent])  # its part of the reconstruction gone
    assert torch.equal(clamped[z == 0], x[z == 0]) and not torch.equal(clamped[z > 0], x[z > 0])
    with pytest.raises(ValueError, match="exactly one"):
        sae.steer(model, 3)
    with pytest.raises(ValueError, match="latent"):
        sae.steer(model, 32, add=1.0)
