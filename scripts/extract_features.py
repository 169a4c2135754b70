"""Extract pooled Whisper features into a sharded folder; the same script runs as one process or several.

    python scripts/extract_features.py --model tiny.en --out feats/tiny-enc --n-clips 200
    accelerate launch --num_processes 4 scripts/extract_features.py --model base --out feats/base-enc  # 4 GPUs
    torchrun --nproc_per_node 2 scripts/extract_features.py --model tiny.en --out feats/tiny-enc     # 2 CPU processes

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` also starts two CPU processes, but
``accelerate launch --cpu --num_processes 2`` (Accelerate 1.15, no ``--mpirun_hostfile``) starts only one, which
then computes every shard (with a warning).

Each process computes its share of the shards (asrinterp_utils.extract.run_with_accelerate); process 0 writes the
manifest once all have finished. Rerunning the same command resumes an interrupted run; a changed configuration
on an existing folder is refused.

Real models read the English Asterisk prompts of the speech bank (``asrinterp_utils.data.asterisk_prompts``),
loaded one batch at a time. ``--toy`` uses the random-initialised toy Whisper and synthetic clips of the tests
(``tests/_toy_lm.py``, so it runs from a checkout of the repository); the tests launch it to check that two
processes give one process's features.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="model name for asrinterp_utils.load_model (tiny.en, base, a hub id, a folder)")
    which.add_argument("--toy", action="store_true", help="the tests' random-initialised toy model and clips")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n-clips", type=int, default=64, help="number of clips (default 64)")
    parser.add_argument("--side", choices=("encoder", "decoder"), default="encoder")
    parser.add_argument("--pool", choices=("mean", "max", "last"), default="mean")
    parser.add_argument("--names", default=None, help="hook points (default: every layer's resid_post on --side)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="decoder side (default 128; toy 10)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from asrinterp_utils.extract import LazyClips, accelerate_state, run_with_accelerate

    state = accelerate_state()
    if args.toy:
        sys.path.insert(0, str(REPO))
        from tests._toy_lm import toy_clip, toy_loaded_model

        lm = toy_loaded_model()
        clips = LazyClips(list(range(args.n_clips)), toy_clip)
        max_new_tokens = args.max_new_tokens or 10
    else:
        from asrinterp_utils.data import asterisk_prompts, clip_audio
        from asrinterp_utils.models import load_model

        lm = load_model(args.model, device=state.device)
        with state.main_process_first():  # the first call decodes the recordings into the cache
            table = asterisk_prompts(progress=False)
        clips = LazyClips(table.path.iloc[: args.n_clips].tolist(), clip_audio)
        max_new_tokens = args.max_new_tokens or 128
    names = args.names or ("enc.*.resid_post" if args.side == "encoder" else "dec.*.resid_post")

    store = run_with_accelerate(lm, clips, names, out_dir=args.out, side=args.side, pool=args.pool,
                                batch_size=args.batch_size, shard_size=args.shard_size,
                                max_new_tokens=max_new_tokens, progress=not args.no_progress)
    if state.is_main_process:
        print(f"{store.n_clips} clips x {len(store.names)} points ({store.names[0]} ..) -> {store.out_dir}: "
              f"features {store.shape}, {len(store.shards)} shards, {state.num_processes} process(es)")


if __name__ == "__main__":
    main()
