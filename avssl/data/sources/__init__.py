"""Benchmark layout adapters: a public benchmark's release, as downloaded and unpacked →
the inputs of the shard writer (labels csv, sidecar ground truth) → avssl shards.

``avssl prepare <benchmark> --root DIR --out DIR`` runs one (docs/benchmarks-data.md).
Light to import: the adapters' modules load when a benchmark is asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Benchmark:
    """One adapter: where its function lives and what it packs by default."""

    name: str
    target: str  # "module:function" under avssl.data.sources
    missing_audio: str  # the adapter's default for videos without an audio track
    summary: str

    def function(self) -> Callable:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f"avssl.data.sources.{module}"), name)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("ucf101", "actions:prepare_ucf101", "silence", "UCF101, one official split fold (--fold 1|2|3)"),
    Benchmark("hmdb51", "actions:prepare_hmdb51", "silence", "HMDB51, one official split fold (--fold 1|2|3)"),
    Benchmark("esc50", "esc50:prepare_esc50", "skip", "ESC-50, test fold --fold 1..5 (audio only: black video)"),
    Benchmark("kinetics400", "youtube:prepare_kinetics400", "silence", "Kinetics-400 csvs + downloaded clips"),
    Benchmark("kinetics-sounds", "youtube:prepare_kinetics_sounds", "skip",
              "Kinetics-Sounds: Kinetics-400 restricted to a class list (--classes FILE)"),
    Benchmark("vggsound", "youtube:prepare_vggsound", "skip", "VGG-Sound csv + downloaded clips"),
    Benchmark("audioset", "youtube:prepare_audioset", "skip",
              "AudioSet segment csvs, multi-label (--subset balanced|unbalanced|full)"),
    Benchmark("vggss", "localization:prepare_vggss", "skip", "VGG-SS boxes (test)"),
    Benchmark("flickr-soundnet", "localization:prepare_flickr_soundnet", "skip", "Flickr-SoundNet boxes (test)"),
    Benchmark("music", "music:prepare_music", "skip", "MUSIC solo/duet lists (--subset music|music21)"),
    Benchmark("ave", "ave:prepare_ave", "skip", "AVE events, per-second labels"),
)}
