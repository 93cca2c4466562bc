"""Distiller: UDD's Algorithm 1, top to bottom.

    S <- real images (IPC per class)
    for each outer iteration:                      fresh network theta
        S <- clamp(S, 0, 1)
        for each inner step:
            windows <- P most underutilized windows of every S_c under theta   (regions.select_windows)
            for each class c (or all classes at once: step="batched"):
                S_c_train <- [S_c ; crop_resize(S_c, windows)]                 (regions.training_batch)
                             (crop_sample < 1: a random share of the crops, weighted up)
                L <- grad_match(theta; DSA(R_c), DSA(S_c_train)) + lambda CFC   (losses)
                S_c <- S_c - lr dL/dS_c   (SGD, momentum 0.5, one buffer over S)  (image_step)
            theta <- theta - eta grad CE(theta; real mini-batches)
    return S              (as IDC: the last outer iteration's steps are not clamped)

With multi-formation (``factor`` > 1) S_c is decoded into its sub-images first and the windows are mined on
those. The windows of all classes are mined in one pass: theta is fixed within an inner step and S_c is
changed only by its own class's loss, so this is the per-class mining of Algorithm 1. For the same reason the
per-class image steps of IDC's code (one SGD step per class, in class order, with one momentum buffer over
all of S) can be taken for all classes at once, exactly: :class:`udd_fast.image_step.ClassSGD`.

``step="loop"`` is the reference: one class at a time, one backward each. ``step="batched"`` computes every
class's real and synthetic parameter gradients and matching loss in one ``torch.func.vmap`` of the same pure
function, with one backward. Both give the same update: each class draws its real batch and DSA parameters
from its own random stream, and the CFC bank is updated once per inner step with every class's mean embedding
(Algorithm 1 read literally would update it after each class, so class c would see this step's EMA of the
classes before it; the bank is a detached, slowly moving target, each row moving by (1 - alpha) of the gap to a
fresh mean embedding, so one step of staleness is harmless, and it makes the update independent of class
order, batching and the number of processes).

Under ``torchrun`` the classes are split over the processes: each process matches its own classes and the
synthetic images, mean embeddings and matching terms are summed across processes after every step (each row
is non-zero on exactly one process, so the sum is exact). Every process holds the same network: the same
seed gives the same initialisation, every process draws the same real mini-batches from the global random
stream, and the parameters are broadcast from rank 0 after each update so they stay bit-identical even where
GPU kernels are not deterministic. The network update itself is split (``net_update="split"``, the default):
each process passes its share of every batch and the gradients are summed, so the set equals one process's up
to the rounding of those sums; ``"repeat"`` has every process take the whole update, and then the set is
bit-identical to one process's (the tests check both).
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.func import vmap
from tqdm.auto import tqdm

from udd_fast import checkpoint, remembered
from udd_fast.augment import DSA, cutmix
from udd_fast.config import UDDConfig
from udd_fast.cpu import keep_freed_memory
from udd_fast.coreset import herding_coreset
from udd_fast.data import FolderData, RealData
from udd_fast.errors import Interrupted, UDDError
from udd_fast.files import atomic_write
from udd_fast.formation import decode, mix_init
from udd_fast.image_step import ClassSGD
from udd_fast.losses import (PRECISIONS, autocast, best_seconds, bf16_is_fast, bf16_units, cfc_loss, ema_update,
                             grad_match, matched_names, real_gradients, soft_cross_entropy)
from udd_fast.metrics import peak_memory
from udd_fast.models import build_model, network_optimizer
from udd_fast.regions import (batch_weights, candidate_windows, check_image_size, crops_kept, jitter_seed,
                             select_windows, training_batch)
from udd_fast.synset import SyntheticSet


#: Each class's random stream is seeded ``seed * CLASS_STREAM_STRIDE + c``: a prime above any class count, so
#: two seeds never give two classes the same stream.
CLASS_STREAM_STRIDE = 1_000_003
#: lr_img is multiplied by this at every ``lr_decay`` milestone (the paper halves it).
LR_IMG_DECAY = 0.5
#: timed inner steps per precision when ``precision="auto"`` chooses (the best of them counts)
PROBE_ROUNDS = 2


class Distiller:
    """Distill ``data`` into ``config.ipc`` synthetic images per class with UDD.

    >>> syn = Distiller(load_dataset("fashion-mnist"), preset("cpu-quick", "fashion-mnist", 1)).run()
    """

    def __init__(self, data: RealData | FolderData, config: UDDConfig, device: str | torch.device = "cpu",
                 out_dir: str | Path | None = None, reprobe: bool = False):
        data.check_ipc(config.ipc, config.factor)
        if config.regions.policy is not None:
            check_image_size(data.size, config.regions.groups)
        self.data, self.cfg, self.device = data.to(device), config, torch.device(device)
        keep_freed_memory(self.device)
        self.out_dir = Path(out_dir) if out_dir else None
        self.num_classes = data.num_classes
        self.windows = candidate_windows(config.regions.groups).to(self.device)
        self.dsa = DSA(config.dsa, mode="all", flip=data.flip)
        # the network update draws per image, and drops cutout when CutMix is on (IDC's remove_aug)
        net_aug = "_".join(t for t in config.dsa.split("_") if not (config.cutmix and t == "cutout"))
        self.net_dsa = DSA(net_aug, mode="idc", flip=data.flip)
        self.labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(config.ipc)
        net = self.new_network()
        self.matched = matched_names(net, config.matched)  # the parameters whose gradients are matched
        if config.step == "batched" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            raise UDDError(f"step='batched' cannot vmap a model with BatchNorm ({config.model}); use step='loop' "
                           "or a model with instance norm (convnet, resnetap10)")
        # this process's classes: a contiguous share of them under torchrun, all of them otherwise
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if self.world > self.num_classes:
            raise UDDError(f"{self.world} processes for {self.num_classes} classes: use at most one process per class")
        self.classes = [c for c in range(self.num_classes) if c * self.world // self.num_classes == self.rank]
        # BatchNorm's statistics would change with the share of the batch a process sees: repeat the update then
        self.split_update = config.net_update == "split" and not any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
        self.class_mask = torch.zeros(self.num_classes, device=self.device)  # 1 for this process's classes
        self.class_mask[self.classes] = 1
        # class index tensors made once: building them from lists every step copies host -> device each time
        self.own_index = torch.tensor(self.classes, device=self.device)
        self.group_index = {tuple(g): torch.tensor(g, device=self.device) for g in self.class_groups()}
        self.history: list[dict] = []
        self.restored_steps = 0               # entries of the history that came from a checkpoint
        self.saved_outer: int | None = None  # the outer iteration of the newest checkpoint on disk
        # the network passes' precision; "auto" is settled by timing in start() (choose_precision)
        self.precision, self.probe = config.precision, None
        self.reprobe = reprobe  # "auto": time the precisions again even when this machine's choice is remembered

    # --- Algorithm 1 ----------------------------------------------------------------------------------
    def run(self, progress: bool = True, resume: bool = False) -> SyntheticSet:
        """Run the whole distillation and return the synthetic set (also saved to ``out_dir`` if given, with the
        initialisation beside it as ``init.safetensors``; ``self.init_set`` holds it too).

        With ``out_dir``, a checkpoint is written every ``checkpoint_every`` outer iterations; ``resume``
        continues from the newest readable one and ends with the same set as an uninterrupted run."""
        cfg = self.cfg
        syn, opt, first = self.start(resume)
        step = first * cfg.inner
        bar = tqdm(total=cfg.outer * cfg.inner, initial=step, desc="distill", unit="step",
                   disable=not progress or self.rank > 0)
        start = last = time.time()
        with self.on_interrupt(bar) as outer_begins:  # Ctrl-C or SIGTERM: the last whole outer iteration is kept
            for outer in range(first, cfg.outer):
                outer_begins(syn, opt, outer)
                # Pixels are kept valid here only, as in IDC: the last outer iteration's steps stay unclamped.
                with torch.no_grad():
                    syn.clamp_(0, 1)
                opt.lr = self.lr_img_at(outer)
                # A fresh network every outer iteration, so that S serves networks at every stage of training
                # rather than one network's trajectory; CFC's memory of each class starts from its view of S.
                net, net_opt = self.fresh_network()
                bank = self.class_embeddings(net, syn)
                for inner in range(cfg.inner):
                    # Mine every class's underutilized windows and accumulate dL/dS of its matching + CFC loss.
                    opt.before(syn)
                    syn.grad = None
                    match, bank = self.matching_gradient(net, syn, bank, step)
                    total = match.sum().item()
                    if not math.isfinite(total):
                        raise UDDError(f"matching loss became {total} at outer {outer}, inner {inner}; lower lr_img")
                    # One image step per class, in IDC's order; then every process holds every class's rows.
                    opt.step(syn, syn.grad)
                    with torch.no_grad():
                        syn.copy_(self.all_reduce_own_rows(syn))
                    # The network learns on real data between steps, not after the last: a fresh one follows.
                    if inner < cfg.inner - 1:
                        self.train_network(net, net_opt, syn)
                    step += 1
                    last = self.record(bar, step, outer, total, last)
                if self.out_dir and cfg.checkpoint_every and (outer + 1) % cfg.checkpoint_every == 0:
                    self.save_checkpoint(syn, opt, outer + 1)
        bar.close()
        return self.finish(syn, time.time() - start)

    # --- its pieces, in the order the loop uses them --------------------------------------------------
    def start(self, resume: bool) -> tuple[torch.Tensor, ClassSGD, int]:
        """S, its image optimizer and the first outer iteration to run: from the initialisation (Algorithm 1's
        S <- real images), or from the newest checkpoint under ``resume``."""
        cfg = self.cfg
        self.seed()
        state = checkpoint.load(self.out_dir) if resume and self.out_dir else None
        if state is not None and "init" not in state:
            raise UDDError(f"the checkpoint in {self.out_dir} was written by an earlier version of udd_fast (it lacks "
                           "the initialisation); use another --out or delete it to start over")
        init = state["init"].to(self.device) if state else self.init_synthetic()
        self.init_set = self.synthetic_set(init)
        syn = (state["syn"].to(self.device) if state else init.clone()).requires_grad_(True)
        if cfg.precision == "auto":
            self.precision = state["precision"] if state and "precision" in state else self.choose_precision(syn)
        opt = ClassSGD(syn, self.labels, self.num_classes, cfg.lr_img, cfg.mom_img)
        return syn, opt, self.restore(state, opt) if state else 0

    def choose_precision(self, syn: torch.Tensor) -> str:
        """``precision="auto"``: fp32 where bf16 has no hardware path (:func:`bf16_is_fast`); else the choice
        remembered for this machine and this shape of run (:mod:`udd_fast.remembered`), unless ``reprobe``;
        else the faster of fp32 and bf16 over :data:`PROBE_ROUNDS` timed inner steps each
        (:func:`best_seconds`), each precision on its own fresh network, and that choice is remembered. The
        probe leaves no trace: its networks are thrown away and every random stream is put back, so the run is
        the one its chosen precision gives. Under torchrun rank 0's choice (remembered or measured) holds
        everywhere. What was measured or recalled, and the bf16 hardware found, is kept in ``self.probe`` (and
        in metrics.json)."""
        if not bf16_is_fast(self.device.type):
            self.probe = {"chosen": "fp32", "reason": f"no bf16 hardware path on this {self.device.type}"}
            return "fp32"
        key = {"machine": remembered.machine(self.device, self.world), "run": self.probe_shape()}
        known = remembered.recall(key) if self.rank == 0 and not self.reprobe else None
        # (remembered, bf16 chosen): every process probes, or none does, since the probe's steps synchronise
        pick = torch.tensor([float(known is not None), float(known is not None and known["chosen"] == "bf16")],
                            device=self.device)
        if self.world > 1:
            dist.broadcast(pick, 0)
        if pick[0].item():
            chosen = "bf16" if pick[1].item() else "fp32"
            self.probe = {**(known or {}), "chosen": chosen, "remembered": str(remembered.record_path(key))}
            return chosen
        rng, streams = torch.get_rng_state(), [g.get_state() for g in self.streams]
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        nets = {}
        for p in PRECISIONS:
            net, opt = self.fresh_network()
            nets[p] = (net, opt, self.class_embeddings(net, syn))
        seconds = best_seconds(lambda p: self.step_seconds(syn, p, nets[p]), PROBE_ROUNDS)
        torch.set_rng_state(rng)
        for g, state in zip(self.streams, streams):
            g.set_state(state)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
        syn.grad = None
        pick = torch.tensor(float(seconds["bf16"] < seconds["fp32"]), device=self.device)
        if self.world > 1:
            dist.broadcast(pick, 0)
        chosen = "bf16" if pick.item() else "fp32"
        self.probe = {"chosen": chosen, "step_s": seconds, "bf16_units": bf16_units(self.device.type)}
        if self.rank == 0:
            remembered.remember(key, self.probe)
        return chosen

    def probe_shape(self) -> dict:
        """What an inner step's cost depends on besides the machine: the data's shape and every setting that
        changes what a step computes (the fields that only change values, such as learning rates and the seed,
        are left out, so that runs differing in them share one probe)."""
        values_only = {"outer", "inner", "lr_img", "mom_img", "lr_decay", "lam", "tau", "alpha", "net_lr", "init",
                       "precision", "seed", "checkpoint_every"}
        d = self.data
        return {"data": [d.channels, d.size, d.num_classes],
                **{k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in values_only}}

    def step_seconds(self, syn: torch.Tensor, precision: str, probe: tuple) -> float:
        """Wall time of one inner step (matching and network update) in ``precision`` on the probe's network,
        optimizer and CFC bank ``probe``."""
        self.precision = precision
        net, opt, bank = probe
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        syn.grad = None
        self.matching_gradient(net, syn, bank, 0)
        self.train_network(net, opt, syn)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def seed(self) -> None:
        """Seed the global random stream (networks and their training, the initialisation) and one stream per
        class (its real batches and augmentation draws)."""
        torch.manual_seed(self.cfg.seed)
        self.streams = [torch.Generator().manual_seed(self.cfg.seed * CLASS_STREAM_STRIDE + c)
                        for c in range(self.num_classes)]

    def init_synthetic(self) -> torch.Tensor:
        """Real images of each class (``factor**2`` of them tiled into each stored image): the class's first
        images in dataset order (IDC's initialisation), random ones, or the herding selection (images whose
        running mean embedding tracks the class mean); or noise."""
        cfg, k, n = self.cfg, self.num_classes, self.cfg.ipc * self.cfg.factor ** 2
        if cfg.init == "noise":
            return torch.rand(k * cfg.ipc, self.data.channels, self.data.size, self.data.size, device=self.device)
        if cfg.init == "herding":
            real = herding_coreset(self.data, n, seed=cfg.seed)[0].to(self.device).unflatten(0, (k, n))
        else:
            real = [self.data.class_batch(c, n, first=cfg.init == "first") for c in range(k)]
        return torch.cat([mix_init(r, cfg.factor) for r in real])

    def lr_img_at(self, outer: int) -> float:
        """``lr_img`` times :data:`LR_IMG_DECAY` at every ``lr_decay`` milestone passed (none at 0: with
        ``outer`` 1 it would lower lr_img before the first step)."""
        milestones = [m for m in (int(f * self.cfg.outer) for f in self.cfg.lr_decay) if m > 0]
        return self.cfg.lr_img * LR_IMG_DECAY ** sum(outer >= m for m in milestones)

    def new_network(self):
        cfg = self.cfg
        net = build_model(cfg.model, self.data.channels, self.num_classes, self.data.size, cfg.width, cfg.depth)
        return net.to(self.device)

    def fresh_network(self):
        """A newly initialised network, the same on every process, and its SGD optimizer."""
        net = self.new_network()
        self.sync_network(net)
        return net, network_optimizer(net, self.cfg.net_lr)

    @torch.no_grad()
    def class_embeddings(self, net, syn: torch.Tensor) -> torch.Tensor:
        """Mean embedding of each class's decoded synthetic images: the CFC bank of a fresh network."""
        per_class = syn.view(self.num_classes, -1, *syn.shape[1:])
        return torch.stack([net.embed(self.data.normalize(decode(s, self.cfg.factor))).mean(0) for s in per_class])

    def matching_gradient(self, net, syn: torch.Tensor, bank: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dL/dS of this process's classes, accumulated into ``syn.grad`` (no step is taken). Returns every
        class's matching term (K,) and the bank updated with every class's mean synthetic embedding."""
        params = {n: p.detach() for n, p in net.named_parameters()}
        index = self.underutilized_windows(net, syn, step)
        reals, draws = self.draw_real(self.classes)
        match = torch.zeros(self.num_classes, device=self.device)
        f_bar = torch.zeros_like(bank)
        for classes in self.class_groups():  # Algorithm 1's "for each class c"
            loss, match[classes], f_bar[classes] = self.class_losses(net, params, syn, index, reals, draws,
                                                                     classes, bank)
            loss.backward()
        match, f_bar = self.all_reduce_own_rows(match), self.all_reduce_own_rows(f_bar)
        return match, ema_update(bank, torch.arange(self.num_classes, device=self.device), f_bar, self.cfg.alpha)

    def class_groups(self) -> list[list[int]]:
        """The classes whose losses are formed together: each of this process's classes alone under
        ``step="loop"``, all of them in one vmap under ``step="batched"`` (the same losses, one backward)."""
        return [self.classes] if self.cfg.step == "batched" else [[c] for c in self.classes]

    def underutilized_windows(self, net, syn: torch.Tensor, step: int) -> torch.Tensor | None:
        """Indices (classes, decoded images per class, P) of the P most underutilized windows of every decoded
        image of this process's classes (rows of other classes stay 0); None without regions. The jitter noise
        is keyed by (cfg.seed, step) and each image's global index, so it does not depend on how the classes
        are split over processes."""
        cfg = self.cfg
        if cfg.regions.policy is None:
            return None
        own = self.own_index
        per_class = cfg.ipc * cfg.factor ** 2
        images = decode(syn.detach().unflatten(0, (self.num_classes, cfg.ipc))[own].flatten(0, 1), cfg.factor)
        labels = own.repeat_interleave(per_class)
        with autocast(self.device.type, self.precision):
            # this process's classes are contiguous, so its decoded images are too, from class classes[0]'s first
            index = select_windows(net, images, labels, self.windows, self.data.normalize, cfg.regions,
                                   jitter_seed(cfg.seed, step), first_image=self.classes[0] * per_class)
        full = index.new_zeros(self.num_classes, images.shape[0] // len(own), cfg.regions.p)
        full[own] = index.unflatten(0, (len(own), -1))
        return full

    def draw_real(self, classes: list[int]) -> tuple[dict, dict]:
        """Each class's real batch, its Siamese DSA draws (the images' and the crops') and, under
        ``crop_sample`` < 1, which of its chosen crops enter the batch; all from the class's own random stream
        (so they do not depend on the step mode or on which process handles the class). The crops pass their
        images' draw unless ``crop_draw="own"``; a second draw and a pick are drawn only when asked for, so
        the default run's stream is unchanged."""
        regions = self.cfg.regions
        own = regions.policy is not None and regions.crop_draw == "own"
        chosen = self.cfg.ipc * self.cfg.factor ** 2 * regions.p  # a class's n * P chosen crops
        kept = crops_kept(self.cfg.ipc * self.cfg.factor ** 2, regions.p, regions.crop_sample)
        reals, draws = {}, {}
        for c in classes:
            reals[c] = self.data.class_batch(c, self.cfg.batch_real, self.streams[c])
            sample = partial(self.dsa.sample, 1, reals[c].shape[-2:], self.device, siamese=True,
                             generator=self.streams[c])
            parent = sample()
            crops = sample() if own else parent
            pick = None
            if regions.policy is not None and kept < chosen:
                pick = torch.randperm(chosen, generator=self.streams[c])[:kept].to(self.device)
            draws[c] = parent, crops, pick
        return reals, draws

    def class_losses(self, net, params, syn, index, reals, draws, classes: list[int], bank):
        """Loss of ``classes`` (one class in the loop, all of them batched): gradient matching on each
        class's shared DSA draw, plus lambda * CFC. Returns ``(loss, matching terms (g,), mean synthetic
        embeddings (g, D))``."""
        cfg, norm, g = self.cfg, self.data.normalize, len(classes)
        cls = self.group_index[tuple(classes)]
        s = syn.unflatten(0, (self.num_classes, cfg.ipc))[cls].flatten(0, 1)
        x_syn = decode(s, cfg.factor)
        n, p = x_syn.shape[0] // g, 0 if index is None else cfg.regions.p
        pick = None if p == 0 or draws[classes[0]][2] is None else torch.stack([draws[c][2] for c in classes])
        k = n * p if pick is None else pick.shape[1]  # the crops in each class's batch
        w_syn = batch_weights(n, p, cfg.regions.crop_share, cfg.regions.crops_on_top, k).to(self.device).expand(g, -1)
        if index is not None:
            x_syn = training_batch(x_syn, self.windows, index[cls].flatten(0, 1), g, pick)
        x_real = torch.cat([reals[c] for c in classes])
        x_real = self.dsa.apply(norm(x_real), DSA.repeat([draws[c][0] for c in classes], x_real.shape[0] // g))
        x_real = x_real.unflatten(0, (g, -1))
        # each class's synthetic batch is its n images (the images' draw) then its k crops (the crops' draw)
        blocks = [d for c in classes for d in draws[c][:2]]
        x_syn = self.dsa.apply(norm(x_syn), DSA.repeat(blocks, [n, k] * g)).unflatten(0, (g, -1))
        y_real = cls[:, None].expand(x_real.shape[:2])
        y_syn = cls[:, None].expand(x_syn.shape[:2])
        fn = partial(grad_match, net, params, self.matched, metric=cfg.metric, precision=self.precision)
        if cfg.step == "batched":
            match, emb = vmap(fn)(x_real, y_real, x_syn, y_syn, w_syn)
        else:
            g_real = real_gradients(net, params, self.matched, x_real[0], y_real[0], self.precision)
            match, emb = (t[None] for t in fn(x_real[0], y_real[0], x_syn[0], y_syn[0], w_syn[0], g_real=g_real))
        f_bar = emb.mean(1)
        loss = match.sum()
        if cfg.cfc:
            loss = loss + cfg.lam * cfc_loss(f_bar, bank, cls, cfg.tau).sum()
        return loss, match.detach(), f_bar.detach()

    def all_reduce_own_rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (class-major rows) with every process's rows of its own classes: each process zeroes the rows
        of classes it does not own and the results are summed, so every row comes from exactly one process."""
        if self.world == 1:
            return t
        t = t * self.class_mask.repeat_interleave(t.shape[0] // self.num_classes).view(-1, *[1] * (t.dim() - 1))
        dist.all_reduce(t)
        return t

    def train_network(self, net, opt, syn: torch.Tensor) -> None:
        """IDC Eq. 6: a few SGD steps of the network on augmented, CutMixed real (or synthetic) batches; rank
        0's result on every process.

        Under torchrun with ``net_update="split"`` every process draws and augments the whole batch (the same
        draws from the global stream, and CutMix needs every image), then takes the forward and backward passes
        of its own rows only; the gradients, each scaled by its share of the batch, are summed across processes,
        so every process steps with the whole batch's gradient, as one process would, up to the order of the
        sums."""
        cfg = self.cfg
        for _ in range(cfg.net_batches):
            if cfg.net_on == "real":
                x, y = self.data.random_batch(cfg.net_batch)
            else:
                x = decode(syn.detach(), cfg.factor)
                y = self.labels.repeat_interleave(cfg.factor ** 2)
            x = self.net_dsa(self.data.normalize(x))
            target = F.one_hot(y, self.num_classes).float()
            if torch.rand(()) < cfg.cutmix:
                x, target = cutmix(x, y, self.num_classes)
            rows = self.update_rows(len(x))
            with autocast(self.device.type, self.precision):
                logits = net(x[rows])
            loss = soft_cross_entropy(logits, target[rows]) * ((rows.stop - rows.start) / len(x))
            opt.zero_grad()
            loss.backward()
            if rows.stop - rows.start < len(x):
                self.all_reduce_gradients(net)
            opt.step()
        self.sync_network(net)

    def update_rows(self, n: int) -> slice:
        """The rows of an ``n``-image network-update batch this process trains on: a contiguous share under
        ``net_update="split"`` (every row once across processes), all of them otherwise."""
        if self.world == 1 or not self.split_update or n < self.world:
            return slice(0, n)
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def all_reduce_gradients(self, net) -> None:
        """Sum the network's gradients across processes, in one flat buffer (one call, not one per tensor)."""
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def sync_network(self, net) -> None:
        """Rank 0's parameters on every process."""
        if self.world > 1:
            for p in net.parameters():
                dist.broadcast(p.data, 0)

    def record(self, bar, step: int, outer: int, total: float, last: float) -> float:
        """The progress bar and the history (mean matching term per class, the step's wall seconds since
        ``last``, peak memory) after a step; returns now. The median of the steps' seconds says what a step
        costs even when a run was paused or shared its cores for a while."""
        now = time.time()
        bar.update()
        bar.set_postfix(outer=outer, match=f"{total / self.num_classes:.4g}")
        self.history.append({"step": step, "outer": outer, "match": total / self.num_classes,
                             "seconds": now - last, **peak_memory(self.device)})
        return now

    def finish(self, syn: torch.Tensor, wall_time: float) -> SyntheticSet:
        """The synthetic set, saved with its initialisation and the history when there is an ``out_dir``."""
        self.wall_time = wall_time
        self.memory = peak_memory(self.device)
        result = self.synthetic_set(syn)
        if self.out_dir and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            result.save(self.out_dir / "synset.safetensors")
            self.init_set.save(self.out_dir / "init.safetensors")
            atomic_write(self.out_dir / "history.json", json.dumps(self.history), "history")
        return result

    def synthetic_set(self, syn: torch.Tensor) -> SyntheticSet:
        d = self.data
        return SyntheticSet(syn.detach().cpu().clone(), self.labels.cpu(), d.name, self.cfg.ipc, d.mean, d.std,
                            self.cfg.factor, False, self.cfg.regions.groups, json.loads(self.cfg.to_json()))

    # --- checkpoints ----------------------------------------------------------------------------------
    def checkpoint_state(self, syn: torch.Tensor, opt: ClassSGD, outer: int) -> dict:
        """Everything the rest of the run depends on after ``outer`` outer iterations (a fresh network and
        CFC bank follow, so neither is saved), copied: the run goes on changing S. Every process joins in."""
        momentum = self.all_reduce_own_rows(opt.buffer)
        state = {"outer": outer, "syn": syn.detach().cpu().clone(), "init": self.init_set.images,
                 "momentum": momentum.cpu().clone(), "rng": torch.get_rng_state(),
                 "streams": torch.stack([g.get_state() for g in self.streams]), "history": json.dumps(self.history),
                 "config": self.cfg.to_json(), "precision": self.precision}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self, syn: torch.Tensor, opt: ClassSGD, outer: int) -> None:
        """Write the checkpoint after ``outer`` outer iterations; every process joins in, rank 0 writes."""
        self.write_checkpoint(self.checkpoint_state(syn, opt, outer))

    def write_checkpoint(self, state: dict) -> None:
        if self.rank == 0:
            checkpoint.save(self.out_dir, state)
        self.saved_outer = state["outer"]

    @contextmanager
    def on_interrupt(self, bar):
        """Around the outer loop: Ctrl-C (SIGINT) or SIGTERM stops the run and keeps the last whole outer
        iteration. The loop calls the yielded ``outer_begins(syn, opt, outer)`` at the start of each outer
        iteration, which copies the state there (what a checkpoint after the previous one holds); on an
        interrupt that copy is written as the checkpoint, unless it is already on disk, and
        :class:`~udd_fast.errors.Interrupted` says how to resume. ``--resume`` then redoes the interrupted
        outer iteration from its start and ends with the set of an uninterrupted run."""
        held = {}

        def outer_begins(syn, opt, outer):
            held["outer"] = outer
            if self.out_dir:
                held["state"] = self.checkpoint_state(syn, opt, outer)

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
        try:
            yield outer_begins
        except KeyboardInterrupt:
            bar.close()
            raise self.interrupted(held) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def interrupted(self, held: dict) -> Interrupted:
        """Write the held state as a checkpoint (unless it is on disk already) and say how to go on."""
        where = f"in outer iteration {held.get('outer', 0) + 1} of {self.cfg.outer}"
        if self.out_dir is None:
            return Interrupted(f"distillation interrupted {where}; nothing was saved (no out_dir)")
        state = held.get("state")
        if state is not None and self.saved_outer != state["outer"]:
            self.write_checkpoint(state)
        if self.saved_outer is None:
            return Interrupted(f"distillation interrupted {where}, before anything could be saved in {self.out_dir}")
        return Interrupted(f"distillation interrupted {where}: {self.out_dir / checkpoint.NAME} holds the run after "
                           f"{self.saved_outer} outer iteration(s); run the same command with --resume to continue "
                           "(it ends with the set an uninterrupted run gives)")

    def restore(self, state: dict, opt: ClassSGD) -> int:
        """Load a checkpoint's momentum, random streams and history; returns the next outer index."""
        # a setting the checkpoint predates counts as its default, which is what that run used
        default, saved = json.loads(UDDConfig().to_json()), json.loads(state["config"])
        saved = {**default, **saved, "regions": {**default["regions"], **saved.get("regions", {})}}
        now = json.loads(self.cfg.to_json())
        changed = sorted(k for k in now if k != "checkpoint_every" and saved.get(k) != now[k])
        if changed:
            raise UDDError(f"the checkpoint in {self.out_dir} was written with other settings ({', '.join(changed)}); "
                           "resume with the same settings or use another --out")
        opt.buffer = state["momentum"].to(self.device)
        self.saved_outer = state["outer"]
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        for g, s in zip(self.streams, state["streams"]):
            g.set_state(s.clone())  # a row view of the stack crashes set_state (it ignores the storage offset)
        self.history = json.loads(state["history"])
        self.restored_steps = len(self.history)
        return state["outer"]
