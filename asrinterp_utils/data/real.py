"""Real human speech that Debian ships: the Asterisk core prompts and the pocketsphinx test recordings.

This is the first source of the speech bank. Every source is one function that returns a
:class:`pandas.DataFrame` with one row per clip and at least the columns in :data:`COLUMNS`:

==============  =======================================================================================
``clip_id``     unique within the source (Asterisk: the prompt name, e.g. ``digits/1``, ``vm-intro``)
``path``        absolute path of a 16 kHz mono 16-bit wav
``text``        clean transcript (annotations such as ``[@]`` or ``(simple tone sound plays)`` removed)
``speaker``     speaker id
``gender``      ``"female"``, ``"male"`` or ``"unknown"``
``accent``      ``"us"``, ... or ``"unknown"``
``source``      ``"asterisk"`` or ``"pocketsphinx"``
``duration_s``  length in seconds
``licence``     licence of the recording
==============  =======================================================================================

Sources may add columns (here ``n_words``, ``raw_text``, ``subset``, ``source_path``).

* :func:`asterisk_prompts` -- 551 prompts (24 min) by one professional US female voice (Allison Smith), from the
  Debian packages ``asterisk-core-sounds-en-g722`` (audio, G.722 = true 16 kHz wideband) and
  ``asterisk-core-sounds-en`` (the transcripts, ``core-sounds-en.txt.gz``). The G.722 files are decoded once with
  ffmpeg into the cache (``cache_dir("speech", "asterisk")``); later calls read a manifest.
* :func:`pocketsphinx_clips` -- 12 short male recordings (40 s) from ``pocketsphinx-testdata``.

Both need only files from Debian main: ``apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722
pocketsphinx-testdata ffmpeg``. A missing package raises :class:`MissingDependencyError` naming it. Without root,
``apt-get download PKG && dpkg-deb -x PKG.deb DIR`` unpacks a package anywhere; point the environment variables
``ASRINTERP_ASTERISK_SOUNDS`` (folder with the ``.g722`` files), ``ASRINTERP_ASTERISK_TRANSCRIPTS``
(``core-sounds-en.txt[.gz]``) and ``ASRINTERP_POCKETSPHINX_DATA`` (pocketsphinx's ``test/data``) at it.

The cache is safe to interrupt: every wav is written to a hidden temporary name in its final folder and renamed
when complete, the manifest is replaced atomically, and a rerun decodes only what is missing or damaged.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import SAMPLE_RATE
from ..runtime import atomic_path, cache_dir, write_text_atomic

__all__ = [
    "ASTERISK_ATTRIBUTION",
    "ASTERISK_LICENCE",
    "ATTRIBUTIONS",
    "COLUMNS",
    "MissingDependencyError",
    "POCKETSPHINX_ATTRIBUTION",
    "POCKETSPHINX_LICENCE",
    "SAMPLE_RATE",
    "asterisk_prompts",
    "clip_audio",
    "pocketsphinx_clips",
]

COLUMNS = ["clip_id", "path", "text", "speaker", "gender", "accent", "source", "duration_s", "licence"]
"""The columns every speech source returns, at least (see the table above)."""

# ----------------------------------------------------------------------------------------------------------------
# Attribution (shown by the book wherever the audio is used)
# ----------------------------------------------------------------------------------------------------------------
ASTERISK_LICENCE = "CC-BY-SA-3.0, Allison Smith / Digium"
ASTERISK_ATTRIBUTION = (
    "Asterisk core sound prompts (English, version 1.6.1), recorded by Allison Smith, financial contributions by "
    "Digium, Inc.; licensed under the Creative Commons Attribution-ShareAlike 3.0 licence (CC BY-SA 3.0). "
    "Distributed by Debian in asterisk-core-sounds-en and asterisk-core-sounds-en-g722. The clips used here were "
    "decoded from G.722 to 16 kHz wav and, for some analyses, mixed with noise or otherwise modified."
)
POCKETSPHINX_LICENCE = "BSD-2-Clause"
POCKETSPHINX_ATTRIBUTION = (
    "pocketsphinx test data, Copyright 1995-2014 Carnegie Mellon University and 2014-2015 Alpha Cephei Inc., "
    "BSD 2-clause licence, distributed by Debian in pocketsphinx-testdata. Its 'librivox' clips are excerpts of "
    "a LibriVox public-domain reading of Jane Austen's 'Sense and Sensibility', chapter 1."
)
ATTRIBUTIONS: dict[str, str] = {"asterisk": ASTERISK_ATTRIBUTION, "pocketsphinx": POCKETSPHINX_ATTRIBUTION}

ASTERISK_APT = "asterisk-core-sounds-en asterisk-core-sounds-en-g722"
POCKETSPHINX_APT = "pocketsphinx-testdata"
FFMPEG_APT = "ffmpeg"

ASTERISK_SOUNDS_ENV = "ASRINTERP_ASTERISK_SOUNDS"
ASTERISK_TRANSCRIPTS_ENV = "ASRINTERP_ASTERISK_TRANSCRIPTS"
POCKETSPHINX_DATA_ENV = "ASRINTERP_POCKETSPHINX_DATA"

# Where the Debian packages put their files (``dpkg -L`` is asked only when none of these exist).
ASTERISK_SOUND_DIRS = (
    "/usr/share/asterisk/sounds/en_US_f_Allison",  # asterisk-core-sounds-en-g722 (Debian 12)
    "/usr/share/asterisk/sounds/en",  # alternatives link (points at the same folder when installed)
    "/usr/share/asterisk/sounds/en_US",
    "/var/lib/asterisk/sounds/en",  # upstream tarball layout
)
ASTERISK_TRANSCRIPT_FILES = (
    "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz",
    "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt",
)
POCKETSPHINX_DATA_DIRS = ("/usr/share/pocketsphinx/test/data",)

_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1
_TMP_SUFFIX = ".tmp.wav"
# G.722 codes 16 kHz audio at 64 kbit/s: one byte is exactly two output samples.
_G722_SAMPLES_PER_BYTE = 2


class MissingDependencyError(RuntimeError):
    """A system package (Debian/apt) that a data source needs is not installed. The message names it."""


def _missing(what: str, apt: str, extra: str = "") -> MissingDependencyError:
    msg = f"{what} not found. Install it with: apt-get install {apt}"
    if extra:
        msg += f" ({extra})"
    return MissingDependencyError(msg)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------
def clip_audio(row_or_path) -> np.ndarray:
    """Read one clip as a 16 kHz mono float32 array in [-1, 1].

    ``row_or_path`` is a path, or anything with a ``path`` entry (a DataFrame row, a dict).
    Raises ``ValueError`` when the file is not 16 kHz mono.
    """
    if isinstance(row_or_path, (str, os.PathLike)):
        path = row_or_path
    elif isinstance(row_or_path, Mapping) or hasattr(row_or_path, "__getitem__"):
        path = row_or_path["path"]
    else:  # pragma: no cover - defensive
        raise TypeError(f"expected a path or a row with a 'path' entry, got {type(row_or_path).__name__}")
    audio, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE or audio.shape[1] != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz with {audio.shape[1]} channel(s)")
    return audio[:, 0]


def _count_words(text: str) -> int:
    return sum(1 for tok in text.split() if any(ch.isalnum() for ch in tok))


def _dpkg_files(package: str) -> list[str]:
    """Files that dpkg says ``package`` installed ([] when dpkg is absent or the package is not installed)."""
    if shutil.which("dpkg-query") is None:
        return []
    try:
        out = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise _missing("ffmpeg (needed to decode the G.722 prompts)", FFMPEG_APT)
    return exe


def _tmp_name(final: Path) -> Path:
    """Hidden temporary name next to ``final``: never mistaken for a clip, removed by the next build."""
    return final.with_name(f".{final.stem}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}")


def write_wav_atomic(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> None:
    """Write 16 kHz mono ``samples`` to ``path`` through a hidden temporary file in the same folder, renamed when
    complete: a reader never sees a half-written wav, and an interrupted writer leaves only a stray temp file
    that the next build removes."""
    with atomic_path(Path(path), tmp=_tmp_name(Path(path))) as tmp:
        sf.write(str(tmp), samples, SAMPLE_RATE, subtype=subtype, format="WAV")


def _remove_stray_temps(root: Path) -> int:
    n = 0
    for p in root.rglob(f".*{_TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    for p in root.glob(f".{_MANIFEST}.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Serialise builds of one cache folder between processes (advisory; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux/macOS
        yield
        return
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------------
# Asterisk: locating files and cleaning transcripts
# ----------------------------------------------------------------------------------------------------------------
def _find_asterisk_sounds() -> Path:
    env = os.environ.get(ASTERISK_SOUNDS_ENV)
    candidates = [env] if env else list(ASTERISK_SOUND_DIRS)
    for c in candidates:
        p = Path(c)
        if p.is_dir() and any(p.glob("*.g722")):
            return p.resolve()
    if not env:
        dirs = {str(Path(f).parent) for f in _dpkg_files("asterisk-core-sounds-en-g722") if f.endswith(".g722")}
        # the root is the shortest folder holding .g722 files (subfolders: digits/, letters/, ...)
        if dirs:
            return Path(min(dirs, key=len)).resolve()
    where = f"${ASTERISK_SOUNDS_ENV}={env}" if env else ", ".join(ASTERISK_SOUND_DIRS)
    raise _missing(f"Asterisk G.722 prompts (*.g722 in {where})", ASTERISK_APT)


def _find_asterisk_transcripts(sounds: Path) -> Path:
    env = os.environ.get(ASTERISK_TRANSCRIPTS_ENV)
    if env:
        candidates = [Path(env)]
    else:
        candidates = [Path(c) for c in ASTERISK_TRANSCRIPT_FILES]
        candidates += [sounds / "core-sounds-en.txt", sounds.parent / "core-sounds-en.txt"]  # upstream tarball
        candidates += [Path(f) for f in _dpkg_files("asterisk-core-sounds-en") if "core-sounds-en.txt" in f]
    for p in candidates:
        if p.is_file():
            return p
    where = f"${ASTERISK_TRANSCRIPTS_ENV}={env}" if env else ASTERISK_TRANSCRIPT_FILES[0]
    raise _missing(
        f"Asterisk prompt transcripts (core-sounds-en.txt.gz, looked for {where})",
        ASTERISK_APT,
        "if it is installed but the file is missing, dpkg may exclude /usr/share/doc (a 'path-exclude' line in "
        "/etc/dpkg/dpkg.cfg.d/, common in minimal container images): remove the line and reinstall the package",
    )


def _read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def parse_asterisk_transcripts(text: str) -> dict[str, str]:
    """``{name: raw transcript}`` from ``core-sounds-en.txt`` (lines ``name: text``; ``;`` starts a comment)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, _, raw = line.partition(":")
        out[name.strip()] = raw.strip()
    return out


# Spelling mistakes in core-sounds-en.txt: the recording says the correctly spelled word.
_TYPOS = {
    r"\bumute\b": "unmute",
    r"\brepresenatives\b": "representatives",
    r"\bexclaimation-point\b": "exclamation point",
    r"\bUn-indentified\b": "Unidentified",
    r"\bwitheld\b": "withheld",
    r"\bfourtieth\b": "fortieth",
}


def clean_asterisk_text(raw: str) -> str:
    """The words spoken in a prompt, or ``""`` when there are none.

    Removes bracketed annotations (``[ascending tones]``, the symbol in ``at [@]``, ``<beep ascending>``),
    parenthetical notes (``(simple tone sound plays)``, ``(10 seconds of silence)``), ellipses that only mark
    where a prompt is spliced into a sentence, fixes a few spelling mistakes of the file and normalises whitespace.
    """
    t = re.sub(r"\[[^\]]*\]", " ", raw)
    t = re.sub(r"<[^>]*>", " ", t)
    t = re.sub(r"\([^)]*\)", " ", t)
    t = re.sub(r"\.{3,}|\u2026", " ", t)
    for pat, rep in _TYPOS.items():
        t = re.sub(pat, rep, t)
    t = " ".join(t.split())
    t = re.sub(r"\s+([,.!?;:])", r"\1", t)  # "word ." left by a removed annotation
    return t if any(ch.isalnum() for ch in t) else ""


# ----------------------------------------------------------------------------------------------------------------
# Asterisk: decoding with a resumable cache
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Clip:
    clip_id: str
    src: Path
    src_size: int
    src_mtime_ns: int
    raw_text: str
    text: str

    @property
    def frames(self) -> int:
        return self.src_size * _G722_SAMPLES_PER_BYTE

    @property
    def rel_wav(self) -> str:
        return self.clip_id + ".wav"


def _load_manifest(root: Path) -> dict[str, dict]:
    try:
        data = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION:
        return {}
    clips = data.get("clips")
    return clips if isinstance(clips, dict) else {}


def _write_manifest(root: Path, clips: dict[str, dict]) -> None:
    data = {
        "version": _MANIFEST_VERSION,
        "source": "asterisk",
        "sample_rate": SAMPLE_RATE,
        "licence": ASTERISK_LICENCE,
        "attribution": ASTERISK_ATTRIBUTION,
        "clips": dict(sorted(clips.items())),
    }
    write_text_atomic(root / _MANIFEST, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _entry_ok(root: Path, clip: _Clip, entry: dict | None) -> bool:
    """Cheap check (two stats) that the manifest entry still describes a complete wav of the current source."""
    if not entry:
        return False
    if entry.get("src_size") != clip.src_size or entry.get("src_mtime_ns") != clip.src_mtime_ns:
        return False
    try:
        return (root / clip.rel_wav).stat().st_size == entry.get("wav_size")
    except OSError:
        return False


def _adopt_existing(root: Path, clip: _Clip) -> dict | None:
    """A wav without a manifest entry (an interrupted build): keep it when its header and size are complete."""
    wav = root / clip.rel_wav
    try:
        info = sf.info(str(wav))
        size = wav.stat().st_size
    except (OSError, RuntimeError, sf.LibsndfileError):
        return None
    if (
        info.samplerate != SAMPLE_RATE
        or info.channels != 1
        or info.frames != clip.frames
        or size < 2 * clip.frames + 44
    ):
        return None
    return _entry(clip, size)


def _entry(clip: _Clip, wav_size: int) -> dict:
    return {
        "wav": clip.rel_wav,
        "frames": clip.frames,
        "wav_size": wav_size,
        "src": str(clip.src),
        "src_size": clip.src_size,
        "src_mtime_ns": clip.src_mtime_ns,
        "text": clip.text,
    }


def _run_ffmpeg(cmd: list[str]) -> subprocess.CompletedProcess:
    """One ffmpeg call (a separate function so that tests can count calls)."""
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


_BATCH = 24  # prompts per ffmpeg process: starting ffmpeg (~0.1 s) costs more than decoding a prompt


def _decode_batch(ffmpeg: str, root: Path, clips: list[_Clip]) -> list[tuple[str, dict]]:
    """Decode ``clips`` with one ffmpeg process (one input and one output per clip). Each output goes to a hidden
    temporary name in its final folder and is renamed only after ffmpeg succeeded and the wav checks out."""
    finals = [root / c.rel_wav for c in clips]
    tmps = [_tmp_name(f) for f in finals]
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for c in clips:
        cmd += ["-f", "g722", "-i", str(c.src)]
    for i, tmp in enumerate(tmps):
        cmd += [
            "-map", f"{i}:a:0", "-ar", str(SAMPLE_RATE), "-ac", "1", "-c:a", "pcm_s16le",
            "-fflags", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1", "-f", "wav", str(tmp),
        ]  # fmt: skip
    try:
        for f in finals:
            f.parent.mkdir(parents=True, exist_ok=True)
        proc = _run_ffmpeg(cmd)
        if proc.returncode != 0:
            names = clips[0].clip_id if len(clips) == 1 else f"{len(clips)} prompts from {clips[0].clip_id}"
            raise RuntimeError(f"ffmpeg failed on {names} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        entries = []
        for c, tmp, final in zip(clips, tmps, finals):
            info = sf.info(str(tmp))
            if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames != c.frames:
                raise RuntimeError(
                    f"ffmpeg produced an unexpected wav from {c.src}: {info.samplerate} Hz, {info.channels} ch, "
                    f"{info.frames} frames (expected {c.frames})"
                )
            size = tmp.stat().st_size
            os.replace(tmp, final)
            entries.append((c.clip_id, _entry(c, size)))
        return entries
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _decode_batch_or_each(ffmpeg: str, root: Path, clips: list[_Clip]) -> tuple[list[tuple[str, dict]], list[str]]:
    """A failed batch is retried clip by clip so that one bad file names itself and spoils nothing else."""
    try:
        return _decode_batch(ffmpeg, root, clips), []
    except Exception as exc:  # noqa: BLE001
        if len(clips) == 1:
            return [], [f"{clips[0].clip_id}: {exc}"]
    entries, errors = [], []
    for c in clips:
        e, err = _decode_batch_or_each(ffmpeg, root, [c])
        entries += e
        errors += err
    return entries, errors


def _decode_all(root: Path, todo: list[_Clip], manifest: dict[str, dict], workers: int, progress: bool) -> None:
    """Decode ``todo`` on a thread pool, each thread driving one ffmpeg process at a time, and record results in
    ``manifest`` as they finish; the caller writes the manifest even when this raises."""
    from tqdm.auto import tqdm

    ffmpeg = _ffmpeg()
    size = max(1, min(_BATCH, -(-len(todo) // workers)))
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="g722") as pool:
        futures = {pool.submit(_decode_batch_or_each, ffmpeg, root, b): b for b in batches}
        try:
            with tqdm(total=len(todo), desc="decoding Asterisk G.722", unit="clip", disable=not progress) as bar:
                for fut in as_completed(futures):
                    entries, errs = fut.result()
                    manifest.update(entries)
                    errors += errs
                    bar.update(len(futures[fut]))
        except BaseException:
            # Interrupted (Ctrl-C) or a bug: start nothing new, let the running batches finish and keep what they
            # decoded, so that the manifest the caller writes lets a rerun resume from here.
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True)
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is None:
                    manifest.update(f.result()[0])
            raise
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(todo)} prompts failed to decode; first: {errors[0]}")


def _asterisk_catalogue(sounds: Path, transcripts: Path) -> tuple[list[_Clip], dict[str, str]]:
    """All prompts that have both audio and a transcript; also returns ``{clip_id: raw}`` of those skipped."""
    raw = parse_asterisk_transcripts(_read_text(transcripts))
    clips: list[_Clip] = []
    for dirpath, dirnames, filenames in os.walk(sounds):
        dirnames.sort()
        for fn in filenames:
            if not fn.endswith(".g722"):
                continue
            src = Path(dirpath) / fn
            clip_id = src.relative_to(sounds).with_suffix("").as_posix()
            if clip_id not in raw:
                continue
            st = src.stat()
            clips.append(_Clip(clip_id, src, st.st_size, st.st_mtime_ns, raw[clip_id], clean_asterisk_text(raw[clip_id])))
    clips.sort(key=lambda c: c.clip_id)
    return clips, raw


def asterisk_prompts(
    min_words: int = 0,
    max_duration_s: float | None = 30.0,
    limit: int | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The English Asterisk core prompts with speech, decoded to 16 kHz mono wav (cached).

    Args:
        min_words: keep prompts whose clean transcript has at least this many words.
        max_duration_s: drop longer prompts (Whisper's window is 30 s; three prompts are longer). ``None`` keeps all.
        limit: keep the first ``limit`` prompts (by ``clip_id``) that pass the filters; only those are decoded.
        workers: parallel ffmpeg processes (default: CPU count, clamped to 2..4).
        progress: show a tqdm bar while decoding.

    Returns a DataFrame with :data:`COLUMNS` plus ``n_words``, ``raw_text`` (the line of ``core-sounds-en.txt``)
    and ``source_path`` (the ``.g722`` file), sorted by ``clip_id``. Prompts without speech (tones, silence,
    beeps) are never included. Speaker ``allison-smith``, gender ``female``, accent ``us``.

    Raises :class:`MissingDependencyError` when the apt packages or ffmpeg are missing.
    """
    sounds = _find_asterisk_sounds()
    transcripts = _find_asterisk_transcripts(sounds)
    catalogue, _ = _asterisk_catalogue(sounds, transcripts)

    selected = [c for c in catalogue if c.text and _count_words(c.text) >= min_words]
    if max_duration_s is not None:
        selected = [c for c in selected if c.frames / SAMPLE_RATE <= max_duration_s]
    if limit is not None:
        selected = selected[: max(int(limit), 0)]

    root = cache_dir("speech", "asterisk")
    manifest = _load_manifest(root)
    if not all(_entry_ok(root, c, manifest.get(c.clip_id)) for c in selected):
        with _build_lock(root):
            manifest = _load_manifest(root)  # another process may have finished meanwhile
            _remove_stray_temps(root)
            todo = []
            for c in selected:
                if _entry_ok(root, c, manifest.get(c.clip_id)):
                    continue
                adopted = _adopt_existing(root, c)
                if adopted is not None:
                    manifest[c.clip_id] = adopted
                else:
                    todo.append(c)
            n_workers = workers or min(4, max(2, os.cpu_count() or 2))
            try:
                if todo:
                    _decode_all(root, todo, manifest, n_workers, progress)
            finally:
                _write_manifest(root, manifest)

    rows = [
        {
            "clip_id": c.clip_id,
            "path": str(root / c.rel_wav),
            "text": c.text,
            "speaker": "allison-smith",
            "gender": "female",
            "accent": "us",
            "source": "asterisk",
            "duration_s": manifest[c.clip_id]["frames"] / SAMPLE_RATE,
            "licence": ASTERISK_LICENCE,
            "n_words": _count_words(c.text),
            "raw_text": c.raw_text,
            "source_path": str(c.src),
        }
        for c in selected
    ]
    return _frame(rows)


def _frame(rows: list[dict]) -> pd.DataFrame:
    extra = ["n_words", "raw_text", "subset", "source_path"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    cols = COLUMNS + [c for c in extra if c in df.columns]
    df = df[cols].reset_index(drop=True)
    df["duration_s"] = df["duration_s"].astype(float)
    df["n_words"] = df["n_words"].astype(int)
    return df


# ----------------------------------------------------------------------------------------------------------------
# pocketsphinx test data
# ----------------------------------------------------------------------------------------------------------------
# Headerless recordings (16 kHz, signed 16-bit little-endian, mono) with the transcripts that pocketsphinx's own
# tests expect for them. The tidigits file's prefix "dhd" is kept as its speaker id (the initials of pocketsphinx's
# author, presumably); the other speakers are not named.
_PS_RAW = {
    "goforward": ("goforward.raw", "go forward ten meters", "unknown-goforward"),
    "tidigits/dhd.2934z": ("tidigits/dhd.2934z.raw", "two nine three four zero", "dhd"),
}
_PS_TRANSCRIPT = re.compile(r"^\s*(?:<s>)?\s*(?P<text>.*?)\s*(?:</s>)?\s*\((?P<id>[^()\s]+)\)\s*$")


def _find_pocketsphinx_data() -> Path:
    env = os.environ.get(POCKETSPHINX_DATA_ENV)
    candidates = [env] if env else list(POCKETSPHINX_DATA_DIRS)
    if not env:
        candidates += sorted(
            {f[: -len("/librivox/transcription")] for f in _dpkg_files("pocketsphinx-testdata")
             if f.endswith("/librivox/transcription")}
        )  # fmt: skip
    for c in candidates:
        p = Path(c)
        if (p / "librivox" / "transcription").is_file():
            return p.resolve()
    where = f"${POCKETSPHINX_DATA_ENV}={env}" if env else POCKETSPHINX_DATA_DIRS[0]
    raise _missing(f"pocketsphinx test recordings ({where})", POCKETSPHINX_APT)


def _read_sphinx_transcription(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _PS_TRANSCRIPT.match(line)
        if m:
            out[m.group("id")] = " ".join(m.group("text").split())
    return out


def _raw_to_wav(src: Path, dst: Path) -> None:
    """s16le 16 kHz mono headerless -> wav, written atomically; skipped when a complete copy exists."""
    frames = src.stat().st_size // 2
    try:
        info = sf.info(str(dst))
        if info.frames == frames and info.samplerate == SAMPLE_RATE and info.channels == 1:
            return
    except (OSError, RuntimeError, sf.LibsndfileError):
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_wav_atomic(dst, np.fromfile(src, dtype="<i2"))


def pocketsphinx_clips() -> pd.DataFrame:
    """Recordings with transcripts from Debian's ``pocketsphinx-testdata`` (all male, 16 kHz mono).

    * ``librivox`` (5 clips, 3-7 s): a LibriVox reader of *Sense and Sensibility*, chapter 1 (speaker
      ``librivox-sense-and-sensibility-01``; accent unknown).
    * ``cards`` (5 clips, 1-3.5 s): card names ("ten of clubs"), speaker not named (``unknown-cards``).
    * ``goforward`` ("go forward ten meters") and ``tidigits/dhd.2934z`` (digits): headerless s16le files,
      converted once to wav in ``cache_dir("speech", "pocketsphinx")``.

    The package's ``numbers.raw`` and ``something.raw`` are left out: the package has no transcript for them.
    Texts are lower case without punctuation, as the data gives them.
    """
    data = _find_pocketsphinx_data()
    rows: list[dict] = []

    def add(clip_id: str, wav: Path, text: str, speaker: str, subset: str, src: Path) -> None:
        info = sf.info(str(wav))
        if info.samplerate != SAMPLE_RATE or info.channels != 1:  # pragma: no cover - data as shipped is 16k mono
            raise ValueError(f"{wav}: expected 16 kHz mono, got {info.samplerate} Hz x {info.channels}")
        rows.append(
            {
                "clip_id": clip_id,
                "path": str(wav),
                "text": text,
                "speaker": speaker,
                "gender": "male",
                "accent": "unknown",  # no source states where these speakers are from
                "source": "pocketsphinx",
                "duration_s": info.frames / info.samplerate,
                "licence": POCKETSPHINX_LICENCE,
                "n_words": _count_words(text),
                "raw_text": text,
                "subset": subset,
                "source_path": str(src),
            }
        )

    for subset, tfile, speaker in (
        ("librivox", "librivox/transcription", "librivox-sense-and-sensibility-01"),
        ("cards", "cards/cards.transcription", "unknown-cards"),
    ):
        path = data / tfile
        if not path.is_file():
            continue
        for utt, text in sorted(_read_sphinx_transcription(path).items()):
            wav = path.parent / f"{utt}.wav"
            if wav.is_file() and text:
                add(f"{subset}/{utt}", wav, text, speaker, subset, wav)

    raw_targets = [(cid, data / rel, text, spk) for cid, (rel, text, spk) in _PS_RAW.items() if (data / rel).is_file()]
    if raw_targets:
        root = cache_dir("speech", "pocketsphinx")
        with _build_lock(root):
            for cid, src, text, spk in raw_targets:
                dst = root / f"{cid}.wav"
                _raw_to_wav(src, dst)
                add(cid, dst, text, spk, cid.split("/")[0], src)
    if not rows:
        raise _missing(f"pocketsphinx test recordings in {data}", POCKETSPHINX_APT)
    return _frame(rows).sort_values("clip_id", kind="stable").reset_index(drop=True)
