"""Real-image coresets: random and herding selections per class, and the briefly trained real-data network
whose features herding (and the figures) use. The distiller initialises S from them; the evaluation scores
them as baselines."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from udd_fast.data import FolderData, RealData
from udd_fast.models import build_model, network_optimizer

EMBED_CHUNK = 500  # images embedded at once when herding a class: bounds the activations held in memory


def random_coreset(data: RealData | FolderData, ipc: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real images per class, uniformly at random (images on ``data.device``, labels on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([data.class_batch(c, ipc, g) for c in range(data.num_classes)])
    return x, torch.arange(data.num_classes).repeat_interleave(ipc)


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
            f = torch.cat([embed(data.normalize(b)) for b in cand.split(EMBED_CHUNK)])
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
    opt = network_optimizer(net, lr=0.01)
    for _ in range(steps):
        x, y = data.random_batch(128)
        loss = F.cross_entropy(net(data.normalize(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
