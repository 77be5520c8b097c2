"""Ground truth placed on decoded clips: boxes in the output frame, stems of the window,
the event heard in the window."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.data.datamodule import ShardList, ShardStream
from avssl.data.encode import write_media
from avssl.data.sampling import ViewSampler
from avssl.data.shards import ShardSettings, write_shards
from avssl.data.synth import SynthConfig, write_dataset
from avssl.data.targets import BACKGROUND, read_stems, window_event
from avssl.data.transforms import CropBox, VideoTransform
from avssl.data.views import AUDIO, VIDEO, AudioView, VideoView, ViewSpec


def test_crop_box_maps_boxes_by_hand() -> None:
    crop = CropBox(top=10, left=20, height=40, width=80, size=40)  # x scale 0.5, y scale 1
    boxes = np.array([[30.0, 20.0, 50.0, 30.0], [0.0, 0.0, 10.0, 5.0]])
    out = crop.map_boxes(boxes)
    np.testing.assert_allclose(out[0], [5, 10, 15, 20])
    assert np.isnan(out[1]).all(), "a box outside the crop is NaN"
    flipped = CropBox(top=10, left=20, height=40, width=80, size=40, flipped=True).map_boxes(boxes[:1])
    np.testing.assert_allclose(flipped[0], [25, 10, 35, 20])


def test_video_transform_reports_the_crop_it_used() -> None:
    frames = torch.zeros(2, 40, 60, 3, dtype=torch.uint8)
    frames[:, 10:20, 30:45] = 255  # a white rectangle
    for train in (False, True):
        torch.manual_seed(1)
        video, crop = VideoTransform(32, train=train).apply(frames)
        x0, y0, x1, y1 = crop.map_boxes(np.array([[30.0, 10.0, 45.0, 20.0]]))[0]
        inside = video[:, 0, int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
        assert inside.numel() > 0 and inside.float().mean() > 200, "the mapped box holds the white rectangle"


def test_window_event_picks_the_source_with_most_onsets() -> None:
    gt = {"objects": [
        {"category": "a", "sounding": True, "stem_channel": 0, "onsets": [0.1, 1.2, 1.5]},
        {"category": "b", "sounding": True, "stem_channel": 1, "onsets": [1.1, 1.3, 1.6, 1.8]},
        {"category": "c", "sounding": False, "stem_channel": -1, "onsets": [0.2, 0.3, 0.4]},
    ]}
    categories = ["a", "b", "c"]
    assert window_event(gt, 0.0, 1.0, categories) == 0  # the silent distractor does not count
    assert window_event(gt, 1.0, 1.0, categories) == 1
    assert window_event(gt, 2.0, 1.0, categories) == BACKGROUND


def test_read_stems_keeps_channels_and_places_the_window(tmp_path: Path) -> None:
    rate = 8000
    t = np.arange(2 * rate) / rate
    stems = np.stack([np.sin(2 * np.pi * 200 * t), 0.5 * np.sin(2 * np.pi * 300 * t)]).astype(np.float32)
    data = write_media(None, None, 25.0, stems, rate, video_codec=None, audio_codec="flac", container_format="flac")
    out = read_stems(data, 0.5, 1.0, rate)
    assert out.shape == (2, rate)
    np.testing.assert_allclose(out, stems[:, rate // 2: rate // 2 + rate], atol=1e-4)
    past = read_stems(data, 1.5, 1.0, rate)
    assert np.abs(past[:, rate // 2:]).max() == 0, "zeros past the end"


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("targets")
    cfg = SynthConfig(seconds=2.0, size=48, p_second_sounding=0.5)
    write_dataset(root / "synth", 8, cfg, split_fractions=(1.0, 0.0, 0.0), progress=False)
    write_shards(root / "synth" / "videos", root / "shards", labels_csv=root / "synth" / "labels.csv",
                 settings=ShardSettings(short_side=48, val_fraction=0.0), workers=1)
    return root


def test_stream_yields_boxes_stems_and_events_of_each_clip(synth_shards: Path) -> None:
    spec = ViewSpec(video=VideoView(num_frames=1, size=32),
                    audio={AUDIO: AudioView(seconds=1.0, representation="waveform")}, clips_per_video=2,
                    targets=("boxes", "stems", "event"))
    stream = ShardStream(ShardList.from_manifest(synth_shards / "shards", "train"), ViewSampler(spec, train=False),
                         batch_size=16, shuffle=False, pad=False)
    batch = next(iter(stream))
    assert batch["boxes"].shape == (16, 4, 4) and batch["stems"].shape == (16, 2, 16000)
    assert set(batch["num_stems"].tolist()) <= {1, 2} and 2 in batch["num_stems"].tolist()
    for i in range(16):
        gt = json.loads((synth_shards / "synth" / "videos" / f"synth_{int(batch['index'][i]):06d}.gt.json").read_text())
        sounding = [o for o in gt["objects"] if o["sounding"]]
        assert int(batch["num_stems"][i]) == len(sounding)
        # the main object's box holds brighter-than-average or differently coloured pixels
        x0, y0, x1, y1 = batch["boxes"][i, 0].tolist()
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        assert torch.isnan(batch["boxes"][i, len(sounding):]).all()
        # the stems are the sources of the clip's audio, in time with it (background noise and
        # off-screen notes are the rest): they explain most of it, best at lag 0
        mix, stems = batch[AUDIO][i, 0], batch["stems"][i].sum(0)
        lags = range(-40, 41)
        corr = [float(torch.corrcoef(torch.stack([mix[100 + k:-100 + k], stems[100:-100]]))[0, 1]) for k in lags]
        best = list(lags)[int(np.argmax(corr))]
        assert max(corr) > 0.7 and abs(best) <= 1, f"clip {i}: best lag {best} samples, corr {max(corr):.2f}"
        assert int(batch["event"][i]) in (gt["categories"].index(o["category"]) for o in sounding) or \
            int(batch["event"][i]) == BACKGROUND
    assert batch[VIDEO].dtype == torch.uint8


def test_missing_ground_truth_is_a_skipped_sample_with_a_reason(synth_shards: Path, tmp_path: Path) -> None:
    from avssl.data.decode import DecodeError
    from avssl.data.targets import SampleTruth, clip_targets

    with pytest.raises(DecodeError, match="neither boxes.json nor gt.json"):
        clip_targets(("boxes",), SampleTruth({}, {}), CropBox(0, 0, 10, 10, 10), (10, 10), 0.0, (0.0, 1.0))
    with pytest.raises(DecodeError, match="no stems.flac"):
        clip_targets(("stems",), SampleTruth({}, {}), None, (10, 10), 0.0, (0.0, 1.0))


def test_multi_label_indices_come_padded_from_annotation_json() -> None:
    from avssl.data.targets import MAX_LABELS, SampleTruth, clip_targets

    out = clip_targets(("labels",), SampleTruth({"annotation.json": json.dumps({"labels": [3, 0, 7]}).encode()}, {}),
                       None, (10, 10), 0.0, None)
    assert out["labels"].shape == (MAX_LABELS,)
    assert out["labels"][:3].tolist() == [3, 0, 7] and (out["labels"][3:] == -1).all()


def test_ave_segment_labels_from_events_json() -> None:
    from avssl.data.targets import segment_event

    events = {"segments": [28, 28, 3, 3, 3, 28], "background": 28}
    assert segment_event(events, 2.5) == 3 and segment_event(events, 0.2) == BACKGROUND
    assert segment_event(events, 99.0) == BACKGROUND and segment_event(events, 4.99) == 3
