"""The arguments and the run of ``avssl prepare`` (avssl/cli.py adds the verb).

Shard flags left out take the adapter's defaults (the shard writer's, with clips down to
0.5 s kept and, for the action sets and Kinetics-400, silent tracks for clips without audio).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path

from avssl.data.sources import BENCHMARKS

SHARD_FLAGS = ("shard_size", "short_side", "fps", "sample_rate", "gop_seconds", "missing_audio",
               "audio_format", "min_seconds")
ADAPTER_OPTIONS = ("fold", "subset", "classes", "val_fraction", "test_fraction", "seed")


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``avssl prepare``."""
    from avssl.data.shards import AUDIO_FORMATS

    p.add_argument("benchmark", choices=sorted(BENCHMARKS), metavar="BENCHMARK",
                   help="one of: " + "; ".join(f"{b.name}: {b.summary}" for b in BENCHMARKS.values()))
    p.add_argument("--root", type=Path, required=True, help="the benchmark's release, downloaded and unpacked")
    p.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    p.add_argument("--fold", type=int, default=None, help="ucf101/hmdb51: split 1-3; esc50: test fold 1-5 (default 1)")
    p.add_argument("--subset", default=None, help="audioset: balanced|unbalanced|full; music: music|music21")
    p.add_argument("--classes", type=Path, default=None,
                   help="kinetics-sounds: a file with one Kinetics class name per line (default: the 31 classes)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training list held out as 'val' (by group; 0: none)")
    p.add_argument("--test-fraction", type=float, default=None, help="music: share of the solos held out as 'test'")
    p.add_argument("--seed", type=int, default=None, help="seeds the held-out hash (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (the output does not depend on it)")
    shard = p.add_argument_group("shard settings (as `avssl shards`; default: the adapter's)")
    shard.add_argument("--shard-size", type=int, default=None)
    shard.add_argument("--short-side", type=int, default=None)
    shard.add_argument("--fps", type=float, default=None)
    shard.add_argument("--sample-rate", type=int, default=None)
    shard.add_argument("--gop-seconds", type=float, default=None)
    shard.add_argument("--missing-audio", choices=("skip", "silence"), default=None)
    shard.add_argument("--audio-format", choices=AUDIO_FORMATS, default=None)
    shard.add_argument("--min-seconds", type=float, default=None)


def run_prepare(args: argparse.Namespace) -> int:
    """Run one adapter; 0 when something was packed, 1 when nothing was, 2 on bad input."""
    from avssl.data.sources.common import PrepareError, default_settings

    benchmark = BENCHMARKS[args.benchmark]
    function = benchmark.function()
    accepted = inspect.signature(function).parameters
    options = {name: getattr(args, name) for name in ADAPTER_OPTIONS if getattr(args, name) is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        print(f"avssl prepare: {flags} does not apply to {benchmark.name}", file=sys.stderr)
        return 2
    try:
        if "classes" in options:
            from avssl.data.sources.common import read_lines, require_file

            options["classes"] = read_lines(require_file(options["classes"], "--classes"))
        given = {name: getattr(args, name) for name in SHARD_FLAGS if getattr(args, name) is not None}
        settings = dataclasses.replace(default_settings(None, benchmark.name), **given)
        report = function(args.root, args.out, settings=settings, workers=args.workers, **options)
    except (PrepareError, ValueError) as error:
        print(f"avssl prepare {benchmark.name}: {error}", file=sys.stderr)
        return 2
    return 0 if report.num_packed > 0 else 1
