"""In-memory pretext training on scripts/diag_cache_clips.py output, with cosine / NMI diagnostics and a linear probe.
python scripts/diag_pretext_inmemory.py avid 600 probe_every=600 task.projection_norm=batchnorm task.loss=softmax
python scripts/diag_pretext_inmemory.py selavi 600 probe_every=600 task.variant=online task.swav_dim=8
python scripts/diag_pretext_inmemory.py vatt 300 probe_every=300 recipe=recipes/synth/vatt_small.yaml
(vatt, cav_mae: the recipe's model and task sections, ``task.*`` overrides on top; docs/methods/vatt.md)"""
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avssl.config import load_recipe, to_plain
from avssl.evaluation.linear_probe import fit_logistic_regression
from avssl.losses.cav_mae import masked_reconstruction_loss
from avssl.losses.label_bank import labeling_steps
from avssl.metrics.clustering import clustering_scores
from avssl.metrics.retrieval import in_batch_retrieval_top1
from avssl.tasks.pretext.avid_cma import AVIDCMA
from avssl.tasks.pretext.cav_mae import CAVMAE
from avssl.tasks.pretext.selavi import SeLaVi
from avssl.tasks.pretext.vatt import VATT

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)
method, steps = sys.argv[1], int(sys.argv[2])
over = dict(a.split("=", 1) for a in sys.argv[3:])
seed = int(over.pop("seed", 0))
probe_every = int(over.pop("probe_every", 0))
bs = int(over.pop("bs", 64))
lr = float(over.pop("lr", 5e-4))
recipe = over.pop("recipe", None)
warmup = int(over.pop("warmup", 0))  # linear warm-up steps
probe_pooling = over.pop("probe_pooling", None)  # "both": probe the encoders avg- and max-pooled (cav_mae)


def parse(v):
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(v, v)


task = {k[5:]: parse(v) for k, v in over.items() if k.startswith("task.")}
cache = torch.load("/tmp/diag/cache.pt")
tr = cache["train"]
n = int(tr["index"].max()) + 1
torch.manual_seed(seed)
config = {"seed": seed,
          "data": {"shards": str(REPO) + "/runs/demo/shards", "video": {"num_frames": 1, "fps": 25.0, "size": 64}},
          "model": {"video_encoder": {"name": "small3d"}, "audio_encoder": {"name": "small2d"}},
          "task": {"name": method, "num_instances": n, **task}}
if recipe:  # the transformer methods: the recipe's encoders and task, task.* overrides on top
    plain = to_plain(load_recipe(recipe))
    config["model"] = plain["model"]
    config["task"] = {**plain["task"], **task}
if method == "avid":
    T = AVIDCMA
    config["task"].setdefault("projection_hidden", 128)
elif method in ("vatt", "cav_mae"):
    T = VATT if method == "vatt" else CAVMAE
else:
    T = SeLaVi
    config["task"].setdefault("num_clusters", 8)
    config["task"].setdefault("num_heads", 4)
model = T(config)
if method in ("vatt", "cav_mae"):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=model.task_config.weight_decay)
else:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-5)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
# two windows per video: rows [0,n) and [n,2n) ordered by index
order = torch.argsort(tr["index"] * 2 + (torch.arange(len(tr["index"])) >= len(tr["index"]) // 2).long())
V, A, INDEX, L = tr["video"], tr["audio"], tr["index"], tr["label"]
g = torch.Generator().manual_seed(seed)


def batches():
    epoch = 0
    while True:
        perm = torch.randperm(len(INDEX) // 2, generator=g)  # one window per video per epoch
        half = (epoch % 2) * (len(INDEX) // 2)
        rows = perm + half
        for s in range(0, len(rows) - bs + 1, bs):
            r = rows[s:s + bs]
            v = V[r].clone()
            flip = torch.rand(len(r), generator=g) < 0.5
            v[flip] = v[flip].flip(-1)
            yield epoch, {"video": v, "audio": A[r], "index": INDEX[r], "label": L[r]}
        epoch += 1


@torch.no_grad()
def feats(split, enc="both"):
    d = cache[split]
    model.eval()
    out = {"video": [], "audio": []}
    for s in range(0, len(d["index"]), 256):
        out["video"].append(model.video_encoder(d["video"][s:s+256]))
        out["audio"].append(model.audio_encoder(d["audio"][s:s+256]))
    model.train()
    return {k: torch.cat(v) for k, v in out.items()}, d["label"]


def probe():
    if probe_pooling == "both":
        res = {}
        for pooling in ("avg", "max"):
            saved = {e: e.pooling for e in (model.video_encoder, model.audio_encoder)}
            for e in saved:
                e.pooling = pooling
            res[pooling] = probe_once()
            for e, p in saved.items():
                e.pooling = p
        return res
    return probe_once()


def probe_once():
    half = len(INDEX) // 2
    trd = {"video": V[:half], "audio": A[:half], "index": INDEX[:half], "label": L[:half]}
    cache["_tr"] = trd
    ftr, ytr = feats("_tr")
    fva, yva = feats("val")
    fte, yte = feats("test")
    res = {}
    for m in ("video", "audio"):
        mu, sd = ftr[m].mean(0), ftr[m].std(0) + 1e-6

        def z(x, mu=mu, sd=sd):
            return (x - mu) / sd

        best = None
        for wd in (1e-4, 1e-3, 1e-2):
            clf = fit_logistic_regression(z(ftr[m]), ytr, 8, wd, 200)
            acc = (clf(z(fva[m])).argmax(1) == yva).float().mean().item()
            if best is None or acc > best[0]:
                best = (acc, clf)
        res[m] = round(100 * (best[1](z(fte[m])).argmax(1) == yte).float().mean().item(), 1)
    return res


@torch.no_grad()
def diag_avid():
    d = cache["val"]
    model.eval()
    vf, af = model.video_encoder(d["video"][:256]), model.audio_encoder(d["audio"][:256])
    v = F.normalize(model.video_head(vf), dim=1)
    a = F.normalize(model.audio_head(af), dim=1)
    model.train()
    s = v @ a.T
    eye = torch.eye(len(s), dtype=torch.bool)
    r64 = 0.5 * ((s[:64, :64].argmax(1) == torch.arange(64)).float().mean()
                 + (s[:64, :64].argmax(0) == torch.arange(64)).float().mean())
    vv = v @ v.T
    bank = model.video_bank.bank[:256]
    return {"cos_pos": round(s[eye].mean().item(), 3), "cos_neg": round(s[~eye].mean().item(), 3),
            "cos_neg_std": round(s[~eye].std().item(), 3),
            "cos_vv": round(vv[~eye].mean().item(), 3), "ret64": round(r64.item(), 3),
            "bank_vv": round((bank @ bank.T)[~eye].mean().item(), 3)}


@torch.no_grad()
def diag_transformer():
    """vatt: cosine and retrieval in the common space; cav_mae: masked-patch error / patch-mean error."""
    d = cache["val"]
    model.eval()
    batch = {"video": d["video"][:64], "audio": d["audio"][:64], "index": d["index"][:64]}
    if method == "vatt":
        vf, af = model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"])
        v, a = F.normalize(model.video_head(vf), dim=1), F.normalize(model.audio_head(af), dim=1)
        model.train()
        s = v @ a.T
        eye = torch.eye(len(s), dtype=torch.bool)
        ret = in_batch_retrieval_top1(v, a)
        vv = F.normalize(vf, dim=1) @ F.normalize(vf, dim=1).T
        return {"cos_pos": round(s[eye].mean().item(), 3), "cos_neg": round(s[~eye].mean().item(), 3),
                "ret64": round(ret.item(), 3), "enc_cos_vv": round(vv[~eye].mean().item(), 3)}
    out = model.masked_forward(batch, torch.Generator().manual_seed(7))
    res = {}
    for m in ("audio", "video"):
        p, mask = out["patches"][m], out["masked"][m].mask
        err = float(masked_reconstruction_loss(out["predictions"][m], p, mask))
        base = float(masked_reconstruction_loss(torch.zeros_like(p), p, mask))  # each patch's mean
        res[m] = [round(err, 3), round(base, 3), round(err / base, 3)]
    model.train()
    return res


@torch.no_grad()
def diag_selavi():
    d = cache["val"]
    model.eval()
    vl, al = model.head_logits(model.video_encoder(d["video"]), model.audio_encoder(d["audio"]))
    model.train()
    c = model.joint_log_probs(vl, al).argmax(-1)
    nmi = [clustering_scores(ci, d["label"])["nmi"] for ci in c]
    lab = getattr(model, "labels", None)
    half = len(INDEX) // 2
    tr_nmi = ([clustering_scores(lab[h][INDEX[:half]], L[:half])["nmi"] for h in range(lab.shape[0])]
              if lab is not None and (lab >= 0).all() else [])
    return {"val_nmi": [round(float(x), 3) for x in nmi], "label_nmi": [round(float(x), 3) for x in tr_nmi]}


print("config", json.dumps(config["task"]), "lr", lr, "seed", seed, flush=True)
warnings.filterwarnings("ignore")

per_epoch = (len(INDEX) // 2) // bs
T2 = type("T2", (T,), {"global_step": property(lambda self: self.__dict__.get("_step", 0)),
                       "current_epoch": property(lambda self: self.__dict__.get("_epoch", 0))})
model.__class__ = T2
if method == "selavi":
    model._schedule = labeling_steps(steps, per_epoch, model.task_config.num_labelings)
t0 = time.time()
diag = {"avid": diag_avid, "selavi": diag_selavi}.get(method, diag_transformer)
print("init", diag(), probe() if probe_every else "", flush=True)
losses = []
last_epoch = -1
for step, (epoch, batch) in enumerate(batches()):
    if step >= steps:
        break
    model.__dict__["_step"] = step
    model.__dict__["_epoch"] = epoch
    if epoch != last_epoch:
        model.on_train_epoch_start()
        last_epoch = epoch
    if method in ("avid", "vatt", "cav_mae"):
        out = model.training_step(batch, step)
    else:
        model.on_train_batch_start(batch, step)
        out = model.training_step(batch, step)
    loss = out["loss"]
    opt.zero_grad()
    if loss.requires_grad:
        loss.backward()
        model.on_after_backward()
    opt.step()
    sched.step()
    losses.append(float(loss))
    if (step + 1) % 100 == 0:
        msg = f"step {step+1} ep {epoch} loss {np.mean(losses[-100:]):.4f} t {time.time()-t0:.0f}s"
        if (step + 1) % 300 == 0 or step + 1 == steps:
            msg += " " + json.dumps(diag())
        if probe_every and (step + 1) % probe_every == 0:
            msg += " probe " + json.dumps(probe())
        print(msg, flush=True)
print("final", json.dumps(diag()), "probe", json.dumps(probe()), "time", round(time.time() - t0), flush=True)
