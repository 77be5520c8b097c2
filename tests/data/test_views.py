"""model.json's ``inputs`` block read back as the data package's views: the one reading,
shared by load_pretrained and the evaluation verbs."""
from __future__ import annotations

from dataclasses import asdict

from avssl.data.datamodule import DataConfig
from avssl.data.views import AudioView, MelSettings, VideoView, input_views


def test_input_views_keep_every_window_setting_the_export_names() -> None:
    inputs = {"video": {"num_frames": 4, "fps": 8.0, "size": 32, "layout": "B×3×T×H×W"},
              "audio": {"seconds": 0.5, "representation": "waveform", "mel": asdict(MelSettings(n_mels=32))}}
    views = input_views(inputs)
    assert views == (VideoView(num_frames=4, fps=8.0, size=32), AudioView(seconds=0.5, representation="waveform"),
                     MelSettings(n_mels=32))
    data = views.applied_to(DataConfig(shards="s", batch_size=3))
    assert (data.video, data.audio, data.mel) == tuple(views)
    assert (data.shards, data.batch_size) == ("s", 3)


def test_what_the_export_does_not_name_stays_the_recipes() -> None:
    recipe = DataConfig(video=VideoView(num_frames=8), mel=MelSettings(n_mels=40))
    data = input_views({"video": None, "audio": {"seconds": 2.0}}).applied_to(recipe)
    assert data.video == VideoView(num_frames=8) and data.mel == MelSettings(n_mels=40)
    assert data.audio == AudioView(seconds=2.0, representation="logmel")
