"""Tiny data and configurations shared by the distiller's tests and the torchrun script ``distill_tiny.py``."""
import torch

from udd_fast import RealData, RegionConfig, UDDConfig


def tiny_data(classes=3, per_class=8, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(classes * per_class, 1, size, size, generator=g)
    for c in range(classes):  # give every class its own bright quadrant
        x[c * per_class:(c + 1) * per_class, :, (c % 2) * 6:(c % 2) * 6 + 6, (c // 2) * 6:(c // 2) * 6 + 6] += 1
    return RealData.from_tensors(x.clamp(0, 1), torch.arange(classes).repeat_interleave(per_class), flip=True)


def fixed_net_config(**kw):
    """The network is never trained and the real batch is the whole class, undistorted: the matching
    objective is then the same function of S at every step, so its value must fall."""
    base = dict(ipc=1, width=8, outer=1, inner=25, metric="mse", lr_img=0.3, dsa="none", net_batches=0,
                batch_real=8, cfc=False, regions=RegionConfig(policy="activation", p=4))
    base.update(kw)
    return UDDConfig(**base)
