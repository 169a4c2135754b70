"""Shared fixtures: small random-initialised Whisper models for fast unit tests.

Real-weight tests (marked ``real``) load the embedded tiny.en through ``asrinterp_utils.models.load_model``.
"""
from __future__ import annotations

import os

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several pytest workers share the cores: each computes on one thread, so that they do not wait on each other's
    # OpenMP threads. The chapters run in Jupyter kernels (their own processes), with PyTorch's default threads.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For ``--dist loadgroup`` (make test): a test file's tests stay together on one worker (they share
    module-level models and fixtures), except the chapters, each of which goes to whichever worker is free (one
    worker running every chapter in turn would leave the other idle for minutes)."""
    for item in items:
        if item.get_closest_marker("chapters") is None:
            item.add_marker(pytest.mark.xdist_group(name=item.path.name))


def random_whisper(*, n_mels: int = 80, vocab: int = 120, layers: int = 2, heads: int = 2, d_model: int = 16,
                   frames: int = 150, attn: str = "eager", seed: int = 0) -> WhisperForConditionalGeneration:
    """A random-initialised Whisper of toy width, in eval mode. ``frames`` encoder frames (the real 1,500 for
    shape tests; 150 by default, so the mel input is ``(batch, n_mels, 300)`` and the tests run fast)."""
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=vocab, num_mel_bins=n_mels, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, d_model=d_model,
        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, max_source_positions=frames,
        max_target_positions=64, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
        attn_implementation=attn)
    return WhisperForConditionalGeneration(config).eval()


@pytest.fixture(scope="session")
def toy():
    return random_whisper()


@pytest.fixture(scope="session")
def toy_inputs():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 80, 300, generator=g)  # the toy encoder has 150 frames
    other = torch.randn(2, 80, 300, generator=g)
    ids = torch.randint(3, 120, (2, 7), generator=g)
    ids[:, 0] = 1
    return feats, other, ids


@pytest.fixture(scope="session")
def toy_lm():
    """The toy as a :class:`LoadedModel` (``tests/_toy_lm.py``), shared by the extraction tests."""
    from ._toy_lm import toy_loaded_model

    return toy_loaded_model()


@pytest.fixture(scope="session")
def toy_lm_clips():
    """Sixteen synthetic clips of different lengths for ``toy_lm``."""
    from ._toy_lm import toy_clips

    return toy_clips(16)
