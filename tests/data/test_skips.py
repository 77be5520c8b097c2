"""Lost samples are counted against the manifest, never silent (avssl/data/skips.py)."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from avssl.data.datamodule import AVDataModule, DataConfig, ShardList, ShardStream, make_loader
from avssl.data.errors import DataError
from avssl.data.sampling import ViewSampler
from avssl.data.views import AudioView, VideoView, ViewSpec
from tests.conftest import flash_click_clip, write_test_shards

SPEC = ViewSpec(video=VideoView(num_frames=2, fps=25.0, size=32), audio={"audio": AudioView(seconds=0.5)})


@pytest.fixture(scope="module")
def clip() -> bytes:
    return flash_click_clip(seconds=1.2, size=(32, 40))


def _stream(path: Path, limit: float = 0.5, **kw) -> ShardStream:
    return ShardStream(ShardList.from_manifest(path, "train"), ViewSampler(SPEC, train=False), batch_size=4,
                       shuffle=False, pad=kw.pop("pad", False), max_skip_fraction=limit, **kw)


def _member(shard: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(shard) as tar:
        return tar.getmember(name)


def _totals(batches: list[dict[str, torch.Tensor]]) -> tuple[int, int, list[int]]:
    return (sum(int(b["skipped"].sum()) for b in batches), sum(int(b["expected"].sum()) for b in batches),
            sorted(int(i) for b in batches for i in b["index"]))


def test_shards_missing_at_the_start_stop_before_anything_is_read(tmp_path: Path, clip: bytes) -> None:
    path = write_test_shards(tmp_path, [clip] * 16, per_shard=2)
    for shard in range(1, 8):
        (path / f"train-{shard:06d}.tar").unlink()
    message = (f"^7 of the 8 shards listed in the manifest are missing \\(14 of 16 samples\\): "
               f"{path}/train-000001.tar, {path}/train-000002.tar, {path}/train-000003.tar and 4 more; "
               f"rewrite the shards \\(`avssl shards`\\)$")
    with pytest.raises(DataError, match=message):
        _stream(path)
    module = AVDataModule(DataConfig(shards=str(path), num_workers=0, batch_size=4, video=SPEC.video,
                                     audio=SPEC.audio["audio"]), views=SPEC)
    with pytest.raises(DataError, match=message):
        module.train_dataloader()
    with pytest.raises(DataError, match=message):  # the memory cache is not built from what is left either
        module.decoded("train")


def test_a_shard_cut_short_counts_every_sample_it_lost(tmp_path: Path, clip: bytes) -> None:
    path = write_test_shards(tmp_path, [clip] * 20, per_shard=10)
    shard = path / "train-000001.tar"
    cut = _member(shard, "clip00016.mp4").offset_data + 100  # inside sample 16's video: 16..19 are lost
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.warns(UserWarning, match="train-000001.tar: samples 6 to 9 could not be read"):
        skipped, expected, delivered = _totals(list(make_loader(_stream(path), 0)))
    assert (skipped, expected) == (4, 20)
    assert delivered == list(range(16))


def test_a_damaged_tar_header_counts_the_rest_of_the_shard(tmp_path: Path, clip: bytes) -> None:
    path = write_test_shards(tmp_path, [clip] * 20, per_shard=10)
    shard = path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    header = _member(shard, "clip00003.mp4").offset
    data[header + 148 : header + 156] = b"garbage!"  # its checksum: tar reading ends there, silently
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="train-000000.tar: samples 3 to 9 could not be read"):
        skipped, expected, delivered = _totals(list(make_loader(_stream(path), 0)))
    assert (skipped, expected) == (7, 20)
    assert delivered == [0, 1, 2, *range(10, 20)]


def test_lost_samples_over_the_limit_stop_the_epoch(tmp_path: Path, clip: bytes) -> None:
    path = write_test_shards(tmp_path, [clip] * 20, per_shard=10)
    shard = path / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: _member(shard, "clip00016.mp4").offset_data + 100])
    message = ("^epoch 0: 4 of the 20 samples the manifest lists were lost \\(missing or damaged shards, undecodable "
               "media\\), over data.max_skip_fraction=0.1 \\(2 samples\\); repair or rewrite the shards "
               "\\(`avssl shards`\\), or raise the limit$")
    with pytest.warns(UserWarning, match="could not be read"), pytest.raises(DataError, match=message):
        list(make_loader(_stream(path, limit=0.1, pad=True), 0))


def test_the_limit_stops_only_once_it_is_certainly_exceeded(tmp_path: Path, clip: bytes) -> None:
    """2 of 20 at a 10% limit is not over it, even when both come first; 3 of 20 is, as
    soon as the third is lost."""
    garbage = [b"garbage"] * 2
    batches = list(make_loader(_stream(write_test_shards(tmp_path / "two", garbage + [clip] * 18, per_shard=20),
                                       limit=0.1), 0))
    assert _totals(batches)[:2] == (2, 20)
    three = write_test_shards(tmp_path / "three", [clip] * 5 + [b"garbage"] * 3 + [clip] * 12, per_shard=20)
    loader = iter(make_loader(_stream(three, limit=0.1), 0))
    assert int(next(loader)["index"][-1]) == 3
    with pytest.raises(DataError, match="^epoch 0: 3 of the 20 samples"):
        next(loader)


def test_a_shard_cut_short_is_counted_from_the_memory_cache_too(tmp_path: Path, clip: bytes) -> None:
    from avssl.data.cache import DecodedSplit

    path = write_test_shards(tmp_path, [clip] * 12, per_shard=6)
    shard = path / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[: _member(shard, "clip00004.mp4").offset_data + 100])
    shards = ShardList.from_manifest(path, "train")
    with pytest.warns(UserWarning):
        cache = DecodedSplit(shards.files)
        skipped, expected, delivered = _totals(list(make_loader(_stream(path, cache=cache), 0)))
    assert (skipped, expected, delivered) == (2, 12, [0, 1, 2, 3, *range(6, 12)])


class _Counting(pl.LightningModule):
    """Trains nothing: one weight, so that the loop runs."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.weight * batch["video"].float().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(path: Path, tmp_path: Path, epochs: int = 1) -> tuple[pl.Trainer, AVDataModule]:
    config = DataConfig(shards=str(path), num_workers=0, batch_size=8, val_split=None, test_split=None,
                        video=SPEC.video, audio=SPEC.audio["audio"], max_skip_fraction=0.05)
    module = AVDataModule(config, views=SPEC)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(_Counting(), datamodule=module)
    return trainer, module


def test_two_corrupt_videos_of_64_under_a_5_percent_limit_train_and_are_reported(
        tmp_path: Path, clip: bytes, caplog: pytest.LogCaptureFixture) -> None:
    clips = [clip] * 64
    clips[3] = clips[7] = b"not an mp4"  # both among the first 20 samples of the one worker
    path = write_test_shards(tmp_path / "shards", clips, per_shard=16)
    with caplog.at_level("INFO"):
        trainer, module = _fit(path, tmp_path, epochs=2)
    assert float(trainer.callback_metrics["data/skipped"]) == 2.0
    assert float(trainer.callback_metrics["data/expected"]) == 64.0
    assert module.skip_history == [{"epoch": 0, "skipped": 2, "expected": 64},
                                   {"epoch": 1, "skipped": 2, "expected": 64}]
    assert "data: 4 of 128 training samples lost over 2 epoch(s) (epoch 0: 2, epoch 1: 2)" in caplog.text


def test_training_on_a_damaged_shard_over_the_limit_stops(tmp_path: Path, clip: bytes) -> None:
    path = write_test_shards(tmp_path / "shards", [clip] * 32, per_shard=16)
    shard = path / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: _member(shard, "clip00030.mp4").offset_data + 100])
    with pytest.warns(UserWarning, match="samples 14 to 15 could not be read"), \
            pytest.raises(DataError, match="^epoch 0: 2 of the 32 samples the manifest lists were lost"):
        _fit(path, tmp_path)


def test_a_checkpoint_counts_the_losses_of_the_batches_trained_on_and_a_resume_continues_them(
        tmp_path: Path, clip: bytes) -> None:
    clips = [clip] * 20
    clips[2] = clips[13] = b"not an mp4"
    path = write_test_shards(tmp_path, clips, per_shard=10)
    loader = make_loader(_stream(path, pad=True), 0)
    batches = iter(loader)
    for _ in range(2):  # two batches trained on; the loop has fetched a third
        next(batches)
        loader.mark_consumed()
    next(batches)
    state = loader.state_dict()
    assert (state["consumed"], state["skipped"], state["expected"]) == (2, 1, 9)  # sample 2 of the first 9 read
    resumed = make_loader(_stream(path, pad=True), 0)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 3 and resumed.epoch_counts().as_dict() == {"skipped": 2, "expected": 20}
