"""What the regions do in a run, measured without distilling: which windows the policies pick, and how much of
the image step CFC moves. Both answer "why do the regions not help" questions cheaply (seconds, not hours).

- :func:`window_background`: per policy, how flat the chosen windows are. A window's *flatness* is its pixel
  standard deviation (over its area, averaged over channels); it is ranked among the image's N candidates (0:
  the flattest). A policy that picks background has a mean rank near 0, a random pick has (N - 1) / 2. Also the
  share of chosen windows that are nearly uniform (std below :data:`FLAT_STD`, e.g. Fashion-MNIST's black
  border), against the share among all candidates.
- :func:`gradient_shares`: the norms of dL/dS from gradient matching and from lambda x CFC (Eq. 10's two terms)
  for the first step of a fresh network and after some network updates.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from udd_fast.config import UDDConfig
from udd_fast.coreset import real_network
from udd_fast.distiller import Distiller
from udd_fast.formation import decode
from udd_fast.metrics import mue
from udd_fast.regions import POLICIES, candidate_windows, jitter_seed, select_windows, training_batch

#: a window whose pixels vary less than this (std in [0, 1] pixel units) is nearly uniform: background
FLAT_STD = 0.05


def window_flatness(images: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Pixel standard deviation of every candidate window of every image (B, N), in pixel units."""
    size = images.shape[-1]
    out = torch.empty(images.shape[0], len(windows))
    for n, (y0, x0, y1, x1) in enumerate((windows * size).round().long().tolist()):
        out[:, n] = images[:, :, y0:y1, x0:x1].flatten(2).std(2).mean(1)
    return out


def window_background(data, cfg: UDDConfig, images: torch.Tensor, labels: torch.Tensor, networks: dict,
                      policies=POLICIES) -> dict:
    """For each network (name -> net) and policy: the chosen windows' mean flatness rank (normalised to
    [0, 1]: 0 always the flattest, 0.5 random), their share of nearly uniform windows, and the mUE (paper
    Appendix E) of the synthetic training batch S_train = [images; their chosen crops] under that network,
    beside the mUE of the images alone."""
    windows = candidate_windows(cfg.regions.groups)
    std = window_flatness(images, windows)
    rank = torch.argsort(torch.argsort(std, 1), 1).float() / (len(windows) - 1)
    flat = std < FLAT_STD
    result = {"flat_share_all": flat.float().mean().item(), "policies": {},
              "mue_images": {n: mue(images, net, data.normalize) for n, net in networks.items()}}
    for net_name, net in networks.items():
        for policy in policies:
            regions = replace(cfg.regions, policy=policy)
            index = select_windows(net, images, labels, windows, data.normalize, regions, jitter_seed(cfg.seed, 0))
            with torch.no_grad():
                s_train = training_batch(images, windows, index)
            result["policies"][f"{net_name}/{policy}"] = {
                "flatness_rank": rank.gather(1, index).mean().item(),
                "flat_share": flat.gather(1, index).float().mean().item(),
                "mue_s_train": mue(s_train, net, data.normalize)}
    return result


def gradient_shares(data, cfg: UDDConfig, after: int = 50) -> dict:
    """||dL_g/dS|| and ||d(lambda CFC)/dS|| over S at its initialisation, for a fresh network (step 0) and after
    ``after`` network updates; the same real batches and DSA draws for both terms. CFC's term is measured
    whether or not ``cfg`` turns it on (what it would add to an IDC-style run)."""
    distiller = Distiller(data, cfg.replace(precision="fp32" if cfg.precision == "auto" else cfg.precision))
    syn, _, _ = distiller.start(resume=False)
    net, net_opt = distiller.fresh_network()
    out, done = {}, 0
    for t in (0, after):
        for _ in range(t - done):  # network updates on real data, as between inner steps
            distiller.train_network(net, net_opt, syn)
        done = t
        bank = distiller.class_embeddings(net, syn)
        grads = {}
        for name, cfc in (("total", True), ("matching", False)):
            streams = [g.get_state() for g in distiller.streams]
            distiller.cfg = cfg.replace(cfc=cfc)
            syn.grad = None
            distiller.matching_gradient(net, syn, bank, t)
            grads[name] = syn.grad.detach().clone()
            for g, s in zip(distiller.streams, streams):
                g.set_state(s)
        matching, cfc = grads["matching"].norm().item(), (grads["total"] - grads["matching"]).norm().item()
        out[f"step {t}"] = {"matching_grad_norm": matching, "cfc_grad_norm": cfc, "ratio": cfc / max(matching, 1e-30)}
    distiller.cfg = cfg
    return out


def diagnose(data, cfg: UDDConfig, synset=None, seed: int = 0, after: int = 50) -> dict:
    """Both measurements on the initialisation of ``cfg``, or the windows on a distilled ``synset`` (its
    decoded images, as the policies see them; CFC's share is measured on the initialisation either way)."""
    distiller = Distiller(data, cfg)
    distiller.seed()
    stored = distiller.init_synthetic() if synset is None else synset.images.to(distiller.device)
    factor = cfg.factor if synset is None else synset.factor
    images = decode(stored, factor)
    labels = distiller.labels.repeat_interleave(factor ** 2)
    torch.manual_seed(seed)
    fresh = distiller.new_network().eval()
    trained = real_network(data, seed, width=cfg.width or 64)
    return {"windows": window_background(data, cfg, images, labels, {"fresh": fresh, "trained": trained}),
            "gradients": gradient_shares(data, cfg, after), "images": "initialisation" if synset is None else "distilled set"}


def render(dataset: str, cfg: UDDConfig, result: dict) -> str:
    w, g = result["windows"], result["gradients"]
    out = [f"### {dataset}, IPC={cfg.ipc}, factor {cfg.factor}, P={cfg.regions.p} of "
           f"{4 * len(cfg.regions.groups)}, metric {cfg.metric}, lambda {cfg.lam}: the {result['images']}", "",
           f"Windows nearly uniform (pixel std < {FLAT_STD}) among all candidates: {w['flat_share_all']:.3f}. mUE of "
           "the images alone: " + ", ".join(f"{v:.4f} ({k} network)" for k, v in w["mue_images"].items()) + ".", "",
           "| network / policy | flatness rank of the chosen windows (0 flattest, 0.5 random) | nearly uniform share "
           "| mUE of S_train |", "|---|---|---|---|"]
    out += [f"| {k} | {v['flatness_rank']:.3f} | {v['flat_share']:.3f} | {v['mue_s_train']:.4f} |"
            for k, v in w["policies"].items()]
    out += ["", "| network | norm of dL_match/dS | norm of d(lambda CFC)/dS | ratio |", "|---|---|---|---|"]
    out += [f"| {k} | {v['matching_grad_norm']:.4g} | {v['cfc_grad_norm']:.4g} | {v['ratio']:.3g} |" for k, v in g.items()]
    return "\n".join(out) + "\n"
