"""Real corpora through Hugging Face ``datasets``, for users who are online (or have a copy).

Offline, the book runs on the Debian recordings (:mod:`.real`) and TTS voices. With a network connection, or a local
copy, the same analyses can run on real labelled speech through these adapters:

* :func:`librispeech` -- LibriSpeech (read audiobooks, CC-BY-4.0) from the Hub dataset ``openslr/librispeech_asr``,
  a local copy of it, or the original ``LibriSpeech/`` folder from OpenSLR. Gender comes from ``SPEAKERS.TXT``.
* :func:`accented_english` -- an accented-English corpus, by default EdAcc (``edinburghcstr/edacc``: conversations
  of speakers of some 40 accents, CC-BY-SA-4.0), with the corpus' accent and gender columns mapped to ours by a
  small declarative dict (:data:`ACCENTED_CORPORA`), so the adapter can be pointed at another dataset.

Both return a DataFrame with the package's columns (:data:`~asrinterp_utils.data.real.COLUMNS`: ``clip_id, path,
text, speaker, gender, accent, source, duration_s, licence``) plus a few of the corpus' own. The audio is written
as 16 kHz mono 16-bit wavs to ``cache_dir("corpora", name, split)`` (each to a hidden temporary name, renamed when
complete), so the rest of the package sees files, as for every other source.

Installation: ``pip install 'asrinterp-utils[online]'`` (``datasets``). ``datasets`` is imported inside the
functions, never when this module is imported. Audio is decoded here with soundfile (ffmpeg as a fallback), not
by ``datasets``, so its optional audio back-end (``torchcodec`` in ``datasets`` 4+) is not needed.

Where the data comes from (``dataset_id``, or ``data_dir`` for a local copy):

* a Hub id (``"openslr/librispeech_asr"``). Unless ``HF_HUB_OFFLINE=1`` is set, the Hub is first asked for a
  reply with a short timeout (``timeout_s``, default 5 s, or ``$ASRINTERP_HUB_TIMEOUT``) so that a machine without
  network fails in seconds instead of retrying for minutes. Offline (declared or detected), only the ``datasets``
  cache can serve the request (a split you loaded before with ``streaming=False``), else the wavs and manifest
  that an earlier call of the same request left in the cache are used; failing both, the adapter raises
  :class:`CorpusNotAvailableError`, saying how to pass a local copy.
* a local folder: one written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a folder of data files
  (or a clone of the Hub repository) that ``datasets.load_dataset`` reads, or -- for :func:`librispeech` -- the
  extracted ``LibriSpeech/`` tree (``dev-clean/<speaker>/<chapter>/*.flac`` with ``*.trans.txt``).
* a ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict`` object.

``datasets`` keeps its own download cache (``HF_DATASETS_CACHE``); streaming (the default) downloads only the
rows read.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import SAMPLE_RATE, AudioError, _read_with_ffmpeg, to_whisper_audio
from ..runtime import cache_dir, check_whole, write_text_atomic
from .real import COLUMNS, MissingDependencyError, _build_lock, _count_words, write_wav_atomic

__all__ = [
    "ACCENTED_CORPORA",
    "CorpusNotAvailableError",
    "EDACC_ACCENTS",
    "LIBRISPEECH_ID",
    "LIBRISPEECH_LICENCE",
    "OnlineDependencyError",
    "accented_english",
    "librispeech",
    "normalise_accent",
    "normalise_gender",
    "parse_speakers_txt",
    "read_speakers",
]

LIBRISPEECH_ID = "openslr/librispeech_asr"
LIBRISPEECH_LICENCE = "CC-BY-4.0"
LIBRISPEECH_ATTRIBUTION = (
    "LibriSpeech ASR corpus (Panayotov, Chen, Povey and Khudanpur, ICASSP 2015), derived from LibriVox "
    "public-domain audiobooks, licensed under CC BY 4.0."
)
SPEAKERS_ENV = "ASRINTERP_LIBRISPEECH_SPEAKERS"
TIMEOUT_ENV = "ASRINTERP_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 5.0
_INSTALL = "pip install 'asrinterp-utils[online]'"
_MANIFEST_VERSION = 1


class CorpusNotAvailableError(RuntimeError):
    """A corpus could not be loaded: no network and no local or cached copy. The message says what to do."""


class OnlineDependencyError(MissingDependencyError, ImportError):
    """The optional Python dependency ``datasets`` is missing (``pip install 'asrinterp-utils[online]'``)."""


def _datasets():
    try:
        import datasets
    except ImportError as err:
        raise OnlineDependencyError(
            f"the real-corpus adapters need the Hugging Face 'datasets' package. Install it with: {_INSTALL}"
        ) from err
    return datasets


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------
def normalise_gender(value: Any, table: Optional[Mapping[str, str]] = None) -> str:
    """``"female"``, ``"male"`` or ``"unknown"`` from a corpus' gender label.

    ``table`` (matched case-insensitively) wins; otherwise ``F``/``female``/``woman``/``female_feminine`` give
    female, ``M``/``male``/``man``/``male_masculine`` male, anything else (missing, other, non-binary) unknown.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    v = str(value).strip().lower()
    if table:
        low = {str(k).strip().lower(): out for k, out in table.items()}
        if v in low:
            return low[v]
    if v in {"f", "female", "woman", "w", "female_feminine", "feminine"}:
        return "female"
    if v in {"m", "male", "man", "male_masculine", "masculine"}:
        return "male"
    return "unknown"


# EdAcc's accent labels (its ``accent`` column) mapped to the package's accent codes, which follow the TTS module:
# English varieties by place (``us``, ``gb``, ``scotland`` ...), second-language English as ``l2-`` + the ISO 639-1
# code of the first language. Labels not listed go through :func:`normalise_accent`'s generic rule.
EDACC_ACCENTS: dict[str, str] = {
    "Mainstream US English": "us",
    "US English": "us",
    "American English": "us",
    "Southern British English": "gb",
    "Northern British English": "gb-north",
    "British English": "gb",
    "English": "gb",
    "Scottish English": "scotland",
    "Irish English": "ireland",
    "Welsh English": "wales",
    "Jamaican English": "jamaica",
    "Nigerian English": "nigeria",
    "Kenyan English": "kenya",
    "Ghanaian English": "ghana",
    "South African English": "south-africa",
    "Indian English": "india",
    "Sri Lankan English": "sri-lanka",
    "Pakistani English": "pakistan",
    "Filipino English": "philippines",
    "Singaporean English": "singapore",
    "Australian English": "australia",
    "New Zealand English": "new-zealand",
    "Canadian English": "canada",
}
# First languages (EdAcc labels L2 speakers by their L1) -> ISO 639-1.
_LANGUAGES = {
    "afrikaans": "af", "arabic": "ar", "bulgarian": "bg", "catalan": "ca", "chinese": "zh", "mandarin": "zh",
    "cantonese": "yue", "czech": "cs", "dutch": "nl", "farsi": "fa", "persian": "fa", "finnish": "fi", "french": "fr",
    "german": "de", "greek": "el", "hebrew": "he", "hindi": "hi", "hungarian": "hu", "indonesian": "id",
    "italian": "it", "japanese": "ja", "korean": "ko", "lithuanian": "lt", "latvian": "lv", "macedonian": "mk",
    "polish": "pl", "portuguese": "pt", "brazilian portuguese": "pt", "romanian": "ro", "russian": "ru",
    "serbian": "sr", "slovak": "sk", "spanish": "es", "swedish": "sv", "tagalog": "tl", "thai": "th",
    "turkish": "tr", "ukrainian": "uk", "urdu": "ur", "vietnamese": "vi", "bengali": "bn", "tamil": "ta",
    "gujarati": "gu", "malayalam": "ml", "swahili": "sw", "yoruba": "yo", "igbo": "ig", "hausa": "ha",
}  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def normalise_accent(value: Any, table: Optional[Mapping[str, str]] = None) -> str:
    """Our accent code for a corpus' accent label.

    ``table`` (exact label, then case-insensitive) wins. Otherwise a first language (``"Spanish"``,
    ``"Mandarin"``) becomes ``"l2-" + ISO 639-1`` (``"l2-es"``, ``"l2-zh"``), and any other label its lower-case
    slug without a trailing "English" (``"Nigerian English"`` -> ``"nigerian"``, ``"United States English"`` ->
    ``"united-states"``). Missing or empty labels give ``"unknown"``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    label = " ".join(str(value).split())
    if not label:
        return "unknown"
    if table:
        if label in table:
            return table[label]
        low = {str(k).lower(): v for k, v in table.items()}
        if label.lower() in low:
            return low[label.lower()]
    if label.lower() in _LANGUAGES:
        return "l2-" + _LANGUAGES[label.lower()]
    slug = _slug(re.sub(r"\benglish\b", " ", label, flags=re.I))
    return slug or "unknown"


def _clean_conversation_text(text: str) -> str:
    """Transcript without non-speech tags (``<laugh>``, ``[noise]``, ``<dk>``) and with normal whitespace."""
    t = re.sub(r"<[^>]*>|\[[^\]]*\]", " ", text)
    return " ".join(t.split())


# The declarative part of :func:`accented_english`: how one Hub dataset's columns map onto ours. ``columns`` maps
# our field -> the dataset's column (``None``: not available; ``clip_id`` ``None`` numbers the rows); ``extra``
# lists dataset columns copied as they are; ``accents``/``genders`` map label -> our code before the generic rules
# of :func:`normalise_accent` / :func:`normalise_gender`. To use another dataset, pass ``spec=`` with the same keys.
ACCENTED_CORPORA: dict[str, dict[str, Any]] = {
    "edinburghcstr/edacc": {
        "name": "edacc",
        "config": None,
        "split": "validation",  # "validation" (9,848 segments) or "test" (9,289)
        "licence": "CC-BY-SA-4.0",
        "columns": {"audio": "audio", "text": "text", "speaker": "speaker", "gender": "gender", "accent": "accent",
                    "clip_id": None},
        "extra": ["raw_accent", "l1"],
        "accents": EDACC_ACCENTS,
        "genders": {},
        "clean_text": _clean_conversation_text,
    },
    # Common Voice (English) lists a self-reported accent per speaker; the dataset is gated on the Hub: accept its
    # terms on the dataset page and log in (``hf auth login``) first. Accents are free text ("United States
    # English", "England English", ...), mapped by the generic rule.
    "mozilla-foundation/common_voice_17_0": {
        "name": "common-voice-17-en",
        "config": "en",
        "split": "validation",
        "licence": "CC0-1.0",
        "columns": {"audio": "audio", "text": "sentence", "speaker": "client_id", "gender": "gender",
                    "accent": "accents", "clip_id": "path"},
        "extra": ["age", "locale"],
        "accents": {"United States English": "us", "England English": "gb", "Scottish English": "scotland",
                    "India and South Asia (India, Pakistan, Sri Lanka)": "india", "Irish English": "ireland",
                    "Canadian English": "canada", "Australian English": "australia"},
        "genders": {},
        "clean_text": None,
    },
}  # fmt: skip
EDACC_ID = "edinburghcstr/edacc"


# ----------------------------------------------------------------------------------------------------------------
# LibriSpeech speaker metadata
# ----------------------------------------------------------------------------------------------------------------
def parse_speakers_txt(text: str) -> pd.DataFrame:
    """LibriSpeech's ``SPEAKERS.TXT`` as a DataFrame ``speaker_id, gender, sex, subset, minutes, name``.

    The file has one line per reader, ``ID | SEX | SUBSET | MINUTES | NAME``, with ``;`` starting comment lines
    (the header). ``SEX`` is ``F`` or ``M``. Names may themselves contain ``|`` (reader 60 is ``|CBW|Simon``), so
    a line is split at its first four bars only.
    """
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        parts = [p.strip() for p in line.split("|", 4)]
        if len(parts) < 2 or not parts[0]:
            continue
        parts += [""] * (5 - len(parts))
        try:
            minutes = float(parts[3])
        except ValueError:
            minutes = math.nan
        rows.append(
            {
                "speaker_id": parts[0],
                "gender": normalise_gender(parts[1]),
                "sex": parts[1].upper(),
                "subset": parts[2],
                "minutes": minutes,
                "name": parts[4],
            }
        )
    return pd.DataFrame(rows, columns=["speaker_id", "gender", "sex", "subset", "minutes", "name"])


SpeakersArg = Union[None, str, os.PathLike, Mapping[Any, str]]


def read_speakers(speakers: SpeakersArg) -> dict[str, str]:
    """``{speaker_id: "female" | "male" | "unknown"}`` from a path to ``SPEAKERS.TXT`` or a mapping
    ``{speaker_id: "F" | "M" | "female" | "male"}`` (keys may be ints or strings)."""
    if speakers is None:
        return {}
    if isinstance(speakers, (str, os.PathLike)):
        path = Path(speakers)
        if path.is_dir():
            path = path / "SPEAKERS.TXT"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LibriSpeech SPEAKERS.TXT there")
        df = parse_speakers_txt(path.read_text(encoding="utf-8", errors="replace"))
        return dict(zip(df.speaker_id, df.gender))
    return {str(k).strip(): normalise_gender(v) for k, v in speakers.items()}


def _find_speakers_file(*folders: Optional[Path]) -> Optional[Path]:
    env = os.environ.get(SPEAKERS_ENV)
    if env:
        return Path(env)
    for folder in folders:
        if folder is None:
            continue
        for d in (folder, folder.parent, folder.parent.parent):
            for name in ("SPEAKERS.TXT", "SPEAKERS.txt", "speakers.txt"):
                if (d / name).is_file():
                    return d / name
    return None


# ----------------------------------------------------------------------------------------------------------------
# Reaching the Hub (or not)
# ----------------------------------------------------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "on"}


def _hub_offline() -> bool:
    """True when offline mode is declared (environment, huggingface_hub's or datasets' constant)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        pass
    import sys

    ds_config = sys.modules.get("datasets.config")
    return bool(getattr(ds_config, "HF_HUB_OFFLINE", False))


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "")


def _hub_reachable(timeout_s: float) -> tuple[bool, str]:
    """Whether the Hub answers at all within ``timeout_s`` (any HTTP status counts as an answer)."""
    endpoint = _hub_endpoint()
    if not endpoint:
        return False, "no Hub endpoint configured"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True, ""
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return False, f"could not reach the Hub at {endpoint} within {timeout_s:g} s ({reason})"
    return True, ""


@contextmanager
def _offline_mode() -> Iterator[None]:
    """Offline mode for huggingface_hub and datasets for the duration (both read it into constants at import)."""
    import datasets.config as ds_config
    from huggingface_hub import constants

    saved = (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    ds_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        constants.HF_HUB_OFFLINE = saved[1]
        ds_config.HF_HUB_OFFLINE = saved[2]


def _network_errors() -> tuple[type, ...]:
    errs: list[type] = [ConnectionError, TimeoutError]
    try:
        import requests

        errs += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover
        pass
    try:
        import httpx

        errs.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errs += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def _not_available(what: str, reason: str) -> CorpusNotAvailableError:
    return CorpusNotAvailableError(
        f"{what} is not available: {reason}. No network? Pass a local copy via data_dir=<folder> or "
        "dataset_id=<local path> (a folder written by Dataset.save_to_disk, a folder of data files or a clone of the "
        "Hub repository; for LibriSpeech also the extracted LibriSpeech/ tree), or load it once while online "
        "(with streaming=False it stays in the datasets cache and HF_HUB_OFFLINE=1 then reads it from there)."
    )


def _check_request(what: str, n: Any, max_duration_s: Any, timeout_s: Any, data_dir: Any) -> None:
    """Refuse, before any network call, sizes that are not sizes and a local copy that is not there (a mistyped
    ``data_dir`` would otherwise be read as a Hub id)."""
    if n is not None:
        check_whole(n, f"{what}: n (how many clips to keep)", 1, ", or None for all")
    for name, value in (("max_duration_s", max_duration_s), ("timeout_s", timeout_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{what}: {name} must be a positive number of seconds, or None; got {value!r}")
    if data_dir is not None and not Path(data_dir).exists():
        raise FileNotFoundError(f"{what}: data_dir {str(data_dir)!r} does not exist; give the folder of a local copy "
                                "(or leave data_dir out to read from the Hub)")


def _timeout(timeout_s: Optional[float]) -> float:
    if timeout_s is not None:
        return float(timeout_s)
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _is_local(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).exists()


def _pick_split(dd: Any, split: Optional[str], what: str) -> Any:
    keys = list(dd.keys())
    if split in keys:
        return dd[split]
    if split is None and len(keys) == 1:
        return dd[keys[0]]
    raise KeyError(f"{what}: no split {split!r}; it has {', '.join(map(str, keys))}")


def _open_dataset(source: Any, *, config: Optional[str], split: Optional[str], streaming: bool,
                  timeout_s: float, what: str, load_kwargs: Mapping[str, Any]) -> tuple[Any, bool]:
    """A ``Dataset``/``IterableDataset`` for ``source``; also whether it came from the Hub."""
    datasets = _datasets()
    dict_types = tuple(
        t for t in (getattr(datasets, "DatasetDict", None), getattr(datasets, "IterableDatasetDict", None)) if t
    )
    if isinstance(source, dict_types):
        return _pick_split(source, split, what), False
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        return source, False
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a Hub id, a local path or a datasets.Dataset, got {type(source).__name__}")
    if _is_local(source):
        path = Path(source)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            return (_pick_split(loaded, split, what) if isinstance(loaded, dict_types) else loaded), False
        return datasets.load_dataset(str(path), config, split=split, streaming=streaming, **load_kwargs), False

    # A Hub id.
    hub_id = str(source)
    offline = _hub_offline()
    reason = "offline mode is on (HF_HUB_OFFLINE) and it is not in the local datasets cache"
    if not offline:
        ok, why = _hub_reachable(timeout_s)
        if not ok:
            offline, reason = True, why + ", and it is not in the local datasets cache"
    if offline:
        try:
            with _offline_mode():
                # Only a split prepared by an earlier non-streaming load can be served without the network.
                return datasets.load_dataset(hub_id, config, split=split, streaming=False, **load_kwargs), True
        except Exception as err:  # noqa: BLE001 - whatever the cache lookup raises, the corpus is unavailable
            raise _not_available(f"{what} ({hub_id!r})", f"{reason} ({type(err).__name__})") from err
    try:
        return datasets.load_dataset(hub_id, config, split=split, streaming=streaming, **load_kwargs), True
    except _network_errors() as err:
        raise _not_available(f"{what} ({hub_id!r})", f"the Hub did not answer ({err})") from err


# ----------------------------------------------------------------------------------------------------------------
# Rows to wavs
# ----------------------------------------------------------------------------------------------------------------
def _undecoded(ds: Any, column: str) -> Any:
    """Ask ``datasets`` for the encoded audio (bytes/path) so that it never needs its own audio back-end."""
    datasets = _datasets()
    feats = getattr(ds, "features", None)
    if feats is not None:
        if column not in feats:
            raise KeyError(f"the dataset has no audio column {column!r}; its columns: {', '.join(feats)}")
        if isinstance(feats[column], datasets.Audio) and feats[column].decode:
            ds = ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        pass
    else:
        return to_whisper_audio(x, sr, name=name)
    with tempfile.NamedTemporaryFile(suffix=".audio") as fh:  # formats libsndfile cannot read: ffmpeg
        fh.write(data)
        fh.flush()
        return _read_with_ffmpeg(Path(fh.name))


def _audio_array(value: Any, name: str) -> np.ndarray:
    """16 kHz mono float32 from whatever the audio column holds: ``{"bytes", "path"}``, ``{"array",
    "sampling_rate"}``, raw bytes, a file path, or a decoder object with ``get_all_samples()`` (torchcodec)."""
    if isinstance(value, Mapping):
        if value.get("array") is not None:
            arr = np.asarray(value["array"])
            # datasets and torchcodec give multi-channel audio as (channels, n_samples)
            channels_last = not (arr.ndim == 2 and arr.shape[0] < arr.shape[1])
            return to_whisper_audio(arr, int(value["sampling_rate"]), name=name, channels_last=channels_last)
        if value.get("bytes"):
            return _decode_bytes(value["bytes"], name)
        if value.get("path") and Path(value["path"]).is_file():
            return _read_file(Path(value["path"]), name)
        raise AudioError(f"{name}: the audio entry has neither samples, bytes nor a readable path ({list(value)})")
    if isinstance(value, (bytes, bytearray)):
        return _decode_bytes(bytes(value), name)
    if isinstance(value, (str, os.PathLike)):
        return _read_file(Path(value), name)
    if hasattr(value, "get_all_samples"):
        samples = value.get_all_samples()
        data = samples.data.numpy() if hasattr(samples.data, "numpy") else np.asarray(samples.data)
        return to_whisper_audio(data, int(samples.sample_rate), name=name, channels_last=False)
    raise AudioError(f"{name}: cannot read audio from a {type(value).__name__}")


def _read_file(path: Path, name: str) -> np.ndarray:
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError):
        return _read_with_ffmpeg(path)
    return to_whisper_audio(x, sr, name=name)


def _safe_name(clip_id: str) -> str:
    """A file name for a clip id (no separators, no leading dot)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", clip_id).lstrip(".")
    return s[:150] or "clip"


def _write_wav(path: Path, x: np.ndarray) -> int:
    """Write ``x`` as a 16 kHz mono 16-bit wav, atomically; an existing complete copy is kept. Returns frames."""
    try:
        info = sf.info(str(path))
        if info.frames == len(x) and info.samplerate == SAMPLE_RATE and info.channels == 1:
            return info.frames
    except (OSError, RuntimeError, sf.LibsndfileError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav_atomic(path, np.clip(x, -1.0, 32767 / 32768))
    return len(x)


def _frame(rows: list[dict], extra: Iterable[str]) -> pd.DataFrame:
    cols = COLUMNS + ["n_words", "raw_text"] + [c for c in extra if c not in COLUMNS]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df[[c for c in cols if c in df.columns]].reset_index(drop=True)
    df["duration_s"] = df["duration_s"].astype(float)
    df["n_words"] = df["n_words"].astype(int)
    return df


def _materialise(
    rows: Iterable[Mapping[str, Any]],
    *,
    root: Path,
    to_record: Callable[[int, Mapping[str, Any]], dict],
    audio_column: str,
    n: Optional[int],
    max_duration_s: Optional[float],
    what: str,
    from_hub: bool,
) -> list[dict]:
    """Walk ``rows``: map each with ``to_record``, decode its audio to ``root/<clip_id>.wav`` (atomically), stop
    after ``n`` kept clips. Clips longer than ``max_duration_s`` are skipped (and do not count)."""
    out: list[dict] = []
    seen: set[str] = set()
    net_errors = _network_errors() if from_hub else ()
    it = iter(rows)
    with _build_lock(root):
        i = 0
        while n is None or len(out) < n:
            try:
                row = next(it)
            except StopIteration:
                break
            except net_errors as err:  # a stream that breaks halfway
                raise _not_available(what, f"the connection broke after {len(out)} clips ({err})") from err
            rec = to_record(i, row)
            i += 1
            x = _audio_array(row[audio_column], f"{what} {rec['clip_id']}")
            if max_duration_s is not None and len(x) > max_duration_s * SAMPLE_RATE:
                continue
            if len(x) == 0:
                continue
            fname = _safe_name(rec["clip_id"])
            while fname in seen:  # two ids that sanitise alike
                fname += "_"
            seen.add(fname)
            wav = root / f"{fname}.wav"
            frames = _write_wav(wav, x)
            rec["path"] = str(wav)
            rec["duration_s"] = frames / SAMPLE_RATE
            out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Manifests: the last successful result of a request, for offline reruns
# ----------------------------------------------------------------------------------------------------------------
def _request_key(**parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_manifest(root: Path, key: str, df: pd.DataFrame) -> None:
    data = {"version": _MANIFEST_VERSION, "rows": json.loads(df.to_json(orient="records"))}
    write_text_atomic(root / f"manifest-{key}.json", json.dumps(data, ensure_ascii=False) + "\n")


def _load_manifest(root: Path, key: str) -> Optional[pd.DataFrame]:
    try:
        data = json.loads((root / f"manifest-{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("version") != _MANIFEST_VERSION or not data.get("rows"):
        return None
    df = pd.DataFrame(data["rows"])
    if not all(Path(p).is_file() for p in df["path"]):
        return None
    return df


def _run(
    *,
    what: str,
    source: Any,
    name: str,
    config: Optional[str],
    split: Optional[str],
    streaming: bool,
    timeout_s: Optional[float],
    load_kwargs: Mapping[str, Any],
    audio_column: str,
    to_record: Callable[[int, Mapping[str, Any]], dict],
    n: Optional[int],
    max_duration_s: Optional[float],
    extra: Iterable[str],
    key_parts: Mapping[str, Any],
    progress: bool,
) -> pd.DataFrame:
    root = cache_dir("corpora", _safe_name(name), _safe_name(split or "all"))
    hub = isinstance(source, str) and not _is_local(source)
    key = _request_key(source=str(source), config=config, split=split, n=n, max_duration_s=max_duration_s,
                       **key_parts) if hub else None  # fmt: skip
    try:
        ds, from_hub = _open_dataset(source, config=config, split=split, streaming=streaming,
                                     timeout_s=_timeout(timeout_s), what=what, load_kwargs=load_kwargs)  # fmt: skip
    except CorpusNotAvailableError:
        cached = _load_manifest(root, key) if key else None
        if cached is not None:
            warnings.warn(f"{what}: the Hub is not available; using the {len(cached)} clips cached in {root}",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
            return cached
        raise
    ds = _undecoded(ds, audio_column)
    rows: Iterable[Mapping[str, Any]] = ds
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(ds, total=n, desc=what, unit="clip")
    records = _materialise(rows, root=root, to_record=to_record, audio_column=audio_column, n=n,
                           max_duration_s=max_duration_s, what=what, from_hub=from_hub)  # fmt: skip
    df = _frame(records, extra)
    if key and not df.empty:
        _save_manifest(root, key, df)
    return df


# ----------------------------------------------------------------------------------------------------------------
# LibriSpeech
# ----------------------------------------------------------------------------------------------------------------
_LS_SPLIT_DIRS = {
    "validation.clean": "dev-clean", "validation.other": "dev-other", "test.clean": "test-clean",
    "test.other": "test-other", "train.clean.100": "train-clean-100", "train.clean.360": "train-clean-360",
    "train.other.500": "train-other-500",
}  # fmt: skip


def _librispeech_folder_rows(folder: Path, split: Optional[str]) -> tuple[list[dict], Path]:
    """Rows (``id, text, speaker_id, chapter_id, audio``) of an extracted OpenSLR ``LibriSpeech/`` tree."""
    sub = _LS_SPLIT_DIRS.get(split or "", split or "")
    base = folder / sub if sub and (folder / sub).is_dir() else folder
    rows = []
    for trans in sorted(base.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8", errors="replace").splitlines():
            utt, _, text = line.strip().partition(" ")
            if not utt:
                continue
            audio = trans.parent / f"{utt}.flac"
            if not audio.is_file():
                continue
            spk, chapter = (utt.split("-") + ["", ""])[:2]
            rows.append({"id": utt, "text": text.strip(), "speaker_id": spk, "chapter_id": chapter,
                         "audio": {"path": str(audio), "bytes": None}})  # fmt: skip
    return rows, base


LIBRISPEECH_SPLITS = ("validation.clean", "validation.other", "test.clean", "test.other", "train.clean.100",
                      "train.clean.360", "train.other.500")
"""The splits of the Hub LibriSpeech's ``all`` configuration."""


def librispeech(
    split: str = "validation.clean",
    n: Optional[int] = None,
    *,
    streaming: bool = True,
    dataset_id: Any = LIBRISPEECH_ID,
    config: Optional[str] = None,
    speakers: SpeakersArg = None,
    data_dir: Union[str, os.PathLike, None] = None,
    max_duration_s: Optional[float] = 30.0,
    timeout_s: Optional[float] = None,
    name: str = "librispeech",
    progress: bool = False,
    **load_kwargs: Any,
) -> pd.DataFrame:
    """LibriSpeech clips as 16 kHz wavs with the package's columns.

    Args:
        split: ``"validation.clean"`` (dev-clean, 2,703 utterances, 40 speakers), ``"validation.other"``,
            ``"test.clean"``, ``"test.other"``, ``"train.clean.100"``, ... On the Hub these are splits of the config
            ``"all"`` (chosen when ``config`` is None and the split has a dot; the ``clean``/``other`` configs name
            them ``validation``, ``test``, ``train.100`` ...).
        n: keep the first ``n`` clips (streaming reads only those).
        streaming: stream from the Hub instead of downloading the split (dev-clean is ~340 MB).
        dataset_id: a Hub id, a local path (see the module docstring) or a ``datasets`` object.
        speakers: gender per reader: a path to ``SPEAKERS.TXT`` (or its folder), or a mapping ``{speaker_id: "F" |
            "M"}``. When None it is looked for next to ``data_dir``/a local ``dataset_id`` and in
            ``$ASRINTERP_LIBRISPEECH_SPEAKERS``; without it every gender is ``"unknown"`` (with a warning).
            ``SPEAKERS.TXT`` is not part of the Hub dataset: it is the top-level file of every LibriSpeech archive on
            OpenSLR (resource 12, e.g. ``dev-clean.tar.gz``: ``LibriSpeech/SPEAKERS.TXT``); extract only that member
            with ``tar -xzf dev-clean.tar.gz LibriSpeech/SPEAKERS.TXT``.
        data_dir: a local copy (same forms as a local ``dataset_id``, or the extracted ``LibriSpeech/`` folder, whose
            ``SPEAKERS.TXT`` is then found by itself). For a clone of the Hub repository pass ``config="all"`` too.
        max_duration_s: skip longer clips (Whisper's window is 30 s; no LibriSpeech dev/test utterance is longer than 35 s).
        timeout_s: how long to wait for the Hub before treating the machine as offline (default 5 s).
        name: the cache folder, ``cache_dir("corpora", name, split)``.
        load_kwargs: passed on to ``datasets.load_dataset`` (``revision=``, ``cache_dir=``, ``token=`` ...).

    Columns: :data:`COLUMNS` (``speaker`` is ``"librispeech:<id>"``, ``accent`` ``"unknown"``: LibriSpeech does not
    record it, ``source`` ``"librispeech"``, ``licence`` CC-BY-4.0) plus ``n_words``, ``raw_text`` (LibriSpeech's
    upper-case transcript, which is also ``text``), ``speaker_id``, ``chapter_id``, ``split``.

    Raises :class:`CorpusNotAvailableError` when the Hub cannot be reached and nothing is cached, and
    :class:`OnlineDependencyError` without ``datasets`` (for the extracted ``LibriSpeech/`` tree ``datasets`` is
    not needed).
    """
    _check_request("librispeech", n, max_duration_s, timeout_s, data_dir)
    source = data_dir if data_dir is not None else dataset_id
    if source == LIBRISPEECH_ID and config in (None, "all") and split not in LIBRISPEECH_SPLITS:
        raise ValueError(f"librispeech: no split {split!r} in {LIBRISPEECH_ID}; its splits are "
                         f"{list(LIBRISPEECH_SPLITS)} (pass config= for the 'clean'/'other' configurations' names)")
    local = Path(source) if _is_local(source) else None
    native_rows: Optional[list[dict]] = None
    if local is not None and local.is_dir() and next(local.rglob("*.trans.txt"), None) is not None:
        native_rows, _ = _librispeech_folder_rows(local, split)

    spk_path = None
    if speakers is None:
        spk_path = _find_speakers_file(local)
    genders = read_speakers(speakers if speakers is not None else spk_path)
    if not genders:
        warnings.warn(
            "librispeech: no SPEAKERS.TXT given, so gender is 'unknown' for every clip. Pass speakers=<path to "
            "SPEAKERS.TXT> (the top-level file of any LibriSpeech archive on OpenSLR) or a {speaker_id: 'F'|'M'} "
            f"mapping, or set ${SPEAKERS_ENV}.",
            RuntimeWarning,
            stacklevel=2,
        )
    if config is None and local is None and isinstance(source, str) and "." in split:
        config = "all"

    def to_record(i: int, row: Mapping[str, Any]) -> dict:
        spk = str(row["speaker_id"])
        clip_id = str(row.get("id") or f"{spk}-{row.get('chapter_id', '')}-{i:04d}")
        text = " ".join(str(row.get("text", "")).split())
        return {
            "clip_id": clip_id,
            "text": text,
            "speaker": f"librispeech:{spk}",
            "gender": genders.get(spk, "unknown"),
            "accent": "unknown",
            "source": "librispeech",
            "licence": LIBRISPEECH_LICENCE,
            "n_words": _count_words(text),
            "raw_text": str(row.get("text", "")),
            "speaker_id": spk,
            "chapter_id": str(row.get("chapter_id", "")),
            "split": split,
        }

    extra = ["speaker_id", "chapter_id", "split"]
    if native_rows is not None:
        root = cache_dir("corpora", _safe_name(name), _safe_name(split or "all"))
        records = _materialise(native_rows, root=root, to_record=to_record, audio_column="audio", n=n,
                               max_duration_s=max_duration_s, what="LibriSpeech", from_hub=False)  # fmt: skip
        return _frame(records, extra)
    df = _run(what="LibriSpeech", source=source, name=name, config=config, split=split, streaming=streaming,
              timeout_s=timeout_s, load_kwargs=load_kwargs, audio_column="audio", to_record=to_record, n=n,
              max_duration_s=max_duration_s, extra=extra, key_parts={"kind": "librispeech"},
              progress=progress)  # fmt: skip
    if genders and not df.empty:  # a manifest from an earlier call may predate the speakers file
        df["gender"] = [genders.get(str(s), "unknown") for s in df["speaker_id"]]
    return df


# ----------------------------------------------------------------------------------------------------------------
# Accented English
# ----------------------------------------------------------------------------------------------------------------
def _check_accented_request(dataset_id: Any, key_id: str, spec: Optional[Mapping[str, Any]],
                            data_dir: Any) -> None:
    """Refuse, at once, a ``spec`` with keys :func:`accented_english` does not read (a typo would silently fall
    back to EdAcc's mapping) and a Hub id with no known column mapping and no ``spec``."""
    known_keys, known_fields = sorted(ACCENTED_CORPORA[EDACC_ID]), sorted(ACCENTED_CORPORA[EDACC_ID]["columns"])
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise TypeError(f"accented_english: spec must be a dict with some of the keys {known_keys}; got a "
                            f"{type(spec).__name__}")
        unknown = sorted(set(spec) - set(known_keys))
        if unknown:
            raise ValueError(f"accented_english: spec has keys it does not know: {unknown}; the keys are "
                             f"{known_keys}")
        unknown = sorted(set(spec.get("columns") or {}) - set(known_fields))
        if unknown:
            raise ValueError(f"accented_english: spec['columns'] maps fields it does not know: {unknown}; the "
                             f"fields are {known_fields} (each -> the dataset's column, or None)")
    hub_id = data_dir is None and isinstance(dataset_id, str) and not _is_local(dataset_id)
    if hub_id and key_id not in ACCENTED_CORPORA and not spec:
        raise ValueError(f"accented_english: no column mapping is known for the Hub dataset {dataset_id!r}; the "
                         f"known ones are {sorted(ACCENTED_CORPORA)}. For another dataset pass spec={{'columns': "
                         "{'audio': ..., 'text': ..., 'speaker': ..., 'gender': ..., 'accent': ..., 'clip_id': ...}, "
                         "...}} (see the docstring).")


def accented_english(
    dataset_id: Any = EDACC_ID,
    n: Optional[int] = None,
    *,
    split: Optional[str] = None,
    spec: Optional[Mapping[str, Any]] = None,
    config: Optional[str] = None,
    streaming: bool = True,
    data_dir: Union[str, os.PathLike, None] = None,
    max_duration_s: Optional[float] = 30.0,
    timeout_s: Optional[float] = None,
    name: Optional[str] = None,
    progress: bool = False,
    **load_kwargs: Any,
) -> pd.DataFrame:
    """Clips of an accented-English corpus as 16 kHz wavs, its accent and gender labels mapped to ours.

    ``spec`` says how the dataset's columns map onto ours (the keys of the entries of :data:`ACCENTED_CORPORA`:
    ``columns``, ``extra``, ``accents``, ``genders``, ``licence``, ``name``, ``split``, ``config``,
    ``clean_text``). By default it is the entry for ``dataset_id`` when there is one, else EdAcc's (so a local
    copy of EdAcc needs no ``spec``). A partial ``spec`` is completed from that default. For example, a dataset
    whose columns are ``wav``, ``transcript``, ``spk``, ``sex`` and ``region``::

        accented_english("someone/accents", spec={"name": "accents", "licence": "CC-BY-4.0", "columns": {
            "audio": "wav", "text": "transcript", "speaker": "spk", "gender": "sex", "accent": "region",
            "clip_id": None}, "extra": [], "accents": {"Scotland": "scotland"}})

    ``split`` defaults to the spec's (EdAcc: ``"validation"``, 9,848 segments; ``"test"`` has 9,289). The other
    arguments are as for :func:`librispeech`.

    Columns: :data:`COLUMNS` (``speaker`` is ``"<name>:<speaker>"``, ``gender`` via :func:`normalise_gender`,
    ``accent`` via :func:`normalise_accent` with the spec's table, e.g. EdAcc's ``"Scottish English"`` ->
    ``"scotland"``, ``"Spanish"`` (first language) -> ``"l2-es"``) plus ``n_words``, ``raw_text`` (the transcript
    before ``clean_text``), ``accent_label`` and ``gender_label`` (the corpus' own labels), ``split`` and the
    spec's ``extra`` columns (EdAcc: ``raw_accent`` -- the speaker's self-description -- and ``l1``).
    """
    key_id = str(dataset_id) if isinstance(dataset_id, (str, os.PathLike)) else ""
    _check_request("accented_english", n, max_duration_s, timeout_s, data_dir)  # before any network call
    _check_accented_request(dataset_id, key_id, spec, data_dir)
    base = dict(ACCENTED_CORPORA.get(key_id, ACCENTED_CORPORA[EDACC_ID]))
    if spec:
        base.update(spec)
    spec = base
    cols = dict(ACCENTED_CORPORA[EDACC_ID]["columns"])
    cols.update(spec.get("columns") or {})
    source = data_dir if data_dir is not None else dataset_id
    split = split if split is not None else spec.get("split")
    if config is None and isinstance(source, str) and not _is_local(source):
        config = spec.get("config")  # the Hub config; a local copy or a datasets object has its own layout
    name = name or spec.get("name") or _slug(key_id) or "accented"
    extra_cols = list(spec.get("extra") or [])
    accents = spec.get("accents") or {}
    gender_table = spec.get("genders") or {}
    clean: Optional[Callable[[str], str]] = spec.get("clean_text")
    licence = spec.get("licence") or "unknown"

    def get(row: Mapping[str, Any], field: str) -> Any:
        col = cols.get(field)
        return row.get(col) if col else None

    def to_record(i: int, row: Mapping[str, Any]) -> dict:
        raw = str(get(row, "text") or "")
        text = clean(raw) if clean else " ".join(raw.split())
        spk = str(get(row, "speaker") or "unknown")
        cid = get(row, "clip_id")
        clip_id = Path(str(cid)).stem if cid else f"{_safe_name(spk)}-{i:06d}"
        rec = {
            "clip_id": clip_id,
            "text": text,
            "speaker": f"{name}:{spk}",
            "gender": normalise_gender(get(row, "gender"), gender_table),
            "accent": normalise_accent(get(row, "accent"), accents),
            "source": name,
            "licence": licence,
            "n_words": _count_words(text),
            "raw_text": raw,
            "accent_label": get(row, "accent"),
            "gender_label": get(row, "gender"),
            "split": split,
        }
        for c in extra_cols:
            rec[c] = row.get(c)
        return rec

    return _run(what=f"accented English ({name})", source=source, name=name, config=config, split=split,
                streaming=streaming, timeout_s=timeout_s, load_kwargs=load_kwargs, audio_column=cols["audio"],
                to_record=to_record, n=n, max_duration_s=max_duration_s,
                extra=["accent_label", "gender_label", "split"] + extra_cols,
                key_parts={"kind": "accented", "columns": cols, "accents": accents, "genders": gender_table},
                progress=progress)  # fmt: skip
