"""SyntheticSet: the distilled images, their labels, how they form a training set, and their files."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save

from udd_fast.errors import UDDError
from udd_fast.files import atomic_write
from udd_fast.formation import decode
from udd_fast.regions import candidate_windows, training_batch


@dataclass
class SyntheticSet:
    """Synthetic images in pixel space ``[0, 1]`` (N, C, H, W), labels (N,), and their metadata.

    ``factor`` is the multi-formation factor (each stored image holds ``factor**2`` sub-images) and
    ``expand`` whether downstream networks also train on every candidate window of every decoded image:
    together they are the set's *form*, saved with it so it is decoded the same way everywhere.
    """

    images: torch.Tensor
    labels: torch.Tensor
    dataset: str = "custom"
    ipc: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    factor: int = 1
    expand: bool = False
    groups: tuple[float, ...] = (1 / 3, 1 / 2, 2 / 3)
    config: dict = field(default_factory=dict)

    def training_set(self, expand: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels downstream networks train on: decoded sub-images, plus, when ``expand``, every
        candidate window of each of them upsampled to full size (``[D ; crop_resize(D, all windows)]``)."""
        expand = self.expand if expand is None else expand
        with torch.no_grad():
            x = decode(self.images, self.factor)
            y = self.labels.repeat_interleave(self.factor ** 2)
            if expand:
                windows = candidate_windows(self.groups)
                index = torch.arange(len(windows)).expand(x.shape[0], -1)
                x = training_batch(x, windows, index)
                y = torch.cat([y, y.repeat_interleave(len(windows))])
        return x, y

    def form(self) -> str:
        n = len(self.labels) * self.factor ** 2 * (1 + 4 * len(self.groups) if self.expand else 1)
        return f"factor {self.factor}, {'expanded by all windows' if self.expand else 'not expanded'}: {n} images"

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors: ``images`` float32, ``labels`` int64, string metadata (no pickle)."""
        meta = {"dataset": self.dataset, "ipc": str(self.ipc), "mean": json.dumps(list(self.mean)),
                "std": json.dumps(list(self.std)), "factor": str(self.factor), "expand": json.dumps(self.expand),
                "groups": json.dumps(list(self.groups)), "config": json.dumps(self.config)}
        data = save({"images": self.images.detach().float().cpu().contiguous(),
                     "labels": self.labels.long().cpu().contiguous()}, metadata=meta)
        atomic_write(path, data, "synthetic set")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticSet":
        if not os.path.exists(path):
            raise UDDError(f"no synthetic set at {path}; run `python -m udd_fast distill` first")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                images, labels = f.get_tensor("images"), f.get_tensor("labels")
        except Exception as e:  # safetensors raises several types for a damaged header
            raise UDDError(f"{path} is not a readable synthetic-set file ({e})") from None
        return cls(images, labels, meta.get("dataset", "custom"), int(meta.get("ipc", 1)),
                   tuple(json.loads(meta.get("mean", "[0.5]"))), tuple(json.loads(meta.get("std", "[0.5]"))),
                   int(meta.get("factor", 1)), json.loads(meta.get("expand", "false")),
                   tuple(json.loads(meta.get("groups", "[0.3333333333333333, 0.5, 0.6666666666666666]"))),
                   json.loads(meta.get("config", "{}")))

    def grid_png(self, path: str | os.PathLike, scale: int = 3, decoded: bool = False) -> None:
        """Save a PNG grid: one row per class, upscaled ``scale`` times (``decoded``: the training images)."""
        from torchvision.utils import save_image

        x, y = self.training_set(expand=False) if decoded else (self.images, self.labels)
        order = torch.argsort(y, stable=True)
        per_row = max(1, int(len(y) // (int(y.max()) + 1)))
        x = F.interpolate(x[order].float().clamp(0, 1), scale_factor=scale, mode="nearest")
        save_image(x, str(path), nrow=per_row, padding=2, pad_value=1.0)

