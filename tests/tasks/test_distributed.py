"""One training step on 2 processes (gloo) equals the same global batch on 1 process:
loss, gradients and memory banks (AVID+CMA), for the parts that are not per-rank by
design (the encoders' BatchNorm is per rank unless SyncBN is on, so the step starts from
the encoder features)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from avssl.config import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GLOBAL_BATCH = 8


def _avid_steps(rank: int, world: int, init_file: str, out: str, cma: bool) -> None:
    from avssl.tasks.pretext.avid import AVID

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    overrides = ["task.num_instances=40", "task.num_negatives=16", "task.cma_positives=4", "task.cma_negatives=8",
                 f"task.cma_start_epoch={0 if cma else 'null'}"]
    config = load_recipe(RECIPES / "synth" / "avid_cma_small.yaml", overrides)
    torch.manual_seed(0)
    model = AVID(OmegaConf.to_container(config, resolve=True))
    if cma:
        model.positives = torch.stack([torch.arange(1, 5) + i for i in range(40)]) % 40
        model.positives = model.positives.sort(dim=1).values
    g = torch.Generator().manual_seed(1)
    per_rank = GLOBAL_BATCH // world
    results = []
    for step in range(2):
        features_v = torch.randn(GLOBAL_BATCH, model.video_encoder.embedding_dim, generator=g)
        features_a = torch.randn(GLOBAL_BATCH, model.audio_encoder.embedding_dim, generator=g)
        index = torch.randperm(40, generator=g)[:GLOBAL_BATCH]
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        v, a = model.video_head(features_v[rows]), model.audio_head(features_a[rows])
        terms = model.losses(v, a, index[rows])
        loss = terms["xid"] if "cma" not in terms else 0.5 * (terms["xid"] + terms["cma"])
        model.zero_grad()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in (*model.video_head.parameters(), *model.audio_head.parameters())])
        if world > 1:  # what DDP does: average the gradients and (for reporting) the loss
            dist.all_reduce(grads)
            grads /= world
            dist.all_reduce(loss_copy := loss.detach().clone())
            loss_value = loss_copy / world
        else:
            loss_value = loss.detach()
        model.video_bank.update(index[rows], v)
        model.audio_bank.update(index[rows], a)
        results.append({"loss": loss_value, "grads": grads, "video_bank": model.video_bank.bank.clone(),
                        "audio_bank": model.audio_bank.bank.clone()})
    torch.save(results, os.path.join(out, f"rank{rank}_of{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("cma", [False, True], ids=["avid", "cma"])
def test_avid_two_processes_match_one(tmp_path: Path, cma: bool) -> None:
    _avid_steps(0, 1, "", str(tmp_path), cma)
    mp.spawn(_avid_steps, args=(2, str(tmp_path / "init"), str(tmp_path), cma), nprocs=2, join=True)
    single = torch.load(tmp_path / "rank0_of1.pt")
    for rank in range(2):
        pair = torch.load(tmp_path / f"rank{rank}_of2.pt")
        for one, two in zip(single, pair):
            torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(two["grads"], one["grads"], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(two["video_bank"], one["video_bank"])
            torch.testing.assert_close(two["audio_bank"], one["audio_bank"])
