"""Lenses: read what the model would say if it stopped at an intermediate layer.

**Logit lens (decoder).** Each decoder layer's residual stream ``(batch, tokens, d_model)`` goes through the final
decoder LayerNorm and the tied unembedding, exactly as the last layer's does. The LayerNorm's statistics (mean and
variance) are computed from *that layer's own* residual vector; reusing the final layer's statistics is a known bug
of some implementations. Layer 0 of the lens is the embeddings (``dec.0.resid_pre``); layer ``l`` (1..n) is the
output of decoder block ``l - 1`` (``dec.{l-1}.resid_post``), and the last one is the model's own output.

**Saturation layer.** For each position, the first lens layer from which the lens's top-1 token equals the model's
final top-1 token at that layer and every later one (following the LLM literature; the paper's exact definition is
not known).

**Encoder lens.** Feed encoder layer ``l``'s output (through the final encoder LayerNorm by default, since that is
what the decoder was trained to read) to the decoder in place of the last layer's, and generate. All layers of a
batch of clips are decoded together as one batch.

**Tuned lens** (beyond the paper). A learned affine translator per decoder layer, fitted to minimise the KL
divergence to the final distribution on held-out speakers (:func:`fit_tuned_lens`), compared with the logit lens
layer by layer (:func:`compare_lenses`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import run, store
from .cache import cache_activations
from .hooks import hf_model, whisper_core
from .runtime import check_whole


@dataclass
class LogitLensResult:
    """Per lens layer ``l`` (0 = embeddings, n = final), batch row ``b`` and position ``t``:

    ``top_ids``/``top_probs``: ``(layers, batch, tokens, k)``; ``final_prob``: probability the lens gives the model's
    final top-1 token; ``final_rank``: its rank (0 = top); ``kl``: KL(final || lens) in nats; ``entropy``: of the
    lens distribution, in nats; ``agrees``: lens top-1 == final top-1 (all ``(layers, batch, tokens)``).
    ``final_ids``: ``(batch, tokens)``, the model's top-1 prediction at each position (the next token).
    """

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    final_prob: torch.Tensor
    final_rank: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    agrees: torch.Tensor
    final_ids: torch.Tensor

    @property
    def n_layers(self) -> int:
        return self.kl.shape[0]

    def saturation_layer(self) -> torch.Tensor:
        """``(batch, tokens)``: first lens layer from which the lens agrees with the final top-1 at every later
        layer (the last lens layer always agrees)."""
        disagree = ~self.agrees  # (layers, batch, tokens)
        layers = torch.arange(self.n_layers).view(-1, 1, 1).expand_as(disagree)
        last_bad = torch.where(disagree, layers, torch.full_like(layers, -1)).amax(0)
        return last_bad + 1  # one past the last layer that disagrees (0 if none does)

    def per_layer(self, mask: torch.Tensor | None = None) -> pd.DataFrame:
        """Mean top-1 agreement, KL, final-token probability and entropy per lens layer over the positions in
        ``mask`` ``(batch, tokens)`` (default: all)."""
        m = torch.ones_like(self.agrees[0]) if mask is None else mask.bool()
        rows = []
        for layer in range(self.n_layers):
            rows.append({"layer": layer,
                         "top1_agreement": float(self.agrees[layer][m].float().mean()),
                         "kl_to_final": float(self.kl[layer][m].mean()),
                         "final_token_prob": float(self.final_prob[layer][m].mean()),
                         "final_token_rank_median": float(self.final_rank[layer][m].float().median()),
                         "entropy": float(self.entropy[layer][m].mean())})
        return pd.DataFrame(rows)


def lens_logits(model: Any, residual: torch.Tensor) -> torch.Tensor:
    """Residual vectors ``(..., d_model)`` through the final decoder LayerNorm (statistics of each vector itself) and
    the tied unembedding: ``(..., vocab)``."""
    core = whisper_core(model)
    return hf_model(model).proj_out(core.decoder.layer_norm(residual))


@torch.no_grad()
def logit_lens(model: Any, input_features: torch.Tensor | None, decoder_input_ids: torch.Tensor, *, top_k: int = 5,
               translator: "TunedLens | None" = None, encoder_states: torch.Tensor | None = None) -> LogitLensResult:
    """Logit lens over every decoder layer and position, teacher-forced on ``decoder_input_ids`` ``(batch, tokens)``.

    Args:
        input_features: log-mel ``(batch, n_mels, 3000)``, or None with ``encoder_states``.
        decoder_input_ids: ``(batch, tokens)``, prompt included.
        top_k: how many of each layer's top tokens to keep.
        translator: a fitted :class:`TunedLens`: each layer's residual first goes through its learned affine map
            (the tuned lens, with the same statistics).
        encoder_states: ``(batch, 1500, d_model)``, the encoder output if it is known already (e.g. from
            :func:`asrinterp_utils.run.encode`): the encoder is then not run again.

    One teacher-forced decoder pass (:func:`asrinterp_utils.run.teacher_force`) caches the residual stream; the lens
    of each layer is then one LayerNorm and one matrix product, computed layer by layer so that memory stays at one
    ``(batch, tokens, vocab)`` tensor. For Qwen2-Audio use :func:`asrinterp_utils.audio_llm.audio_llm_logit_lens`.
    """
    if not hasattr(hf_model(model), "proj_out"):
        raise TypeError(f"logit_lens reads a Whisper decoder; got {type(hf_model(model)).__name__}. For an audio "
                        "language model such as Qwen2-Audio use asrinterp_utils.audio_llm.audio_llm_logit_lens.")
    if encoder_states is None:
        if input_features is None:
            raise ValueError("give input_features (batch, n_mels, 3000) or encoder_states (batch, 1500, d_model)")
        encoder_states = run.encode_features(model, input_features)
    if len(encoder_states) != len(decoder_input_ids):
        raise ValueError(f"{len(encoder_states)} clips of audio but {len(decoder_input_ids)} rows of "
                         "decoder_input_ids: give one row of token ids per clip")
    return _teacher_forced_lens(model, encoder_states, decoder_input_ids, top_k=top_k, translator=translator)


def _teacher_forced_lens(model: Any, encoder_states: torch.Tensor, decoder_input_ids: torch.Tensor, *, top_k: int,
                         translator: "TunedLens | None", positions: tuple[torch.Tensor, torch.Tensor] | None = None
                         ) -> LogitLensResult:
    """The lens of :func:`logit_lens` at every position, or, with ``positions = (rows, tokens)`` (two ``(n,)`` index
    tensors), at those positions only, as one batch row ``(layers, 1, n)``: the unembedding, the costly part, then
    skips the padding after short transcripts."""
    n = len(whisper_core(model).decoder.layers)
    names = ["dec.0.resid_pre"] + [f"dec.{i}.resid_post" for i in range(n)]
    with cache_activations(model, names[:-1], device=None) as cache:
        hidden = run.teacher_force(model, encoder_states, decoder_input_ids, logits=False)  # dec.final

    def at(x: torch.Tensor) -> torch.Tensor:
        return x if positions is None else x[positions[0].to(x.device), positions[1].to(x.device)][None]

    def layer_logits(layer: int, name: str) -> torch.Tensor:
        residual = at(cache[name])
        if translator is not None:
            residual = translator(layer, residual.to(next(translator.parameters()).device))
        return lens_logits(model, residual)

    final_logits = hf_model(model).proj_out(at(hidden))
    return lens_statistics(final_logits, [lambda l=layer, n=name: layer_logits(l, n)
                                          for layer, name in enumerate(names[:-1])], top_k=top_k)


@torch.no_grad()
def _kl_to_final(final_p: torch.Tensor, final_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(final || lens) per position, ``(..., vocab)`` -> ``(...)``, from the final distribution's probabilities
    and log-probabilities and the lens's log-probabilities; clamped at 0 (float rounding can dip below it)."""
    return (final_p * (final_logp - logp)).sum(-1).clamp(min=0)


def lens_statistics(final_logits: torch.Tensor, layer_logits: Sequence[Any], *, top_k: int = 5) -> LogitLensResult:
    """The per-layer statistics of a lens, for any model: the shared core of :func:`logit_lens` and the audio-LLM
    lens.

    Args:
        final_logits: ``(batch, tokens, vocab)``, the model's own output (the last lens layer).
        layer_logits: one callable per earlier lens layer ``l``; each returns ``(batch, tokens, vocab)`` logits and
            is called once, in order, so that only one layer's logits are in memory at a time.
        top_k: how many top tokens to keep per position.
    """
    final_logp = torch.log_softmax(final_logits.float(), dim=-1)
    final_p = final_logp.exp()
    final_ids = final_logits.argmax(-1)
    out = {k: [] for k in ("top_ids", "top_probs", "final_prob", "final_rank", "kl", "entropy", "agrees")}
    for index, logits_fn in enumerate([*layer_logits, lambda: final_logits]):  # the last layer IS the output
        logits = logits_fn()
        if logits.shape != final_logits.shape:  # a broadcast would mix positions or clips silently
            raise ValueError(f"lens_statistics: lens layer {index} gave logits of shape {tuple(logits.shape)}, the "
                             f"final logits are {tuple(final_logits.shape)}: every layer must give (batch, tokens, "
                             "vocab) for the same positions")
        logp = torch.log_softmax(logits.float(), dim=-1)
        p = logp.exp()
        top = p.topk(top_k, dim=-1)
        chosen = logits.gather(-1, final_ids.unsqueeze(-1))
        out["top_ids"].append(top.indices.cpu())
        out["top_probs"].append(top.values.cpu())
        out["final_prob"].append(p.gather(-1, final_ids.unsqueeze(-1)).squeeze(-1).cpu())
        out["final_rank"].append((logits > chosen).sum(-1).cpu())
        out["kl"].append(_kl_to_final(final_p, final_logp, logp).cpu())
        out["entropy"].append(-(p * logp).sum(-1).cpu())
        out["agrees"].append((logits.argmax(-1) == final_ids).cpu())
    return LogitLensResult(**{k: torch.stack(v) for k, v in out.items()}, final_ids=final_ids.cpu())


@torch.no_grad()
def encoder_lens(lm: Any, audio_list: Sequence[np.ndarray], references: Sequence[str] | None = None, *,
                 layers: Sequence[int] | None = None, apply_final_norm: bool = True, max_new_tokens: int = 96,
                 clips_per_batch: int = 4, progress: bool = True, use_store: bool = True) -> pd.DataFrame:
    """Transcribe every clip from every encoder layer's output.

    The encoder runs once per batch of clips with every layer's output cached; the decoder then decodes all
    ``clips x layers`` states of the batch together, greedily
    (:func:`~asrinterp_utils.run.greedy`: the same tokens whatever the batch size up to float rounding, timestamp
    tokens suppressed). Each clip's rows are kept in the :mod:`~asrinterp_utils.store` (keyed by model, samples,
    layers and settings) and read from there the next time (``use_store=False``, or a patch attached around the
    call: compute all, store nothing); with the last layer read, the encoder output is filed too.

    Args:
        lm: a :class:`~asrinterp_utils.models.LoadedModel`.
        audio_list: clips, 16 kHz mono float32.
        references: the clips' reference texts; adds ``wer``, ``kind``
            (:func:`~asrinterp_utils.metrics.transcript_kind`) and ``repetitive`` columns.
        layers: encoder layers to read (default all; the last one reproduces the normal transcript).
        apply_final_norm: pass the layer's output through the final encoder LayerNorm first (default True).
        max_new_tokens: cap per transcript (intermediate layers can loop).
        clips_per_batch: clips whose layers are decoded in one batch (decoder batch = clips x layers).

    Returns a DataFrame, one row per clip and layer: ``clip, layer, transcript, n_tokens, hit_limit`` (the transcript
    was cut at ``max_new_tokens``), and with references ``wer, kind, repetitive``.
    """
    from tqdm.auto import tqdm

    from .metrics import is_repetitive, transcript_kind, word_error_rate

    core = whisper_core(lm)
    n = len(core.encoder.layers)
    layers = list(range(n)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise ValueError(f"encoder layers must be in 0..{n - 1} for this model ({n} encoder layers); got {bad}")
    if len(audio_list) == 0:
        raise ValueError("encoder_lens: audio_list is empty: pass at least one clip")
    if references is not None and len(references) != len(audio_list):
        raise ValueError(f"{len(references)} references for {len(audio_list)} clips")
    names = [f"enc.{i}.resid_post" for i in layers]
    plain = store.storable(lm)  # under a patch the rows are the patched model's: neither read nor stored
    use_store = use_store and plain
    settings = {"layers": layers, "apply_final_norm": bool(apply_final_norm), "max_new_tokens": int(max_new_tokens),
                "decoder": "greedy-no-timestamps"}
    paths = [store.result_path("encoder_lens", lm, clip, settings) if use_store else None for clip in audio_list]
    per_clip = [store.read_record(p) if p is not None else None for p in paths]  # [clip] -> that clip's rows
    missing = [i for i, rows in enumerate(per_clip) if not _lens_rows_ok(rows, layers)]
    batches = [missing[i:i + clips_per_batch] for i in range(0, len(missing), clips_per_batch)]
    for batch in tqdm(batches, desc="encoder lens", disable=not progress):
        feats, n_frames = lm.features([audio_list[i] for i in batch])
        with cache_activations(lm, names, device=None) as cache:
            run.encode_features(lm, feats)
        states = torch.stack([cache[name] for name in names], dim=1)  # (clips, layers, 1500, d_model)
        if plain and n - 1 in layers:  # the encoder output itself, filed for later decoder work on these clips
            store.file_states(lm, [audio_list[i] for i in batch],
                              core.encoder.layer_norm(cache[f"enc.{n - 1}.resid_post"]))
        if plain and layers == list(range(n)):  # and each layer's mean over the real frames, for probes
            store.file_means(lm, [audio_list[i] for i in batch],
                             torch.stack([s[:, :f].float().mean(dim=1) for s, f in zip(states, n_frames.tolist())]))
        states = states.flatten(0, 1)
        if apply_final_norm:
            states = core.encoder.layer_norm(states)
        decoded = run.greedy(lm, states, max_new_tokens=max_new_tokens)
        texts = decoded.texts(lm.tokenizer)
        for j, clip in enumerate(batch):
            at = range(j * len(layers), (j + 1) * len(layers))
            per_clip[clip] = [{"layer": layer, "transcript": texts[k], "n_tokens": len(decoded.text_ids[k]),
                               "hit_limit": decoded.hit_limit[k]}  # no <|endoftext|> before the cap
                              for layer, k in zip(layers, at)]
            if paths[clip] is not None:
                store.write_record(paths[clip], per_clip[clip])
    rows = []
    for clip, clip_rows in enumerate(per_clip):
        for row in clip_rows:
            row = {"clip": clip, **row}
            if references is not None:
                ref, text = references[clip], row["transcript"]
                row.update(wer=word_error_rate(ref, text), kind=transcript_kind(ref, text),
                           repetitive=is_repetitive(text))
            rows.append(row)
    return pd.DataFrame(rows)


def _lens_rows_ok(rows: Any, layers: Sequence[int]) -> bool:
    """Whether a stored record holds one well-formed row per layer (else the clip is computed again)."""
    keys = {"layer", "transcript", "n_tokens", "hit_limit"}
    return (isinstance(rows, list) and [r.get("layer") if isinstance(r, dict) else None for r in rows] == layers
            and all(keys <= set(r) for r in rows))


# ---------------------------------------------------------------------------------------------------------------
# The logit lens over a corpus, token by token
# ---------------------------------------------------------------------------------------------------------------

FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet if then than because as of at by for from in into on onto to up down out off over
under with without about above below between through during before after again once here there when where why how
all any both each few more most other some such no not only own same too very can will just should would could
may might must shall do does did doing done be is am are was were been being have has had having i me my mine
myself we us our ours you your yours he him his she her hers it its they them their theirs what which who whom
this that these those while until against further s t don isn aren wasn weren let's it's i'm you're that's there's
""".split())
"""English function words (articles, pronouns, prepositions, conjunctions, auxiliaries), for splitting tokens into
content and function words. A choice of this book, close to common stop-word lists."""

TOKEN_KINDS = ("content", "function", "continuation", "digit", "punctuation")


def _check_clips(audio_list: Any, batch_size: Any, caller: str) -> None:
    if len(audio_list) == 0:
        raise ValueError(f"{caller}: audio_list is empty: pass at least one clip")
    check_whole(batch_size, f"{caller}: batch_size", 1)


def token_kinds(tokenizer: Any, text_ids: Sequence[int]) -> pd.DataFrame:
    """One row per text token of one transcript: ``token`` (its text), ``word`` (the normalised word it belongs
    to), ``word_initial`` (it starts a word), ``digit``, ``punctuation``, ``function_word`` and one ``kind`` from
    :data:`TOKEN_KINDS` (first that applies: punctuation, digit, continuation, function, content).

    A token starts a word when its text begins with a space, or it is the first token, or the previous token was
    punctuation."""
    if not hasattr(tokenizer, "decode"):
        raise ValueError(f"token_kinds: give the model's tokenizer (lm.tokenizer); got {type(tokenizer).__name__}")
    pieces = [tokenizer.decode([int(i)]) for i in text_ids]
    rows, word_of, current = [], [], -1
    for i, piece in enumerate(pieces):
        stripped = piece.strip()
        punct = bool(stripped) and not any(ch.isalnum() for ch in stripped)
        initial = i == 0 or piece.startswith(" ") or (rows and rows[-1]["punctuation"]) or punct
        if initial:
            current += 1
        word_of.append(current)
        rows.append({"token": piece, "word_initial": bool(initial), "punctuation": punct,
                     "digit": any(ch.isdigit() for ch in stripped)})
    words: dict[int, str] = {}
    for w, piece in zip(word_of, pieces):
        words[w] = words.get(w, "") + piece
    for row, w in zip(rows, word_of):
        word = "".join(ch for ch in words[w].strip().lower() if ch.isalnum() or ch == "'")
        row["word"] = word
        row["function_word"] = word in FUNCTION_WORDS
        row["kind"] = ("punctuation" if row["punctuation"] else "digit" if row["digit"] else
                       "continuation" if not row["word_initial"] else
                       "function" if row["function_word"] else "content")
    return pd.DataFrame(rows)


@dataclass
class CorpusLens:
    """The logit lens over many clips, teacher-forced on each model's own greedy transcript.

    ``tokens``: one row per predicted text token (``clip``, ``position`` of the prediction, ``token_id``, the
    columns of :func:`token_kinds`, ``saturation_layer``); ``layers``: long form, one row per (token, lens layer):
    ``token_row`` (index into ``tokens``), ``layer``, ``top1_agreement``, ``kl_to_final``, ``final_token_prob``,
    ``final_token_rank``, ``entropy``, and ``lens_token`` (the lens's top-1 token id). ``transcripts``: per clip.
    """

    tokens: pd.DataFrame
    layers: pd.DataFrame
    transcripts: list[str]
    n_lens_layers: int

    def layer_summary(self, by: str | None = None) -> pd.DataFrame:
        """Mean agreement, KL, final-token probability and entropy per lens layer (and per ``by`` column of
        ``tokens``, e.g. ``"kind"``), with the number of tokens."""
        table = self.layers
        keys = ["layer"]
        if by is not None:
            table = table.assign(**{by: self.tokens[by].to_numpy()[table.token_row.to_numpy()]})
            keys = [by, "layer"]
        return (table.groupby(keys).agg(top1_agreement=("top1_agreement", "mean"),
                                        kl_to_final=("kl_to_final", "mean"),
                                        final_token_prob=("final_token_prob", "mean"),
                                        entropy=("entropy", "mean"), n_tokens=("token_row", "size"))
                .reset_index())


@torch.no_grad()
def corpus_logit_lens(lm: Any, audio_list: Sequence[np.ndarray], *, batch_size: int = 8, max_new_tokens: int = 96,
                      translator: "TunedLens | None" = None, progress: bool = True) -> CorpusLens:
    """Transcribe each clip greedily, then run :func:`logit_lens` teacher-forced on that transcript, in batches.

    The positions kept are those that predict a text token of the transcript (the prediction of ``<|endoftext|>``
    and the padding after it are dropped), so ``final_ids`` is the generated token itself.
    """
    from tqdm.auto import tqdm

    _check_clips(audio_list, batch_size, "corpus_logit_lens")
    n_prompt = len(lm.prompt_ids())
    token_rows, layer_rows, transcripts = [], [], []
    n_lens = len(whisper_core(lm).decoder.layers) + 1
    starts = range(0, len(audio_list), batch_size)
    for start in tqdm(starts, desc="logit lens", disable=not progress):
        batch = list(audio_list[start:start + batch_size])
        encoded = store.encoded(lm, batch)  # at most one encoder pass (none where the store has the clip)
        decoded = store.decoded(lm, batch, max_new_tokens=max_new_tokens, states=encoded.states)
        # position n_prompt - 1 + j predicts text token j: only those positions are read through the lens
        kept = [(row, n_prompt - 1 + j) for row, text_ids in enumerate(decoded.text_ids) for j in range(len(text_ids))]
        transcripts += decoded.texts(lm.tokenizer)
        if not kept:
            continue
        rows, positions = torch.tensor(kept).T
        result = _teacher_forced_lens(lm, encoded.states, decoded.ids, top_k=1, translator=translator,
                                      positions=(rows, positions))
        saturation = result.saturation_layer()[0]
        k = 0  # index of the kept position
        for row, text_ids in enumerate(decoded.text_ids):
            if not text_ids:
                continue
            kinds = token_kinds(lm.tokenizer, text_ids)
            for j, token_id in enumerate(text_ids):
                token_row = len(token_rows)
                token_rows.append({"clip": start + row, "position": n_prompt - 1 + j, "token_id": token_id,
                                   **kinds.iloc[j].to_dict(), "saturation_layer": int(saturation[k])})
                for layer in range(result.n_layers):
                    layer_rows.append({"token_row": token_row, "layer": layer,
                                       "top1_agreement": bool(result.agrees[layer, 0, k]),
                                       "kl_to_final": float(result.kl[layer, 0, k]),
                                       "final_token_prob": float(result.final_prob[layer, 0, k]),
                                       "final_token_rank": int(result.final_rank[layer, 0, k]),
                                       "entropy": float(result.entropy[layer, 0, k]),
                                       "lens_token": int(result.top_ids[layer, 0, k, 0])})
                k += 1
    return CorpusLens(pd.DataFrame(token_rows), pd.DataFrame(layer_rows), transcripts, n_lens)


# ---------------------------------------------------------------------------------------------------------------
# The tuned lens (beyond the paper): a learned affine translator per decoder layer
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DecoderResiduals:
    """The decoder residual stream at every lens layer, at the positions that predict a transcript's tokens.

    ``residuals``: ``(lens_layers, n_positions, d_model)`` float32 on the CPU (lens layer 0 = embeddings, the last =
    the final block's output, whose lens is the model's logits); ``clip``: ``(n_positions,)``, which clip each
    position came from; ``target_ids``: ``(n_positions,)``, the token that follows in the teacher-forced text.
    """

    residuals: torch.Tensor
    clip: torch.Tensor
    target_ids: torch.Tensor

    def __len__(self) -> int:
        return self.residuals.shape[1]

    def subset(self, clips: Sequence[int]) -> "DecoderResiduals":
        """The positions of the given clips only (e.g. a train or test split)."""
        wanted = torch.as_tensor(list(clips), dtype=self.clip.dtype)
        held = self.clip.unique().tolist()
        missing = sorted(set(wanted.tolist()) - set(held))
        if missing:
            raise ValueError(f"subset: clips {missing[:8]}{' ...' if len(missing) > 8 else ''} have no positions here "
                             f"(these residuals hold {len(held)} clips, numbered {held[0] if held else '-'}.."
                             f"{held[-1] if held else '-'}): subset takes clip indices, the order of the clips given to "
                             "decoder_residuals, not position indices")
        keep = torch.isin(self.clip, wanted)
        return DecoderResiduals(self.residuals[:, keep], self.clip[keep], self.target_ids[keep])


@torch.no_grad()
def decoder_residuals(lm: Any, audio_list: Sequence[np.ndarray], texts: Sequence[str] | None = None, *,
                      batch_size: int = 8, max_new_tokens: int = 96, progress: bool = True) -> DecoderResiduals:
    """Collect :class:`DecoderResiduals`, teacher-forced on ``texts`` (e.g. references: one forward pass per batch)
    or, if None, on the model's own greedy transcripts. Every position from the prompt's last token to the one
    predicting ``<|endoftext|>`` is kept."""
    from tqdm.auto import tqdm

    _check_clips(audio_list, batch_size, "decoder_residuals")
    if texts is not None and len(texts) != len(audio_list):
        raise ValueError(f"decoder_residuals: {len(texts)} texts for {len(audio_list)} clips: give one text per clip "
                         "(or texts=None to teacher-force each clip's own greedy transcript)")
    n = len(whisper_core(lm).decoder.layers)
    names = ["dec.0.resid_pre"] + [f"dec.{i}.resid_post" for i in range(n)]
    prompt = lm.prompt_ids()
    end_of_text = lm.end_of_text
    residuals, clips, targets = [], [], []
    for start in tqdm(range(0, len(audio_list), batch_size), desc="decoder residuals", disable=not progress):
        batch = list(audio_list[start:start + batch_size])
        states = store.encoded(lm, batch).states
        if texts is None:
            rows = [t.text_ids for t in store.transcripts(lm, batch, max_new_tokens=max_new_tokens, states=states)]
        else:
            rows = [lm.tokenizer.encode(" " + t.strip(), add_special_tokens=False)[:max_new_tokens]
                    for t in texts[start:start + batch_size]]
        width = max(len(r) for r in rows) + 1
        ids = torch.tensor([prompt + r + [end_of_text] * (width - len(r)) for r in rows])
        with cache_activations(lm, names, device="cpu", dtype=torch.float32) as cache:
            run.teacher_force(lm, states, ids, logits=False)
        stacked = torch.stack([cache[name] for name in names])  # (lens_layers, batch, tokens, d_model)
        for b, row in enumerate(rows):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(row))  # predict each text token, then eot
            residuals.append(stacked[:, b, positions])
            clips.append(torch.full((len(positions),), start + b))
            targets.append(ids[b, positions + 1])
    return DecoderResiduals(torch.cat(residuals, dim=1), torch.cat(clips), torch.cat(targets))


class TunedLens(torch.nn.Module):
    """One affine translator per lens layer but the last: ``h -> h + W_l h + b_l`` before the final LayerNorm and the
    unembedding (Belrose et al. 2023, "Eliciting latent predictions with the tuned lens"). With all translators zero
    it is the logit lens.

    Call ``tuned(layer, residual)`` with ``residual (..., d_model)`` to translate it; pass the fitted lens to
    :func:`logit_lens` or :func:`corpus_logit_lens` as ``translator``.
    """

    def __init__(self, n_lens_layers: int, d_model: int):
        super().__init__()
        self.translators = torch.nn.ModuleList(torch.nn.Linear(d_model, d_model) for _ in range(n_lens_layers - 1))
        for t in self.translators:
            torch.nn.init.zeros_(t.weight)
            torch.nn.init.zeros_(t.bias)

    def forward(self, layer: int, residual: torch.Tensor) -> torch.Tensor:
        if not 0 <= layer < len(self.translators):
            raise IndexError(f"the tuned lens has translators for lens layers 0..{len(self.translators) - 1} (the "
                             f"last lens layer is the model's output and needs none); got {layer}")
        return residual + self.translators[layer](residual)

    def init_least_squares(self, data: DecoderResiduals, ridge: float = 1e-2) -> "TunedLens":
        """Initialise each translator by ridge regression of the final residual on layer ``l``'s (the linear
        shortcut of Din et al. 2023), a closed-form start for the KL fit."""
        final = data.residuals[-1].double()
        for layer, t in enumerate(self.translators):
            x = data.residuals[layer].double()
            x_mean, y_mean = x.mean(0), final.mean(0)
            xc, yc = x - x_mean, final - y_mean
            gram = xc.T @ xc + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
            m = torch.linalg.solve(gram, xc.T @ yc)  # final ~ x @ m + c
            c = y_mean - x_mean @ m
            with torch.no_grad():
                t.weight.copy_((m - torch.eye(len(m), dtype=m.dtype)).T.float())
                t.bias.copy_(c.float())
        return self


@dataclass
class TunedLensFit:
    """A fitted :class:`TunedLens` and its ``history``: one row per epoch and lens layer with the mean KL to the final
    distribution on the training and held-out positions."""

    lens: TunedLens
    history: pd.DataFrame


def _kl_per_layer(model: Any, data: DecoderResiduals, translator: TunedLens | None, batch_tokens: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean KL(final || lens) and top-1 agreement per lens layer over all positions of ``data``: the ``kl`` and
    ``agrees`` of :func:`lens_statistics`, without the statistics it also computes (top tokens, ranks, entropy),
    which cost more than these two; the last lens layer is the output itself (KL 0, agreement 1)."""
    if len(data) == 0:
        raise ValueError("the residuals hold no positions: an empty split (check the clips given to subset())")
    n_lens = data.residuals.shape[0]
    kl_sum, agree_sum = np.zeros(n_lens), np.zeros(n_lens)
    agree_sum[-1] = len(data)
    device = next(hf_model(model).parameters()).device
    with torch.no_grad():
        for start in range(0, len(data), batch_tokens):
            chunk = data.residuals[:, start:start + batch_tokens].to(device)  # (lens_layers, n, d_model)
            final_logits = lens_logits(model, chunk[-1]).float()  # (n, vocab)
            final_logp = torch.log_softmax(final_logits, dim=-1)
            final_p = final_logp.exp()
            final_ids = final_logits.argmax(-1)
            for layer in range(n_lens - 1):
                h = chunk[layer] if translator is None else translator(layer, chunk[layer])
                logits = lens_logits(model, h).float()
                logp = torch.log_softmax(logits, dim=-1)
                kl_sum[layer] += float(_kl_to_final(final_p, final_logp, logp).double().sum())
                agree_sum[layer] += float((logits.argmax(-1) == final_ids).sum())
    return kl_sum / len(data), agree_sum / len(data)


def compare_lenses(model: Any, data: DecoderResiduals, tuned: TunedLens) -> pd.DataFrame:
    """Held-out comparison per lens layer: ``lens`` ("logit lens" or "tuned lens"), ``layer``, ``kl_to_final`` (mean,
    nats) and ``top1_agreement`` with the model's final prediction."""
    if len(tuned.translators) + 1 != data.residuals.shape[0]:
        raise ValueError(f"compare_lenses: the tuned lens has {len(tuned.translators) + 1} lens layers, the residuals "
                         f"{data.residuals.shape[0]}: fit it on residuals of the same model (fit_tuned_lens)")
    rows = []
    for name, translator in (("logit lens", None), ("tuned lens", tuned)):
        kl, agree = _kl_per_layer(model, data, translator)
        rows += [{"lens": name, "layer": layer, "kl_to_final": kl[layer], "top1_agreement": agree[layer]}
                 for layer in range(len(kl))]
    return pd.DataFrame(rows)


def fit_tuned_lens(model: Any, train: DecoderResiduals, val: DecoderResiduals | None = None, *,
                   epochs: int = 8, lr: float = 1e-3, weight_decay: float = 1e-3, batch_tokens: int = 256,
                   init: str = "least_squares", seed: int = 0, progress: bool = True) -> TunedLensFit:
    """Fit a :class:`TunedLens` to minimise KL(final || lens) summed over layers, with Adam on the model's frozen
    LayerNorm and unembedding.

    Args:
        model: the Whisper model (or :class:`~asrinterp_utils.models.LoadedModel`).
        train: residuals to fit on; ``val``: held-out residuals (other speakers) evaluated after every epoch; the
            translators of the epoch with the lowest held-out KL are kept (early stopping).
        epochs, lr, weight_decay, batch_tokens: the optimiser's settings.
        init: ``"least_squares"`` (:meth:`TunedLens.init_least_squares`) or ``"zero"`` (start from the logit lens).
    """
    from tqdm.auto import tqdm

    n_lens, _, d_model = train.residuals.shape
    core = whisper_core(model)
    expected = (len(core.decoder.layers) + 1, int(core.config.d_model))
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        if len(data) == 0:
            raise ValueError(f"fit_tuned_lens: {name} holds no positions (an empty split: check the clips given to "
                             "DecoderResiduals.subset)")
        if (data.residuals.shape[0], data.residuals.shape[2]) != expected:
            raise ValueError(f"fit_tuned_lens: {name} has {data.residuals.shape[0]} lens layers of width "
                             f"{data.residuals.shape[2]}; this model's decoder has {expected[0]} (embeddings and "
                             f"{expected[0] - 1} blocks) of width {expected[1]}: collect them with "
                             "decoder_residuals on the same model")
    epochs = check_whole(epochs, "fit_tuned_lens: epochs", 0, " (0 keeps the start)")
    batch_tokens = check_whole(batch_tokens, "fit_tuned_lens: batch_tokens", 1)
    torch.manual_seed(seed)
    tuned = TunedLens(n_lens, d_model)
    if init == "least_squares":
        tuned.init_least_squares(train)
    elif init != "zero":
        raise ValueError(f"init must be 'least_squares' or 'zero'; got {init!r}")
    device = next(hf_model(model).parameters()).device
    tuned.to(device)
    frozen = [p for p in hf_model(model).parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    history, best = [], (float("inf"), None)

    def record(epoch: int) -> None:
        nonlocal best
        tr_kl, _ = _kl_per_layer(model, train, tuned)
        va_kl = _kl_per_layer(model, val, tuned)[0] if val is not None else tr_kl * np.nan
        history.extend({"epoch": epoch, "layer": layer, "train_kl": tr_kl[layer], "val_kl": va_kl[layer]}
                       for layer in range(n_lens - 1))
        score = float(np.mean(va_kl[:-1] if val is not None else tr_kl[:-1]))
        if score < best[0]:
            best = (score, {k: v.detach().clone() for k, v in tuned.state_dict().items()})

    try:
        optimiser = torch.optim.Adam(tuned.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        record(0)
        for epoch in tqdm(range(1, epochs + 1), desc="tuned lens", disable=not progress):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), batch_tokens):
                chunk = train.residuals[:, order[start:start + batch_tokens]].to(device)
                with torch.no_grad():
                    final_logp = torch.log_softmax(lens_logits(model, chunk[-1]).float(), -1)
                loss = 0.0
                for layer in range(n_lens - 1):
                    logp = torch.log_softmax(lens_logits(model, tuned(layer, chunk[layer])).float(), -1)
                    loss = loss + (final_logp.exp() * (final_logp - logp)).sum(-1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            record(epoch)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    tuned.load_state_dict(best[1])
    return TunedLensFit(tuned.eval(), pd.DataFrame(history))
