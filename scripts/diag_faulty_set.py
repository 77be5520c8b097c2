"""Check a faulty-soundtrack set (``avssl synth --faulty-soundtrack-fraction F`` then ``avssl shards``)
against the shards of the same set without the option.

What it checks: every receiver named in ``summary.json`` carries its donor's soundtrack (its
PCM bytes equal the donor's in the clean shards) and its ``.gt.json`` names the donor; the donor
is a training clip of another category; every other clip (the clean training clips, all of
val and test) is byte for byte the clean set's (PCM and video); labels are unchanged.

    python scripts/diag_faulty_set.py --clean /work/data/demo_shards --noisy runs/noisy/shards \
        --summary runs/noisy/synth/summary.json
"""
from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any


def load(folder: str) -> dict[str, dict[str, Any]]:
    """Per clip: sha1 of its pcm and mp4, its json and gt.json, its split (from the shard name)."""
    out: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    for path in sorted(glob.glob(f"{folder}/*.tar")):
        split = Path(path).name.split("-")[0]
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if ext in ("pcm", "mp4"):
                    out[key][ext] = hashlib.sha1(data).hexdigest()
                elif ext in ("json", "gt.json"):
                    out[key][ext] = json.loads(data)
                out[key]["split"] = split
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", required=True, help="shards of the set without the option")
    parser.add_argument("--noisy", required=True, help="shards of the faulty-soundtrack set")
    parser.add_argument("--summary", required=True, help="the faulty set's summary.json (from avssl synth)")
    args = parser.parse_args()
    clean, noisy = load(args.clean), load(args.noisy)
    donors = json.loads(Path(args.summary).read_text())["faulty_soundtracks"]["soundtrack_from"]
    count: collections.Counter[str] = collections.Counter()
    for key, clip in noisy.items():
        count["label unchanged"] += clip["json"]["label"] == clean[key]["json"]["label"]
        count["video unchanged"] += clip["mp4"] == clean[key]["mp4"]
        if key in donors:
            donor = donors[key]
            count["receiver: gt names its donor"] += clip["gt.json"].get("soundtrack_from") == donor
            count["receiver: pcm is the donor's"] += clip["pcm"] == clean[donor]["pcm"]
            count["receiver: donor of another category"] += (clean[donor]["json"]["label"]
                                                           != clean[key]["json"]["label"])
            count["receiver and donor in train"] += clip["split"] == "train" and noisy[donor]["split"] == "train"
        else:
            count["other clips: pcm unchanged"] += clip["pcm"] == clean[key]["pcm"]
            count["other clips: no soundtrack_from"] += "soundtrack_from" not in clip["gt.json"]
    train = sum(clip["split"] == "train" for clip in noisy.values())
    print(f"{len(noisy)} clips ({train} train), {len(donors)} receivers ({len(donors) / train:.1%} of train), "
          f"{len(noisy) - len(donors)} others")
    for name, value in count.items():
        print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
