"""VGG-SS and Flickr-SoundNet: boxes into ``boxes.json`` sidecars, frame + audio pairs
packed as still videos, listed-but-missing clips reported."""
from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
from prepare_fixtures import SMALL, image, read_out, skipped_files, video, wav

from avssl.data.sources.common import PrepareError
from avssl.data.sources.localization import (
    normalised_box,
    prepare_flickr_soundnet,
    prepare_vggss,
    read_flickr_boxes,
)


def first_frame_rgb(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_vggss_boxes_video_and_still_pairs(tmp_path):
    root = tmp_path / "vggss"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "vggss.json").write_text(json.dumps([
        {"file": "-0ZkeYCNtcE_000040", "class": "playing drums",
         "bbox": [[0.1, 0.2, 0.5, 0.9], [0.6, 0.1, 1.2, 0.4]]},  # the second box leaves the frame
        {"file": "0_1vD1j2fWs_000003", "class": "singing", "bbox": [[0.25, 0.25, 0.75, 0.75]]},
        {"file": "zzzzzzzzzzz_000010", "class": "singing", "bbox": [[0.0, 0.0, 1.0, 1.0]]},  # not downloaded
    ]))
    video(root / "videos" / "-0ZkeYCNtcE_000040.mp4")
    image(root / "frames" / "0_1vD1j2fWs_000003.jpg", rgb=(30, 200, 60))
    wav(root / "audio" / "0_1vD1j2fWs_000003.wav")
    report = prepare_vggss(root, tmp_path / "out", settings=SMALL)

    manifest, samples = read_out(tmp_path / "out")
    assert manifest["classes"] == ["playing drums", "singing"] and list(manifest["splits"]) == ["test"]
    drums = samples["-0ZkeYCNtcE_000040"]
    assert drums["json"]["label"] == 0 and "boxes.json" in drums["json"]["extras"]
    assert drums["boxes.json"] == {"boxes": [[0.1, 0.2, 0.5, 0.9], [0.6, 0.1, 1.0, 0.4]], "time": 5.0,
                                   "map": "union", "source": "metadata/vggss.json"}
    still = samples["0_1vD1j2fWs_000003"]
    assert still["boxes.json"]["time"] is None and still["annotation.json"]["video"] == "still"
    assert still["annotation.json"]["image_file"] == "frames/0_1vD1j2fWs_000003.jpg"
    assert np.abs(first_frame_rgb(still["mp4"]).astype(int).mean((0, 1)) - (30, 200, 60)).max() < 15
    assert still["json"]["audio_samples"] == 6400
    assert [m["file"] for m in report.missing] == [
        "zzzzzzzzzzz_000010.<video> or frames/zzzzzzzzzzz_000010.jpg + audio/zzzzzzzzzzz_000010.wav"]


NAMED_XML = """<?xml version="1.0"?>
<annotation><file>10000130166.jpg</file>
  <object><bbox><annotator>1</annotator><xmin>32</xmin><ymin>64</ymin><xmax>128</xmax><ymax>192</ymax></bbox></object>
  <object><bbox><annotator>2</annotator><xmin>40</xmin><ymin>60</ymin><xmax>140</xmax><ymax>200</ymax></bbox></object>
</annotation>"""
POSITIONAL_XML = """<annotation><object>
  <bbox><name>0</name><v>0</v><v>128</v><v>256</v><v>256</v></bbox>
</object></annotation>"""


def test_flickr_soundnet_test_list_consensus_boxes_and_missing_media(tmp_path):
    root = tmp_path / "Flickr-SoundNet"
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "10000130166.xml").write_text(NAMED_XML)
    (root / "Annotations" / "10007936344.xml").write_text(POSITIONAL_XML)
    (root / "Annotations" / "10009662863.xml").write_text(POSITIONAL_XML)
    (root / "Annotations" / "2432219254.xml").write_text(POSITIONAL_XML)  # annotated, not a test pair
    (root / "flickr_test.csv").write_text("10000130166\n10007936344\n10009662863\n")
    image(root / "frames" / "10000130166.jpg", size=(32, 32))
    wav(root / "audio" / "10000130166.wav")
    video(root / "videos" / "10007936344.mp4")
    report = prepare_flickr_soundnet(root, tmp_path / "out", settings=SMALL)

    manifest, samples = read_out(tmp_path / "out")
    assert sorted(samples) == ["10000130166", "10007936344"] and manifest["classes"] is None
    pair = samples["10000130166"]
    assert pair["boxes.json"]["boxes"] == [[0.125, 0.25, 0.5, 0.75], [0.15625, 0.234375, 0.546875, 0.78125]]
    assert pair["boxes.json"]["map"] == "consensus" and pair["json"]["label"] == -1
    assert samples["10007936344"]["boxes.json"]["boxes"] == [[0.0, 0.5, 1.0, 1.0]]
    assert samples["10007936344"]["annotation.json"]["video"] == "original"
    assert list(skipped_files(manifest)) == [
        "10009662863.<video> or frames/10009662863.jpg + audio/10009662863.wav"]
    assert report.missing[0]["reason"].startswith("missing: listed in flickr_test.csv")

    (root / "flickr_test.csv").write_text("10000130166\n99999999999\n")
    with pytest.raises(PrepareError, match="99999999999.xml"):
        prepare_flickr_soundnet(root, tmp_path / "x", settings=SMALL)


def test_box_parsing_edge_cases(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><size><width>512</width><height>256</height></size>"
                   "<object><bbox><xmin>512</xmin><ymin>0</ymin><xmax>256</xmax><ymax>128</ymax></bbox></object>"
                   "</annotation>")
    assert read_flickr_boxes(xml) == [[0.5, 0.0, 1.0, 0.5]]  # the xml's size; corners reordered
    xml.write_text("<annotation><object><bbox><xmin>1</xmin><ymin>x</ymin></bbox></object></annotation>")
    with pytest.raises(ValueError, match="4 numbers"):
        read_flickr_boxes(xml)
    assert normalised_box([-5, 10, 20, 300], 100, 200) == [0.0, 0.05, 0.2, 1.0]
