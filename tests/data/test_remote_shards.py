"""Shards on a server (avssl/data/remote.py): a folder URL, a brace list and a ``pipe:``
command read the same batches as the local folder; a connection dropped mid-shard is
counted as lost samples; exact resume works on URLs.

The server is ``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread the test
starts and stops; it serves the test's own shards folder and nothing else."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import tarfile
import threading
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.data import remote
from avssl.data.datamodule import (
    AVDataModule,
    DataConfig,
    ShardList,
    ShardStream,
    make_loader,
)
from avssl.data.errors import DataError
from avssl.data.sampling import ViewSampler
from avssl.data.views import AudioView, VideoView, ViewSpec
from avssl.errors import RecipeError
from tests.conftest import flash_click_clip, write_test_shards

SPEC = ViewSpec(video=VideoView(num_frames=2, fps=25.0, size=32), audio={"audio": AudioView(seconds=0.5)})
NUM_SAMPLES, PER_SHARD = 22, 5  # train-000000 … train-000004, the last with 2


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the shards folder; ``drop``: (file name, bytes) whose connection is closed
    after that many bytes of the body, the headers having promised the whole file."""

    drop: tuple[str, int] | None = None
    timeout = 10  # a stuck client cannot hold a server thread for long

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.drop is None or not self.path.endswith("/" + self.drop[0]):
            return super().do_GET()
        body = Path(self.directory, self.drop[0]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.drop[1]])
        self.wfile.flush()
        self.close_connection = True


@contextlib.contextmanager
def serve(folder: Path, drop: tuple[str, int] | None = None) -> Iterator[str]:
    """``folder`` over HTTP on 127.0.0.1 until the block ends; yields its URL."""
    handler = type("Handler", (_Handler,), {"drop": drop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy_for_the_test_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """curl and urllib go to 127.0.0.1 directly even where a proxy is configured."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = flash_click_clip(seconds=1.2, size=(32, 40))
    out = tmp_path_factory.mktemp("shards")
    write_test_shards(out, [clip] * NUM_SAMPLES, per_shard=PER_SHARD, labels=[i % 3 for i in range(NUM_SAMPLES)])
    return write_test_shards(out, [clip] * 4, per_shard=2, split="val")


def _stream(location: str | Path, workers: int = 0, rank: int = 0, world: int = 1, train: bool = True,
            split: str = "train") -> ShardStream:
    return ShardStream(ShardList.from_manifest(location, split), ViewSampler(SPEC, train=train), batch_size=3,
                       num_workers=workers, rank=rank, world_size=world, shuffle=train, pad=train or world > 1)


def _batches(stream: ShardStream, workers: int, epoch: int = 0) -> list[dict[str, torch.Tensor]]:
    loader = make_loader(stream, workers, single_pass=True)
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _assert_same(one: list[dict[str, torch.Tensor]], two: list[dict[str, torch.Tensor]]) -> None:
    assert len(one) == len(two) > 0
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_folder_url_gives_the_batches_of_the_local_folder(shards: Path, workers: int) -> None:
    with serve(shards) as url:
        listed = ShardList.from_manifest(url, "train")
        assert listed.files[0] == f"{url}train-000000.tar"
        assert listed.names == tuple(f"train-{i:06d}.tar" for i in range(5))
        from_server = _batches(_stream(url, workers), workers, epoch=1)
    local = _batches(_stream(shards, workers), workers, epoch=1)
    _assert_same(from_server, local)
    assert sorted({int(i) for b in local for i in b["index"]}) == list(range(NUM_SAMPLES))


def test_a_brace_list_over_http_and_a_pipe_command_give_the_batches_of_the_local_folder(shards: Path) -> None:
    local = _batches(_stream(shards), 0)
    with serve(shards) as url:
        braces = f"{url}{{train,val}}-{{000000..000004}}.tar"
        with pytest.raises(DataError, match="lists 3 shard"):  # val-000002 … val-000004 do not exist
            ShardList.from_manifest(braces, "train")
        braces = f"{url}train-{{000000..000004}}.tar::{url}val-{{000000..000001}}.tar"
        assert remote.manifest_location(braces) == f"{url}manifest.json"
        _assert_same(_batches(_stream(braces), 0), local)
        assert ShardList.from_manifest(braces, "val").files == (f"{url}val-000000.tar", f"{url}val-000001.tar")
    # a command with more after the file name (as `aws s3 cp s3://… -`): the draws follow the file name
    command = f"pipe:cat {shards}/train-{{000000..000004}}.tar | cat"
    assert remote.manifest_location(command) == f"pipe:cat {shards}/manifest.json | cat"
    listed = ShardList.from_manifest(command, "train")
    assert listed.files[4] == f"pipe:cat {shards}/train-000004.tar | cat"
    assert listed.names[4] == "train-000004.tar"
    _assert_same(_batches(_stream(command), 0), local)


def test_a_split_listed_in_part_or_not_at_all_is_refused_naming_the_shards(shards: Path) -> None:
    with pytest.raises(RecipeError) as error:
        ShardList.from_manifest(f"pipe:cat {shards}/{{a,b}}", "train")
    assert str(error.value) == (f"data.shards: 'pipe:cat {shards}/a' names no .tar file; list the shards by their "
                                f"file names (e.g. train-{{000000..000009}}.tar)")
    partial_list = f"pipe:cat {shards}/train-{{000000..000002}}.tar"
    with pytest.raises(DataError) as error:
        ShardList.from_manifest(partial_list, "train")
    assert str(error.value) == (f"split 'train': 2 of its 5 shards are not in data.shards={partial_list}: "
                                f"train-000003.tar, train-000004.tar; a split is read whole: list them all")
    with pytest.raises(DataError) as error:
        ShardList.from_manifest(partial_list, "val")
    assert str(error.value) == (f"split 'val': none of its 2 shards is in data.shards={partial_list}; "
                                f"list them (e.g. val-{{000000..000001}}.tar)")


def test_a_shard_missing_on_the_server_stops_before_reading_and_a_missing_manifest_names_the_place(
        shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / "train-000003.tar").unlink()
    with serve(copy) as url:
        with pytest.raises(DataError) as error:
            _stream(url)
        assert str(error.value) == (f"1 of the 5 shards listed in the manifest are missing (5 of 22 samples): "
                                    f"{url}train-000003.tar; rewrite the shards (`avssl shards`)")
        (copy / "manifest.json").unlink()
        with pytest.raises(DataError) as error:
            ShardList.from_manifest(url + "sub/", "train")
        assert str(error.value) == (f"data.shards={url}sub/: could not read its manifest from {url}sub/manifest.json "
                                    f"(curl exit status 22: the server answered with an HTTP error); check the "
                                    f"address and that manifest.json sits beside the shards")
    with pytest.raises(DataError) as error:
        ShardList.from_manifest(f"pipe:cat {copy}/gone/train-{{000000..000004}}.tar", "train")
    assert str(error.value) == (f"data.shards=pipe:cat {copy}/gone/train-{{000000..000004}}.tar: could not read its "
                                f"manifest from pipe:cat {copy}/gone/manifest.json (the command's exit status 1); "
                                f"check the address and that manifest.json sits beside the shards")


def test_a_shard_a_pipe_command_cannot_give_is_counted_when_read(shards: Path, tmp_path: Path) -> None:
    """A command is not run at the start (it would download the shard): its failure is counted."""
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    (copy / "train-000003.tar").unlink()  # samples 15 … 19
    command = f"pipe:cat {copy}/train-{{000000..000004}}.tar"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _batches(_stream(command, train=False), 0)
    assert [int(i) for b in batches for i in b["index"]] == [*range(15), *range(20, NUM_SAMPLES)]
    assert (sum(int(b["skipped"].sum()) for b in batches), sum(int(b["expected"].sum()) for b in batches)) == (5, 22)
    assert (f"pipe:cat {copy}/train-000003.tar: samples 0 to 4 could not be read (the shard is missing, cut short or "
            f"damaged); 5 counted as skipped") in [str(w.message) for w in caught]


def _data_offset(shard: Path, member: str) -> int:
    with tarfile.open(shard) as tar:
        return tar.getmember(member).offset_data


def test_a_connection_dropped_mid_shard_is_counted_as_lost_samples(shards: Path) -> None:
    """train-000001 holds samples 5 … 9; the connection closes inside sample 7's video. How
    many of 5 and 6 arrive depends on when curl's exit is seen (webdataset's pipe drops what
    it holds once curl has exited 18), but every sample that does not arrive is counted:
    by the tar reading, or by the decoding when a sample arrived without all its entries."""
    cut = _data_offset(shards / "train-000001.tar", "clip00007.mp4") + 100
    with serve(shards, drop=("train-000001.tar", cut)) as url, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = _batches(_stream(url, train=False), 0)
    indices = [int(i) for b in batches for i in b["index"]]
    arrived = [i for i in indices if 5 <= i <= 9]
    assert arrived in ([], [5], [5, 6])
    assert indices == [i for i in range(NUM_SAMPLES) if not 5 <= i <= 9 or i in arrived]
    lost = 5 - len(arrived)
    assert sum(int(b["skipped"].sum()) for b in batches) == lost
    assert sum(int(b["expected"].sum()) for b in batches) == NUM_SAMPLES
    # the tar gave `read` samples (one may have arrived without its json: lost when decoded)
    said = [w for w in map(str, (w.message for w in caught)) if w.startswith(f"{url}train-000001.tar: samples")]
    read = len(arrived) if said[0].startswith(f"{url}train-000001.tar: samples {len(arrived)} ") else len(arrived) + 1
    assert said == [(f"{url}train-000001.tar: samples {read} to 4 could not be read (the shard is missing, cut short "
                     f"or damaged); {5 - read} counted as skipped")]


@pytest.mark.parametrize("resume_from", ["folder", "url"])
def test_exact_resume_continues_with_the_next_batches(shards: Path, resume_from: str) -> None:
    """The loader state of a local run after 3 training batches (an odd batch with 2 workers:
    the next batch is worker 1's), resumed from the folder or from the server."""
    workers = 2
    local = make_loader(_stream(shards, workers), workers)
    local.sampler.set_epoch(1)
    reference = []
    for batch in local:
        reference.append(batch)
        local.mark_consumed()
        if len(reference) == 3:
            state = local.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 3
    with serve(shards) as url:
        resumed = make_loader(_stream(url if resume_from == "url" else shards, workers), workers)
        resumed.load_state_dict(state)
        rest = list(resumed)
        resumed.sampler.set_epoch(2)  # the epoch after the resumed one starts at its first batch again
        next_epoch = list(resumed)
    _assert_same(rest, reference[3:])
    _assert_same(next_epoch, _batches(_stream(shards, workers), workers, epoch=2))


def _rank_batches(rank: int, world: int, init_file: str, url: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        module = AVDataModule(DataConfig(shards=url, batch_size=3, num_workers=1), SPEC)
        stream = module.stream("train", train=True)
        assert (stream.rank, stream.world_size) == (rank, world)
        torch.save(_batches(stream, 1, epoch=1), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and Lightning: about a minute on 2 shared cores
def test_two_processes_read_from_a_url_the_batches_of_the_local_folder(shards: Path, tmp_path: Path) -> None:
    with serve(shards) as url:
        mp.spawn(_rank_batches, args=(2, str(tmp_path / "init"), url, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        local = _batches(_stream(shards, 1, rank=rank, world=2), 1, epoch=1)
        _assert_same(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), local)


def test_the_memory_cache_decodes_a_split_read_from_a_url(shards: Path) -> None:
    """data.cache=memory reads the shards through the same opener: the batches of streaming."""
    from avssl.data.cache import release_decoded

    try:
        with serve(shards) as url:
            module = AVDataModule(DataConfig(shards=url, batch_size=3, num_workers=0, cache="memory"), SPEC)
            stream = module.stream("train", train=True)
            assert stream.cache is not None and stream.cache.num_samples == NUM_SAMPLES
        _assert_same(_batches(stream, 0, epoch=1), _batches(_stream(shards), 0, epoch=1))  # the server is gone
    finally:
        release_decoded()


@pytest.mark.slow  # end to end: two whole `avssl probe` runs (2 to 40 s here, with the machine's load)
def test_avssl_probe_on_a_url_reports_the_figures_of_the_local_folder(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The evaluation verbs take data.shards through the same ShardList: a whole `avssl probe`
    (random encoders, 12 videos) from the server, and a wrong address in one line."""
    from avssl.cli import main
    from tests.conftest import make_synth_shards

    local = make_synth_shards(tmp_path, num_videos=12, seconds=1.0)
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "eval" / "synth_probe.yaml")
    common = ["probe.modalities=[video]", "probe.eval_clips_per_video=1", "data.num_workers=0", "data.batch_size=4",
              f"probe.cache_dir={tmp_path / 'features'}"]
    assert main(["probe", recipe, f"data.shards={local}", f"run_dir={tmp_path / 'local'}", *common]) == 0
    with serve(local) as url:
        assert main(["probe", recipe, f"data.shards={url}", f"run_dir={tmp_path / 'url'}", *common]) == 0
        capsys.readouterr()
        assert main(["probe", recipe, f"data.shards={url}nowhere/", f"run_dir={tmp_path / 'none'}", *common]) == 1
    assert capsys.readouterr().err == (
        f"avssl probe: data.shards={url}nowhere/: could not read its manifest from {url}nowhere/manifest.json (curl "
        f"exit status 22: the server answered with an HTTP error); check the address and that manifest.json sits "
        f"beside the shards\n")
    figures = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("local", "url")]
    assert figures[1]["video"] == figures[0]["video"]
    assert figures[1]["clips"] == figures[0]["clips"]
    assert [figures[1]["clips"][s]["clips_evaluated"] for s in ("train", "val", "test")] == [6, 3, 3]


def test_the_manifest_is_read_once_per_process_and_again_when_its_file_changes(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    local = remote.read_manifest(str(copy))
    assert remote.read_manifest(str(copy)) is local  # the recipe check, the fit check, the data module
    changed = {**local, "classes": ["a", "b"]}
    (copy / "manifest.tmp").write_text(json.dumps(changed))
    (copy / "manifest.tmp").replace(copy / "manifest.json")
    assert remote.read_manifest(str(copy)) == changed
    with serve(copy) as url:
        served = remote.read_manifest(url)
    assert served == changed
    assert remote.read_manifest(url) is served  # the server is gone: read once
    assert remote.read_manifest(str(tmp_path / "none"), missing_ok=True) is None
