"""MUSIC (Sound of Pixels): the solo/duet json lists → shards for mix-and-separate.

``MUSIC_solo_videos.json`` (or ``MUSIC21_solo_videos.json``) and
``MUSIC_duet_videos.json`` are ``{"videos": {"<instrument>" or "<a> <b>": [ytid, …]}}``.
Videos are found as ``<ytid>.<ext>`` anywhere under ``root`` (the download scripts write
``solo/<instrument>/<ytid>.mp4``). The release has no split: solos are split by a hash
of the YouTube id into ``train``/``val``/``test`` (``val_fraction``/``test_fraction``);
duets go to the split ``duet`` (real mixtures, no clean stems). ``annotation.json`` holds
the sounding sources: ``kind`` (solo|duet), ``instruments`` and their class indices
``labels``; ``label`` is the instrument of a solo, −1 for a duet.
"""
from __future__ import annotations

import json
from pathlib import Path

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    MediaIndex,
    PrepareReport,
    Sample,
    default_settings,
    hashed_split,
    require_file,
    write_benchmark,
)

SOLO_LISTS = {"music": "MUSIC_solo_videos.json", "music21": "MUSIC21_solo_videos.json"}
DUET_LIST = "MUSIC_duet_videos.json"


def read_music_list(path: Path) -> dict[str, list[str]]:
    """``{"videos": {name: [ytid, …]}}`` → that mapping (names: one instrument, or two
    separated by a space for duets)."""
    data = json.loads(Path(path).read_text())
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict) or not all(isinstance(v, list) for v in videos.values()):
        raise ValueError(f"{path}: expected {{\"videos\": {{instrument: [youtube ids]}}}}")
    return {str(name): [str(v) for v in ids] for name, ids in videos.items()}


def prepare_music(
    root: Path, out_dir: Path, *, subset: str = "music", val_fraction: float = 0.1, test_fraction: float = 0.1,
    seed: int = 0, settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """MUSIC: the solo list of ``subset`` (``music``: 11 instruments, ``music21``: 21) and,
    when present, the duet list. Labels index the sorted instrument names."""
    if subset not in SOLO_LISTS:
        raise ValueError(f"MUSIC subset must be one of {sorted(SOLO_LISTS)}, got {subset!r}")
    root = Path(root)
    solos = read_music_list(require_file(root / SOLO_LISTS[subset], "MUSIC solo list"))
    duets = read_music_list(root / DUET_LIST) if (root / DUET_LIST).is_file() else {}
    instruments = sorted(solos)
    instruments += sorted({i for pair in duets for i in pair.split()} - set(instruments))
    number = {name: k for k, name in enumerate(instruments)}
    index = MediaIndex(root, exclude=[out_dir])
    samples = []
    for kind, lists, listed_in in (("solo", solos, SOLO_LISTS[subset]), ("duet", duets, DUET_LIST)):
        for name, ytids in lists.items():
            players = name.split()
            labels = [number[p] for p in players]
            for ytid in ytids:
                split = "duet" if kind == "duet" else hashed_split(ytid, seed, val_fraction, test_fraction)
                samples.append(Sample(
                    id=ytid, split=split, label=labels[0] if kind == "solo" else -1,
                    media=index.media([ytid]), expected=f"{ytid}.*", listed_in=listed_in,
                    annotation={"benchmark": "music", "kind": kind, "instruments": players,
                                "labels": labels, "youtube_id": ytid},
                ))
    options = {"subset": subset, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    settings = default_settings(settings, "music")
    return write_benchmark("music", samples, root, out_dir, instruments, settings, workers, options)
