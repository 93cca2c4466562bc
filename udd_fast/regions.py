"""Candidate windows, the four underutilized-region policies, lowest-P selection and S_train composition.

Windows are normalized boxes ``(y0, x0, y1, x1)``. Scores are low where a window is underutilized: weak
activation (``activation``), weak input gradient (``gradient``), or a response that barely moves under
jitter (``jitter``); ``vote`` adds the three policies' ranks. The P lowest-scoring windows of every image
are cropped and upsampled into the synthetic training batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from udd_fast import ops
from udd_fast.errors import UDDError

# see POLICY_SCORES; vote sums the three rankings' ranks; random is the control that ranks nothing
POLICIES = ("activation", "gradient", "jitter", "vote", "random")


def candidate_windows(groups=(1 / 3, 1 / 2, 2 / 3)) -> torch.Tensor:
    """The 4 corner windows of each size fraction (ascending): TL, TR, BL, BR. Shape (4*len(groups), 4)."""
    rows = []
    for f in sorted(groups):
        if not 0 < f <= 1:
            raise UDDError(f"window size fraction {f} must be in (0, 1]")
        rows += [(0, 0, f, f), (0, 1 - f, f, 1), (1 - f, 0, 1, f), (1 - f, 1 - f, 1, 1)]
    return torch.tensor(rows, dtype=torch.float32)


@dataclass(frozen=True)
class RegionConfig:
    """How underutilized windows are found: ``policy`` None turns regions off (IDC-style matching)."""

    policy: str | None = "jitter"        # the paper's main results use the jitter policy
    groups: tuple[float, ...] = (1 / 3, 1 / 2, 2 / 3)
    p: int = 8
    m: int = 2
    jitter_strength: float = 0.1
    jitter_kind: str = "gaussian"
    layer: int = -1
    crop_share: float | None = None       # weight of an image's P crops in the synthetic batch's loss, together;
                                          # None: every image of the batch weighs the same (crops: P / (P + 1))
    crops_on_top: bool = False            # True: each image keeps the weight it has without regions and its crops
                                          # add crop_share on top (the batch then weighs 1 + crop_share)
    crop_draw: str = "parent"             # "parent": a crop passes its image's DSA draw (the one the real batch
                                          # gets); "own": a class's crops take a second draw of their own
    crop_sample: float = 1.0              # share of a class's n * P chosen crops in one step's batch, drawn at
                                          # random and weighted up so each crop's expected weight is unchanged:
                                          # below 1 the crops' cost shrinks with it (1: all, the paper's batch)

    def __post_init__(self):
        n = 4 * len(self.groups)
        if self.policy is not None and self.policy not in POLICIES:
            raise UDDError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)} or none")
        if not 1 <= self.p <= n:
            raise UDDError(f"P={self.p} must be between 1 and the number of candidate windows N={n}; "
                           "lower --p or add window groups")
        if self.m < 1:
            raise UDDError(f"the jitter policy needs M >= 1 jittered copies, got {self.m}")
        if self.crop_share is not None and not 0 <= self.crop_share < 1:
            raise UDDError(f"crop_share must be in [0, 1), got {self.crop_share}")
        if self.crop_draw not in ("parent", "own"):
            raise UDDError(f"crop_draw must be 'parent' or 'own', got {self.crop_draw!r}")
        if not 0 < self.crop_sample <= 1:
            raise UDDError(f"crop_sample is the share of the chosen crops in a step's batch, in (0, 1], "
                           f"got {self.crop_sample}")
        if self.crops_on_top and self.crop_share is None:
            raise UDDError("crops_on_top adds the crops' weight crop_share on top of each image's: set crop_share")


def check_image_size(size: int, groups) -> None:
    """Every window must cover at least one pixel, or its crop is an upsampled single value."""
    if size * min(groups) < 2:
        raise UDDError(f"{size} px images are too small for windows of size fraction {min(groups):.3g} "
                       f"(each window needs >= 2 px); use larger images or larger --groups")


def jitter_seed(seed: int, step: int) -> int:
    """The jitter noise key of inner step ``step`` of a run seeded ``seed``: Philox's two key words are the
    seed's low 32 bits and the step, so every (seed, step) pair below 2^32 x 2^31 has its own noise stream."""
    return (seed & 0xFFFFFFFF) | (step & 0x7FFFFFFF) << 32


def feature_map(net, x, normalize, layer):
    """The feature map of ``net``'s block ``layer`` for pixel-space images ``x``."""
    return net.feature_maps(normalize(x))[layer]


def activation_policy(net, x, y, windows, normalize, cfg: RegionConfig, seed: int, first_image: int):
    """Mean activation of each window (B, N): low where the network responds weakly."""
    return ops.window_pool(feature_map(net, x, normalize, cfg.layer), windows, "value"), None


def gradient_policy(net, x, y, windows, normalize, cfg: RegionConfig, seed: int, first_image: int):
    """Mean |d CE / d x| of each window (B, N): low where the input barely changes the loss. Each image's own
    loss (summed, not averaged over the batch), so that its scores do not depend on the batch it is in."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(net(normalize(x)), y, reduction="sum"), x)
    return ops.window_pool(grad, windows, "abs"), None


def jitter_policy(net, x, y, windows, normalize, cfg: RegionConfig, seed: int, first_image: int):
    """Jitter sensitivity of each window (B, N), ``|Lambda - mean_m Lambda_hat_m|`` of the window-pooled
    feature map of ``x`` and of ``cfg.m`` Gaussian-jittered copies: low where the response barely moves. The
    fused kernel ranks the windows in the same pass, so its lowest-P indices come along. The noise of
    ``x[b]`` is keyed by ``seed`` and its global index ``first_image + b``."""
    copies = ops.jitter_copies(x, cfg.m, cfg.jitter_strength, cfg.jitter_kind, seed, first_image)
    maps = feature_map(net, torch.cat([x, copies.flatten(0, 1)]), normalize, cfg.layer)
    fmap, jittered = maps[: x.shape[0]], maps[x.shape[0]:].unflatten(0, (cfg.m, x.shape[0]))
    return ops.jitter_score(fmap, jittered, windows, cfg.p)


def random_policy(net, x, y, windows, normalize, cfg: RegionConfig, seed: int, first_image: int):
    """Uniform random scores (B, N), redrawn every step: the control that tells whether a policy's ranking
    matters, or only that some P windows are upsampled. Keyed like the jitter noise (``seed``, then the global
    image index), so an image's draw does not depend on the batch it is in."""
    # the CPU generator keeps only a seed's low 32 bits, where jitter_seed puts the run's seed and not the step
    g = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(seed.to_bytes(8, "little"), digest_size=4)
                                                     .digest(), "little"))
    scores = torch.rand(first_image + x.shape[0], windows.shape[0], generator=g)[first_image:]
    return scores.to(x.device), None


#: Each policy maps (net, images, labels, windows, normalize, cfg, seed, first_image) to scores (B, N), low where
#: a window is underutilized, and the lowest-P indices (B, P) when it has them already (else None). An image's
#: scores depend on the image, the network and (seed, its global index first_image + b) only, never on the
#: rest of the batch: classes split over processes select the windows of one process.
POLICY_SCORES = {"activation": activation_policy, "gradient": gradient_policy, "jitter": jitter_policy,
                 "random": random_policy}
#: the policies whose ranks the vote sums (random ranks nothing)
RANKINGS = ("activation", "gradient", "jitter")


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every window within its row (0 = lowest score; ties by lower index)."""
    order = torch.sort(scores, dim=1, stable=True).indices
    return torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order))


@torch.no_grad()
def select_windows(net, x: torch.Tensor, y: torch.Tensor, windows: torch.Tensor, normalize,
                   cfg: RegionConfig, seed: int = 0, first_image: int = 0) -> torch.Tensor:
    """Indices (B, P) of the P most underutilized windows of each image ``x`` (pixel space) under ``net``:
    the P lowest scores of ``cfg.policy``, where ``vote`` scores a window by the sum of its ranks under the
    three policies. ``seed`` keys the jitter noise (:func:`jitter_seed`); ``first_image`` is the global index
    of ``x[0]``."""
    args = (net, x.detach(), y, windows, normalize, cfg, seed, first_image)
    if cfg.policy == "vote":
        score = sum(ranks(POLICY_SCORES[p](*args)[0]).float() for p in RANKINGS)
        return ops.lowest_p(score, cfg.p)
    score, lowest = POLICY_SCORES[cfg.policy](*args)
    return ops.lowest_p(score, cfg.p) if lowest is None else lowest


def crops_kept(images: int, p: int, crop_sample: float) -> int:
    """How many of the ``images * p`` chosen crops of a class enter one step's batch (at least one)."""
    return images * p if crop_sample == 1 else max(1, round(crop_sample * images * p))


def batch_weights(images: int, p: int, crop_share: float | None, on_top: bool = False,
                  crops: int | None = None) -> torch.Tensor:
    """Loss weights of one training batch ``[images ; their P crops each]``, summing to 1: the crops of an
    image share ``crop_share`` of its weight (``None``: every entry the same, a plain batch mean). With
    ``on_top`` each image keeps ``1 / images``, its weight without regions, and its crops add ``crop_share``
    of it (the weights sum to ``1 + crop_share``): the tiles' step is then IDC-style's, not diluted.

    ``crops`` below ``images * p``: the batch holds that many crops drawn at random from the chosen ones, and
    the crops' whole share is spread over them, so each chosen crop's expected weight is what it has in the
    whole batch (the weighted loss is then an unbiased estimate of the whole batch's)."""
    full = images * p
    crops = full if crops is None else crops
    if p == 0 or (crop_share is None and crops == full):
        return torch.full((images + crops,), 1 / (images + crops))
    share = p / (p + 1) if crop_share is None else crop_share  # None: the crops' share of a plain mean
    own = 1 if on_top else 1 - share
    return torch.cat([torch.full((images,), own / images), torch.full((crops,), share / crops)])


def training_batch(images: torch.Tensor, windows: torch.Tensor, index: torch.Tensor, groups: int = 1,
                   pick: torch.Tensor | None = None) -> torch.Tensor:
    """``[images ; crop_resize(images, windows[index])]``, differentiable w.r.t. ``images``.

    With ``groups`` > 1 the images are that many equal consecutive groups (one per class) and the result is
    each group's ``[images_g ; crops_g]`` in turn: every class's training batch from one crop_resize call.
    ``pick`` (groups, k) keeps k of each group's ``n * P`` crops (positions in its b-major crop order): only
    those are cut, so the cost of the crops shrinks with k.
    """
    if pick is not None:
        n, p = images.shape[0] // groups, index.shape[1]
        flat = (pick + torch.arange(groups, device=pick.device)[:, None] * (n * p)).flatten()
        crops = ops.crop_resize(images[flat // p], windows, index.flatten()[flat][:, None])
    elif groups == 1:
        return ops.crop_resize(images, windows, index, with_source=True)
    else:
        crops = ops.crop_resize(images, windows, index)
    return torch.cat([images.unflatten(0, (groups, -1)), crops.unflatten(0, (groups, -1))], 1).flatten(0, 1)
