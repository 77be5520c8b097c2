"""AVE (Audio-Visual Event localisation): ``Annotations.txt`` + the split lists →
shards whose samples carry per-second event labels in an ``events.json`` sidecar.

``Annotations.txt`` has a header ``Category&VideoID&Quality&StartTime&EndTime`` and one
``&``-separated line per event (a video may have several); ``trainSet.txt``,
``valSet.txt`` and ``testSet.txt`` list the videos of each split in the same format.
Videos are ``AVE/<VideoID>.mp4`` (found anywhere under ``root``).

``<key>.events.json``::

    {"segment_seconds": 1.0,
     "segments": [28, 28, 3, 3, …],      one label per 1-s segment of the 10-s video: the
                                         event's class index, or ``background`` when no event
     "background": 28,                   = the number of classes (the 29-way task's last class)
     "events": [{"label": 3, "category": "Bark", "start": 2, "end": 10, "quality": "good"}]}

The sample's ``label`` is the class of its (first) event.
"""
from __future__ import annotations

from pathlib import Path

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    MediaIndex,
    PrepareReport,
    Sample,
    default_settings,
    read_lines,
    require_file,
    write_benchmark,
)

NUM_SEGMENTS = 10
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
# The 28 categories in the order of the class indices used by the AVE code and its
# follow-ups (the order of Annotations.txt). Any other name is refused: numbering the
# classes some other way would silently change every label (and the background's).
AVE_CATEGORIES = (
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry",
    "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
)


def read_ave_lines(path: Path) -> list[tuple[str, str, str, int, int]]:
    """(category, video id, quality, start, end) of each line; the header is skipped."""
    rows = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = [f.strip() for f in line.split("&")]
        if len(fields) != 5:
            raise ValueError(f"{path} line {number}: expected Category&VideoID&Quality&StartTime&EndTime, got {line!r}")
        if fields[1] == "VideoID":
            continue
        category, video_id, quality, start, end = fields
        rows.append((category, video_id, quality, int(float(start)), int(float(end))))
    return rows


def check_categories(rows: list[tuple[str, str, str, int, int]], path: Path) -> None:
    """A ValueError naming each category of ``rows`` that is not one of AVE's 28 (with the
    closest name, when one is close), and the accepted names."""
    import difflib

    unknown = sorted({category for category, *_ in rows} - set(AVE_CATEGORIES))
    if not unknown:
        return
    named = []
    for category in unknown:
        close = difflib.get_close_matches(category, AVE_CATEGORIES, n=1)
        named.append(f"{category!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{path}: {'categories' if len(unknown) > 1 else 'category'} {', '.join(named)} "
                     f"not among AVE's 28: {'; '.join(AVE_CATEGORIES)}")


def event_segments(events: list[tuple[int, int, int]], background: int) -> list[int]:
    """Per-second labels of a 10-s video from (label, start, end) events: segment s is
    in an event when start <= s < end; a later event wins where two overlap."""
    segments = [background] * NUM_SEGMENTS
    for label, start, end in events:
        for s in range(max(0, start), min(NUM_SEGMENTS, end)):
            segments[s] = label
    return segments


def prepare_ave(
    root: Path, out_dir: Path, *, settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """AVE as released (``AVE_Dataset.zip`` unpacked; ``root`` is the folder holding
    ``Annotations.txt``): splits ``train``, ``val``, ``test`` from the set files."""
    root = Path(root)
    if not (root / "Annotations.txt").is_file() and (root / "AVE_Dataset" / "Annotations.txt").is_file():
        root = root / "AVE_Dataset"
    annotations = read_ave_lines(require_file(root / "Annotations.txt", "AVE annotations"))
    check_categories(annotations, root / "Annotations.txt")
    classes = list(AVE_CATEGORIES)
    number = {name: k for k, name in enumerate(classes)}
    events: dict[str, list[tuple[str, str, int, int]]] = {}
    for category, video_id, quality, start, end in annotations:
        events.setdefault(video_id, []).append((category, quality, start, end))
    split_of: dict[str, tuple[str, str]] = {}
    for split, name in SPLIT_FILES.items():
        for _, video_id, *_ in read_ave_lines(require_file(root / name, f"AVE {split} list")):
            split_of.setdefault(video_id, (split, name))
    index = MediaIndex(root, exclude=[out_dir])
    background = len(classes)
    samples = []
    for video_id, (split, listed_in) in split_of.items():
        if video_id not in events:
            raise ValueError(f"AVE: {video_id} of {listed_in} is not in Annotations.txt")
        video_events = [(number[c], s, e) for c, _, s, e in events[video_id]]
        samples.append(Sample(
            id=video_id, split=split, label=video_events[0][0], media=index.media([video_id]),
            expected=f"AVE/{video_id}.mp4", listed_in=listed_in,
            annotation={"benchmark": "ave", "youtube_id": video_id, "category": events[video_id][0][0]},
            sidecars={"events.json": {
                "segment_seconds": 1.0,
                "segments": event_segments(video_events, background),
                "background": background,
                "events": [{"label": number[c], "category": c, "start": s, "end": e, "quality": q}
                           for c, q, s, e in events[video_id]],
            }},
        ))
    return write_benchmark("ave", samples, root, out_dir, classes, default_settings(settings, "ave"), workers, {})
