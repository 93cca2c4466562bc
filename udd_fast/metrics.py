"""mUE: mean utilization measured by activation entropy (paper Appendix E, Eq. 11-12); peak memory.

How we read Eq. 11-12 (the extracted formula is garbled): for one image, X is the set of values of a network's
activation map (every channel and position of the last feature map). Its range ``[min X, max X]`` is cut
into ``d`` equal intervals and ``p_i`` is the fraction of the values in interval ``i`` (the text: "the ratio of
the number of activations falling in that interval to the total number of activations in the image"). The
image's utilization at ``d`` intervals is the normalized entropy ``UE^d = -sum_i p_i log p_i / log d``, in
``[0, 1]``; mUE is its mean over the partitions ``d in D = {5, ..., 10}`` (Fig. 7's caption) and over the
images. We take the sign so that a higher mUE means a more balanced histogram, as the text says twice
("a higher mUE value indicates a more balanced distribution"); the formula's leading ``1 +`` would instead
make a flat histogram score 0. An image whose activations are mostly near zero (large silent regions) puts
most values in the first interval and scores low: that is the underutilization the metric is meant to see.
"""
from __future__ import annotations

import resource

import torch

PARTITIONS = tuple(range(5, 11))


def utilization_entropy(values: torch.Tensor, d: int) -> torch.Tensor:
    """``UE^d`` of every row of ``values`` (B, n): normalized entropy of its histogram over ``d`` equal intervals
    spanning the row's own range (a constant row has one occupied interval: 0)."""
    v = values.float()
    lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
    bins = ((v - lo) / (hi - lo).clamp_min(1e-12) * d).long().clamp_(0, d - 1)  # the maximum joins the last interval
    p = torch.zeros(v.shape[0], d, device=v.device).scatter_add_(1, bins, torch.ones_like(v)) / v.shape[1]
    return -(p * torch.log(p.clamp_min(1e-30))).sum(1) / torch.log(torch.tensor(float(d)))


@torch.no_grad()
def mue(images: torch.Tensor, net, normalize, layer: int = -1, partitions=PARTITIONS, batch: int = 256) -> float:
    """mUE of ``images`` (pixel space) under ``net``'s activation map ``layer`` (Eq. 12)."""
    was_training = net.training
    net.eval()
    values = torch.cat([net.feature_maps(normalize(x))[layer].flatten(1) for x in images.split(batch)])
    net.train(was_training)
    return torch.stack([utilization_entropy(values, d) for d in partitions]).mean().item()


def peak_memory(device: torch.device) -> dict:
    """Peak resident host memory of this process and peak allocated device memory, in MiB."""
    peak = {"host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["device_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return peak
