"""The sound-source localisation test sets: VGG-SS and Flickr-SoundNet → shards whose
samples carry their boxes in a ``boxes.json`` sidecar (split ``test``).

``<key>.boxes.json``::

    {"boxes": [[x0, y0, x1, y1], …],   fractions of the frame's width and height, origin at
                                       the top-left corner, 0 <= x0 < x1 <= 1 (resolution-free:
                                       the shard writer rescales the video)
     "time": 5.0 | null,               seconds into the clip of the annotated frame; null when
                                       the clip is one still image (every frame is the annotated
                                       one) or the release does not say (Flickr-SoundNet videos)
     "map": "union" | "consensus",     how the boxes make the ground-truth map (avssl localize):
                                       union = 1 inside any box (VGG-SS); consensus = min(1,
                                       boxes covering the pixel / 2) (Flickr-SoundNet's annotators)
     "source": "<annotation file>"}

Both sets are distributed for testing as a frame + audio pair per clip (``frames/<id>.jpg``,
``audio/<id>.wav``): such a pair is packed as a still video (the frame repeated over the
audio). A full video named ``<id>.<ext>`` anywhere under ``root`` is used instead when present.
"""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    MediaIndex,
    PrepareError,
    PrepareReport,
    Sample,
    default_settings,
    first_existing,
    read_lines,
    write_benchmark,
)
from avssl.data.sources.youtube import clip_stems

VGGSS_JSON = ("vggss.json", "metadata/vggss.json")
VGGSS_FRAME_SECONDS = 5.0  # the annotated frame: the middle of the 10-s clip (125th frame at 25 fps)
FLICKR_ANNOTATIONS = ("Annotations", "test/Annotations", "anno")
FLICKR_TEST_LISTS = ("flickr_test.csv", "metadata/flickr_test.csv", "test_list.txt")
FLICKR_BOX_SPACE = 256.0  # the annotations' pixel space (the SoundNet frames are 256x256)


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def normalised_box(box: list[float], width: float = 1.0, height: float = 1.0) -> list[float]:
    """[x0, y0, x1, y1] divided by the frame size and clipped to [0, 1], corners ordered."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 numbers [x0, y0, x1, y1], got {box}")
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((_clip01(x0 / width), _clip01(x1 / width)))
    y0, y1 = sorted((_clip01(y0 / height), _clip01(y1 / height)))
    return [round(x0, 6), round(y0, 6), round(x1, 6), round(y1, 6)]


def _media_or_still(index: MediaIndex, stems: list[str]) -> tuple[Path | None, Path | None]:
    """(media, image): a video if there is one, else an audio file with its still frame."""
    for stem in stems:
        if (video := index.video(stem)) is not None:
            return video, None
    for stem in stems:
        audio, image = index.audio(stem), index.image(stem)
        if audio is not None and image is not None:
            return audio, image
    return None, None


# --------------------------------------------------------------------------- VGG-SS


def read_vggss(path: Path) -> list[dict]:
    """``vggss.json``: a list of ``{"file": "<ytid>_<start:06d>", "class": name,
    "bbox": [[x0, y0, x1, y1], …]}`` with coordinates already normalised to [0, 1]."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "file" in e and "bbox" in e for e in entries):
        raise ValueError(f"{path}: expected a list of {{'file', 'class', 'bbox'}} objects")
    return entries


def prepare_vggss(
    root: Path, out_dir: Path, *, settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """VGG-SS: ``vggss.json`` (the LVS release's metadata) and, per ``file``, the VGG-Sound
    clip or the test release's ``frames/<file>.jpg`` + ``audio/<file>.wav``. Labels index
    the sorted class names of the json (the VGG-Sound names)."""
    root = Path(root)
    path = first_existing(root, VGGSS_JSON, "VGG-SS annotations")
    entries = read_vggss(path)
    classes = sorted({str(e.get("class", "")) for e in entries if e.get("class")})
    number = {name: k for k, name in enumerate(classes)}
    index = MediaIndex(root, exclude=[out_dir])
    listed_in = path.relative_to(root).as_posix()
    samples = []
    for entry in entries:
        file_id = str(entry["file"])
        ytid, _, start = file_id.rpartition("_")
        stems = [file_id] + (clip_stems(ytid, int(start), int(start) + 10) if start.isdigit() and ytid else [])
        media, image = _media_or_still(index, list(dict.fromkeys(stems)))
        boxes = [normalised_box(box) for box in entry["bbox"]]
        samples.append(Sample(
            id=file_id, split="test", label=number.get(str(entry.get("class")), -1), media=media, image=image,
            expected=f"{file_id}.<video> or frames/{file_id}.jpg + audio/{file_id}.wav", listed_in=listed_in,
            annotation={"benchmark": "vggss", "class": entry.get("class")},
            sidecars={"boxes.json": {"boxes": boxes, "time": None if image is not None else VGGSS_FRAME_SECONDS,
                                     "map": "union", "source": listed_in}},
        ))
    return write_benchmark("vggss", samples, root, out_dir, classes, default_settings(settings, "vggss"), workers, {})


# --------------------------------------------------------------------------- Flickr-SoundNet


def read_flickr_boxes(path: Path, box_space: float = FLICKR_BOX_SPACE) -> list[list[float]]:
    """The boxes of one annotation xml, normalised. Each ``<bbox>`` element is one box:
    its ``xmin``/``ymin``/``xmax``/``ymax`` children, or (unnamed) the four values after
    its first child, as the LVS test code reads them; pixels of a ``box_space``-sided
    image unless the xml gives a ``<size>``."""
    tree = ElementTree.parse(path).getroot()
    width = height = box_space
    size = tree.find(".//size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width, height = float(size.findtext("width")), float(size.findtext("height"))
    boxes = []
    for element in tree.iter("bbox"):
        named = {child.tag.lower(): child.text for child in element}
        if all(k in named for k in ("xmin", "ymin", "xmax", "ymax")):
            values = [named[k] for k in ("xmin", "ymin", "xmax", "ymax")]
        else:
            values = [child.text for child in element][1:5]
        try:
            box = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: a <bbox> does not hold 4 numbers: {values}") from None
        boxes.append(normalised_box(box, width, height))
    if not boxes:
        raise ValueError(f"{path}: no <bbox> element")
    return boxes


def _flickr_test_ids(root: Path) -> tuple[list[str] | None, str | None]:
    for name in FLICKR_TEST_LISTS:
        path = root / name
        if path.is_file():
            if path.suffix == ".csv":
                with path.open(newline="") as handle:
                    ids = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
            else:
                ids = read_lines(path)
            return [Path(i).stem if Path(i).suffix.lower() in (".png", ".jpg", ".mp4", ".wav") else i
                    for i in ids], name
    return None, None


def prepare_flickr_soundnet(
    root: Path, out_dir: Path, *, settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """Flickr-SoundNet (Senocak et al.'s annotated pairs): ``Annotations/<id>.xml`` and per
    id a video ``<id>.<ext>`` or ``frames/<id>.jpg`` + ``audio/<id>.wav``. With a test list
    (``flickr_test.csv`` or ``test_list.txt``) only its ids are packed, else every annotated
    id. No class labels (``label`` −1)."""
    root = Path(root)
    folder = next((root / p for p in FLICKR_ANNOTATIONS if (root / p).is_dir()), None)
    if folder is None:
        raise PrepareError(f"Flickr-SoundNet annotations: expected the folder {root / FLICKR_ANNOTATIONS[0]}/<id>.xml")
    xmls = {p.stem: p for p in sorted(folder.glob("*.xml"))}
    ids, list_name = _flickr_test_ids(root)
    if ids is None:
        ids, list_name = sorted(xmls), f"{folder.relative_to(root).as_posix()}/*.xml"
    unannotated = [i for i in ids if i not in xmls]
    if unannotated:
        raise PrepareError(f"Flickr-SoundNet: {len(unannotated)} ids of {list_name} have no annotation, "
                           f"e.g. expected the file {folder / (unannotated[0] + '.xml')}")
    index = MediaIndex(root, exclude=[out_dir])
    samples = []
    for flickr_id in ids:
        media, image = _media_or_still(index, [flickr_id])
        source = xmls[flickr_id].relative_to(root).as_posix()
        samples.append(Sample(
            id=flickr_id, split="test", label=-1, media=media, image=image,
            expected=f"{flickr_id}.<video> or frames/{flickr_id}.jpg + audio/{flickr_id}.wav", listed_in=list_name,
            annotation={"benchmark": "flickr-soundnet"},
            sidecars={"boxes.json": {"boxes": read_flickr_boxes(xmls[flickr_id]),
                                     "time": None, "map": "consensus",
                                     "source": source}},
        ))
    settings = default_settings(settings, "flickr-soundnet")
    return write_benchmark("flickr-soundnet", samples, root, out_dir, None, settings, workers, {})
