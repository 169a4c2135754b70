"""extract.py: sharded, resumable, multi-process feature extraction, on the toy Whisper of tests/_toy_lm.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from asrinterp_utils import run
from asrinterp_utils.cache import cache_activations
from asrinterp_utils.data.real import clip_audio, write_wav_atomic
from asrinterp_utils.extract import (ConfigMismatchError, FeatureStore, LazyClips, extract_features,
                                     merge_manifests, plan_shards)

from ._toy_lm import toy_clip

REPO = Path(__file__).resolve().parent.parent
N_CLIPS = 16
SMALL = dict(batch_size=2, shard_size=5, progress=False)  # shards of 5, 5, 5, 1 clips; batches of 2 and 1
MAX_NEW = 10


@pytest.fixture
def lm(toy_lm):
    return toy_lm


@pytest.fixture
def clips(toy_lm_clips):
    assert len(toy_lm_clips) == N_CLIPS
    return toy_lm_clips


def counting_clips(n: int, calls: list, fail_at: int | None = None) -> LazyClips:
    """Toy clips by index that record each load in ``calls`` and raise when clip ``fail_at`` is loaded."""
    def load(i):
        if i == fail_at:
            raise RuntimeError(f"interrupted at clip {i}")
        calls.append(i)
        return toy_clip(i)
    return LazyClips(list(range(n)), load)


# ---------------------------------------------------------------------------------------------------------------
# (a) the pooled features are what cache_activations gives directly
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_encoder_features_equal_a_direct_cache(lm, clips, tmp_path, pool):
    store = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, pool=pool, **SMALL)
    feats, n_frames = lm.features(clips)  # all clips in one batch
    with torch.no_grad(), cache_activations(lm, "enc.*.resid_post", pool=pool, n_frames=n_frames) as cache:
        lm.model.model.encoder(feats)
    expected = cache.stack("enc.*.resid_post").transpose(0, 1).numpy()  # (clips, points, d_model)

    got = store.load()
    assert got.shape == (N_CLIPS, 2, 16) and got.dtype == np.float32
    assert store.names == ("enc.0.resid_post", "enc.1.resid_post") and store.n_clips == N_CLIPS
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(store.n_positions(), n_frames.numpy())


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_decoder_features_pool_the_generated_tokens_of_a_teacher_forced_forward(lm, clips, tmp_path, pool):
    """Against one teacher-forced forward over prompt + hypothesis, cached in full and pooled here over the
    generated tokens (text and the closing <|endoftext|>), prompt excluded."""
    store = extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path, side="decoder", pool=pool,
                             max_new_tokens=MAX_NEW, **SMALL)
    feats, _ = lm.features(clips)
    with torch.no_grad():
        states = lm.model.model.encoder(feats).last_hidden_state
        ids = run.greedy(lm, states, max_new_tokens=MAX_NEW).ids
        with cache_activations(lm, "dec.*.resid_post") as cache:  # full (clips, tokens, d_model)
            lm.model(encoder_outputs=(states,), decoder_input_ids=ids)
    full = cache.stack("dec.*.resid_post").transpose(0, 1).numpy()  # (clips, points, tokens, d_model)
    n_prompt, end = len(lm.prompt_ids()), lm.model.generation_config.eos_token_id
    lengths = []
    for row in ids[:, n_prompt:].tolist():
        lengths.append(row.index(end) + 1 if end in row else len(row))
    assert len(set(lengths)) >= 3 and min(lengths) == 1, "the toy should give hypotheses of several lengths"
    reduce = {"mean": lambda x: x.mean(axis=1), "max": lambda x: x.max(axis=1), "last": lambda x: x[:, -1]}[pool]
    expected = np.stack([reduce(full[i, :, n_prompt:n_prompt + n]) for i, n in enumerate(lengths)])

    np.testing.assert_allclose(store.load(), expected, rtol=1e-5, atol=1e-5)  # prompt cached vs one pass
    np.testing.assert_array_equal(store.n_positions(), lengths)


# ---------------------------------------------------------------------------------------------------------------
# (b) resume, (c) a changed configuration
# ---------------------------------------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_without_recomputing_finished_shards(lm, tmp_path):
    reference = extract_features(lm, counting_clips(N_CLIPS, []), "enc.*.resid_post", out_dir=tmp_path / "ref",
                                 **SMALL).load()
    out = tmp_path / "run"
    first: list[int] = []
    with pytest.raises(RuntimeError, match="interrupted at clip 12"):  # clip 12 is in shard 2 (clips 10..14)
        extract_features(lm, counting_clips(N_CLIPS, first, fail_at=12), "enc.*.resid_post", out_dir=out, **SMALL)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="shard numbers \\[2, 3\\]"):
        FeatureStore.open(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    leftover = out / ".shard-00002.safetensors.tmp-99999"  # as a write killed halfway would leave it
    leftover.write_bytes(b"half a shard")

    second: list[int] = []
    store = extract_features(lm, counting_clips(N_CLIPS, second), "enc.*.resid_post", out_dir=out, **SMALL)
    assert second == list(range(10, N_CLIPS))  # only the unfinished shards' clips were loaded
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    assert not leftover.exists()
    np.testing.assert_array_equal(store.load(), reference)
    # a complete folder: a third run loads nothing and gives the same features
    third: list[int] = []
    again = extract_features(lm, counting_clips(N_CLIPS, third), "enc.*.resid_post", out_dir=out, **SMALL)
    assert third == [] and np.array_equal(again.load(), reference)


def test_a_changed_configuration_is_refused(lm, clips, tmp_path):
    extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, **SMALL)
    with pytest.raises(ConfigMismatchError, match="pool: the folder has 'mean', this call asks for 'max'"):
        extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, pool="max", **SMALL)
    with pytest.raises(ConfigMismatchError, match="names"):
        extract_features(lm, clips, "enc.1.resid_post", out_dir=tmp_path, **SMALL)
    with pytest.raises(ConfigMismatchError, match="shard_size"):
        extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, batch_size=2, shard_size=4,
                         progress=False)
    changed = [c.copy() for c in clips]
    changed[3] = changed[3] * 0.5  # same number of clips, one of them different
    with pytest.raises(ConfigMismatchError, match="clips") as error:
        extract_features(lm, changed, "enc.*.resid_post", out_dir=tmp_path, **SMALL)
    assert "delete this one to start over" in str(error.value)
    # the batch size is not part of the configuration
    store = extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, batch_size=5, shard_size=5,
                             progress=False)
    assert store.n_clips == N_CLIPS


def test_bad_arguments_are_refused_before_any_work(lm, clips, tmp_path):
    with pytest.raises(ValueError, match="needs side=\"decoder\""):
        extract_features(lm, clips, "enc.*.resid_post", out_dir=tmp_path, pool="last")
    with pytest.raises(ValueError, match="not encoder points"):
        extract_features(lm, clips, ["enc.0.resid_post", "dec.0.resid_post"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="attention patterns"):
        extract_features(lm, clips, "enc.*.attn_pattern", out_dir=tmp_path)
    with pytest.raises(ValueError, match="pass n_clips"):
        extract_features(lm, toy_clip, "enc.0.resid_post", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())
    assert [(s.start, s.stop) for s in plan_shards(11, 5)] == [(0, 5), (5, 10), (10, 11)]


def test_a_function_with_n_clips_is_a_clip_source(lm, clips, tmp_path):
    store = extract_features(lm, toy_clip, "enc.1.resid_post", out_dir=tmp_path / "fn", n_clips=7, **SMALL)
    listed = extract_features(lm, clips[:7], "enc.1.resid_post", out_dir=tmp_path / "list", **SMALL)
    np.testing.assert_array_equal(store.load(), listed.load())
    assert store.config["clips"]["by"].startswith("count only")


# ---------------------------------------------------------------------------------------------------------------
# (d) two processes, by hand
# ---------------------------------------------------------------------------------------------------------------


def test_two_processes_write_their_own_shards_and_merge_into_the_one_process_result(lm, clips, tmp_path):
    one = extract_features(lm, clips, "dec.*.resid_post", out_dir=tmp_path / "one", side="decoder",
                           max_new_tokens=MAX_NEW, **SMALL).load()
    out = tmp_path / "two"
    kwargs = dict(out_dir=out, side="decoder", max_new_tokens=MAX_NEW, num_processes=2, **SMALL)
    assert extract_features(lm, clips, "dec.*.resid_post", process_index=0, **kwargs) is None
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00002.safetensors"]
    with pytest.raises(FileNotFoundError, match="shard numbers \\[1, 3\\]"):
        merge_manifests(out)
    extract_features(lm, clips, "dec.*.resid_post", process_index=1, **kwargs)
    assert not (out / "manifest.json").exists()  # nobody merged yet
    store = merge_manifests(out)
    np.testing.assert_array_equal(store.load(), one)
    assert FeatureStore.open(out).shards == store.shards


# ---------------------------------------------------------------------------------------------------------------
# (e) a real distributed launch
# ---------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher_args: list[str], out: Path, n_clips: int) -> subprocess.CompletedProcess:
    """Run scripts/extract_features.py --toy under ``accelerate launch`` on the CPU, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "scripts" / "extract_features.py"), "--toy", "--out", str(out), "--n-clips", str(n_clips),
           "--side", "decoder", "--batch-size", "2", "--shard-size", "3", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
def test_accelerate_launch_with_two_processes_gives_the_one_process_features(lm, tmp_path):
    """Two CPU processes (torchrun under ``accelerate launch --multi_gpu`` with no GPU visible: Accelerate 1.15
    starts several CPU processes only that way or through mpirun) split the shards; the result is one process's."""
    pytest.importorskip("accelerate")
    n = 11  # 4 shards of 3, 3, 3, 2 clips: process 0 takes shards 0 and 2, process 1 shards 1 and 3
    done = _launch(["--multi_gpu", "--num_processes", "2"], tmp_path / "launched", n)
    assert "2 process(es)" in done.stdout, done.stdout
    one = extract_features(lm, LazyClips(list(range(n)), toy_clip), "dec.*.resid_post", out_dir=tmp_path / "one",
                           side="decoder", max_new_tokens=MAX_NEW, batch_size=2, shard_size=3, progress=False)
    np.testing.assert_allclose(FeatureStore.open(tmp_path / "launched").load(), one.load(), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_accelerate_launch_cpu_starts_one_process_which_does_all_the_work(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` (no MPI hostfile) starts a single process in Accelerate 1.15;
    run_with_accelerate says so and still writes every shard."""
    pytest.importorskip("accelerate")
    done = _launch(["--cpu", "--num_processes", "2"], tmp_path / "cpu", 5)
    assert "1 process(es)" in done.stdout and "started one process" in done.stderr
    assert FeatureStore.open(tmp_path / "cpu").load().shape == (5, 2, 16)


# ---------------------------------------------------------------------------------------------------------------
# (f) memory stays flat; a table of wav paths as the clip source
# ---------------------------------------------------------------------------------------------------------------


def test_at_most_one_batch_of_audio_is_alive_at_a_time(lm, tmp_path):
    """Clips come from a table of wav files (LazyClips + clip_audio); every loaded array is tracked until it is
    freed, and no load ever finds more than one batch of clips alive."""
    paths = []
    for i in range(N_CLIPS):
        paths.append(tmp_path / f"clip{i:02d}.wav")
        write_wav_atomic(paths[-1], toy_clip(i))
    table = pd.DataFrame({"path": [str(p) for p in paths], "speaker": "toy"})
    alive, most_alive, batch_size = [0], [0], 3

    def load(row):
        assert alive[0] < batch_size, f"{alive[0]} clips still alive when loading {row['path']}"
        audio = clip_audio(row)
        alive[0] += 1
        most_alive[0] = max(most_alive[0], alive[0])
        weakref.finalize(audio, lambda: alive.__setitem__(0, alive[0] - 1))
        return audio

    store = extract_features(lm, LazyClips(table, load), "enc.*.resid_post", out_dir=tmp_path / "feats",
                             batch_size=batch_size, shard_size=5, progress=False)
    assert most_alive[0] == batch_size and alive[0] == 0
    assert store.config["clips"]["by"] == "items"
    direct = extract_features(lm, [clip_audio(p) for p in paths], "enc.*.resid_post", out_dir=tmp_path / "direct",
                              batch_size=batch_size, shard_size=5, progress=False)
    np.testing.assert_array_equal(store.load(), direct.load())
