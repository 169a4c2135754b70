"""asrinterp_utils: hooks, caches, lenses, probes and activation patching for Whisper.

The package behind the executable book "Beyond Transcription, executed". One module per concept:

==============  =====================================================================================
``models``      :func:`load_model` (embedded tiny.en and base offline; any hub name online)
``audio``       16 kHz mono float32 in, validated, with each clip's true length
``run``         the one place Whisper runs: encode, greedy decoding (patched or not), teacher forcing
``hooks``       the hook-point grammar (``enc.3.resid_post``, ``dec.1.cross_head_out``) and :func:`patch`
``cache``       :func:`cache_activations`: filtered, pooled over real frames, in memory or on disk
``store``       per-clip results computed once: transcripts, encoder outputs and their per-layer means, lens rows
``patching``    batched patch sweeps, patched generation beside a reference run, attribution patching
``repetition``  repetition loops: candidate inputs, mining, how a patch resolves them
``lens``        logit lens, saturation layer, encoder lens, tuned lens
``audio_llm``   the same lenses on Qwen2-Audio (audio tower + language model)
``metrics``     normalised WER, repetition loops, transcript kinds
``probes``      per-layer linear probes grouped by speaker, with controls and transfer (scikit-learn)
``sae``         TopK sparse autoencoders on any hook point: activations, training, splice cost, SAELens files
``stats``       intervals (Wilson, grouped bootstrap), paired tests, selection stability, verdicts (scipy)
``extract``     pooled features for many clips or a bank table: sharded on disk, resumable, multi-process
``attention``   reading attention patterns (alignment heads)
``data``        the speech bank (real recordings, TTS voices, noise; truncated and non-speech inputs)
``plotting``    one figure style; ``widgets``: explorers that work in the static book
``reports``     the generated back matter: the reproduction report and the performance page
``exercises``   self-checks for the chapters' exercises
==============  =====================================================================================
"""
from . import runtime as _runtime

_runtime.configure_threads()  # before anything imports torch: OpenMP reads its wait policy when it starts
_runtime.configure_allocator()  # large tensors reuse freed memory instead of page-faulting fresh pages

from .audio import AudioError, load_audio, make_batch  # noqa: E402
from .cache import ActivationCache, CachePassError, cache_activations  # noqa: E402
from .hooks import HookPointError, add, apply, hook_point_table, mean_ablate, patch, replace, scale, zero  # noqa: E402
from .models import LoadedModel, ModelNotAvailableError, load_model  # noqa: E402
from .run import encode, generate_ids, greedy, teacher_force, transcribe  # noqa: E402
from .runtime import fast_mode  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ActivationCache", "AudioError", "CachePassError", "HookPointError", "LoadedModel", "ModelNotAvailableError",
    "add", "apply", "cache_activations", "fast_mode", "hook_point_table", "load_audio", "load_model", "make_batch",
    "mean_ablate", "patch", "replace", "scale", "zero", "encode", "generate_ids", "greedy", "teacher_force",
    "transcribe",
]
