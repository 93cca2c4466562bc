"""Tiny data and configurations shared by the distiller's tests and the torchrun script ``distill_tiny.py``."""
import numpy as np
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


# folder -> dominant channel; sorted folder order (blue, green, red) gives labels 0, 1, 2
COLOURS = {"red": 0, "green": 1, "blue": 2}


def write_image_folder(root, per_class=6, seed=0):
    """An ImageFolder under ``root``: 3 classes x ``per_class`` real image files (40x48 RGB, PNG and JPEG
    alternating), one dominant colour per class plus noise. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, channel in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (40, 48, 3))
            img[..., channel] += 150 + (8 * i) % 100
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.{'png' if i % 2 else 'JPEG'}")
    return root
