"""Window tables shared by the tests: the defaults and random fractional boxes."""
import torch

from udd_fast.regions import candidate_windows


def default_windows(groups=(1 / 3, 1 / 2, 2 / 3), dtype=torch.float32) -> torch.Tensor:
    """The 4 * len(groups) candidate windows: per fraction, corners TL, TR, BL, BR as (y0, x0, y1, x1)."""
    return candidate_windows(groups).to(dtype)


def random_windows(n: int, gen: torch.Generator, dtype=torch.float32, outside: bool = False) -> torch.Tensor:
    """``n`` random fractional boxes of at least 0.05 per side; ``outside`` lets them spill past the image."""
    lo = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.7
    win = torch.cat([lo, lo + 0.05 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * (1 - lo - 0.05)], 1)
    if outside:
        win = win + (torch.rand(n, 4, generator=gen, dtype=torch.float64) - 0.5) * 0.3
        win[:, 2:] = torch.maximum(win[:, 2:], win[:, :2] + 0.1)
    return win.to(dtype)
