"""Gradient-matching distances, the category-wise feature contrastive (CFC) loss, and the soft-target
cross-entropy every network update uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from udd_fast.errors import UDDError

METRICS = ("mse", "l1", "cos")
MATCHED = ("conv", "conv+fc", "all")


def matched_names(model: torch.nn.Module, which: str = "conv") -> list[str]:
    """Names of the parameters whose gradients are matched: conv weights (IDC's default), + fc, or all."""
    if which not in MATCHED:
        raise UDDError(f"unknown matched-parameter set {which!r}; choose one of {', '.join(MATCHED)}")
    names = []
    for name, p in model.named_parameters():
        if which == "all" or p.dim() == 4 or (which == "conv+fc" and p.dim() == 2):
            names.append(name)
    return names


def distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor], metric: str = "mse") -> torch.Tensor:
    """Sum over layers of ``sum (g_r - g_s)^2`` (mse), ``sum |g_r - g_s|`` (l1) or ``1 - cos`` per output unit."""
    total = 0
    for r, s in zip(g_real, g_syn):
        if metric == "mse":
            total = total + (r - s).pow(2).sum()
        elif metric == "l1":
            total = total + (r - s).abs().sum()
        elif metric == "cos":
            r2, s2 = r.flatten(1) if r.dim() > 1 else r[None], s.flatten(1) if s.dim() > 1 else s[None]
            total = total + (1 - (r2 * s2).sum(-1) / (r2.norm(dim=-1) * s2.norm(dim=-1) + 1e-6)).sum()
        else:
            raise UDDError(f"unknown matching metric {metric!r}; choose one of {', '.join(METRICS)}")
    return total


PRECISIONS = ("fp32", "bf16")


def bf16_units(device_type: str) -> list[str]:
    """The hardware that runs bfloat16 matmuls and convolutions here: ``["cuda"]`` on a CUDA GPU with bf16; on a
    CPU the flags of ``/proc/cpuinfo`` among ``amx_bf16`` (AMX tiles) and ``avx512_bf16`` (AVX-512 BF16 dot
    products); ``[]`` where bf16 is emulated, and slower than fp32."""
    if device_type == "cuda":
        return ["cuda"] if torch.cuda.is_bf16_supported() else []
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return []
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def bf16_is_fast(device_type: str) -> bool:
    """Whether bfloat16 has a hardware path here (:func:`bf16_units`)."""
    return bool(bf16_units(device_type))


def best_seconds(time_one, rounds: int) -> dict[str, float]:
    """Per precision, the best of ``rounds`` calls of ``time_one(precision)`` (seconds) after one untimed call
    each (one-off costs: kernel selection, allocations); the precisions alternate, so that a burst of load
    elsewhere does not fall on one of them only. What ``precision="auto"`` decides on."""
    for precision in PRECISIONS:
        time_one(precision)
    times = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            times[precision].append(time_one(precision))
    return {p: min(t) for p, t in times.items()}


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto``: bf16 where :func:`bf16_is_fast`, else fp32; other precisions as given."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device_type) else "fp32"
    if precision not in PRECISIONS:
        raise UDDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} or auto")
    return precision


def autocast(device_type: str, precision: str = "fp32"):
    """The autocast context of a precision: ``bf16`` runs network passes in bfloat16, ``fp32`` changes nothing."""
    if precision not in PRECISIONS:
        raise UDDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16")


def batch_loss(model, params: dict, names: list[str], precision: str = "fp32"):
    """The CE of a batch as a pure function of the matched parameters ``params[names]`` (the others fixed):
    ``ce(matched, x, y, w=None) -> (loss, embeddings of x)``, the loss weighted per image by ``w`` (summing to
    1) or the plain batch mean. Under ``bf16`` the network pass runs in autocast; loss and embeddings are
    float32."""
    frozen = {n: p for n, p in params.items() if n not in names}

    def ce(matched, x, y, w=None):
        with autocast(x.device.type, precision):
            logits, emb = functional_call(model, {**frozen, **matched}, (x,), {"features": True})
        if w is None:
            return F.cross_entropy(logits.float(), y), emb.float()
        return (F.cross_entropy(logits.float(), y, reduction="none") * w).sum(), emb.float()

    return ce


def real_gradients(model, params: dict, names: list[str], x, y, precision: str = "fp32") -> dict:
    """CE gradients of one real batch w.r.t. ``params[names]``, as the constants they are in the matching loss:
    plain autograd, no graph kept. Under ``torch.func.grad`` every op takes its twice-differentiable form
    (group norm's backward as a dozen elementwise ops instead of one kernel), which the real side never needs:
    70 ms of the 0.8 s bf16 ``cpu-quick`` step on 2 cores. Not vmappable: a batched step leaves them to
    :func:`grad_match`."""
    matched = {n: params[n].detach().requires_grad_() for n in names}
    with torch.enable_grad():
        loss, _ = batch_loss(model, params, names, precision)(matched, x, y)
        return dict(zip(names, torch.autograd.grad(loss, list(matched.values()))))


def grad_match(model, params: dict, names: list[str], x_real, y_real, x_syn, y_syn, w_syn, metric: str = "mse",
               precision: str = "fp32", g_real: dict | None = None):
    """Matching loss between the CE gradients of real and synthetic batches w.r.t. ``params[names]``; the
    synthetic batch's CE is weighted per image by ``w_syn`` (summing to 1; uniform: the plain batch mean).

    A pure function of (parameters, real batch, synthetic batch) built from ``torch.func``, so
    ``torch.func.vmap`` batches it over classes. Pass detached ``params``: the graph then reaches only
    ``x_syn`` (through the synthetic gradients), and the real gradients are constants. ``g_real``, when given
    (:func:`real_gradients`), stands for the real batch's gradients. Under ``bf16`` the network passes run in
    autocast while the gradients and the distance stay float32. Returns ``(loss, embeddings of x_syn)`` so CFC
    needs no extra pass.
    """
    ce = batch_loss(model, params, names, precision)
    matched = {n: params[n] for n in names}
    if g_real is None:
        g_real, _ = grad(ce, has_aux=True)(matched, x_real, y_real)
    g_syn, emb = grad(ce, has_aux=True)(matched, x_syn, y_syn, w_syn)
    return distance([g_real[n] for n in names], [g_syn[n] for n in names], metric), emb


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets (CutMix mixes two one-hot rows), computed in fp32 so a bf16
    forward does not round the log-probabilities."""
    return torch.sum(-target * F.log_softmax(logits.float(), 1), 1).mean()


def cfc_loss(f_bar: torch.Tensor, bank: torch.Tensor, classes: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
    """Category-wise feature contrastive loss (paper Eq. 7) of each row of ``f_bar`` (n, D), whose classes
    are ``classes`` (n,); returns (n,).

    Our reading of Eq. 7: the positive is the cosine similarity between this step's mean embedding of class
    ``c``'s synthetic training batch, ``f_bar``, and the class's EMA embedding ``bank[c]``; the denominator
    sums only the *other* classes' EMA embeddings (``i != c``), so the loss is
    ``-sim(f_bar, F_c)/tau + logsumexp_{i != c} sim(f_bar, F_i)/tau``. It pulls a class's synthetic features
    to its own history and pushes them from every other class. ``bank`` is detached state.
    """
    sims = F.cosine_similarity(f_bar[:, None], bank[None], dim=2) / tau
    own = F.one_hot(classes, bank.shape[0]).bool()
    return -sims[own] + torch.logsumexp(sims.masked_fill(own, float("-inf")), 1)


def ema_update(bank: torch.Tensor, classes: torch.Tensor, f_bar: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``F_c <- alpha F_c + (1 - alpha) f_bar_c`` (Eq. 8) for each row of ``f_bar``, returning a new bank."""
    bank = bank.clone()
    bank[classes] = alpha * bank[classes] + (1 - alpha) * f_bar.detach()
    return bank
