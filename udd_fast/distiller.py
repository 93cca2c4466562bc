"""Distiller: UDD's Algorithm 1, top to bottom.

    S <- real images (IPC per class)
    for each outer iteration:                      fresh network theta
        for each inner step:
            for each class c:
                windows <- P most underutilized windows of S_c under theta      (regions.select_windows)
                S_c_train <- [S_c ; crop_resize(S_c, windows)]                 (regions.training_batch)
                L <- grad_match(theta; DSA(R_c), DSA(S_c_train)) + lambda CFC   (losses)
            S <- S - lr dL/dS   (SGD, momentum 0.5)
            theta <- theta - eta grad CE(theta; real mini-batches)
        S <- clamp(S, 0, 1)

With multi-formation (``factor`` > 1) S_c is decoded into its sub-images first and the windows are mined on
those. Every class's loss depends only on its own S_c, so summing the class losses and taking one optimizer
step per inner step is exactly a per-class SGD step with per-class momentum.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from udd_fast.augment import DSA
from udd_fast.config import UDDConfig
from udd_fast.data import RealData
from udd_fast.errors import UDDError
from udd_fast.evaluate import herding_coreset
from udd_fast.losses import cfc_loss, ema_update, grad_match, matched_names
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

    def train_inputs(self, net, s_c: torch.Tensor, c: int, seed: int) -> torch.Tensor:
        """Class c's synthetic training batch: decoded sub-images plus their P most underutilized windows."""
        images = decode(s_c, self.cfg.factor)
        if self.cfg.regions.policy is None:
            return images
        labels = torch.full((images.shape[0],), c, device=self.device)
        index = select_windows(net, images, labels, self.windows, self.data.normalize, self.cfg.regions, seed)
        return training_batch(images, self.windows, index)

    def class_loss(self, net, params, names, s_c, c, bank, seed):
        """Loss of class ``c``: gradient matching on one shared DSA draw, plus lambda * CFC.
        Returns ``(loss, matching term, mean synthetic embedding)``."""
        cfg, norm = self.cfg, self.data.normalize
        x_syn = self.train_inputs(net, s_c, c, seed)
        x_real = self.data.class_batch(c, cfg.batch_real)
        draw = self.dsa.sample(1, x_real.shape[-2:], self.device, siamese=True)
        y_real = torch.full((x_real.shape[0],), c, device=self.device)
        y_syn = torch.full((x_syn.shape[0],), c, device=self.device)
        match, emb = grad_match(net, params, names, self.dsa.apply(norm(x_real), draw), y_real,
                                self.dsa.apply(norm(x_syn), draw), y_syn, cfg.metric)
        f_bar = emb.mean(0)
        loss = match + cfg.lam * cfc_loss(f_bar, bank, c, cfg.tau) if cfg.cfc else match
        return loss, match.detach(), f_bar.detach()

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
            loss = torch.sum(-target * F.log_softmax(net(x), 1), 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    # --- Algorithm 1 ----------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> SyntheticSet:
        """Run the whole distillation and return the synthetic set (also saved to ``out_dir`` if given)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        syn = self.init_synthetic().requires_grad_(True)
        self.labels = torch.arange(self.k, device=self.device).repeat_interleave(cfg.ipc)
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
            params = dict(net.named_parameters())
            names = matched_names(net, cfg.matched)
            bank = self.class_embeddings(net, syn)
            for inner in range(cfg.inner):
                opt.zero_grad()
                total = 0.0
                for c in range(self.k):
                    s_c = syn[c * cfg.ipc:(c + 1) * cfg.ipc]
                    loss, match, f_bar = self.class_loss(net, params, names, s_c, c, bank, seed=step * self.k + c)
                    loss.backward()
                    bank = ema_update(bank, c, f_bar, cfg.alpha)
                    total += match.item()
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
