"""Distiller: UDD's Algorithm 1, top to bottom.

    S <- real images (IPC per class)
    for each outer iteration:                      fresh network theta
        for each inner step:
            windows <- P most underutilized windows of every S_c under theta   (regions.select_windows)
            for each class c (or all classes at once: step="batched"):
                S_c_train <- [S_c ; crop_resize(S_c, windows)]                 (regions.training_batch)
                L <- grad_match(theta; DSA(R_c), DSA(S_c_train)) + lambda CFC   (losses)
            S <- S - lr dL/dS   (SGD, momentum 0.5)
            theta <- theta - eta grad CE(theta; real mini-batches)
        S <- clamp(S, 0, 1)

With multi-formation (``factor`` > 1) S_c is decoded into its sub-images first and the windows are mined on
those. The windows of all classes are mined in one pass: theta is fixed within an inner step and S_c is
changed only by its own class's loss, so this is the per-class mining of Algorithm 1. Every class's loss
depends only on its own S_c, so accumulating the class gradients and taking one optimizer step per inner step
is exactly a per-class SGD step with per-class momentum.

``step="loop"`` is the reference: one class at a time, one backward each. ``step="batched"`` computes every
class's real and synthetic parameter gradients and matching loss in one ``torch.func.vmap`` of the same pure
function, with one backward. Both draw the same real batches and augmentations (in class order) and give the
same update, with one difference: the loop updates the CFC bank after each class, so class c's contrastive
term sees this step's EMA of classes < c, while the batched step updates all rows after the step. That is
harmless: the bank is a detached, slowly moving target (each row moves by (1 - alpha) of the gap to a fresh
mean embedding), and a given class's negatives are older by at most one inner step.
"""
from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import vmap
from tqdm.auto import tqdm

from udd_fast.augment import DSA
from udd_fast.config import UDDConfig
from udd_fast.data import RealData
from udd_fast.errors import UDDError
from udd_fast.evaluate import herding_coreset
from udd_fast.losses import autocast, cfc_loss, ema_update, grad_match, matched_names
from udd_fast.models import build_model
from udd_fast.regions import candidate_windows, check_image_size, decode, select_windows, training_batch
from udd_fast.synset import SyntheticSet, mix_init


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator=None):
    """CutMix one random box between a batch and its permutation; returns images and soft targets."""
    lam = float(torch.distributions.Beta(1.0, 1.0).sample())
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    perm = torch.randperm(x.shape[0], device=x.device)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    keep = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    onehot = F.one_hot(y, num_classes).float()
    return x, keep * onehot + (1 - keep) * onehot[perm]


class Distiller:
    """Distill ``data`` into ``config.ipc`` synthetic images per class with UDD.

    >>> syn = Distiller(load_dataset("fashion-mnist"), preset("cpu-quick", "fashion-mnist", 1)).run()
    """

    def __init__(self, data: RealData, config: UDDConfig, device: str | torch.device = "cpu",
                 out_dir: str | Path | None = None):
        data.check_ipc(config.ipc, config.factor)
        if config.regions.policy is not None:
            check_image_size(data.size, config.regions.groups)
        self.data, self.cfg, self.device = data.to(device), config, torch.device(device)
        self.out_dir = Path(out_dir) if out_dir else None
        self.k = data.num_classes
        self.windows = candidate_windows(config.regions.groups).to(self.device)
        self.dsa = DSA(config.dsa, mode="all", flip=data.flip)
        self.labels = torch.arange(self.k, device=self.device).repeat_interleave(config.ipc)
        net = self.new_network()
        self.names = matched_names(net, config.matched)
        if config.step == "batched" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            raise UDDError(f"step='batched' cannot vmap a model with BatchNorm ({config.model}); use step='loop' "
                           "or a model with instance norm (convnet, resnetap10)")
        self.history: list[dict] = []

    # --- the pieces of Algorithm 1 -------------------------------------------------------------------
    def init_synthetic(self) -> torch.Tensor:
        """Real images of each class (``factor**2`` of them tiled into each stored image): random ones, or
        the herding selection (images whose running mean embedding tracks the class mean); or noise."""
        cfg, n = self.cfg, self.cfg.ipc * self.cfg.factor ** 2
        if cfg.init == "noise":
            return torch.rand(self.k * cfg.ipc, self.data.channels, self.data.size, self.data.size,
                              device=self.device)
        if cfg.init == "herding":
            real = herding_coreset(self.data, n, seed=cfg.seed)[0].to(self.device).unflatten(0, (self.k, n))
        else:
            real = [self.data.class_batch(c, n) for c in range(self.k)]
        return torch.cat([mix_init(r, cfg.factor) for r in real])

    def new_network(self):
        cfg = self.cfg
        net = build_model(cfg.model, self.data.channels, self.k, self.data.size, cfg.width, cfg.depth)
        return net.to(self.device)

    def mine(self, net, syn: torch.Tensor, seed: int) -> torch.Tensor | None:
        """Indices (decoded images, P) of every decoded synthetic image's P most underutilized windows."""
        cfg = self.cfg
        if cfg.regions.policy is None:
            return None
        images = decode(syn.detach(), cfg.factor)
        labels = self.labels.repeat_interleave(cfg.factor ** 2)
        with autocast(self.device.type, cfg.precision):
            return select_windows(net, images, labels, self.windows, self.data.normalize, cfg.regions, seed)

    def draw_real(self) -> tuple[list[torch.Tensor], list[dict]]:
        """Each class's real batch and its Siamese DSA draw, in class order (so both step modes consume the
        random stream identically)."""
        reals, draws = [], []
        for c in range(self.k):
            reals.append(self.data.class_batch(c, self.cfg.batch_real))
            draws.append(self.dsa.sample(1, reals[-1].shape[-2:], self.device, siamese=True))
        return reals, draws

    def class_losses(self, net, params, syn, index, reals, draws, classes: list[int], bank):
        """Loss of ``classes`` (one class in the loop, all of them batched): gradient matching on each
        class's shared DSA draw, plus lambda * CFC. Returns ``(loss, matching terms (g,), mean synthetic
        embeddings (g, D))``."""
        cfg, norm, g = self.cfg, self.data.normalize, len(classes)
        cls = torch.tensor(classes, device=self.device)
        s = syn.unflatten(0, (self.k, cfg.ipc))[cls].flatten(0, 1)
        x_syn = decode(s, cfg.factor)
        if index is not None:
            x_syn = training_batch(x_syn, self.windows, index.unflatten(0, (self.k, -1))[cls].flatten(0, 1), g)
        x_real = torch.cat([reals[c] for c in classes])
        draw = [draws[c] for c in classes]
        x_real = self.dsa.apply(norm(x_real), DSA.repeat(draw, x_real.shape[0] // g)).unflatten(0, (g, -1))
        x_syn = self.dsa.apply(norm(x_syn), DSA.repeat(draw, x_syn.shape[0] // g)).unflatten(0, (g, -1))
        y_real = cls[:, None].expand(x_real.shape[:2])
        y_syn = cls[:, None].expand(x_syn.shape[:2])
        fn = partial(grad_match, net, params, self.names, metric=cfg.metric, precision=cfg.precision)
        if cfg.step == "batched":
            match, emb = vmap(fn)(x_real, y_real, x_syn, y_syn)
        else:
            match, emb = (t[None] for t in fn(x_real[0], y_real[0], x_syn[0], y_syn[0]))
        f_bar = emb.mean(1)
        loss = match.sum()
        if cfg.cfc:
            loss = loss + cfg.lam * cfc_loss(f_bar, bank, cls, cfg.tau).sum()
        return loss, match.detach(), f_bar.detach()

    def inner_step(self, net, syn: torch.Tensor, bank: torch.Tensor, step: int) -> tuple[float, torch.Tensor]:
        """dL/dS of every class, accumulated into ``syn.grad``; returns (sum of the matching terms, new bank)."""
        params = {n: p.detach() for n, p in net.named_parameters()}
        index = self.mine(net, syn, seed=step)
        reals, draws = self.draw_real()
        groups = [list(range(self.k))] if self.cfg.step == "batched" else [[c] for c in range(self.k)]
        total = 0.0
        for classes in groups:
            loss, match, f_bar = self.class_losses(net, params, syn, index, reals, draws, classes, bank)
            loss.backward()
            bank = ema_update(bank, torch.tensor(classes, device=self.device), f_bar, self.cfg.alpha)
            total += match.sum().item()
        return total, bank

    @torch.no_grad()
    def class_embeddings(self, net, syn: torch.Tensor) -> torch.Tensor:
        """Mean embedding of each class's decoded synthetic images: the CFC bank of a fresh network."""
        per_class = syn.view(self.k, -1, *syn.shape[1:])
        return torch.stack([net.embed(self.data.normalize(decode(s, self.cfg.factor))).mean(0) for s in per_class])

    def train_network(self, net, opt, syn: torch.Tensor) -> None:
        """IDC Eq. 6: a few SGD steps of the network on augmented, CutMixed real (or synthetic) batches."""
        cfg = self.cfg
        for _ in range(cfg.net_batches):
            if cfg.net_on == "real":
                x, y = self.data.random_batch(cfg.net_batch)
            else:
                x = decode(syn.detach(), cfg.factor)
                y = self.labels.repeat_interleave(cfg.factor ** 2)
            x = self.dsa(self.data.normalize(x))
            target = F.one_hot(y, self.k).float()
            if torch.rand(1).item() < cfg.cutmix:
                x, target = cutmix(x, y, self.k)
            with autocast(self.device.type, cfg.precision):
                logits = net(x)
            loss = torch.sum(-target * F.log_softmax(logits.float(), 1), 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    # --- Algorithm 1 ----------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> SyntheticSet:
        """Run the whole distillation and return the synthetic set (also saved to ``out_dir`` if given)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        syn = self.init_synthetic().requires_grad_(True)
        # lr_img is in normalized units; S lives in pixel space, where the same step is lr * std^2
        std2 = sum(s * s for s in self.data.std) / len(self.data.std)
        opt = torch.optim.SGD([syn], lr=cfg.lr_img * std2, momentum=cfg.mom_img)
        milestones = [int(f * cfg.outer) for f in cfg.lr_decay]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.5)
        bar = tqdm(total=cfg.outer * cfg.inner, desc="distill", disable=not progress, unit="step")
        start, step = time.time(), 0
        for outer in range(cfg.outer):
            net = self.new_network()
            net_opt = torch.optim.SGD(net.parameters(), lr=cfg.net_lr, momentum=0.9, weight_decay=5e-4)
            bank = self.class_embeddings(net, syn)
            for inner in range(cfg.inner):
                opt.zero_grad()
                total, bank = self.inner_step(net, syn, bank, step)
                if not math.isfinite(total):
                    raise UDDError(f"matching loss became {total} at outer {outer}, inner {inner}; "
                                   "lower lr_img")
                opt.step()
                if inner < cfg.inner - 1:
                    self.train_network(net, net_opt, syn)
                step += 1
                bar.update()
                bar.set_postfix(outer=outer, match=f"{total / self.k:.4g}")
                self.history.append({"step": step, "outer": outer, "match": total / self.k})
            sched.step()
            with torch.no_grad():
                syn.clamp_(0, 1)
            if self.out_dir and cfg.checkpoint_every and (outer + 1) % cfg.checkpoint_every == 0:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.synthetic_set(syn).save(self.out_dir / "checkpoint.safetensors")
        bar.close()
        self.wall_time = time.time() - start
        result = self.synthetic_set(syn)
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            result.save(self.out_dir / "synset.safetensors")
            (self.out_dir / "history.json").write_text(json.dumps(self.history))
        return result

    def synthetic_set(self, syn: torch.Tensor) -> SyntheticSet:
        d = self.data
        return SyntheticSet(syn.detach().cpu().clone(), self.labels.cpu(), d.name, self.cfg.ipc, d.mean, d.std,
                            self.cfg.factor, False, self.cfg.regions.groups, json.loads(self.cfg.to_json()))
