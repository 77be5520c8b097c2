"""The arguments and the run of ``avssl prepare`` (avssl/cli.py adds the verb).

Shard flags left out take the adapter's defaults (the shard writer's, with clips down to
0.5 s kept and, for the action sets and Kinetics-400, silent tracks for clips without audio).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
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


class InapplicableOptions(ValueError):
    """Adapter flags given for a benchmark that takes none of them (the message names them)."""


def run_prepare(args: argparse.Namespace):  # -> avssl.data.sources.common.PrepareReport (imported inside)
    """Run one adapter and return its report. Raises :class:`InapplicableOptions`, and the
    adapter's PrepareError or ValueError on bad input (avssl/cli.py turns them into exit 2)."""
    from avssl.data.sources.common import default_settings

    benchmark = BENCHMARKS[args.benchmark]
    function = benchmark.function()
    accepted = inspect.signature(function).parameters
    options = {name: getattr(args, name) for name in ADAPTER_OPTIONS if getattr(args, name) is not None}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise InapplicableOptions(f"{flags} does not apply to {benchmark.name}")
    if "classes" in options:
        from avssl.data.sources.common import read_lines, require_file

        options["classes"] = read_lines(require_file(options["classes"], "--classes"))
    given = {name: getattr(args, name) for name in SHARD_FLAGS if getattr(args, name) is not None}
    settings = dataclasses.replace(default_settings(None, benchmark.name), **given)
    return function(args.root, args.out, settings=settings, workers=args.workers, **options)
