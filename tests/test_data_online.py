"""Online corpus adapters (asrinterp_utils.data.online) on tiny local fixtures in the Hub datasets' formats.

The fixtures are built in each test: a 3-row LibriSpeech-like ``datasets.Dataset`` (tones as encoded audio, like the
Hub's parquet files; one row at 44.1 kHz stereo to exercise the conversion), an EdAcc-like one, and a miniature
extracted ``LibriSpeech/`` tree. ``tests/fixtures/SPEAKERS.TXT`` has a few lines in LibriSpeech's format. Offline
Hub access must fail in seconds with CorpusNotAvailableError. Skipped without ``datasets`` (the ``online`` extra).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

datasets = pytest.importorskip("datasets", reason="pip install 'asrinterp-utils[online]'")

from asrinterp_utils.data import COLUMNS, MissingDependencyError  # noqa: E402
from asrinterp_utils.data import online  # noqa: E402
from asrinterp_utils.data.online import (  # noqa: E402
    CorpusNotAvailableError,
    OnlineDependencyError,
    accented_english,
    librispeech,
    normalise_accent,
    normalise_gender,
    parse_speakers_txt,
    read_speakers,
)

FIXTURES = Path(__file__).parent / "fixtures"
SPEAKERS = FIXTURES / "SPEAKERS.TXT"
SR = 16_000
pytestmark = pytest.mark.filterwarnings("ignore:.*:DeprecationWarning")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ASRINTERP_CACHE", str(root))
    monkeypatch.delenv("ASRINTERP_LIBRISPEECH_SPEAKERS", raising=False)
    return root


def _tone(freq: float, seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _encoded(x: np.ndarray, sr: int, fmt: str = "FLAC") -> dict:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype="PCM_16")
    return {"bytes": buf.getvalue(), "path": None}


def _as_hub_dataset(columns: dict, types: dict):
    """A Dataset whose ``audio`` column is a decoding ``Audio`` feature, as on the Hub. Built from encoded bytes,
    which needs no audio back-end (datasets 4+ wants torchcodec to encode arrays)."""
    feats = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                               **{k: datasets.Value(v) for k, v in types.items()}})  # fmt: skip
    ds = datasets.Dataset.from_dict(columns, features=feats)
    return ds.cast_column("audio", datasets.Audio(sampling_rate=SR))


LS_ROWS = [  # id, speaker, chapter, text, seconds, (sr, channels)
    ("84-121123-0000", 84, 121123, "GO DO YOU HEAR", 1.0, (SR, 1)),
    ("174-50561-0000", 174, 50561, "FORGOTTEN TOO THE NAME OF GILLIAN", 1.5, (44_100, 2)),
    ("999-1-0000", 999, 1, "A READER NOT IN THE FILE", 0.5, (SR, 1)),
]


@pytest.fixture
def librispeech_like():
    cols = {"file": [], "audio": [], "text": [], "speaker_id": [], "chapter_id": [], "id": []}
    for i, (cid, spk, ch, text, sec, (sr, nch)) in enumerate(LS_ROWS):
        cols["file"].append(f"{cid}.flac")
        cols["audio"].append(_encoded(_tone(220 * (i + 1), sec, sr, nch), sr))
        cols["text"].append(text)
        cols["speaker_id"].append(spk)
        cols["chapter_id"].append(ch)
        cols["id"].append(cid)
    return _as_hub_dataset(cols, {"file": "string", "text": "string", "speaker_id": "int64",
                                  "chapter_id": "int64", "id": "string"})  # fmt: skip


@pytest.fixture
def saved_librispeech(tmp_path, librispeech_like) -> Path:
    path = tmp_path / "librispeech_local"
    datasets.DatasetDict({"validation.clean": librispeech_like}).save_to_disk(str(path))
    return path


def _check_wavs(df: pd.DataFrame, root: Path) -> None:
    for _, row in df.iterrows():
        p = Path(row["path"])
        assert p.is_file() and root in p.parents
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert row["duration_s"] == pytest.approx(info.frames / SR)
    leftovers = [p for p in root.rglob(".*") if p.name != ".lock"]
    assert leftovers == [], leftovers


# ----------------------------------------------------------------------------------------------------------------
# SPEAKERS.TXT and labels
# ----------------------------------------------------------------------------------------------------------------
def test_parse_speakers_txt():
    df = parse_speakers_txt(SPEAKERS.read_text())
    assert list(df.speaker_id) == ["84", "174", "251", "422"]
    assert list(df.gender) == ["female", "male", "male", "female"]
    assert df.loc[df.speaker_id == "251", "name"].item() == "|XYZ|Test Reader Three"  # bars inside the name
    assert df.minutes.tolist() == pytest.approx([8.02, 8.04, 8.04, 8.38])
    assert read_speakers(SPEAKERS)["174"] == "male"
    assert read_speakers(FIXTURES)["84"] == "female"  # the folder works too
    assert read_speakers({84: "F", "174": "male", 5: "x"}) == {"84": "female", "174": "male", "5": "unknown"}


def test_label_normalisation():
    assert [normalise_gender(v) for v in ["F", "female", "Male", "male_masculine", "non-binary", None, ""]] == [
        "female", "female", "male", "male", "unknown", "unknown", "unknown"]
    assert normalise_accent("Scottish English", online.EDACC_ACCENTS) == "scotland"
    assert normalise_accent("mainstream us english", online.EDACC_ACCENTS) == "us"
    assert normalise_accent("Spanish") == "l2-es" and normalise_accent("Mandarin") == "l2-zh"
    assert normalise_accent("Nigerian English") == "nigerian"
    assert normalise_accent("  ") == "unknown" and normalise_accent(float("nan")) == "unknown"


# ----------------------------------------------------------------------------------------------------------------
# LibriSpeech
# ----------------------------------------------------------------------------------------------------------------
def test_librispeech_from_saved_copy(saved_librispeech, cache):
    df = librispeech(dataset_id=str(saved_librispeech), split="validation.clean", speakers=SPEAKERS)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert list(df.clip_id) == [r[0] for r in LS_ROWS]
    assert list(df.gender) == ["female", "male", "unknown"]  # 999 is not in SPEAKERS.TXT
    assert list(df.speaker) == ["librispeech:84", "librispeech:174", "librispeech:999"]
    assert set(df.accent) == {"unknown"} and set(df.source) == {"librispeech"}
    assert set(df.licence) == {"CC-BY-4.0"}
    assert df.text[0] == "GO DO YOU HEAR" and df.n_words.tolist() == [4, 6, 6]
    assert df.duration_s.tolist() == pytest.approx([r[4] for r in LS_ROWS], abs=1e-3)  # 44.1 kHz row resampled
    _check_wavs(df, cache / "corpora" / "librispeech")
    x, sr = sf.read(df.path[1])
    assert sr == SR and x.ndim == 1
    # the 440 Hz tone survived the conversion from 44.1 kHz stereo
    spec = np.abs(np.fft.rfft(x))
    assert np.fft.rfftfreq(len(x), 1 / SR)[spec.argmax()] == pytest.approx(440, abs=2)


def test_librispeech_objects_n_and_data_dir(librispeech_like, saved_librispeech, cache):
    df = librispeech(dataset_id=librispeech_like, n=2, speakers={84: "F", 174: "M"})  # a Dataset object
    assert len(df) == 2 and list(df.gender) == ["female", "male"]
    it = librispeech(dataset_id=librispeech_like.to_iterable_dataset(), n=1, speakers=SPEAKERS)
    assert len(it) == 1 and it.clip_id[0] == LS_ROWS[0][0]
    dd = librispeech(data_dir=saved_librispeech, split="validation.clean", speakers=SPEAKERS, max_duration_s=0.75)
    assert list(dd.clip_id) == ["999-1-0000"]  # the others are longer than 0.75 s


def test_librispeech_without_speakers_warns(librispeech_like):
    with pytest.warns(RuntimeWarning, match="SPEAKERS.TXT"):
        df = librispeech(dataset_id=librispeech_like, n=1)
    assert df.gender[0] == "unknown"


def test_librispeech_extracted_openslr_tree(tmp_path, cache):
    root = tmp_path / "LibriSpeech"
    for cid, spk, ch, text, sec, _ in LS_ROWS[:2]:
        d = root / "dev-clean" / str(spk) / str(ch)
        d.mkdir(parents=True)
        sf.write(str(d / f"{cid}.flac"), _tone(300, sec), SR, subtype="PCM_16")
        (d / f"{spk}-{ch}.trans.txt").write_text(f"{cid} {text}\n")
    (root / "SPEAKERS.TXT").write_text(SPEAKERS.read_text())
    df = librispeech(data_dir=root, split="validation.clean")  # SPEAKERS.TXT found next to the data
    assert list(df.clip_id) == ["174-50561-0000", "84-121123-0000"]
    assert list(df.gender) == ["male", "female"] and list(df.chapter_id) == ["50561", "121123"]
    _check_wavs(df, cache / "corpora" / "librispeech")


def test_wavs_are_written_atomically(librispeech_like, cache, monkeypatch):
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".wav"):
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(online.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        librispeech(dataset_id=librispeech_like, speakers=SPEAKERS)
    root = cache / "corpora" / "librispeech"
    assert not list(root.rglob("*.wav")) and not [p for p in root.rglob(".*") if p.name != ".lock"]
    monkeypatch.setattr(online.os, "replace", real_replace)
    df = librispeech(dataset_id=librispeech_like, speakers=SPEAKERS)
    _check_wavs(df, root)
    mtimes = [os.stat(p).st_mtime_ns for p in df.path]
    again = librispeech(dataset_id=librispeech_like, speakers=SPEAKERS)  # complete files are kept as they are
    assert [os.stat(p).st_mtime_ns for p in again.path] == mtimes


# ----------------------------------------------------------------------------------------------------------------
# Accented English (EdAcc format)
# ----------------------------------------------------------------------------------------------------------------
EDACC_ROWS = [  # speaker, text, accent, raw_accent, gender, l1
    ("EDACC-C06-A", "<laugh> so where are you from", "Scottish English", "Scottish", "female", "English"),
    ("EDACC-C06-B", "i'm from <dk> madrid", "Spanish", "Spanish from Madrid", "male", "Spanish"),
    ("EDACC-C09-A", "okay [noise] that's fine", "Nigerian English", "Nigerian", "non-binary", "Yoruba"),
]


@pytest.fixture
def edacc_like():
    cols = {"speaker": [], "text": [], "accent": [], "raw_accent": [], "gender": [], "l1": [], "audio": []}
    for i, row in enumerate(EDACC_ROWS):
        for key, value in zip(["speaker", "text", "accent", "raw_accent", "gender", "l1"], row):
            cols[key].append(value)
        cols["audio"].append(_encoded(_tone(200 + 100 * i, 0.6, 8_000), 8_000, fmt="WAV"))  # 8 kHz wav
    return _as_hub_dataset(cols, {k: "string" for k in ["speaker", "text", "accent", "raw_accent", "gender", "l1"]})


def test_accented_english_edacc_format(tmp_path, edacc_like, cache):
    path = tmp_path / "edacc_local"
    datasets.DatasetDict({"validation": edacc_like, "test": edacc_like.select([0])}).save_to_disk(str(path))
    df = accented_english(str(path))  # a local copy of EdAcc needs no spec
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert list(df.accent) == ["scotland", "l2-es", "nigeria"]
    assert list(df.accent_label) == ["Scottish English", "Spanish", "Nigerian English"]
    assert list(df.gender) == ["female", "male", "unknown"]
    assert list(df.text) == ["so where are you from", "i'm from madrid", "okay that's fine"]
    assert df.raw_text[0] == EDACC_ROWS[0][1]
    assert list(df.l1) == ["English", "Spanish", "Yoruba"] and df.raw_accent[1] == "Spanish from Madrid"
    assert list(df.speaker) == ["edacc:EDACC-C06-A", "edacc:EDACC-C06-B", "edacc:EDACC-C09-A"]
    assert df.clip_id.is_unique and set(df.source) == {"edacc"} and set(df.licence) == {"CC-BY-SA-4.0"}
    assert df.duration_s.tolist() == pytest.approx([0.6] * 3, abs=1e-3)
    _check_wavs(df, cache / "corpora" / "edacc" / "validation")
    test = accented_english(str(path), split="test")
    assert len(test) == 1 and Path(test.path[0]).parent.name == "test"


def test_accented_english_custom_spec(edacc_like):
    other = edacc_like.rename_columns({"speaker": "spk", "text": "sentence", "accent": "region", "gender": "sex",
                                       "audio": "wav"})  # fmt: skip
    spec = {"name": "my-accents", "licence": "CC0-1.0", "extra": [], "clean_text": None,
            "columns": {"audio": "wav", "text": "sentence", "speaker": "spk", "gender": "sex", "accent": "region"},
            "accents": {"Scottish English": "scot"}, "genders": {"non-binary": "unknown"}}  # fmt: skip
    df = accented_english(other, spec=spec, n=2)
    assert list(df.accent) == ["scot", "l2-es"] and list(df.gender) == ["female", "male"]
    assert df.text[0] == EDACC_ROWS[0][1]  # no clean_text
    assert set(df.source) == {"my-accents"} and df.speaker[0] == "my-accents:EDACC-C06-A"


# ----------------------------------------------------------------------------------------------------------------
# Hub access: offline, unreachable, cached
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    import datasets.config as ds_config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", True)


def test_offline_hub_fails_fast(offline, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(CorpusNotAvailableError, match="data_dir=") as err:
        librispeech(n=1, speakers=SPEAKERS, cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - t0 < 15
    assert "offline" in str(err.value).lower() and "openslr/librispeech_asr" in str(err.value)
    with pytest.raises(CorpusNotAvailableError, match="dataset_id=<local path>"):
        accented_english(n=1, cache_dir=str(tmp_path / "hf"))


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    import datasets.config as ds_config
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    t0 = time.perf_counter()
    with pytest.raises(CorpusNotAvailableError, match="could not reach the Hub"):
        librispeech(n=1, speakers=SPEAKERS, timeout_s=2, cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - t0 < 15
    assert constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ  # restored after the retry


def test_hub_path_then_offline_uses_cached_manifest(librispeech_like, monkeypatch, offline, cache):
    calls = []

    def fake_load_dataset(path, name=None, *, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return librispeech_like

    monkeypatch.setattr(online, "_hub_offline", lambda: False)
    monkeypatch.setattr(online, "_hub_reachable", lambda timeout: (True, ""))
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    df = librispeech(n=2, speakers=SPEAKERS)
    assert calls == [("openslr/librispeech_asr", "all", "validation.clean", True)]
    assert list((cache / "corpora" / "librispeech" / "validation.clean").glob("manifest-*.json"))

    monkeypatch.setattr(online, "_hub_offline", lambda: True)

    def no_cache(*a, **k):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", no_cache)
    with pytest.warns(RuntimeWarning, match="cached"):
        again = librispeech(n=2, speakers=SPEAKERS)
    pd.testing.assert_frame_equal(again[COLUMNS], df[COLUMNS], check_dtype=False)
    with pytest.raises(CorpusNotAvailableError):  # a different request was never cached
        librispeech(n=3, speakers=SPEAKERS)


# ----------------------------------------------------------------------------------------------------------------
# The dependency
# ----------------------------------------------------------------------------------------------------------------
def test_missing_datasets_names_the_extra(monkeypatch, librispeech_like):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(OnlineDependencyError, match=r"pip install 'asrinterp-utils\[online\]'") as err:
        accented_english("edinburghcstr/edacc", n=1)
    assert isinstance(err.value, MissingDependencyError) and isinstance(err.value, ImportError)


def test_import_does_not_load_datasets():
    code = "import sys, asrinterp_utils.data.online, asrinterp_utils.data.noise; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_manifest_is_json(librispeech_like, monkeypatch, cache):
    monkeypatch.setattr(online, "_hub_offline", lambda: False)
    monkeypatch.setattr(online, "_hub_reachable", lambda timeout: (True, ""))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: librispeech_like)
    librispeech("validation.clean", n=1, speakers=SPEAKERS)
    (manifest,) = (cache / "corpora" / "librispeech" / "validation.clean").glob("manifest-*.json")
    data = json.loads(manifest.read_text())
    assert data["version"] == 1 and data["rows"][0]["clip_id"] == LS_ROWS[0][0]
