"""Evaluation: train fresh networks on a synthetic set's training images and test on real test images, under
named protocols; the random-real-images baseline at the same IPC (the coresets: :mod:`udd_fast.coreset`)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from udd_fast.augment import DSA, cutmix, random_shift
from udd_fast.cpu import keep_freed_memory
from udd_fast.data import FolderData, RealData
from udd_fast import remembered
from udd_fast.errors import UDDError
from udd_fast.coreset import random_coreset
from udd_fast.losses import PRECISIONS, autocast, best_seconds, resolve_precision, soft_cross_entropy
from udd_fast.metrics import mue
from udd_fast.models import NET_MOMENTUM, NET_WEIGHT_DECAY, build_model, network_optimizer
from udd_fast.synset import SyntheticSet


@dataclass(frozen=True)
class EvalProtocol:
    """How a set is scored: a named, recorded recipe for training fresh networks on it (see :data:`PROTOCOLS`).

    ``augment``: ``"dsa"`` applies DSA ``dsa`` in ``dsa_mode`` (normalized space); ``"shift"`` random integer
    shifts of up to ``shift`` pixels with black fill (pixel space); ``"none"`` nothing. ``cutmix`` is the
    probability of CutMix per batch. The learning rate is multiplied by ``gamma`` at each of ``milestones``
    (fractions of ``epochs``)."""

    name: str = "dsa"
    model: str = "convnet"
    width: int | None = 128
    epochs: int = 300
    batch: int = 256
    lr: float = 0.01
    momentum: float = NET_MOMENTUM
    weight_decay: float = NET_WEIGHT_DECAY
    milestones: tuple[float, ...] = (0.5,)
    gamma: float = 0.1
    augment: str = "dsa"
    dsa: str = "color_crop_cutout_flip_scale_rotate"
    dsa_mode: str = "single"
    shift: int = 4
    cutmix: float = 0.0
    repeats: int = 3
    precision: str = "fp32"              # "bf16": network passes under bfloat16 autocast (weights stay fp32);
                                         # "auto": bf16 where it is faster (eval_precision)

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise UDDError(f"unknown evaluation augmentation {self.augment!r}; choose one of {', '.join(AUGMENTS)}")
        if self.precision not in (*PRECISIONS, "auto"):
            raise UDDError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)} or auto")
        if self.epochs < 1 or self.repeats < 1 or self.batch < 1:
            raise UDDError(f"evaluation needs epochs, repeats and batch >= 1 (got {self.epochs}, {self.repeats}, "
                           f"{self.batch})")

    def describe(self) -> str:
        aug = {"dsa": f"DSA `{self.dsa}` ({self.dsa_mode})", "shift": f"random shifts of up to {self.shift} px",
               "none": "no augmentation"}[self.augment]
        decay = (f"lr x{self.gamma} at {', '.join(f'{m:.3g}' for m in self.milestones)} of training"
                 if self.milestones else "constant lr")
        mix = f", CutMix p {self.cutmix}" if self.cutmix else ""
        numerics = {"fp32": "", "bf16": ", bf16 autocast", "auto": ", bf16 autocast where the hardware has it"}[
            self.precision]
        return (f"`{self.name}`: {self.model} (width {self.width or 'standard'}), {self.epochs} epochs, batch "
                f"{self.batch}, SGD lr {self.lr}, {decay}, momentum {self.momentum}, weight decay "
                f"{self.weight_decay}, {aug}{mix}{numerics}; mean ± std over {self.repeats} networks")


AUGMENTS = ("dsa", "shift", "none")

#: The named evaluation protocols. ``dsa`` is DC/DSA's (one DSA transform per batch, lr x0.1 at half);
#: ``plain`` trains with random shifts only, so a set cannot lean on heavy augmentation; ``idc`` is IDC's
#: (1000 epochs, batch 64, its DiffAug without cutout, CutMix 0.5, lr x0.2 at 2/3 and 5/6); ``paper`` is what
#: the UDD paper's appendix states (300 epochs at a fixed lr 0.01; augmentation as DC/DSA, which it follows).
PROTOCOLS = {
    "dsa": EvalProtocol("dsa"),
    "plain": EvalProtocol("plain", augment="shift", dsa="none"),
    "idc": EvalProtocol("idc", epochs=1000, batch=64, milestones=(2 / 3, 5 / 6), gamma=0.2,
                        dsa="color_crop_flip_scale_rotate", dsa_mode="idc", cutmix=0.5),
    "paper": EvalProtocol("paper", milestones=()),
}
#: What every command reports unless told otherwise: two protocols that rank sets differently.
DEFAULT_PROTOCOLS = ("plain", "dsa")


def protocol(name: str, **changes) -> EvalProtocol:
    """The named evaluation protocol, with ``changes`` (e.g. ``epochs``, ``repeats``, ``model``)."""
    if name not in PROTOCOLS:
        raise UDDError(f"unknown evaluation protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return replace(PROTOCOLS[name], **{k: v for k, v in changes.items() if v is not None})


def eval_precision(proto: EvalProtocol, test: RealData, device="cpu") -> str:
    """The precision of ``proto``'s training passes: as given, or for ``auto`` fp32 where bf16 has no hardware
    path (:func:`udd_fast.losses.resolve_precision`) and otherwise the faster of fp32 and bf16 over timed
    training batches on a throwaway network (:func:`batch_seconds`). Probed once per machine, network and batch
    shape, and remembered (:mod:`udd_fast.remembered`); the global random stream is put back, so the training
    that follows is the one its precision gives."""
    dev = torch.device(device)
    resolved = resolve_precision(proto.precision, dev.type)
    if proto.precision != "auto" or resolved == "fp32":
        return resolved
    key = {"machine": remembered.machine(dev), "evaluation": [proto.model, proto.width, test.channels, test.size,
                                                              test.num_classes, proto.batch]}
    known = remembered.recall(key)
    if known is None:
        rng = torch.get_rng_state()
        seconds = batch_seconds(proto, test, dev)
        torch.set_rng_state(rng)
        known = {"chosen": min(seconds, key=seconds.get), "batch_s": seconds}
        remembered.remember(key, known)
    return known["chosen"]


def training_batch(proto: EvalProtocol, test: RealData, dev: torch.device):
    """One training batch of ``proto``'s network (forward, backward, SGD step) on random images of ``test``'s
    shape, as a call taking the precision: what :func:`batch_seconds` times."""
    net = build_model(proto.model, test.channels, test.num_classes, test.size, proto.width).to(dev)
    opt = network_optimizer(net, proto.lr, proto.momentum, proto.weight_decay)
    x = torch.rand(proto.batch, test.channels, test.size, test.size, device=dev)
    y = torch.randint(test.num_classes, (proto.batch,), device=dev)

    def batch(precision: str) -> None:
        with autocast(dev.type, precision):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch


def batch_seconds(proto: EvalProtocol, test: RealData, dev: torch.device, rounds: int = 3) -> dict[str, float]:
    """Seconds of one training batch of ``proto``'s network in each precision (:func:`best_seconds`)."""
    batch = training_batch(proto, test, dev)

    def seconds(precision: str) -> float:
        start = time.perf_counter()
        batch(precision)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    return best_seconds(seconds, rounds)


def train_and_test(x: torch.Tensor, y: torch.Tensor, test: RealData, proto: EvalProtocol, seed: int = 0,
                   device="cpu", progress: bool = False):
    """Train one fresh network on (x, y) (pixel space); return its test accuracy in percent and the network."""
    keep_freed_memory(device)
    proto = replace(proto, precision=eval_precision(proto, test, device))
    torch.manual_seed(seed)
    net = build_model(proto.model, test.channels, test.num_classes, test.size, proto.width).to(device)
    opt = network_optimizer(net, proto.lr, proto.momentum, proto.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [round(m * proto.epochs) for m in proto.milestones],
                                                 proto.gamma)
    dsa = DSA(proto.dsa, mode=proto.dsa_mode, flip=test.flip)
    x, y = x.to(device), y.to(device)
    for _ in tqdm(range(proto.epochs), desc=f"evaluate ({proto.name})", disable=not progress, leave=False):
        for idx in torch.randperm(len(y), device=device).split(proto.batch):
            xb, target = x[idx], F.one_hot(y[idx], test.num_classes).float()
            if proto.augment == "shift":
                xb = random_shift(xb, proto.shift)
            xb = test.normalize(xb)
            if proto.augment == "dsa":
                xb = dsa(xb)
            if proto.cutmix and torch.rand(()) < proto.cutmix:
                xb, target = cutmix(xb, y[idx], test.num_classes)
            with autocast(xb.device.type, proto.precision):
                logits = net(xb)
            loss = soft_cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return accuracy(net, test, device, proto.precision), net


@torch.no_grad()
def accuracy(net, test: RealData, device="cpu", precision: str = "fp32", batch: int = 1000) -> float:
    net.eval()
    correct = 0
    for xs, ys in zip(test.images.split(batch), test.labels.split(batch)):
        with autocast(torch.device(device).type, precision):
            logits = net(test.normalize(xs.to(device)))
        correct += (logits.argmax(1) == ys.to(device)).sum().item()
    net.train()
    return 100.0 * correct / len(test.labels)


def evaluate_images(x, y, test: RealData, proto: EvalProtocol = EvalProtocol(), device="cpu", seed: int = 0,
                    progress: bool = True) -> dict:
    """Score a training set over ``proto.repeats`` fresh networks: mean and std accuracy, each run, the
    training-set size, the mUE of the training images under the trained networks, and wall time."""
    start = time.time()
    accs, mues = [], []
    for r in tqdm(range(proto.repeats), desc="repeats", disable=not progress):
        acc, net = train_and_test(x, y, test, proto, seed + r, device, progress)
        accs.append(acc)
        mues.append(mue(x.to(device), net, test.normalize))
    t = torch.tensor(accs)
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item() if len(accs) > 1 else 0.0,
            "accs": accs, "train_images": int(len(y)), "mue": sum(mues) / len(mues),
            "wall_s": time.time() - start, "protocol": asdict(proto),
            "precision": eval_precision(proto, test, device)}


def evaluate(synset: SyntheticSet, test: RealData, proto: EvalProtocol = EvalProtocol(), expand: bool | None = None,
             device="cpu", seed: int = 0, progress: bool = True) -> dict:
    """Evaluate ``synset`` on its training set (its recorded form unless ``expand`` overrides)."""
    x, y = synset.training_set(expand)
    return evaluate_images(x, y, test, proto, device, seed, progress)


def moved(synset: SyntheticSet, init: SyntheticSet) -> float:
    """How far distillation moved the stored images from their initialisation: mean |S - S_init| in pixels."""
    return (synset.images - init.images).abs().mean().item()


def evaluate_against_init(synset: SyntheticSet, init: SyntheticSet, test: RealData, protocols, expand=None,
                          device="cpu", progress: bool = True) -> dict:
    """A distilled set beside its own initialisation (same form), under each protocol: ``{name: {"set",
    "init", "gain"}}`` (gain: difference of the mean accuracies, in points), plus ``"moved"``."""
    out = {"moved": moved(synset, init)}
    for proto in protocols:
        r = evaluate(synset, test, proto, expand, device, progress=progress)
        r0 = evaluate(init, test, proto, expand, device, progress=progress)
        out[proto.name] = {"set": r, "init": r0, "gain": r["mean"] - r0["mean"]}
    return out


def random_baseline(train: RealData | FolderData, test: RealData, ipc: int, proto: EvalProtocol = EvalProtocol(),
                    device="cpu") -> dict:
    """Random real images scored like :func:`evaluate_images`, over ``proto.repeats`` selections (one network
    each), so the spread includes the luck of the draw."""
    one = replace(proto, repeats=1)
    runs = [evaluate_images(*random_coreset(train, ipc, seed), test, one, device, seed, progress=False)
            for seed in range(proto.repeats)]
    accs = torch.tensor([r["mean"] for r in runs])
    return {"mean": accs.mean().item(), "std": accs.std(unbiased=False).item() if len(runs) > 1 else 0.0,
            "accs": accs.tolist(), "train_images": runs[0]["train_images"],
            "mue": sum(r["mue"] for r in runs) / len(runs), "wall_s": sum(r["wall_s"] for r in runs),
            "selections": len(runs), "protocol": asdict(proto)}
