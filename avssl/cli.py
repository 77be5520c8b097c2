"""The ``avssl`` command line: one verb per stage of the pipeline.

Data verbs take flags (``avssl synth --num-videos 100 --out data/synth``); training and
evaluation verbs take a recipe and ``key=value`` overrides
(``avssl pretrain recipes/synth/avc_small.yaml trainer.max_epochs=2``).
Heavy imports happen inside each verb so that ``avssl --help`` is instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence


def _synth(args: argparse.Namespace) -> int:
    from avssl.data.synth import generate_dataset

    generate_dataset(
        out_dir=args.out,
        num_videos=args.num_videos,
        seconds=args.seconds,
        size=args.size,
        fps=args.fps,
        sample_rate=args.sample_rate,
        num_categories=args.num_categories,
        split_fractions=tuple(args.split),
        seed=args.seed,
        workers=args.workers,
    )
    return 0


def _slurm_array_part() -> tuple[int, int] | None:
    """(part, number of parts) of this SLURM array task, or None outside an array job."""
    import os

    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return int(task) - first, int(os.environ.get("SLURM_ARRAY_TASK_COUNT", int(task) - first + 1))


def _shard_part(args: argparse.Namespace):  # -> avssl.data.shards.Part | None (imported inside)
    """The part of the input this run writes (--part/--num-parts, else the SLURM array
    task's), or None for the whole input."""
    from avssl.data.shards import Part

    array = _slurm_array_part() if args.part is None or args.num_parts is None else None
    part = args.part if args.part is not None else array[0] if array else None
    count = args.num_parts if args.num_parts is not None else array[1] if array else None
    if part is None and count is None:
        return None
    if part is None or count is None:
        missing = "--part" if part is None else "--num-parts"
        args.shards_parser.error(f"{missing} is needed too (or run inside a SLURM array job)")
    try:
        return Part(part, count)
    except ValueError as error:
        args.shards_parser.error(str(error))


def _shards(args: argparse.Namespace) -> int:
    from avssl.data.shards import MergeError, ShardSettings, merge_parts, write_shards

    if args.shards_step == "merge":
        try:
            report = merge_parts(args.out, num_parts=args.num_parts, workers=args.workers)
        except MergeError as error:
            print(f"avssl shards merge: {error}", file=sys.stderr)
            return 2
        return 0 if report.num_packed > 0 else 1
    if args.videos is None or args.out is None:
        missing = [flag for flag, value in (("--videos", args.videos), ("--out", args.out)) if value is None]
        args.shards_parser.error(f"the following arguments are required: {', '.join(missing)}")
    part = _shard_part(args)
    settings = ShardSettings(
        shard_size=args.shard_size,
        short_side=args.short_side,
        fps=args.fps,
        sample_rate=args.sample_rate,
        gop_seconds=args.gop_seconds,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        missing_audio=args.missing_audio,
        audio_format=args.audio_format,
        min_seconds=args.min_seconds,
        seed=args.seed,
    )
    report = write_shards(args.videos, args.out, labels_csv=args.labels, settings=settings, workers=args.workers,
                          part=part)
    if part is not None:
        return 0  # a part that packed nothing is not a failure: the merge counts the whole
    return 0 if report.num_packed > 0 else 1


def _recipe(args: argparse.Namespace):
    from avssl.config import load_recipe

    return load_recipe(args.recipe, args.overrides)


def _pretrain(args: argparse.Namespace) -> int:
    from avssl.pretrain import pretrain

    result = pretrain(_recipe(args))
    if result["resumed_from"]:
        print(f"resumed from: {result['resumed_from']}")
    print(f"run folder: {result['run_dir']}\ncheckpoint: {result['checkpoint']}")
    if "export" in result:
        print(f"exported encoders: {result['export']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from avssl.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"exported to {out}")
    return 0


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any recipe key, e.g. trainer.max_epochs=2")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining from a recipe")
    _add_recipe_args(p)
    p.set_defaults(run=_pretrain)


# Evaluation verbs: RECIPE [key=value …] → ``module.function(config)``, each writing
# metrics.json into the recipe's run_dir (docs/evaluation.md).
EVALUATION_VERBS: dict[str, tuple[str, str]] = {
    "probe": ("avssl.probe:probe_from_recipe",
              "linear probe and k-NN of frozen encoders (probe.encoders=EXPORT_DIR|CKPT|random)"),
    "finetune": ("avssl.finetune:finetune_from_recipe",
                 "fine-tune a pretrained encoder with a classifier (finetune.encoders=EXPORT_DIR|CKPT|random)"),
    "localize": ("avssl.localize:localize_from_recipe",
                 "sound-source localization (cIoU/AUC) and event localization (localization.checkpoint=CKPT|random)"),
    "separate": ("avssl.separate:separation_from_recipe",
                 "mix-and-separate with a visually conditioned U-Net, SDR/SIR/SAR/SI-SDR "
                 "(separation.encoders=EXPORT_DIR|CKPT|random)"),
    "cluster": ("avssl.cluster:cluster_from_recipe",
                "k-means on frozen features, NMI/ARI/purity against labels (cluster.encoders=EXPORT_DIR|CKPT|random)"),
}


def _evaluate(args: argparse.Namespace) -> int:
    import importlib

    module, function = EVALUATION_VERBS[args.command][0].split(":")
    getattr(importlib.import_module(module), function)(_recipe(args))
    return 0


def _add_evaluation_verbs(sub: argparse._SubParsersAction) -> None:
    for verb, (_, help_text) in EVALUATION_VERBS.items():
        p = sub.add_parser(verb, help=help_text)
        _add_recipe_args(p)
        p.set_defaults(run=_evaluate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="Lightning checkpoint → encoder safetensors + model.json")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(run=_export)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic audio-visual set (mp4 + ground truth)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--num-videos", type=int, default=400)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--num-categories", type=int, default=8)
    p.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.set_defaults(run=_synth)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    from avssl.data.shards import AUDIO_FORMATS, ShardSettings

    d = ShardSettings()
    p = sub.add_parser(
        "shards",
        help="re-encode a folder of videos into WebDataset tar shards",
        description="One sample per video: the re-encoded mp4, a json of metadata and any sidecar "
        "files with the same stem. Bad files are skipped and reported, never fatal. "
        "Split across nodes: each of N runs writes one part (--num-parts N --part I, or one task of a "
        "SLURM array), then `avssl shards merge --out OUT` builds the one manifest (docs/launching.md).",
    )
    p.add_argument("--videos", type=Path, default=None, help="folder of videos (searched recursively); required")
    p.add_argument("--labels", type=Path, default=None,
                   help="csv with the header id,label[,split]: id = the video's path under --videos without "
                        "extension (or its file name without extension), label = a class name or integer, "
                        "split = train/val/test/… (optional)")
    p.add_argument("--out", type=Path, default=None, help="output folder for the shards; required")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    p.add_argument("--short-side", type=int, default=d.short_side,
                   help="resize (up or down) so the short side is S pixels")
    p.add_argument("--fps", type=float, default=d.fps, help="constant output frame rate")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate, help="output audio rate (mono)")
    p.add_argument("--gop-seconds", type=float, default=d.gop_seconds, help="keyframe interval in seconds")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the videos without a split held out as 'val' (per class with --labels; "
                        "default: 0.1 when the labels file has no split column, else 0)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="share of the videos without a split held out as 'test' (per class with --labels; "
                        "default: 0.1 when the labels file has no split column, else 0)")
    p.add_argument("--missing-audio", choices=("skip", "silence"), default=d.missing_audio,
                   help="what to do with videos that have no audio stream")
    p.add_argument("--audio-format", choices=AUDIO_FORMATS, default=d.audio_format,
                   help="pcm: raw int16 mono beside a video-only mp4 (fastest to read, ~2x the bytes); "
                        "aac: mono AAC inside the mp4")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help="skip videos whose audio and video overlap for less than this (seconds)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split of the videos without one")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel processes (the output does not depend on it)")
    p.add_argument("--num-parts", type=int, default=None,
                   help="split the input into N parts written by separate runs into OUT/parts/ "
                        "(default: inside a SLURM array job, its number of tasks)")
    p.add_argument("--part", type=int, default=None,
                   help="the part (0..N-1) this run writes (default: the SLURM array task's index)")
    p.set_defaults(run=_shards, shards_step=None, shards_parser=p)
    steps = p.add_subparsers(dest="shards_step", metavar="[merge]")
    merge = steps.add_parser(
        "merge", help="build OUT/manifest.json and the shards from the parts in OUT/parts/",
        description="Merge the parts written by `avssl shards --num-parts N --part I --out OUT`: refuses, "
        "naming the part, when one is missing (no part manifest) or failed.",
    )
    merge.add_argument("--out", type=Path, required=True, help="the --out the parts were written with")
    merge.add_argument("--num-parts", type=int, default=None,
                       help="how many parts to expect (default: what the part manifests say)")
    merge.add_argument("--workers", type=int, default=1,
                       help="processes rewriting the shards of parts 1..N-1 (the output does not depend on it)")
    merge.set_defaults(run=_shards)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from avssl.data.sources.cli import add_prepare_arguments, run_prepare

    p = sub.add_parser(
        "prepare",
        help="shard a public benchmark from its release layout (labels, splits, ground truth)",
        description="Read a benchmark's own annotation files, find its clips under --root and pack them "
        "with the shard writer; clips listed but missing are skipped and reported (docs/benchmarks-data.md).",
    )
    add_prepare_arguments(p)
    p.set_defaults(run=run_prepare)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth, _add_shards, _add_prepare, _add_pretrain, _add_evaluation_verbs, _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avssl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avssl.config import RecipeError

    try:
        return int(args.run(args) or 0)
    except RecipeError as error:
        print(f"avssl {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
