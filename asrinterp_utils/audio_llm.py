"""Lenses for an audio LLM: Qwen2-Audio (Hugging Face ``transformers.Qwen2AudioForConditionalGeneration``).

An audio LLM is a Whisper-like audio encoder (the *audio tower*) whose output, average-pooled in time and projected
to the width of a decoder-only language model, replaces the ``<|AUDIO|>`` placeholder tokens of the prompt. The two
lenses of :mod:`asrinterp_utils.lens` carry over, one per half of the model:

**Logit lens (language model).** One forward pass records the language model's residual stream
``(batch, tokens, hidden)``: lens layer 0 is the input embeddings *after* the audio features are merged in (the input
of decoder layer 0), lens layer ``l`` (1..n-1) is the output of decoder layer ``l - 1``, and the last lens layer
``n`` is the model's own logits. Each earlier layer goes through the language model's final RMSNorm, with statistics
(the root mean square) of *that layer's own* vector, and the ``lm_head``, exactly as the last layer does. The
statistics are those of :func:`asrinterp_utils.lens.lens_statistics`, shared with the Whisper lens. (In
``transformers`` the last entry of ``output_hidden_states`` is already normed; the hooks here record the raw output
of each decoder layer, so nothing is normed twice.)

**Encoder lens (audio tower).** For each audio-tower layer ``l`` (0..L-1), the tower runs only its first ``l + 1``
layers, then what follows the layers in ``Qwen2AudioEncoder.forward`` (the average pooler, which halves the frames,
and the final LayerNorm, skipped with ``apply_final_norm=False``), then the multi-modal projector as usual, and the
model decodes greedily. Layer L-1 reproduces ``model.generate``. The tower is truncated by swapping its ``layers``
for a shorter ``ModuleList`` inside ``try``/``finally``, so the model is restored on every exit path.

Input format: the prompt's ``<|AUDIO|>`` token is repeated once per audio frame the language model will read, as the
``Qwen2AudioProcessor`` of ``transformers`` 5 does (``(((frames - 1) // 2 + 1) - 2) // 2 + 1`` tokens for ``frames``
real mel frames, at most 750 for 30 s); mel features are always padded to 3,000 frames (30 s), with
``feature_attention_mask`` marking the real ones.

Example on a GPU with the real model (about 17 GB in bfloat16; nothing in this module downloads it)::

    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from asrinterp_utils.audio import load_audio
    from asrinterp_utils.audio_llm import audio_llm_encoder_lens, audio_llm_logit_lens

    wave = load_audio("clip.wav")  # 16 kHz mono float32, at most 30 s
    name = "Qwen/Qwen2-Audio-7B-Instruct"
    processor = AutoProcessor.from_pretrained(name)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(name, dtype=torch.bfloat16, device_map="cuda").eval()
    conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                                 {"type": "text", "text": "Transcribe the audio."}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[prompt], audio=[wave], sampling_rate=16000, return_tensors="pt")
    # input_ids, attention_mask, input_features, feature_attention_mask

    result = audio_llm_logit_lens(model, **inputs)           # n + 1 lens layers for n decoder layers
    text = (inputs["input_ids"] != model.config.audio_token_id) & inputs["attention_mask"].bool()
    print(result.per_layer(mask=text))                       # agreement, KL, ... per layer, over text positions

    ids = audio_llm_encoder_lens(model, **inputs, layers=[7, 15, 23, 31])
    prompt_len = inputs["input_ids"].shape[1]
    for layer, seq in zip([7, 15, 23, 31], ids):
        print(layer, processor.batch_decode(seq[:, prompt_len:], skip_special_tokens=True))

On CPU, :func:`tiny_qwen2_audio` gives a small random-initialised model of the same class with matching inputs.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .lens import LogitLensResult, lens_statistics
from .runtime import check_whole


def audio_tokens(real_frames: Any) -> Any:
    """How many ``<|AUDIO|>`` tokens the language model reads for ``real_frames`` real mel frames (an int or a
    tensor of them): the tower's second convolution and its average pooler each halve them (stride 2)."""
    return (((real_frames - 1) // 2 + 1) - 2) // 2 + 1


def is_audio_llm(model: Any) -> bool:
    """True for a Hugging Face ``Qwen2AudioForConditionalGeneration`` (the audio LLMs this module supports)."""
    from transformers import Qwen2AudioForConditionalGeneration

    return isinstance(model, Qwen2AudioForConditionalGeneration)


def _require_audio_llm(model: Any) -> None:
    if not is_audio_llm(model):
        raise ValueError(
            f"expected a transformers Qwen2AudioForConditionalGeneration (e.g. Qwen/Qwen2-Audio-7B-Instruct), got "
            f"{type(model).__name__}; for Whisper use asrinterp_utils.lens.logit_lens and encoder_lens instead")


def _model_inputs(model: Any, input_ids: torch.Tensor, input_features: torch.Tensor,
                  attention_mask: torch.Tensor | None, feature_attention_mask: torch.Tensor | None) -> dict:
    """Check shapes and move the inputs to the model: ``input_ids`` ``(batch, tokens)``, ``input_features``
    ``(batch, mel bins, 3000)``, ``attention_mask`` ``(batch, tokens)`` (default: none), ``feature_attention_mask``
    ``(batch, 3000)`` (default: every frame is real, i.e. 750 audio tokens per clip)."""
    tower = model.model.audio_tower
    input_ids, input_features = torch.as_tensor(input_ids), torch.as_tensor(input_features)
    attention_mask, feature_attention_mask = (None if m is None else torch.as_tensor(m)
                                              for m in (attention_mask, feature_attention_mask))
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold token ids (integers); got dtype {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    if input_features.ndim != 3 or input_features.shape[0] != input_ids.shape[0]:
        raise ValueError(f"input_features must be (batch, mel bins, frames) with the batch of input_ids "
                         f"{input_ids.shape[0]}, got shape {tuple(input_features.shape)}")
    frames = tower.config.max_source_positions * tower.conv1.stride[0] * tower.conv2.stride[0]
    if input_features.shape[1:] != (tower.config.num_mel_bins, frames):
        raise ValueError(f"input_features must be (batch, {tower.config.num_mel_bins}, {frames}): pad the mel "
                         f"features to {frames} frames as the Qwen2AudioProcessor does and mark the real ones in "
                         f"feature_attention_mask; got shape {tuple(input_features.shape)}")
    if feature_attention_mask is None:
        feature_attention_mask = torch.ones(input_features.shape[0], frames, dtype=torch.long)
    for name, mask, shape, each in (
            ("attention_mask", attention_mask, tuple(input_ids.shape), "token of input_ids"),
            ("feature_attention_mask", feature_attention_mask, (input_ids.shape[0], frames), "mel frame")):
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(f"{name} must be {shape}, one flag per {each}; got shape {tuple(mask.shape)}")
    expected = audio_tokens(feature_attention_mask.sum(-1))                                       # (batch,)
    found = (input_ids == model.config.audio_token_id).sum(-1)                                   # (batch,)
    wrong = torch.nonzero(found.cpu() != expected.cpu()).flatten().tolist()
    if wrong:
        b = wrong[0]
        raise ValueError(
            f"audio tokens and audio frames do not match: row {b} of input_ids has {int(found[b])} <|AUDIO|> tokens, "
            f"but feature_attention_mask marks {int(feature_attention_mask[b].sum())} real mel frames, which the "
            f"audio tower turns into {int(expected[b])} (rows {wrong} differ). Expand <|AUDIO|> once per audio frame "
            f"as Qwen2AudioProcessor does, or pass the feature_attention_mask the processor returned")
    device = model.device
    inputs = {"input_ids": input_ids.to(device),
              "input_features": input_features.to(device, tower.conv1.weight.dtype),
              "feature_attention_mask": feature_attention_mask.to(device)}
    if attention_mask is not None:
        inputs["attention_mask"] = attention_mask.to(device)
    return inputs


@torch.no_grad()
def audio_llm_logit_lens(model: Any, input_ids: torch.Tensor, input_features: torch.Tensor, *,
                         attention_mask: torch.Tensor | None = None,
                         feature_attention_mask: torch.Tensor | None = None, top_k: int = 5) -> LogitLensResult:
    """Logit lens over every language-model layer and position of an audio LLM, from one forward pass.

    Args:
        model: a ``Qwen2AudioForConditionalGeneration`` (see :func:`is_audio_llm`).
        input_ids: ``(batch, tokens)``, with ``<|AUDIO|>`` already expanded to one token per audio frame (as the
            processor does).
        input_features: ``(batch, mel bins, 3000)`` log-mel features.
        attention_mask: ``(batch, tokens)``, 1 for real tokens (the processor pads on the left).
        feature_attention_mask: ``(batch, 3000)``, 1 for real mel frames (default: all).
        top_k: how many top tokens to keep per position.

    Returns a :class:`~asrinterp_utils.lens.LogitLensResult` with ``n + 1`` lens layers for ``n`` decoder layers
    (0 = merged input embeddings, ``l`` = output of decoder layer ``l - 1``, ``n`` = the model's logits), over the
    ``tokens`` positions of the sequence the language model reads (that of ``input_ids`` when the audio tokens are
    expanded). Use ``per_layer(mask=...)`` to restrict to text or audio positions and to drop padding.
    """
    _require_audio_llm(model)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.config.text_config.vocab_size:
        raise ValueError(f"top_k must be a whole number from 1 to the vocabulary size "
                         f"({model.config.text_config.vocab_size}); got {top_k!r}")
    inputs = _model_inputs(model, input_ids, input_features, attention_mask, feature_attention_mask)
    language_model = model.model.language_model
    blocks = language_model.layers
    residuals: list[torch.Tensor | None] = [None] * len(blocks)  # lens layers 0..n-1, each (batch, tokens, hidden)

    def record_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        residuals[0] = (args[0] if args else kwargs["hidden_states"]).detach()

    def record_output(layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            residuals[layer] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [blocks[0].register_forward_pre_hook(record_input, with_kwargs=True)]
    # The last block's output is not needed: the last lens layer is the model's own logits.
    handles += [blocks[i].register_forward_hook(record_output(i + 1)) for i in range(len(blocks) - 1)]
    try:
        final_logits = model(**inputs, use_cache=False).logits  # (batch, tokens, vocab)
    finally:
        for handle in handles:
            handle.remove()

    norm, lm_head = language_model.norm, model.lm_head

    def lens_logits(residual: torch.Tensor) -> torch.Tensor:  # (batch, tokens, hidden) -> (batch, tokens, vocab)
        normed = norm(residual.to(norm.weight.device))  # this layer's own RMS (device_map may split the model)
        return lm_head(normed.to(lm_head.weight.device))

    return lens_statistics(final_logits, [lambda r=r: lens_logits(r) for r in residuals], top_k=top_k)


@contextmanager
def _truncated_audio_tower(tower: nn.Module, n_layers: int, apply_final_norm: bool) -> Iterator[None]:
    """Inside the block, ``tower`` runs only its first ``n_layers`` layers (and no final LayerNorm if
    ``apply_final_norm`` is False); the original modules are put back on exit, whatever happens."""
    layers, layer_norm = tower.layers, tower.layer_norm
    try:
        tower.layers = nn.ModuleList(layers[:n_layers])
        if not apply_final_norm:
            tower.layer_norm = nn.Identity()
        yield
    finally:
        tower.layers, tower.layer_norm = layers, layer_norm


@torch.no_grad()
def audio_llm_encoder_lens(model: Any, input_ids: torch.Tensor, input_features: torch.Tensor, *,
                           feature_attention_mask: torch.Tensor | None = None,
                           attention_mask: torch.Tensor | None = None, layers: Sequence[int] | None = None,
                           apply_final_norm: bool = True, max_new_tokens: int = 32) -> list[torch.Tensor]:
    """Decode greedily from every audio-tower layer's output.

    Args:
        model: a ``Qwen2AudioForConditionalGeneration`` (see :func:`is_audio_llm`).
        input_ids, input_features, feature_attention_mask, attention_mask: as for :func:`audio_llm_logit_lens`.
        layers: audio-tower layers to read, each in ``0..L-1`` (default all; ``L - 1`` reproduces
            ``model.generate``).
        apply_final_norm: pass the pooled layer output through the tower's final LayerNorm (default True, since that
            is what the projector was trained to read).
        max_new_tokens: cap per answer (intermediate layers can loop).

    Returns one ``LongTensor`` per entry of ``layers``, on the CPU: what ``model.generate(..., do_sample=False)``
    returns, ``(batch, tokens + new tokens)``; the answer is ``ids[:, tokens:]``. Each layer is one ``generate``
    call.
    """
    _require_audio_llm(model)
    tower = model.model.audio_tower
    n = len(tower.layers)
    layers = list(range(n)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"audio-tower layers must be in 0..{n - 1} (the tower has {n} layers); got {bad}")
    max_new_tokens = check_whole(max_new_tokens, "max_new_tokens", 1)
    inputs = _model_inputs(model, input_ids, input_features, attention_mask, feature_attention_mask)
    out = []
    for layer in layers:
        with _truncated_audio_tower(tower, layer + 1, apply_final_norm):
            out.append(model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens).cpu())
    return out


def tiny_qwen2_audio(seed: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    """A small random-initialised ``Qwen2AudioForConditionalGeneration`` in eval mode, and example inputs for it.

    The model has the real model's audio front end (128 mel bins, 3,000 input frames, 1,500 encoder positions) at toy
    width: audio tower and Qwen2 language model of width 32 with 2 layers each, vocabulary 256, ``<|AUDIO|>`` = 255;
    the gains (and LayerNorm biases) of all norms are random too, not the identity that ``transformers`` initialises.
    The inputs, a batch of two prompts laid out as the processor lays them out, are a dict with ``input_ids`` and
    ``attention_mask`` ``(2, 49)`` (left-padded; 40 and 30 audio tokens, for 160 and 120 real mel frames),
    ``input_features`` ``(2, 128, 3000)`` and ``feature_attention_mask`` ``(2, 3000)``; ``model(**inputs)`` and the
    lenses take them as they are. Global random state is left untouched.
    """
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    pad, audio_bos, audio_eos, audio = 0, 253, 254, 255
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": 32, "encoder_layers": 2,
                      "encoder_attention_heads": 4, "encoder_ffn_dim": 64, "num_mel_bins": 128,
                      "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 256, "pad_token_id": pad},
        audio_token_index=audio)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        with torch.no_grad():  # unit gains would make a second RMSNorm a no-op; random ones make it visible
            for module in model.modules():
                if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                    module.weight.normal_(1.0, 0.3)
                    if getattr(module, "bias", None) is not None:
                        module.bias.normal_(0.0, 0.1)
    model.generation_config.pad_token_id = pad

    g = torch.Generator().manual_seed(seed)
    real_frames = [160, 120]
    rows = []
    for frames in real_frames:
        n_audio = audio_tokens(frames)
        prefix, question = torch.randint(1, 253, (3,), generator=g), torch.randint(1, 253, (4,), generator=g)
        rows.append(torch.cat([prefix, torch.tensor([audio_bos] + [audio] * n_audio + [audio_eos]), question]))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):  # left padding, as the processor and generate expect
        input_ids[b, width - len(row):] = row
        attention_mask[b, width - len(row):] = 1
    input_features = torch.zeros(len(rows), 128, 3000)
    feature_attention_mask = torch.zeros(len(rows), 3000, dtype=torch.long)
    for b, frames in enumerate(real_frames):
        input_features[b, :, :frames] = torch.randn(128, frames, generator=g)
        feature_attention_mask[b, :frames] = 1
    return model, {"input_ids": input_ids, "attention_mask": attention_mask, "input_features": input_features,
                   "feature_attention_mask": feature_attention_mask}
