"""The speech bank: named, labelled datasets built deterministically from a spec, cached with a manifest.

Each named dataset is one call that returns a pandas DataFrame, one row per clip, with a 16 kHz mono wav per row::

    >>> gender = speech_dataset("gender")        # TTS voices x sentences, labelled by gender, split by speaker
    >>> gender[["clip_id", "voice_id", "speaker", "gender", "split"]].head()

====================  =================================================================================================
``transcribed``       real speech (Asterisk prompts, pocketsphinx) and the most intelligible TTS voices reading Harvard
                      sentences: for lenses, patching and WER
``gender``            every Debian-main TTS voice reading the same sentences; label ``gender``
``accent``            espeak-ng's eight English accents x voice variants; label ``accent``
``noise``             clean speech and the same speech mixed with noise at several SNRs; labels ``noisy``, ``snr_db``
``semantic``          carrier sentences that differ only in a category word; label ``category``
``context_bias``      sentences whose context predicts one word while a similar-sounding one is spoken; label
                      ``spoken_word`` (also ``expected_word``, ``expected_text``, ``item_id``)
``other_languages``   espeak-ng reading everyday sentences in eight languages other than English; label
                      ``language``: speech an English-only model cannot transcribe
====================  =================================================================================================

How it is built. A :class:`BankSpec` fixes everything that decides the audio (voices, texts, seeds, noise, SNRs).
Every clip is a pure function of its own recipe (text, voice, seed, noise, SNR), stored once under a hash of that
recipe in ``cache_dir("bank", "clips")`` and written atomically; a dataset's table is written last, atomically, to
``cache_dir("bank", name)/<spec hash>.csv``. A rebuild with nothing changed reads that table; a changed spec builds
only the clips it does not have yet; an interrupted build leaves no half-written file and resumes. Clips are made in
parallel (a thread pool driving the TTS engines' processes) with a progress bar.

Splits are by speaker identity (the recorded or synthetic speaker behind a voice, shared across engines), so that
no speaker is on both sides: :func:`speaker_split`.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from ..audio import SAMPLE_RATE
from ..runtime import atomic_path, build_lock, cache_dir, fast_mode
from .tts import OTHER_LANGUAGE_VOICES

BANK_VERSION = 1  # bump when the way clips are made changes (every clip is then remade)
SPLIT_RULE = "speaker, stratified by gender, 30% test"  # part of each table's cache key
RECIPE_KEYS = ("text", "voice_id", "seed", "noise", "snr_db", "noise_seed", "real_id")
"""The fields of a recipe row that make its clip, hashed into its ``clip_id`` (so also part of each table's cache
key). A real recording enters by ``real_id``, its source's own name for it (``asterisk/vm-intro``), never by where
its file lies: a path under ``$ASRINTERP_CACHE`` would give the same clip another id in another cache, and the
folds and splits drawn from ids would change with the folder."""


@dataclass(frozen=True)
class BankSpec:
    """Everything that decides a dataset's audio and labels.

    ``voices``: TTS voice ids (None: every available Debian-main voice; engines are filtered by ``engines``).
    ``texts``: ``"harvard"`` or ``"semantic"``; ``n_texts`` of them. ``real``: include the real recordings.
    ``snr_db``: for noisy copies (None: clean only); ``noise_kinds``: generated kinds or real noise ids.
    ``fast_n_texts``/``fast_max_voices``: the smaller version built in fast mode, whose voices are spread over
    ``spread_by`` (distinct speakers by default; accents for the accent dataset).
    """

    name: str
    label: str
    texts: str = "harvard"
    n_texts: int = 10
    voices: tuple[str, ...] | None = None
    engines: tuple[str, ...] = ("espeak-ng", "flite", "festival")
    real: bool = False
    snr_db: tuple[float, ...] | None = None
    noise_kinds: tuple[str, ...] = ()
    seed: int = 0
    fast_n_texts: int = 2
    fast_max_voices: int = 6
    spread_by: str = "speaker"

    def fast(self) -> "BankSpec":
        """The fast-mode version: fewer texts and voices, same recipe otherwise."""
        return replace(self, n_texts=min(self.n_texts, self.fast_n_texts))

    def key(self) -> str:
        """A short hash of the spec, the bank's version, the split rule and the recipe keys: the cache key of the
        dataset's table."""
        payload = json.dumps({**asdict(self), "bank_version": BANK_VERSION, "split": SPLIT_RULE,
                              "recipe_keys": RECIPE_KEYS}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


SPECS: dict[str, BankSpec] = {
    "transcribed": BankSpec("transcribed", label="text", texts="harvard", n_texts=10, real=True,
                            engines=("flite", "festival"), fast_n_texts=2, fast_max_voices=2),
    "gender": BankSpec("gender", label="gender", texts="harvard", n_texts=12, fast_n_texts=2),
    "accent": BankSpec("accent", label="accent", texts="harvard", n_texts=10, engines=("espeak-ng",),
                       fast_n_texts=2, fast_max_voices=8, spread_by="accent"),
    "noise": BankSpec("noise", label="noisy", texts="harvard", n_texts=8, engines=("flite", "festival"),
                      snr_db=(20.0, 10.0, 5.0, 0.0), noise_kinds=("white", "pink", "babble"), fast_n_texts=2,
                      fast_max_voices=2),
    "semantic": BankSpec("semantic", label="category", texts="semantic", n_texts=48,
                         engines=("flite", "festival"), fast_n_texts=10, fast_max_voices=2),
    "context_bias": BankSpec("context_bias", label="spoken_word", texts="context_bias", n_texts=36,
                             engines=("flite", "festival"), fast_n_texts=4, fast_max_voices=2),
    "other_languages": BankSpec("other_languages", label="language", texts="other_languages", n_texts=6,
                                voices=tuple(v.voice_id for v in OTHER_LANGUAGE_VOICES), engines=("espeak-ng",),
                                fast_n_texts=2, fast_max_voices=2, spread_by="accent"),
}


# ---------------------------------------------------------------------------------------------------------------
# Recipes: one row per clip, before any audio exists
# ---------------------------------------------------------------------------------------------------------------

def _voices(spec: BankSpec, fast: bool) -> list:
    from .tts import available_voices, get_voice, is_available

    if spec.voices is None:
        voices = [v for v in available_voices(include_optional=False) if v.engine in spec.engines]
    else:  # named voices, English or not, in the spec's order
        voices = [get_voice(v) for v in spec.voices if is_available(v) and get_voice(v).engine in spec.engines]
    if fast:
        voices = _spread(voices, spec.fast_max_voices, by=spec.spread_by)
    return voices


def _spread(voices: list, n: int, by: str = "speaker") -> list:
    """``n`` voices covering as many values of ``by`` (speakers, or accents) as possible, and within that as many
    speakers and both genders, deterministically: a small fast-mode sample still has groups and speakers to split.

    Round robin over the groups; from each group, the voice whose speaker and gender have been picked least.
    """
    groups: dict = {}
    for v in sorted(voices, key=lambda v: v.voice_id):
        groups.setdefault(getattr(v, by), []).append(v)
    picked: list = []
    speaker_count: dict = {}
    gender_count: dict = {}
    while len(picked) < min(n, len(voices)):
        for key in sorted(groups):
            if not groups[key] or len(picked) >= n:
                continue
            best = min(groups[key], key=lambda v: (speaker_count.get(v.speaker, 0), gender_count.get(v.gender, 0),
                                                   v.voice_id))
            groups[key].remove(best)
            picked.append(best)
            speaker_count[best.speaker] = speaker_count.get(best.speaker, 0) + 1
            gender_count[best.gender] = gender_count.get(best.gender, 0) + 1
    return sorted(picked, key=lambda v: v.voice_id)


def _texts(spec: BankSpec, n: int) -> pd.DataFrame:
    from . import texts

    if spec.texts == "harvard":
        return pd.DataFrame({"text": texts.harvard_sentences(n)})
    if spec.texts == "semantic":
        items = texts.semantic_items()
        # a balanced, deterministic subset: the same number of (carrier, word) items for every category
        per_category = max(1, n // items.category.nunique())
        items = items.groupby("category").sample(n=per_category, random_state=spec.seed)
        return items.sort_values(["category", "carrier_id", "word"]).reset_index(drop=True)
    if spec.texts == "other_languages":  # n sentences per language, each read by that language's voices only
        return texts.other_language_sentences(n)
    if spec.texts == "context_bias":
        items = texts.context_bias_items().head(n)
        return items.assign(text=items.spoken_text)[["text", "item_id", "expected_word", "spoken_word",
                                                      "expected_text"]]
    raise ValueError(f"unknown text set {spec.texts!r}")


def recipes(spec: BankSpec, fast: bool | None = None) -> pd.DataFrame:
    """The table of clips a spec asks for (no audio yet): one row per clip, with every label and the recipe."""
    fast = fast_mode() if fast is None else fast
    if fast:
        spec = spec.fast()
    rows = []
    text_table = _texts(spec, spec.n_texts)
    for voice in _voices(spec, fast):
        for i, t in enumerate(text_table.itertuples(index=False)):
            if hasattr(t, "language") and t.language != voice.accent:  # another language's sentence
                continue
            base = {"text": t.text, "voice_id": voice.voice_id, "engine": voice.engine, "speaker": voice.speaker,
                    "gender": voice.gender, "accent": voice.accent, "source": "tts",
                    "licence": voice.licence or "synthesised", "text_id": i,
                    "seed": spec.seed + i}
            for extra in ("word", "category", "carrier_id", "item_id", "expected_word", "spoken_word",
                          "expected_text", "language"):
                if hasattr(t, extra):
                    base[extra] = getattr(t, extra)
            rows += _with_noise(base, spec)
    table = pd.DataFrame(rows)
    if spec.real:
        table = pd.concat([table, _real_rows(fast)], ignore_index=True)
    if table.empty:
        raise RuntimeError(f"dataset {spec.name!r}: no clips (no voices of {spec.engines} installed?)")
    table["clip_id"] = [f"{spec.name}/{_recipe_hash(r)}" for r in table.to_dict("records")]
    return table


def _with_noise(base: dict, spec: BankSpec) -> list[dict]:
    clean = {**base, "noise": "none", "snr_db": np.inf, "noisy": False}
    if not spec.snr_db:
        return [clean]
    rows = [clean]
    for j, kind in enumerate(spec.noise_kinds):
        for snr in spec.snr_db:
            rows.append({**base, "noise": kind, "snr_db": float(snr), "noisy": True, "noise_seed": spec.seed + j})
    return rows


def _real_rows(fast: bool) -> pd.DataFrame:
    from .real import asterisk_prompts, pocketsphinx_clips

    ast = asterisk_prompts(min_words=5, progress=False)
    ast = ast.sample(4 if fast else 60, random_state=0) if len(ast) > (4 if fast else 60) else ast
    pocket = pocketsphinx_clips()
    pocket = pocket[pocket.text.str.split().str.len() >= 3]
    real = pd.concat([ast, pocket.head(2 if fast else len(pocket))], ignore_index=True)
    real = real.assign(voice_id=real.source + "/" + real.speaker, engine="human",
                       real_id=real.source + "/" + real.clip_id, real_path=real.path, noise="none", snr_db=np.inf,
                       noisy=False, seed=0)
    return real.drop(columns=["path"])


def _recipe_hash(row: dict) -> str:
    payload = json.dumps({k: row.get(k) for k in RECIPE_KEYS if k in row and not _isnan(row.get(k))},
                         sort_keys=True, default=str)
    return hashlib.sha256(f"{BANK_VERSION}:{payload}".encode()).hexdigest()[:16]


def _isnan(x) -> bool:
    """Missing values (None or NaN, as a DataFrame turns absent fields into) do not enter a recipe's hash."""
    return x is None or (isinstance(x, float) and np.isnan(x))


# ---------------------------------------------------------------------------------------------------------------
# Making the audio
# ---------------------------------------------------------------------------------------------------------------

def _clip_path(clip_id: str) -> Path:
    digest = clip_id.split("/")[-1]
    return cache_dir("bank", "clips", digest[:2]) / f"{digest}.wav"


def _write_wav(path: Path, wave: np.ndarray) -> None:
    from .real import write_wav_atomic  # unique temporary name per writer (threads too)

    write_wav_atomic(path, np.clip(wave, -1.0, 1.0))


TARGET_RMS = 0.05
"""Every synthetic clip is scaled to this RMS level (about -26 dBFS), because TTS voices differ by some 15 dB in loudness,
and a probe must not be able to read the voice from its level."""


def _make_clip(row: dict, babble_pool: list[np.ndarray]) -> float:
    """Write the clip of one recipe row (if missing) and return its duration in seconds."""
    import tempfile

    from . import noise as noise_mod
    from .real import clip_audio
    from .tts import synthesize
    from ..audio import rms

    path = _clip_path(row["clip_id"])
    if path.exists():
        return sf.info(str(path)).duration
    if row.get("engine") == "human":
        clean = clip_audio(row["real_path"])
    else:
        clean_path = _clip_path(_recipe_hash({**row, "noise": "none", "snr_db": float("inf"), "noise_seed": None}))
        if not clean_path.exists():
            with tempfile.TemporaryDirectory(dir=clean_path.parent) as scratch:
                raw = Path(scratch) / "raw.wav"
                synthesize(row["text"], row["voice_id"], raw, seed=int(row["seed"]))
                wave = clip_audio(raw)
                _write_wav(clean_path, wave * (TARGET_RMS / max(rms(wave), 1e-9)))
        clean = clip_audio(clean_path)
        if row.get("noise", "none") == "none":
            return len(clean) / SAMPLE_RATE
    if row.get("noise", "none") != "none":
        seed = int(row.get("noise_seed", 0))
        if row["noise"] == "babble":
            noise = noise_mod.babble(babble_pool, len(clean), seed=seed)
        else:
            noise = noise_mod.noise_clip(row["noise"], len(clean), seed=seed)
        clean = noise_mod.mix_at_snr(clean, noise, float(row["snr_db"]), seed=seed)
    _write_wav(path, clean)
    return len(clean) / SAMPLE_RATE


def _babble_pool(n: int = 8) -> list[np.ndarray]:
    """Talkers for babble noise: Harvard sentences from several TTS voices not used as the speech itself would be
    ideal; here, the first voices of each engine reading sentences beyond those the datasets use."""
    from . import texts
    from .real import clip_audio
    from .tts import available_voices, synthesize

    voices = [v for v in available_voices(include_optional=False)][:n]
    sentences = texts.harvard_sentences()[-n:]
    pool = []
    for i, (v, t) in enumerate(zip(voices, sentences)):
        path = cache_dir("bank", "babble") / f"{hashlib.sha256((v.voice_id + t).encode()).hexdigest()[:16]}.wav"
        if not path.exists():
            synthesize(t, v.voice_id, path, seed=i)
        pool.append(clip_audio(path))
    return pool


def speech_dataset(name: str | BankSpec, *, fast: bool | None = None, rebuild: bool = False,
                   workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Build (or read from the cache) a named dataset of the speech bank and return its table.

    Columns: ``clip_id, path, text, speaker, gender, accent, source, duration_s, licence, voice_id, engine, seed,
    noise, snr_db, noisy, split`` and the dataset's own (``word``, ``category`` for ``semantic``). ``split`` is
    ``train``/``test`` by speaker identity, stratified by gender (:func:`speaker_split`).
    """
    if isinstance(name, str) and name not in SPECS:
        raise KeyError(f"speech_dataset: no dataset named {name!r}; the bank has {sorted(SPECS)} (or pass a BankSpec)")
    spec = SPECS[name] if isinstance(name, str) else name
    fast = fast_mode() if fast is None else fast
    folder = cache_dir("bank", spec.name)
    table_path = folder / f"{(spec.fast() if fast else spec).key()}{'-fast' if fast else ''}.csv"
    if table_path.exists() and not rebuild:
        return _read_table(table_path)
    with build_lock(table_path):  # another process building this dataset: wait for its table
        if table_path.exists() and not rebuild:
            return _read_table(table_path)
        return _build_dataset(spec, fast, table_path, workers, progress)


def _read_table(table_path: Path) -> pd.DataFrame:
    """A dataset's table, with each clip's ``path`` found again from its ``clip_id`` under today's
    ``cache_dir("bank")``: the path written is absolute, so a cache moved or copied to another folder or machine
    (or read through another ``ASRINTERP_CACHE``) would otherwise point at where the clips used to be."""
    table = pd.read_csv(table_path, keep_default_na=False, na_values=[""])
    return table.assign(snr_db=table.snr_db.astype(float), path=[str(_clip_path(c)) for c in table.clip_id])


def _build_dataset(spec: BankSpec, fast: bool, table_path: Path, workers: int | None,
                   progress: bool) -> pd.DataFrame:
    """Synthesise or convert every clip of ``spec`` and write its table last (see :func:`speech_dataset`)."""
    table = recipes(spec, fast=fast)
    pool = _babble_pool() if "babble" in spec.noise_kinds else []
    rows = table.to_dict("records")
    # clean clips first: the noisy copies read them
    order = sorted(range(len(rows)), key=lambda i: bool(rows[i].get("noisy")))
    durations = [0.0] * len(rows)
    bar = _progress(len(rows), progress, f"speech bank: {spec.name}")
    with ThreadPoolExecutor(max_workers=workers or min(4, (os.cpu_count() or 2) * 2)) as ex:
        for noisy in (False, True):
            batch = [i for i in order if bool(rows[i].get("noisy")) == noisy]
            for i, duration in zip(batch, ex.map(lambda i: _make_clip(rows[i], pool), batch)):
                durations[i] = duration
                bar.update(1)
    bar.close()
    table["duration_s"] = durations
    table["path"] = [str(_clip_path(c)) for c in table.clip_id]
    table["sample_rate"] = SAMPLE_RATE
    table["split"] = speaker_split(table, seed=spec.seed, stratify="gender")
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled)


def spread(table: pd.DataFrame, n: int, by: str, *, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of ``table`` spread evenly over the values of the column ``by`` (as many of each value as
    ``ceil(n / values)`` allows, in a shuffled order fixed by ``seed``): a sample that no one source dominates."""
    if by not in table.columns:
        raise KeyError(f"spread: the table has no column {by!r}; its columns are {list(table.columns)}")
    if len(table) == 0:
        return table
    shuffled = table.sample(frac=1.0, random_state=seed)
    per_value = int(np.ceil(n / shuffled[by].nunique()))
    return shuffled.groupby(by, group_keys=False).head(per_value).head(n)


def first_texts(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """The rows of the first ``n`` distinct texts of the table (in its order), for every voice that read them."""
    order = {text: i for i, text in enumerate(dict.fromkeys(table.text))}
    return table[table.text.map(order) < n]


def noise_ladder(table: pd.DataFrame, n_texts: int) -> pd.DataFrame:
    """The clean clips of a ``noise`` table's first ``n_texts`` texts (every voice) and, for each, one noisy copy at
    every SNR level, the noise kind rotating over utterances and levels so that every kind appears at every level.

    Rows come text by text (the table's order of texts), clean clips first within a text: the ladder of more texts
    begins with the ladder of fewer, the same clips, so chapters that take a ladder of different sizes share their
    clips (and the store serves their encodings). The kind of a copy depends on the utterance's place among all the
    table's clean clips, not on ``n_texts``.
    """
    missing = [c for c in ("text", "voice_id", "noisy", "noise", "snr_db") if c not in table.columns]
    if missing:
        raise KeyError(f"noise_ladder: the table has no column {missing[0]!r}; pass a table of "
                       "speech_dataset('noise')")
    if int(n_texts) != n_texts or n_texts < 1:
        raise ValueError(f"noise_ladder: n_texts must be a positive whole number, got {n_texts!r}")
    noisy = table.noisy.astype(bool)
    kinds = list(dict.fromkeys(table.noise[noisy]))
    levels = sorted(set(table.snr_db[noisy]), reverse=True)
    copies = table[noisy].set_index(["text", "voice_id", "snr_db", "noise"])
    rank = {text: i for i, text in enumerate(dict.fromkeys(table.text))}
    clean, rungs = [], []
    for i, row in enumerate(table[~noisy].itertuples(index=False)):
        if rank[row.text] >= n_texts:
            continue
        clean.append(row._asdict())
        for j, snr in enumerate(levels):
            copy = copies.loc[[(row.text, row.voice_id, snr, kinds[(i + j) % len(kinds)])]].reset_index()
            rungs.append(copy.iloc[0].to_dict())
    ladder = pd.DataFrame(clean + rungs, columns=table.columns)
    order = ladder.text.map(rank).to_numpy() * 2 + ladder.noisy.astype(bool).to_numpy()
    return ladder.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def speaker_split(table: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0,
                  stratify: str | None = None) -> pd.Series:
    """``train``/``test`` per row, assigning whole speakers to one side (no speaker on both sides).

    With ``stratify`` (e.g. ``"gender"``), speakers are split within each value of that column, so both sides
    keep every class when there are at least two speakers per class.
    """
    missing = [c for c in ("speaker", stratify) if c is not None and c not in table.columns]
    if missing:
        raise KeyError(f"speaker_split: the table has no column {missing[0]!r} (its columns: {list(table.columns)})")
    rng = np.random.default_rng(seed)
    speakers = table.drop_duplicates("speaker")
    groups = [speakers] if stratify is None else [g for _, g in speakers.groupby(stratify)]
    test = set()
    for g in groups:
        names = sorted(g.speaker)
        rng.shuffle(names)
        k = int(round(test_fraction * len(names)))
        if len(names) >= 2:
            k = min(max(k, 1), len(names) - 1)
        test.update(names[:k])
    split = table.speaker.map(lambda s: "test" if s in test else "train")
    assert not (set(table.speaker[split == "test"]) & set(table.speaker[split == "train"]))
    return split


def bank_summary(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per voice across the given dataset tables: engine, speaker, gender, accent, clips and minutes."""
    every = pd.concat(tables, ignore_index=True).drop_duplicates("path")
    return (every.groupby(["voice_id", "engine", "speaker", "gender", "accent"], dropna=False)
            .agg(clips=("path", "size"), minutes=("duration_s", lambda s: round(s.sum() / 60, 2)))
            .reset_index())


# ---------------------------------------------------------------------------------------------------------------
# Derived inputs for the decoder-side probes: truncated speech and non-speech
# ---------------------------------------------------------------------------------------------------------------


def truncated_clips(table: pd.DataFrame, keep_fraction: float = 0.5) -> pd.DataFrame:
    """The clips of ``table`` cut to their first ``keep_fraction`` of samples (mid-word, as a rule).

    Returns a copy of the table with ``path`` pointing at the cut wavs (cached under ``cache_dir("bank",
    "truncated")``, written atomically), ``duration_s`` updated, ``clip_id`` suffixed with ``/cut<fraction>``,
    ``text`` unchanged (the sentence the speaker was saying: a transcript of the cut clip is judged against it) and
    a column ``keep_fraction``.
    """
    from .real import clip_audio

    if not 0.0 < keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must be between 0 and 1 (exclusive), got {keep_fraction}")
    out = table.copy()
    paths, durations = [], []
    for clip_id, path in zip(table.clip_id, table.path):
        digest = hashlib.sha256(f"{clip_id}|{keep_fraction}|{BANK_VERSION}".encode()).hexdigest()[:20]
        target = cache_dir("bank", "truncated", digest[:2]) / f"{digest}.wav"
        if not target.exists():
            wave = clip_audio(path)
            _write_wav(target, wave[: max(1, int(len(wave) * keep_fraction))])
        paths.append(str(target))
        durations.append(sf.info(str(target)).frames / SAMPLE_RATE)
    out["clip_id"] = [f"{c}/cut{keep_fraction:g}" for c in table.clip_id]
    out["path"], out["duration_s"], out["keep_fraction"] = paths, durations, keep_fraction
    return out.reset_index(drop=True)


def non_speech_clips(n_clips: int, *, duration_s: float = 4.0, seed: int = 0,
                     generated: Sequence[str] = ("white", "pink", "brown", "hum")) -> pd.DataFrame:
    """``n_clips`` clips with no speech in them: real music and ambience (:func:`noise.real_noise_sources`: Sonic
    Pi samples, music on hold) and generated noise, taken in turn so that every source is used, at the bank's level.

    Columns ``clip_id, path, text`` (empty: nothing is said), ``speaker`` (the noise source: clips of one source
    are one group in a grouped split), ``source`` (``"non-speech"``), ``noise`` (the source id), ``kind``
    (``"music"``, ``"ambience"`` or ``"generated"``), ``duration_s``, ``licence``. Cached under ``cache_dir("bank",
    "non_speech")``; a clip is a pure function of its source, seed and duration.
    """
    from . import noise as noise_module

    real = noise_module.real_noise_sources()
    sources = ([(r.noise_id, r.kind, r.licence) for r in real.itertuples()]
               + [(kind, "generated", "generated") for kind in generated])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    n_samples = int(round(duration_s * SAMPLE_RATE))
    rows = []
    for i in range(int(n_clips)):
        noise_id, kind, licence = sources[order[i % len(sources)]]
        clip_seed = seed * 1000 + i
        digest = hashlib.sha256(f"{noise_id}|{clip_seed}|{n_samples}|{BANK_VERSION}".encode()).hexdigest()[:20]
        path = cache_dir("bank", "non_speech", digest[:2]) / f"{digest}.wav"
        if not path.exists():
            wave = noise_module.noise_clip(noise_id, n_samples, seed=clip_seed)
            wave = wave * (TARGET_RMS / max(float(np.sqrt(np.mean(wave ** 2))), 1e-8))
            _write_wav(path, wave)
        rows.append({"clip_id": f"non-speech/{noise_id}/{clip_seed}", "path": str(path), "text": "",
                     "speaker": noise_id, "source": "non-speech", "noise": noise_id, "kind": kind,
                     "duration_s": n_samples / SAMPLE_RATE, "licence": licence})
    return pd.DataFrame(rows)
