"""Audio in: formats, rates, channels, integer PCM, true lengths, and the promised errors."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from asrinterp_utils import audio
from asrinterp_utils.audio import AudioError, to_whisper_audio, validate_audio


def tone(seconds=1.0, rate=16000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_load_formats_resample_and_mix_down(tmp_path, fmt):
    stereo = np.stack([tone(1.0, 44100), tone(1.0, 44100)], axis=1)
    path = tmp_path / f"x.{fmt}"
    sf.write(path, stereo, 44100)
    x = audio.load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 2
    assert abs(audio.rms(x) - audio.rms(tone())) < 0.02  # level kept


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg to write mp3")
def test_load_mp3(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, tone(2.0), 16000)
    mp3 = tmp_path / "x.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(wav), str(mp3)], check=True)
    x = audio.load_audio(mp3)
    assert abs(len(x) / 16000 - 2.0) < 0.1


def test_integer_pcm_is_scaled():
    pcm = (tone() * 32767).astype(np.int16)
    x = audio.to_whisper_audio(pcm, 16000)
    assert np.allclose(x, tone(), atol=1e-4)
    assert np.allclose(audio.to_whisper_audio(np.array([0, 255, 128], np.uint8), 16000), [-1, 127 / 128, 0])
    with pytest.raises(AudioError, match="integer samples"):
        audio.validate_audio(pcm)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(AudioError, match="empty"):
        audio.validate_audio(np.zeros(0, np.float32))
    bad = tone()
    bad[10] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite.*sample 10"):
        audio.validate_audio(bad)
    with pytest.raises(AudioError, match="needs 16000 Hz.*to_whisper_audio"):
        audio.validate_audio(tone(), sample_rate=8000)
    with pytest.raises(AudioError, match="mono"):
        audio.validate_audio(np.zeros((100, 2), np.float32))
    with pytest.raises(AudioError, match="longer than Whisper's 30 s.*chunk_audio"):
        audio.validate_audio(np.zeros(31 * 16000, np.float32))
    with pytest.raises(AudioError, match="no such file"):
        audio.load_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(AudioError):
        audio.load_audio(junk)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        audio.load_audio(empty)


def test_chunking_is_explicit_and_covers_the_clip():
    x = np.random.default_rng(0).standard_normal(70 * 16000).astype(np.float32) * 0.1
    chunks = audio.chunk_audio(x)
    assert [len(c) for c in chunks] == [480000, 480000, 160000]
    assert np.array_equal(np.concatenate(chunks), x)
    overlapped = audio.chunk_audio(x, chunk_s=20, overlap_s=5)
    assert all(len(c) <= 320000 for c in overlapped) and np.array_equal(overlapped[1][:80000], x[240000:320000])


def test_batches_keep_true_lengths():
    batch = audio.make_batch([tone(4.0), tone(0.01), tone(30.0)])
    assert batch.n_frames.tolist() == [200, 1, 1500]
    mask = batch.frame_mask()
    assert mask.shape == (3, 1500) and mask.sum(1).tolist() == [200, 1, 1500]
    assert audio.n_encoder_frames(321) == 2


def test_white_noise_matches_level_and_is_seeded():
    x = tone(2.0)
    n1, n2 = audio.white_noise_like(x, seed=3), audio.white_noise_like(x, seed=3)
    assert np.array_equal(n1, n2) and len(n1) == len(x)
    assert abs(audio.rms(n1) - audio.rms(x)) < 1e-4
    assert abs(audio.rms(audio.white_noise_like(x, level=0.1)) - 0.1) < 1e-4


def test_channels_first_arrays_and_unscaled_pcm_are_refused():
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 16_000)).astype(np.float32)
    with pytest.raises(AudioError, match=r"looks like \(channels, samples\).*pass channels_last=False"):
        to_whisper_audio(stereo, 16_000)
    assert to_whisper_audio(stereo, 16_000, channels_last=False).shape == (16_000,)
    with pytest.raises(AudioError, match=r"looks like \(samples, channels\).*pass channels_last=True"):
        to_whisper_audio(stereo.T, 16_000, channels_last=False)
    pcm = (stereo[0] * 32768).astype(np.int16).astype(np.float32)  # int16 cast to float, not scaled
    with pytest.raises(AudioError, match="samples reach 16.*divide int16 samples by 32768"):
        validate_audio(pcm)
    validate_audio(np.clip(stereo[0] * 2.5, -1.2, 1.2))  # a clipped or mixed float clip is still audio
