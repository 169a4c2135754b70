"""Audio in: files or arrays to 16 kHz mono float32, validated, with each clip's true length kept.

Whisper hears 16 kHz mono audio and pads every clip to 30 s: 480,000 samples, 3,000 log-mel frames (hop 160) and,
after the encoder's stride-2 convolution, 1,500 encoder frames of 20 ms. A 4 s clip owns 200 of those frames; the
other 1,300 are padding. Everything downstream (pooling, plots, metrics) must know the true length, so this module
always hands it along.

>>> x = load_audio("clip.flac")          # any rate, any channels -> (n_samples,) float32 at 16 kHz
>>> n_encoder_frames(len(x))              # frames of the 1,500 that belong to the clip
"""
from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

SAMPLE_RATE = 16_000
"""Whisper's sample rate (Hz)."""
MAX_SECONDS = 30.0
"""Whisper's window in seconds; longer audio must be split (see :func:`chunk_audio`)."""
MAX_SAMPLES = int(SAMPLE_RATE * MAX_SECONDS)
HOP_LENGTH = 160
"""Samples per log-mel frame (10 ms)."""
SAMPLES_PER_ENCODER_FRAME = 2 * HOP_LENGTH
"""Samples per encoder frame (20 ms), since the encoder's second convolution has stride 2."""
SECONDS_PER_FRAME = SAMPLES_PER_ENCODER_FRAME / SAMPLE_RATE
"""Seconds per encoder frame (0.02)."""
N_ENCODER_FRAMES = MAX_SAMPLES // SAMPLES_PER_ENCODER_FRAME  # 1500

AudioLike = Union[str, Path, np.ndarray]


MAX_CHANNELS = 8
"""More channels than this along the shorter axis of a 2-D array means the axes were read the wrong way round."""
MAX_FLOAT_AMPLITUDE = 8.0
"""Float samples reach about 1 (a little more when clipped or mixed); beyond this they are integer PCM cast to float
without scaling (int16 reaches 32768)."""


class AudioError(ValueError):
    """Audio that Whisper cannot take as it is. The message says what to do."""


def n_encoder_frames(n_samples: int) -> int:
    """Encoder frames (of the 1,500) that hold the clip's real audio: ``ceil(n_samples / 320)``, at most 1,500."""
    return min(N_ENCODER_FRAMES, math.ceil(n_samples / SAMPLES_PER_ENCODER_FRAME))


def _scale_integer_pcm(x: np.ndarray) -> np.ndarray:
    """Integer PCM to float in [-1, 1): int16 / 32768, int32 / 2**31, uint8 centred on 128."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / float(-np.iinfo(x.dtype).min)
    return x.astype(np.float32, copy=False)


def resample(x: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of a mono signal ``(n_samples,)`` from ``orig_rate`` to ``target_rate``."""
    if orig_rate == target_rate:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(x, target_rate // g, orig_rate // g).astype(np.float32)


def to_whisper_audio(x: np.ndarray, sample_rate: int, *, name: str = "audio", channels_last: bool = True) -> np.ndarray:
    """Any array to what Whisper hears: 16 kHz mono float32 ``(n_samples,)``.

    ``x`` is ``(n_samples,)`` or ``(n_samples, channels)`` (``channels_last``, as soundfile returns it) or
    ``(channels, n_samples)``. Integer PCM is scaled to [-1, 1), channels are averaged, other rates are resampled.
    The result is validated by :func:`validate_audio` (except for length: see :func:`chunk_audio`).
    """
    x = np.asarray(x)
    if x.ndim == 2:
        samples, channels = x.shape if channels_last else x.shape[::-1]
        if channels > samples and samples <= MAX_CHANNELS:
            layout = "(channels, samples)" if channels_last else "(samples, channels)"
            raise AudioError(f"{name}: shape {x.shape} looks like {layout} ({samples} channels of {channels} samples), "
                             f"but channels_last={channels_last} reads it the other way round, as {channels} channels "
                             f"of {samples} samples; pass channels_last={not channels_last}.")
        x = _scale_integer_pcm(x)
        x = x.mean(axis=1 if channels_last else 0)
    elif x.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D signal or a 2-D (samples, channels) array, got shape {x.shape}.")
    x = _scale_integer_pcm(x)
    if sample_rate <= 0:
        raise AudioError(f"{name}: sample rate must be positive, got {sample_rate}.")
    _check_finite_and_nonempty(x, name)
    x = resample(x, sample_rate, SAMPLE_RATE)
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_finite_and_nonempty(x: np.ndarray, name: str) -> None:
    if x.size == 0:
        raise AudioError(f"{name}: the audio is empty (0 samples). Check the file or the slice you passed.")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AudioError(
            f"{name}: {int(bad.sum())} samples are NaN or infinite (the first at sample {first}). "
            "Clean the signal first, e.g. np.nan_to_num(x), or find where it was corrupted."
        )


def validate_audio(x: np.ndarray, *, sample_rate: int = SAMPLE_RATE, name: str = "audio",
                   allow_long: bool = False) -> np.ndarray:
    """Check that ``x`` is what the models take: 1-D float32 at 16 kHz, non-empty, finite, at most 30 s.

    Returns ``x`` as contiguous float32. Raises :class:`AudioError` with what to do otherwise.
    """
    x = np.asarray(x)
    if sample_rate != SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate is {sample_rate} Hz but Whisper needs {SAMPLE_RATE} Hz. "
            f"Use to_whisper_audio(x, {sample_rate}) or load_audio(path), which resample."
        )
    if x.ndim != 1:
        raise AudioError(
            f"{name}: expected mono audio of shape (n_samples,), got shape {x.shape}. "
            "Use to_whisper_audio(x, sample_rate), which mixes channels down."
        )
    if np.issubdtype(x.dtype, np.integer):
        raise AudioError(f"{name}: got integer samples ({x.dtype}); use to_whisper_audio(x, sample_rate) to scale them.")
    _check_finite_and_nonempty(x, name)
    peak = float(np.max(np.abs(x)))
    if peak > MAX_FLOAT_AMPLITUDE:
        raise AudioError(
            f"{name}: samples reach {peak:.0f}, but float audio lies in [-1, 1]. This looks like integer PCM cast to "
            "float without scaling: divide int16 samples by 32768 (to_whisper_audio(x, sample_rate) does it for an "
            "integer array).")
    if not allow_long and x.shape[0] > MAX_SAMPLES:
        raise AudioError(
            f"{name}: {x.shape[0] / SAMPLE_RATE:.1f} s is longer than Whisper's {MAX_SECONDS:.0f} s window. "
            "Split it with chunk_audio(x) and process the chunks, or trim it."
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _read_with_ffmpeg(path: Path) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"{path}: soundfile cannot read this format and ffmpeg is not installed. "
            "Install it (apt-get install ffmpeg) or convert the file to wav/flac."
        )
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-f", "f32le", "-ac", "1",
           "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise AudioError(f"{path}: ffmpeg could not decode it: {proc.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy()


def load_audio(path: Union[str, Path], *, allow_long: bool = False) -> np.ndarray:
    """Read an audio file (wav, flac, ogg, mp3; other formats through ffmpeg) as 16 kHz mono float32.

    Returns ``(n_samples,)``. Raises :class:`AudioError` for a missing or unreadable file, empty audio, NaN or
    infinite samples, and audio over 30 s unless ``allow_long`` (then split it with :func:`chunk_audio`).
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: a folder, not an audio file; give one file (a speech-bank table lists them in its "
                         "'path' column)")
    if not path.is_file():
        raise AudioError(f"{path}: no such file.")
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (n_samples, channels)
        x = to_whisper_audio(data, rate, name=str(path))
    except sf.LibsndfileError:
        x = _read_with_ffmpeg(path)
    except RuntimeError as err:  # older soundfile raises RuntimeError
        if isinstance(err, AudioError):
            raise
        x = _read_with_ffmpeg(path)
    return validate_audio(x, name=str(path), allow_long=allow_long)


def as_audio(item: AudioLike, *, name: str = "audio") -> np.ndarray:
    """A path or an array (already 16 kHz mono) to a validated ``(n_samples,)`` float32 array."""
    if isinstance(item, (str, Path)):
        return load_audio(item)
    return validate_audio(np.asarray(item), name=name)


def chunk_audio(x: np.ndarray, *, chunk_s: float = MAX_SECONDS, overlap_s: float = 0.0) -> list[np.ndarray]:
    """Split long 16 kHz audio ``(n_samples,)`` into chunks of at most ``chunk_s`` seconds (the explicit way to
    give Whisper more than 30 s). Consecutive chunks overlap by ``overlap_s`` seconds."""
    if not 0 < chunk_s <= MAX_SECONDS:
        raise AudioError(f"chunk_s must be in (0, {MAX_SECONDS:.0f}] seconds, got {chunk_s}.")
    if not 0 <= overlap_s < chunk_s:
        raise AudioError(f"overlap_s must be in [0, chunk_s), got {overlap_s}.")
    x = validate_audio(x, allow_long=True)
    size = int(round(chunk_s * SAMPLE_RATE))
    step = size - int(round(overlap_s * SAMPLE_RATE))
    starts = range(0, max(len(x) - (size - step), 1), step)
    return [x[s:s + size] for s in starts if len(x[s:s + size]) > 0]


@dataclass
class AudioBatch:
    """Clips ready for the model, with their true lengths.

    ``clips`` are ``(n_samples_i,)`` float32 arrays; ``n_samples`` and ``n_frames`` are ``(batch,)`` integer arrays:
    samples per clip and encoder frames (of 1,500) that hold real audio.
    """

    clips: list[np.ndarray]
    n_samples: np.ndarray
    n_frames: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.clips)

    def frame_mask(self) -> np.ndarray:
        """``(batch, 1500)`` boolean mask, True on the encoder frames that hold real audio."""
        return np.arange(N_ENCODER_FRAMES)[None, :] < self.n_frames[:, None]


def make_batch(items: Sequence[AudioLike], names: Sequence[str] | None = None) -> AudioBatch:
    """Paths or arrays to an :class:`AudioBatch` (each validated; true lengths kept)."""
    if len(items) == 0:
        raise AudioError("make_batch got no clips.")
    names = list(names) if names is not None else [
        str(it) if isinstance(it, (str, Path)) else f"clip {i}" for i, it in enumerate(items)]
    clips = [as_audio(it, name=n) for it, n in zip(items, names)]
    n_samples = np.array([len(c) for c in clips], dtype=np.int64)
    n_frames = np.array([n_encoder_frames(int(n)) for n in n_samples], dtype=np.int64)
    return AudioBatch(clips=clips, n_samples=n_samples, n_frames=n_frames, names=names)


def rms(x: np.ndarray) -> float:
    """Root-mean-square level of a signal."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def white_noise_like(x: np.ndarray, *, seed: int | Sequence[int] = 0, level: str | float = "match") -> np.ndarray:
    """Gaussian white noise of the same length as ``x`` ``(n_samples,)``: the paper's reference input.

    ``level="match"`` gives the noise the clip's RMS level; a float sets the RMS directly. ``seed``: an integer or
    a sequence of integers (NumPy's seed entropy), e.g. ``(draw, clip)``.
    """
    x = validate_audio(x, allow_long=True)
    target = rms(x) if level == "match" else float(level)
    noise = np.random.default_rng(seed).standard_normal(len(x))
    return (noise * (target / max(rms(noise), 1e-12))).astype(np.float32)
