"""A :class:`LoadedModel` around the random-initialised toy Whisper of ``conftest.random_whisper``, for tests that
need ``features`` and the execution layer (``run.encode``, ``run.greedy``) without real weights (and for ``scripts/extract_features.py --toy``).

Everything but the prompt is LoadedModel's own code: ``features`` runs a real ``WhisperFeatureExtractor`` with a
3 s window (mel ``(batch, 80, 300)``, the toy encoder's 150 frames). The toy has no tokenizer, so :meth:`ToyLoadedModel.prompt_ids` is a fixed
two-token prompt. The vocabulary is small (8 tokens, ``<|endoftext|>`` = 2) and the encoder's convolutions (x10)
and the cross-attention projections (x30) are scaled up from the random init, so that the audio steers the greedy
hypothesis: with the default seed the toy clips give different hypotheses, of different lengths (some end at
once, some run to ``max_new_tokens``). Without the scaling every clip decodes to the same tokens.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from asrinterp_utils.models import LoadedModel, ModelDims

from .conftest import random_whisper

TOY_PROMPT = (1, 3)  # decoder_start_token_id, then one more token standing for <|notimestamps|>


class ToyLoadedModel(LoadedModel):
    """LoadedModel with a fixed prompt (the toy has no tokenizer to look the special tokens up in)."""

    def prompt_ids(self) -> list[int]:
        return list(TOY_PROMPT)


def toy_loaded_model(seed: int = 1) -> ToyLoadedModel:
    """The conftest toy (2+2 layers, d_model 16, 150 encoder frames, vocabulary 8) as a LoadedModel named "toy"."""
    model = random_whisper(vocab=8, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "encoder.conv" in name and param.dim() == 3:
                param.mul_(10)
            elif "encoder_attn." in name and param.dim() == 2:
                param.mul_(30)
    generation = model.generation_config  # WhisperConfig's defaults name real-vocabulary tokens: none exist here
    generation.no_timestamps_token_id = model.config.vocab_size - 1  # so no timestamp token to suppress
    generation.suppress_tokens, generation.begin_suppress_tokens = [], []
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16_000, hop_length=160, chunk_length=3)
    return ToyLoadedModel(name="toy", model=model, processor=SimpleNamespace(feature_extractor=extractor),
                          tokenizer=None, dims=ModelDims.from_config(model.config, multilingual=False), source="toy")


def toy_clip(i: int, seed: int = 0) -> np.ndarray:
    """Clip ``i``: noise with a tone, 0.2 to 3 s long, float32 at 16 kHz (deterministic in ``i`` and ``seed``)."""
    rng = np.random.default_rng([seed, i])
    n = int(rng.integers(3_200, 48_000))
    t = np.arange(n) / 16_000
    tone = np.sin(2 * np.pi * rng.uniform(100, 2_000) * t)
    return (0.3 * tone + 0.1 * rng.standard_normal(n)).astype(np.float32)


def toy_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    return [toy_clip(i, seed) for i in range(n)]
