"""One training step on 2 processes (gloo) equals the same global batch on 1 process:
loss, gradients and memory banks (AVID+CMA, Robust-xID), for the parts that are not per-rank by
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


def _avid_steps(rank: int, world: int, init_file: str, out: str, cma: bool, robust_xid: bool = False) -> None:
    from avssl.tasks.pretext.avid_cma import AVIDCMA
    from avssl.tasks.pretext.robust_xid import RobustXID

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    # projection_norm=none: BatchNorm in the head uses per-rank batch statistics (as any BN
    # under DDP without trainer.sync_batchnorm); this test checks the banks, Z and negatives.
    # The paper's bank positives and negatives: the CPU recipe's in-batch negatives are per
    # rank (as AVC's), so they differ with the number of processes by design.
    overrides = ["task.positives=bank", "task.batch_negatives=false",
                 "task.num_instances=40", "task.num_negatives=16", "task.cma_positives=4", "task.cma_negatives=8",
                 f"task.cma_start_epoch={0 if cma else 'null'}", "task.projection_norm=none"]
    if robust_xid:  # weights and soft targets from the first step; Σw is global (not each rank's)
        overrides = [*overrides[:4], "task.projection_norm=none", "task.robust_start_epoch=0"]
    recipe = "robust_xid_small.yaml" if robust_xid else "avid_cma_small.yaml"
    config = load_recipe(RECIPES / "synth" / recipe, overrides)
    torch.manual_seed(0)
    model = (RobustXID if robust_xid else AVIDCMA)(OmegaConf.to_container(config, resolve=True))
    if cma:
        positives = torch.stack([torch.arange(1, 5) + i for i in range(40)]) % 40
        model.positives.indices = positives.sort(dim=1).values
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


@pytest.mark.parametrize(("cma", "robust_xid"), [(False, False), (True, False), (False, True)],
                         ids=["avid", "cma", "robust_xid"])
def test_avid_two_processes_match_one(tmp_path: Path, cma: bool, robust_xid: bool) -> None:
    _avid_steps(0, 1, "", str(tmp_path), cma, robust_xid)
    mp.spawn(_avid_steps, args=(2, str(tmp_path / "init"), str(tmp_path), cma, robust_xid), nprocs=2, join=True)
    single = torch.load(tmp_path / "rank0_of1.pt")
    for rank in range(2):
        pair = torch.load(tmp_path / f"rank{rank}_of2.pt")
        for one, two in zip(single, pair):
            torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(two["grads"], one["grads"], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(two["video_bank"], one["video_bank"])
            torch.testing.assert_close(two["audio_bank"], one["audio_bank"])


def _sinkhorn_and_selavi(rank: int, world: int, init_file: str, out: str) -> None:
    from avssl.losses.sinkhorn import sinkhorn_knopp
    from avssl.tasks.pretext.selavi import SeLaVi

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(3 * torch.randn(12, 4, generator=g, dtype=torch.float64), dim=1)
    rows = slice(rank * 12 // world, (rank + 1) * 12 // world)
    plan = sinkhorn_knopp(log_probs[rows], lam=20.0, tolerance=1e-12).plan
    # SeLaVi: one training step with labels already solved
    config = load_recipe(RECIPES / "synth" / "selavi_small.yaml",
                         ["data.video.size=32", "task.num_instances=16", "task.num_clusters=3", "task.num_heads=2",
                          "task.head_dropout=0.0",
                          # the paper's loss (the CPU recipe's in-batch InfoNCE is per rank)
                          "task.contrastive_weight=0.0"])
    torch.manual_seed(0)
    model = SeLaVi(OmegaConf.to_container(config, resolve=True))
    model.label_bank.labels.copy_(torch.randint(0, 3, (2, 16), generator=g))
    model.label_bank.labelings_done.fill_(1)
    video = torch.randn(GLOBAL_BATCH, 3, 1, 32, 32, generator=g)
    audio = torch.randn(GLOBAL_BATCH, 1, 64, 101, generator=g)
    index = torch.randperm(16, generator=g)[:GLOBAL_BATCH]
    per_rank = GLOBAL_BATCH // world
    batch_rows = slice(rank * per_rank, (rank + 1) * per_rank)
    model.eval()  # BatchNorm with running statistics: per-rank batch statistics are SyncBN's business
    batch = {"video": video[batch_rows], "audio": audio[batch_rows], "index": index[batch_rows]}
    loss = model.training_step(batch, 0)["loss"]
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    if world > 1:
        dist.all_reduce(grads)
        grads /= world
        dist.all_reduce(loss_sum := loss.detach().clone())
        loss = loss_sum / world
    torch.save({"plan": plan, "loss": loss.detach(), "grads": grads, "bank": model.label_bank.log_probs.clone(),
                "seen": model.label_bank.seen.clone()}, os.path.join(out, f"sk_rank{rank}_of{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


def test_sinkhorn_and_selavi_two_processes_match_one(tmp_path: Path) -> None:
    _sinkhorn_and_selavi(0, 1, "", str(tmp_path))
    mp.spawn(_sinkhorn_and_selavi, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "sk_rank0_of1.pt")
    halves = [torch.load(tmp_path / f"sk_rank{r}_of2.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([h["plan"] for h in halves]), single["plan"], atol=1e-9, rtol=0)
    for half in halves:
        torch.testing.assert_close(half["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(half["grads"], single["grads"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(half["bank"], single["bank"])
        assert torch.equal(half["seen"], single["seen"]) and int(half["seen"].sum()) == GLOBAL_BATCH


def _transformer_step(rank: int, world: int, init_file: str, out: str, method: str) -> None:
    """One VATT or CAV-MAE training step: the contrastive terms over the global batch (gathered
    with their gradient), DropToken's and the masking's draws alike on 1 and 2 processes."""
    from avssl.tasks.pretext import build_pretext_task

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    overrides = ["task.projection_norm=none"] if method == "vatt" else []
    config = load_recipe(RECIPES / "synth" / f"{method}_small.yaml", overrides)
    torch.manual_seed(0)
    model = build_pretext_task(OmegaConf.to_container(config, resolve=True))
    model.eval()  # the conv stem's BatchNorm with running statistics (per-rank batch statistics are SyncBN's)
    model.log = lambda *args, **kwargs: None
    g = torch.Generator().manual_seed(1)
    video = torch.randn(GLOBAL_BATCH, 3, 1, 64, 64, generator=g)
    audio = torch.randn(GLOBAL_BATCH, 1, 64, 101, generator=g)
    per_rank = GLOBAL_BATCH // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    output = model.training_step({"video": video[rows], "audio": audio[rows], "index": torch.arange(8)[rows]}, 0)
    output["loss"].backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    terms = torch.stack(list(output["terms"].values()))
    if world > 1:  # DDP: gradients averaged; the reconstruction terms are per-rank means, averaged as DDP's loss
        dist.all_reduce(grads)
        grads /= world
        dist.all_reduce(terms)
        terms /= world
    torch.save({"terms": terms, "grads": grads}, os.path.join(out, f"{method}_rank{rank}_of{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["vatt", "cav_mae"])
def test_transformer_contrastive_terms_two_processes_match_one(tmp_path: Path, method: str) -> None:
    _transformer_step(0, 1, "", str(tmp_path), method)
    mp.spawn(_transformer_step, args=(2, str(tmp_path / "init"), str(tmp_path), method), nprocs=2, join=True)
    single = torch.load(tmp_path / f"{method}_rank0_of1.pt")
    for rank in range(2):
        pair = torch.load(tmp_path / f"{method}_rank{rank}_of2.pt")
        torch.testing.assert_close(pair["terms"], single["terms"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pair["grads"], single["grads"], rtol=1e-4, atol=1e-6)
