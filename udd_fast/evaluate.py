"""Evaluation: train fresh networks on a synthetic set's training images and test on real test images;
the Random and Herding coreset baselines at the same IPC."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from udd_fast.augment import DSA
from udd_fast.data import FolderData, RealData
from udd_fast.metrics import mue
from udd_fast.models import build_model
from udd_fast.synset import SyntheticSet


@dataclass(frozen=True)
class EvalProtocol:
    """How a set is scored (reported with every number): DSA-augmented SGD, lr decayed x0.1 at half."""

    model: str = "convnet"
    width: int | None = 128
    epochs: int = 300
    batch: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: str = "color_crop_cutout_flip_scale_rotate"
    repeats: int = 3


def train_and_test(x: torch.Tensor, y: torch.Tensor, test: RealData, proto: EvalProtocol, seed: int = 0,
                   device="cpu", progress: bool = False):
    """Train one fresh network on (x, y) (pixel space); return its test accuracy in percent and the network."""
    torch.manual_seed(seed)
    net = build_model(proto.model, test.channels, test.num_classes, test.size, proto.width).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=proto.lr, momentum=proto.momentum, weight_decay=proto.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [proto.epochs // 2], 0.1)
    dsa = DSA(proto.dsa, mode="single", flip=test.flip)
    x, y = test.normalize(x.to(device)), y.to(device)
    for _ in tqdm(range(proto.epochs), desc="evaluate", disable=not progress, leave=False):
        for idx in torch.randperm(len(y), device=device).split(proto.batch):
            loss = F.cross_entropy(net(dsa(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return accuracy(net, test, device), net


@torch.no_grad()
def accuracy(net, test: RealData, device="cpu", batch: int = 1000) -> float:
    net.eval()
    correct = 0
    for xs, ys in zip(test.images.split(batch), test.labels.split(batch)):
        correct += (net(test.normalize(xs.to(device))).argmax(1) == ys.to(device)).sum().item()
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
            "wall_s": time.time() - start, "protocol": asdict(proto)}


def evaluate(synset: SyntheticSet, test: RealData, proto: EvalProtocol = EvalProtocol(), expand: bool | None = None,
             device="cpu", seed: int = 0, progress: bool = True) -> dict:
    """Evaluate ``synset`` on its training set (its recorded form unless ``expand`` overrides)."""
    x, y = synset.training_set(expand)
    return evaluate_images(x, y, test, proto, device, seed, progress)


def random_coreset(data: RealData | FolderData, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real images per class, uniformly at random (images on ``data.device``, labels on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([data.class_batch(c, ipc, g) for c in range(data.num_classes)])
    return x, torch.arange(data.num_classes).repeat_interleave(ipc)


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


def herding_coreset(data: RealData | FolderData, ipc: int, embed=None, max_per_class: int = 1000, seed: int = 0):
    """Herding (Welling 2009): per class, greedily pick images whose running mean embedding tracks the
    class mean. ``embed`` maps normalized images to features (default: a ConvNet briefly trained on
    ``data``); at most ``max_per_class`` candidates per class, held in memory one class at a time (lower
    it for large images streamed from a :class:`FolderData`)."""
    if embed is None:
        embed = real_network(data, seed).embed
    g = torch.Generator().manual_seed(seed)
    xs = []
    with torch.no_grad():
        for c in range(data.num_classes):
            cand = data.class_batch(c, min(max_per_class, len(data.by_class[c])), g)
            f = torch.cat([embed(data.normalize(b)) for b in cand.split(500)])
            mu, chosen, acc = f.mean(0), [], torch.zeros_like(f[0])
            for k in range(ipc):
                gap = ((mu * (k + 1) - acc)[None] - f).norm(dim=1)
                gap[chosen] = float("inf")
                i = int(gap.argmin())
                chosen.append(i)
                acc = acc + f[i]
            xs.append(cand[chosen])
    return torch.cat(xs), torch.arange(data.num_classes).repeat_interleave(ipc)


def real_network(data: RealData | FolderData, seed: int = 0, steps: int = 150, width: int = 64):
    """A ConvNet-3 briefly trained on real batches (eval mode): herding's features, and the network under
    which the figures show where windows are underutilized."""
    torch.manual_seed(seed)
    net = build_model("convnet", data.channels, data.num_classes, data.size, width).to(data.device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        x, y = data.random_batch(128)
        loss = F.cross_entropy(net(data.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
