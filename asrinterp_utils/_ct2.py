"""Turn a CTranslate2 Whisper ``model.bin`` into a transformers Whisper model, tokenizer and processor.

The embedded weights of this package (see :mod:`asrinterp_utils.models`) are real OpenAI Whisper checkpoints that
third parties converted to CTranslate2's format (float16) and published on the package registry. This module reads
that format with numpy only (CTranslate2 itself is not needed) and maps it back to the layout of
``transformers.WhisperForConditionalGeneration``. It is private: the book and the rest of the package call
:func:`asrinterp_utils.models.load_model`, which verifies the files' sha256, converts once and caches the result.

The file, read top to bottom:

1. :func:`read_model_bin` parses ``model.bin`` (binary version 6) into named numpy arrays.
2. :func:`whisper_config` derives a ``WhisperConfig`` from the arrays' shapes.
3. :func:`whisper_state_dict` maps CTranslate2 variable names to transformers parameter names, splitting the fused
   q/k/v projections.
4. :func:`build_model` puts the state dict into a model built on the meta device (no second copy of the weights).
5. :func:`build_tokenizer`, :func:`build_processor` and :func:`generation_config` rebuild the text side from the
   ``tokenizer.json`` + ``vocabulary.txt`` shipped next to ``model.bin``.

Format of ``model.bin`` (little-endian; see ``ctranslate2/specs/model_spec.py``, ``_serialize``)::

    u32 binary_version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x { str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes }
    u32 n_aliases x { str alias | str target }

where ``str`` is a u16 length (counting a trailing NUL) followed by the utf-8 bytes and the NUL, and dtype is
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CT2_BINARY_VERSION = 6
"""The only ``model.bin`` binary version this reader understands (CTranslate2 4.x writes version 6)."""

WHISPER_SPEC_NAME = "WhisperSpec"

_NUMPY_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BFLOAT16 = 5  # numpy has no bfloat16: read as uint16 and widen to float32 (see _bfloat16_to_float32)

_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU (exact erf GELU, transformers' "gelu")


class Ct2FormatError(ValueError):
    """``model.bin`` is not a CTranslate2 Whisper model this reader understands."""


# ---------------------------------------------------------------------------------------------------------------
# 1. Reading model.bin
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Ct2Model:
    """The content of a CTranslate2 ``model.bin``.

    Attributes:
        spec_name: the model spec class that wrote the file (``"WhisperSpec"`` for Whisper).
        spec_revision: that spec's revision number.
        variables: variable name -> numpy array (read-only views into the file's bytes; scalars are 0-d arrays).
        aliases: alias name -> target variable name (e.g. the tied ``decoder/projection/weight``).
    """

    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        """The array called ``name``, following an alias if ``name`` is one."""
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str) -> int:
        """The integer value of a 0-d variable such as ``encoder/num_heads``."""
        value = self[name]
        if value.size != 1:
            raise Ct2FormatError(f"{name} should be a scalar, found shape {value.shape}")
        return int(value.reshape(()))


class _Cursor:
    """Sequential little-endian reader over a bytes-like buffer."""

    def __init__(self, buffer: bytes | memoryview):
        self.buffer = memoryview(buffer)
        self.offset = 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n_bytes_with_nul = self.unpack("H")
        raw = bytes(self.buffer[self.offset : self.offset + n_bytes_with_nul])
        self.offset += n_bytes_with_nul
        if not raw.endswith(b"\0"):
            raise Ct2FormatError(f"string at byte {self.offset - n_bytes_with_nul} is not NUL-terminated")
        return raw[:-1].decode("utf-8")

    def take(self, n_bytes: int) -> memoryview:
        if self.offset + n_bytes > len(self.buffer):
            raise Ct2FormatError(
                f"file ends at byte {len(self.buffer)} but a variable needs bytes up to {self.offset + n_bytes}: "
                "model.bin is truncated"
            )
        chunk = self.buffer[self.offset : self.offset + n_bytes]
        self.offset += n_bytes
        return chunk


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Widen bfloat16 values stored as uint16 to float32 (bfloat16 is the upper half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_model_bin(data: bytes | memoryview) -> Ct2Model:
    """Parse the bytes of a CTranslate2 ``model.bin`` (binary version 6).

    Args:
        data: the whole file's content (for a model split in parts, the parts concatenated in order).

    Returns:
        A :class:`Ct2Model`; its arrays are views into ``data`` (no copy) except bfloat16 ones, widened to float32.

    Raises:
        Ct2FormatError: wrong binary version, truncated file or trailing bytes.
    """
    cursor = _Cursor(data)
    version = cursor.unpack("I")
    if version != CT2_BINARY_VERSION:
        raise Ct2FormatError(
            f"model.bin has binary version {version}; this reader understands version {CT2_BINARY_VERSION} only"
        )
    spec_name = cursor.string()
    spec_revision = cursor.unpack("I")

    variables: dict[str, np.ndarray] = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        rank = cursor.unpack("B")
        shape = tuple(cursor.unpack("I") for _ in range(rank))
        dtype_id = cursor.unpack("B")
        n_bytes = cursor.unpack("I")
        if dtype_id not in _NUMPY_DTYPES:
            raise Ct2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
        array = np.frombuffer(cursor.take(n_bytes), dtype=_NUMPY_DTYPES[dtype_id]).reshape(shape)
        variables[name] = _bfloat16_to_float32(array) if dtype_id == _BFLOAT16 else array

    aliases = {}
    for _ in range(cursor.unpack("I")):
        alias = cursor.string()
        aliases[alias] = cursor.string()
    if cursor.offset != len(cursor.buffer):
        raise Ct2FormatError(f"{len(cursor.buffer) - cursor.offset} unexpected bytes after the alias table")
    return Ct2Model(spec_name=spec_name, spec_revision=spec_revision, variables=variables, aliases=aliases)


# ---------------------------------------------------------------------------------------------------------------
# 2. Configuration from the arrays' shapes
# ---------------------------------------------------------------------------------------------------------------


def count_layers(ct2: Ct2Model, stack: str) -> int:
    """Number of layers in ``stack`` ("encoder" or "decoder"), counted from ``{stack}/layer_<i>/`` names.

    The pattern needs the digits: ``encoder/layer_norm/...`` (the final layer norm) must not count as a layer.
    """
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise Ct2FormatError(f"{stack} layer indices are not contiguous from 0: {sorted(indices)}")
    return len(indices)


def _check_whisper_flags(ct2: Ct2Model) -> None:
    """Fail loudly if the file is not a standard Whisper (pre-norm, GELU, unscaled embeddings, no ALiBi)."""
    if ct2.spec_name != WHISPER_SPEC_NAME:
        raise Ct2FormatError(f"model.bin holds a {ct2.spec_name!r}, not a {WHISPER_SPEC_NAME!r}")
    expected = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0}
    for name, value in expected.items():
        if name in ct2 and ct2.scalar(name) != value:
            raise Ct2FormatError(f"{name} = {ct2.scalar(name)}, expected {value} for an OpenAI Whisper model")


def whisper_config(ct2: Ct2Model, token_ids: dict[str, int]):
    """A ``WhisperConfig`` matching the arrays of ``ct2``.

    Args:
        ct2: the parsed ``model.bin``.
        token_ids: ids of ``<|endoftext|>`` and ``<|startoftranscript|>`` (from :func:`special_token_ids`).

    Returns:
        ``transformers.WhisperConfig`` (80 mel bins, 1500 audio positions, 448 text positions, GELU, tied
        unembedding, pad = bos = eos = ``<|endoftext|>``, decoder start = ``<|startoftranscript|>``).
    """
    from transformers import WhisperConfig

    _check_whisper_flags(ct2)
    conv1 = ct2["encoder/conv1/weight"]  # (d_model, n_mels, 3)
    d_model, n_mels, _ = conv1.shape
    end_of_text = token_ids["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=ct2["decoder/embeddings/weight"].shape[0],
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=count_layers(ct2, "encoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_layers=count_layers(ct2, "decoder"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=end_of_text,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        decoder_start_token_id=token_ids["<|startoftranscript|>"],
        architectures=["WhisperForConditionalGeneration"],
    )


# ---------------------------------------------------------------------------------------------------------------
# 3. Variable mapping
# ---------------------------------------------------------------------------------------------------------------


def _split_rows(fused: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Split a fused projection (weight (n_parts * d, d) or bias (n_parts * d,)) into ``n_parts`` row blocks."""
    if fused.shape[0] % n_parts:
        raise Ct2FormatError(f"cannot split {fused.shape[0]} rows into {n_parts} equal parts")
    return np.split(fused, n_parts, axis=0)


def _linear(ct2: Ct2Model, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": ct2[f"{src}/weight"], f"{dst}.bias": ct2[f"{src}/bias"]}


def _layer_norm(ct2: Ct2Model, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": ct2[f"{src}/gamma"], f"{dst}.bias": ct2[f"{src}/beta"]}


def _fused_projections(ct2: Ct2Model, src: str, dst: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Split CTranslate2's fused projection ``src`` into transformers' ``{dst}.{name}`` linears.

    The key projection has no bias in Whisper (transformers' ``k_proj`` is ``bias=False``); CTranslate2 stores zeros
    there to fuse the bias. We check that the slice is zero and drop it.
    """
    weights = _split_rows(ct2[f"{src}/weight"], len(names))
    biases = _split_rows(ct2[f"{src}/bias"], len(names))
    out = {}
    for name, weight, bias in zip(names, weights, biases):
        out[f"{dst}.{name}.weight"] = weight
        if name == "k_proj":
            if np.any(bias != 0):
                raise Ct2FormatError(f"{src}: the key bias slice should be zero padding, found max |b| = "
                                     f"{float(np.abs(bias).max())}")
        else:
            out[f"{dst}.{name}.bias"] = bias
    return out


def _ffn(ct2: Ct2Model, src: str, dst: str) -> dict[str, np.ndarray]:
    return {
        **_linear(ct2, f"{src}/linear_0", f"{dst}.fc1"),
        **_linear(ct2, f"{src}/linear_1", f"{dst}.fc2"),
        **_layer_norm(ct2, f"{src}/layer_norm", f"{dst}.final_layer_norm"),
    }


def whisper_state_dict(ct2: Ct2Model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The ``WhisperForConditionalGeneration`` state dict held by ``ct2``.

    Mapping (E = ``model.encoder``, D = ``model.decoder``, i = layer index):

    ================================================  ================================================================
    CTranslate2                                       transformers
    ================================================  ================================================================
    encoder/conv{1,2}                                 E.conv{1,2}  (weights (d_model, in_channels, 3))
    encoder/position_encodings/encodings (1500, d)    E.embed_positions.weight
    encoder/layer_i/self_attention/linear_0 (3d, d)   E.layers.i.self_attn.{q,k,v}_proj (fused rows q;k;v)
    encoder/layer_i/self_attention/linear_1           E.layers.i.self_attn.out_proj
    encoder/layer_i/self_attention/layer_norm         E.layers.i.self_attn_layer_norm
    {encoder,decoder}/layer_i/ffn/linear_{0,1}        *.layers.i.fc1, fc2
    {encoder,decoder}/layer_i/ffn/layer_norm          *.layers.i.final_layer_norm
    {encoder,decoder}/layer_norm                      E.layer_norm, D.layer_norm (final layer norms)
    decoder/embeddings/weight (vocab, d)              D.embed_tokens.weight (proj_out.weight is tied to it)
    decoder/position_encodings/encodings (448, d)     D.embed_positions.weight
    decoder/layer_i/self_attention/linear_0 (3d, d)   D.layers.i.self_attn.{q,k,v}_proj
    decoder/layer_i/self_attention/linear_1           D.layers.i.self_attn.out_proj
    decoder/layer_i/attention/linear_0                D.layers.i.encoder_attn.q_proj
    decoder/layer_i/attention/linear_1 (2d, d)        D.layers.i.encoder_attn.{k,v}_proj (fused rows k;v)
    decoder/layer_i/attention/linear_2                D.layers.i.encoder_attn.out_proj
    decoder/layer_i/attention/layer_norm              D.layers.i.encoder_attn_layer_norm
    ================================================  ================================================================

    Note the asymmetry: self-attention has two linears (fused qkv, out) but cross-attention has three (q, fused kv,
    out), so the self-attention output projection is ``linear_1``, not ``linear_2``.

    Args:
        ct2: the parsed ``model.bin``.
        dtype: floating dtype of the returned tensors.

    Returns:
        Parameter name -> tensor (CPU, ``dtype``), without ``proj_out.weight`` (tied, see :func:`build_model`).
    """
    arrays: dict[str, np.ndarray] = {
        **_linear(ct2, "encoder/conv1", "model.encoder.conv1"),
        **_linear(ct2, "encoder/conv2", "model.encoder.conv2"),
        "model.encoder.embed_positions.weight": ct2["encoder/position_encodings/encodings"],
        **_layer_norm(ct2, "encoder/layer_norm", "model.encoder.layer_norm"),
        "model.decoder.embed_tokens.weight": ct2["decoder/embeddings/weight"],
        "model.decoder.embed_positions.weight": ct2["decoder/position_encodings/encodings"],
        **_layer_norm(ct2, "decoder/layer_norm", "model.decoder.layer_norm"),
    }
    for i in range(count_layers(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        arrays.update(_fused_projections(ct2, f"{src}/self_attention/linear_0", f"{dst}.self_attn",
                                         ("q_proj", "k_proj", "v_proj")))
        arrays.update(_linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
        arrays.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        arrays.update(_ffn(ct2, f"{src}/ffn", dst))
    for i in range(count_layers(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        arrays.update(_fused_projections(ct2, f"{src}/self_attention/linear_0", f"{dst}.self_attn",
                                         ("q_proj", "k_proj", "v_proj")))
        arrays.update(_linear(ct2, f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj"))
        arrays.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        arrays.update(_linear(ct2, f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj"))
        arrays.update(_fused_projections(ct2, f"{src}/attention/linear_1", f"{dst}.encoder_attn",
                                         ("k_proj", "v_proj")))
        arrays.update(_linear(ct2, f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj"))
        arrays.update(_layer_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
        arrays.update(_ffn(ct2, f"{src}/ffn", dst))

    state_dict = {}
    for name, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise Ct2FormatError(f"{name} is stored as {array.dtype}; quantized models are not supported")
        # np.array(...) copies out of the read-only file buffer; torch then converts the dtype.
        state_dict[name] = torch.from_numpy(np.array(array)).to(dtype).contiguous()
    return state_dict


# ---------------------------------------------------------------------------------------------------------------
# 4. Model
# ---------------------------------------------------------------------------------------------------------------


def build_model(config, state_dict: dict[str, torch.Tensor], attn_implementation: str = "eager"):
    """A ``WhisperForConditionalGeneration`` in eval mode holding ``state_dict``.

    The module is created on the meta device (no random initialisation, no second copy of the weights), the
    tensors are assigned with ``load_state_dict(assign=True)``, and ``proj_out.weight`` is then tied to the decoder
    token embedding. Raises ``RuntimeError`` if a parameter or buffer is missing or unexpected.

    Args:
        config: the ``WhisperConfig``.
        state_dict: as returned by :func:`whisper_state_dict` (with or without ``proj_out.weight``).
        attn_implementation: transformers attention backend; ``"eager"`` is needed to read attention weights.
    """
    from transformers import WhisperForConditionalGeneration

    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    state_dict = {k: v for k, v in state_dict.items() if k != "proj_out.weight"}
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.unexpected_keys or set(result.missing_keys) != {"proj_out.weight"}:
        raise RuntimeError(
            f"state dict does not fit WhisperForConditionalGeneration: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model.tie_weights()
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"tensors left on the meta device after loading: {still_meta}")
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# 5. Tokenizer, processor, generation config
# ---------------------------------------------------------------------------------------------------------------


def special_token_ids(vocabulary: list[str]) -> dict[str, int]:
    """All ``<|...|>`` control tokens that are not timestamps, in id order: ``{token: id}``.

    For Whisper this is 107 tokens: ``<|endoftext|>``, ``<|startoftranscript|>``, the language tokens,
    ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, ``<|nospeech|>`` (or
    ``<|nocaptions|>``) and ``<|notimestamps|>``.
    """
    timestamp = re.compile(r"^<\|\d+\.\d+\|>$")
    return {tok: i for i, tok in enumerate(vocabulary)
            if tok.startswith("<|") and tok.endswith("|>") and not timestamp.match(tok)}


def read_vocabulary(path: str | Path) -> list[str]:
    """The tokens of CTranslate2's ``vocabulary.txt`` (one per line; line number = token id)."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def build_tokenizer(tokenizer_json: str | Path, vocabulary_txt: str | Path):
    """A ``WhisperTokenizerFast`` for the model, covering its full vocabulary.

    ``tokenizer.json`` as shipped stops at ``<|notimestamps|>``: the 1501 timestamp tokens ``<|0.00|>`` ...
    ``<|30.00|>`` exist only in ``vocabulary.txt``, so they are appended here (as ordinary, non-special added
    tokens, as in OpenAI's tokenizer on the hub). All 107 control tokens are registered as special tokens; without
    this, transformers locates timestamps at ``all_special_ids[-1] + 1`` and mistakes the start/language tokens for
    timestamps. The pad token is ``<|endoftext|>``. (In transformers 5, ``WhisperTokenizerFast`` is an alias of
    the tokenizers-backed ``WhisperTokenizer``.)

    Raises:
        Ct2FormatError: the files disagree on the id of a token.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizerFast

    vocabulary = read_vocabulary(vocabulary_txt)
    backend = Tokenizer.from_file(str(tokenizer_json))
    n_known = backend.get_vocab_size()
    for token_id in (0, n_known - 1):
        if backend.id_to_token(token_id) != vocabulary[token_id]:
            raise Ct2FormatError(f"tokenizer.json and vocabulary.txt disagree on token id {token_id}")
    backend.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in vocabulary[n_known:]])
    if backend.get_vocab_size() != len(vocabulary):
        raise Ct2FormatError(f"tokenizer has {backend.get_vocab_size()} tokens, vocabulary.txt {len(vocabulary)}")

    specials = list(special_token_ids(vocabulary))
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[tok for tok in specials if tok != "<|endoftext|>"],
        model_max_length=448,
    )
    if tokenizer.all_special_ids[-1] + 1 != tokenizer.convert_tokens_to_ids("<|0.00|>"):
        raise Ct2FormatError("special tokens are not registered in id order before the timestamps")
    return tokenizer


def build_processor(tokenizer, n_mels: int = 80):
    """A ``WhisperProcessor``: the standard Whisper log-mel front end (16 kHz, 30 s, hop 160) + ``tokenizer``."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    feature_extractor = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160,
                                                chunk_length=30, n_fft=400)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def generation_config(ct2_config: dict, tokenizer, multilingual: bool):
    """A ``GenerationConfig`` equivalent to CTranslate2's defaults for this model.

    * ``suppress_tokens`` / ``begin_suppress_tokens`` come from CTranslate2's ``config.json``
      (``suppress_ids`` / ``suppress_ids_begin``), which is what ``ctranslate2.models.Whisper.generate`` applies.
    * ``no_timestamps_token_id`` is set for every model (``forced_decoder_ids`` is deprecated in transformers 5).
    * Only a multilingual model gets ``lang_to_id``, ``task_to_id`` and ``is_multilingual=True``. An English-only
      model must not get ``lang_to_id``: transformers would then detect a language and insert a language token into
      its prompt. (The ``lang_ids`` in an ``.en`` model's CTranslate2 config use multilingual numbering: ignored.)
    """
    from transformers import GenerationConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    end_of_text = ids["<|endoftext|>"]
    config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
        max_length=448,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, end_of_text])),
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=multilingual,
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    if multilingual:
        first_language, translate = ids["<|startoftranscript|>"] + 1, ids["<|translate|>"]
        config.lang_to_id = {tok: i for tok, i in ids.items() if first_language <= i < translate}
        config.task_to_id = {"translate": ids["<|translate|>"], "transcribe": ids["<|transcribe|>"]}
    return config


def load_ct2_config(path: str | Path) -> dict:
    """CTranslate2's ``config.json`` for Whisper (``suppress_ids``, ``suppress_ids_begin``, ``alignment_heads``...)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
