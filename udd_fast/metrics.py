"""mUE: mean utilization entropy of synthetic images (paper Appendix E, Eq. 11-12).

Our reading of Eq. 11-12: a network's response to image x at its last feature map, averaged over channels
as ``a(i, j) = mean_c |A_c(i, j)|``, is normalized into a distribution over the ``h*w`` positions,
``p = a / sum a``; the image's utilization entropy is ``UE(x) = -sum p log p / log(h w)`` (1 when every
position responds equally, 0 when one position carries all the response), and mUE is its mean over the
synthetic set. Higher mUE means the image's area is used more evenly.
"""
from __future__ import annotations

import torch


def utilization_entropy(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalized spatial entropy of each feature map (B, C, h, w) -> (B,) in [0, 1]."""
    a = maps.float().abs().mean(1).flatten(1)
    n = a.shape[1]
    if n == 1:
        return torch.ones(a.shape[0], device=a.device)
    p = a / a.sum(1, keepdim=True).clamp_min(eps)
    h = -(p * torch.log(p.clamp_min(eps))).sum(1)
    return h / torch.log(torch.tensor(float(n), device=a.device))


@torch.no_grad()
def mue(images: torch.Tensor, net, normalize, layer: int = -1, batch: int = 256) -> float:
    """mUE of ``images`` (pixel space) under ``net``'s feature map ``layer``."""
    was_training = net.training
    net.eval()
    values = torch.cat([utilization_entropy(net.feature_maps(normalize(x))[layer]) for x in images.split(batch)])
    net.train(was_training)
    return values.mean().item()
