import json
from dataclasses import replace

import pytest
import torch

from udd_fast import Distiller, RegionConfig, SyntheticSet, UDDConfig
from udd_fast.errors import UDDError
from udd_fast.image_step import ClassSGD

from tiny import fixed_net_config, tiny_data


@pytest.mark.parametrize("policy", [None, "activation", "vote"])
def test_short_distillation_decreases_matching_loss(policy):
    d = Distiller(tiny_data(), fixed_net_config(regions=RegionConfig(policy=policy, p=4)))
    syn = d.run(progress=False)
    first, last = d.history[0]["match"], d.history[-1]["match"]
    assert last < 0.5 * first, (first, last)
    assert syn.images.shape == (3, 1, 12, 12)


def test_s_is_clamped_at_the_start_of_every_outer_iteration(monkeypatch):
    """Where IDC clamps: before each outer iteration's steps; the last iteration's steps are kept as they are."""
    seen = []
    embeddings = Distiller.class_embeddings
    monkeypatch.setattr(Distiller, "class_embeddings", lambda self, net, syn: (
        seen.append(syn.detach().clone()), embeddings(self, net, syn))[1])
    syn = Distiller(tiny_data(), fixed_net_config(outer=2, inner=5, lr_img=30.0)).run(progress=False)
    assert len(seen) == 2 and all(s.min() >= 0 and s.max() <= 1 for s in seen)
    assert syn.images.min() < 0 or syn.images.max() > 1  # steps this large leave [0, 1]


def test_full_loop_with_cfc_factor_and_checkpoint(tmp_path):
    cfg = fixed_net_config(outer=2, inner=2, net_batches=1, net_batch=8, cfc=True, factor=2, dsa="color_crop_cutout",
                           checkpoint_every=1)
    syn = Distiller(tiny_data(), cfg, out_dir=tmp_path).run(progress=False)
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "checkpoint.prev.pt").exists()
    assert (tmp_path / "synset.safetensors").exists() and not (tmp_path / "checkpoint.tmp").exists()
    loaded = SyntheticSet.load(tmp_path / "synset.safetensors")
    assert loaded.factor == 2 and loaded.training_set()[0].shape == (12, 1, 12, 12)
    assert UDDConfig.from_json(json.dumps(loaded.config)) == cfg
    assert torch.equal(loaded.images, syn.images)


@pytest.mark.parametrize("outer, at, halvings", [(1, 0, 0), (2, 1, 3), (10, 5, 0), (10, 6, 1), (10, 8, 2), (10, 9, 3)])
def test_lr_img_halves_at_60_80_90_percent_only(outer, at, halvings, monkeypatch):
    """lr_img is halved at the milestones passed, never before the first step (one outer iteration)."""
    lrs = []
    monkeypatch.setattr(ClassSGD, "before", lambda self, syn: lrs.append(self.lr))
    monkeypatch.setattr(Distiller, "matching_gradient", lambda self, net, syn, bank, step: (
        syn.sum().backward(), (torch.zeros(self.num_classes), bank))[1])
    cfg = fixed_net_config(outer=outer, inner=1, lr_img=1.0, lr_decay=(0.6, 0.8, 0.9))
    Distiller(tiny_data(), cfg).run(progress=False)
    assert lrs[0] == 1.0 and lrs[at] == 0.5 ** halvings


def test_same_seed_same_result():
    cfg = fixed_net_config(inner=3, net_batches=1, net_batch=8, cfc=True, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="jitter", p=4))
    a = Distiller(tiny_data(), cfg).run(progress=False)
    b = Distiller(tiny_data(), cfg).run(progress=False)
    assert torch.equal(a.images, b.images)


def test_data_that_cannot_hold_the_set_is_refused():
    with pytest.raises(UDDError, match="ipc=9"):
        Distiller(tiny_data(), fixed_net_config(ipc=9))
    with pytest.raises(UDDError, match="ipc=1 with factor 2"):  # 4 real images per stored image
        Distiller(tiny_data(per_class=3), fixed_net_config(factor=2))
    with pytest.raises(UDDError, match="too small"):
        Distiller(tiny_data(size=4), fixed_net_config())


def test_more_processes_than_classes_is_refused(monkeypatch):
    """Classes are the unit of work under torchrun: a process without a class would have nothing to match."""
    import udd_fast.distiller as distiller

    monkeypatch.setattr(distiller.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distiller.dist, "get_world_size", lambda: 5)
    monkeypatch.setattr(distiller.dist, "get_rank", lambda: 0)
    with pytest.raises(UDDError, match="5 processes for 3 classes"):
        Distiller(tiny_data(classes=3), fixed_net_config())


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def one_step(cfg, device="cpu"):
    """dL/dS, the summed matching loss and the new CFC bank of the first inner step of ``cfg``."""
    d = Distiller(tiny_data(), cfg, device)
    d.seed()
    syn = d.init_synthetic().requires_grad_(True)
    net = d.new_network()
    bank = d.class_embeddings(net, syn)
    total, bank = d.matching_gradient(net, syn, bank, step=0)
    return syn.grad.cpu(), total.cpu(), bank.cpu()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", [None, "activation", "gradient", "jitter", "vote"])
@pytest.mark.parametrize("factor", [1, 2])
def test_batched_step_equals_class_loop(policy, factor, device, monkeypatch):
    """Same state, same seeds: the vmapped step and the per-class loop give the same dL/dS, loss and bank."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 on GPU too
    cfg = fixed_net_config(ipc=2, factor=factor, cfc=True, lam=0.5, dsa="color_crop_cutout_flip_scale_rotate",
                           regions=RegionConfig(policy=policy, p=3))
    g_loop, t_loop, b_loop = one_step(cfg.replace(step="loop"), device)
    g_batch, t_batch, b_batch = one_step(cfg.replace(step="batched"), device)
    assert g_loop.abs().sum() > 0
    assert rel(g_batch, g_loop) < 1e-4 and torch.allclose(t_batch, t_loop, rtol=1e-5)
    assert torch.allclose(b_batch, b_loop, rtol=1e-5, atol=1e-6)


def test_batched_run_equals_loop_run():
    """Three whole inner steps with network updates in between: the same synthetic set to float tolerance."""
    cfg = fixed_net_config(ipc=2, inner=3, net_batches=1, net_batch=8, lr_img=1.0, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="activation", p=3))
    a = Distiller(tiny_data(), cfg.replace(step="loop")).run(progress=False)
    b = Distiller(tiny_data(), cfg.replace(step="batched")).run(progress=False)
    assert torch.allclose(a.images, b.images, atol=1e-5)
    assert not torch.equal(a.images, Distiller(tiny_data(), cfg.replace(outer=0)).run(progress=False).images)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("step", ["loop", "batched"])
def test_bf16_step_close_to_fp32(step, device, monkeypatch):
    """bf16 autocast changes one step's dL/dS by rounding only: same direction, loss within a few percent.
    (No regions: bf16 rounding may flip a near-tie in the window ranking, which changes the crops outright.)"""
    cfg = fixed_net_config(ipc=2, cfc=True, dsa="color_crop_cutout", step=step, regions=RegionConfig(policy=None))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    g32, t32, _ = one_step(cfg, device)
    g16, t16, _ = one_step(cfg.replace(precision="bf16"), device)
    assert g16.dtype == torch.float32 and not torch.equal(g16, g32)
    assert torch.cosine_similarity(g16.flatten(), g32.flatten(), 0) > 0.98
    assert t16.sum().item() == pytest.approx(t32.sum().item(), rel=0.05)


def test_batched_step_rejects_batchnorm():
    with pytest.raises(UDDError, match="BatchNorm"):
        Distiller(tiny_data(size=16), fixed_net_config(model="resnet18", step="batched"))
    with pytest.raises(UDDError, match="precision"):
        UDDConfig(precision="fp8")


@pytest.mark.parametrize("fast_bf16,times,chosen", [(False, None, "fp32"), (True, {"fp32": 2.0, "bf16": 1.0}, "bf16"),
                                                     (True, {"fp32": 1.0, "bf16": 2.0}, "fp32")])
def test_auto_precision_keeps_the_faster_and_leaves_no_trace(monkeypatch, tmp_path, fast_bf16, times, chosen):
    """precision="auto" falls back to fp32 without a bf16 hardware path, and otherwise keeps the precision whose
    timed step was faster (the probe's answer is forced here); the probe's steps change nothing, so the set is
    the one the chosen precision gives; the choice is checkpointed and reused on resume."""
    import udd_fast.distiller as distiller

    monkeypatch.setattr(distiller, "bf16_is_fast", lambda device_type: fast_bf16)
    probed = []
    step_seconds = Distiller.step_seconds
    monkeypatch.setattr(Distiller, "step_seconds", lambda self, syn, p, probe: (
        probed.append(p), step_seconds(self, syn, p, probe), times[p])[2])
    cfg = fixed_net_config(outer=2, inner=2, net_batches=1, net_batch=8, cfc=True, dsa="color_crop_cutout",
                           checkpoint_every=1)
    d = Distiller(tiny_data(), cfg.replace(precision="auto"), out_dir=tmp_path)
    syn = d.run(progress=False)
    assert d.precision == chosen and d.probe["chosen"] == chosen
    assert probed == ([] if not fast_bf16 else ["fp32", "bf16"] * 3)  # one untimed step each, then 2 rounds
    assert torch.equal(syn.images, Distiller(tiny_data(), cfg.replace(precision=chosen)).run(progress=False).images)
    again = Distiller(tiny_data(), cfg.replace(precision="auto"), out_dir=tmp_path)
    probed.clear()
    assert torch.equal(again.run(progress=False, resume=True).images, syn.images)
    assert probed == [] and again.precision == chosen  # from the checkpoint, not probed again
    if fast_bf16:  # remembered for this machine and shape: a new run starts without timing, unless told to
        other = Distiller(tiny_data(), cfg.replace(precision="auto", seed=1, lr_img=0.5))
        other.run(progress=False)
        assert probed == [] and other.precision == chosen and other.probe["remembered"]
        assert other.probe["step_s"] == d.probe["step_s"]  # what was measured, recalled
        Distiller(tiny_data(), cfg.replace(precision="auto"), reprobe=True).run(progress=False)
        assert probed == ["fp32", "bf16"] * 3
        probed.clear()
        Distiller(tiny_data(), cfg.replace(precision="auto", width=16)).run(progress=False)  # another shape
        assert probed == ["fp32", "bf16"] * 3


def _draw_values(draw: dict) -> list[torch.Tensor]:
    return [t.float().flatten() for v in draw.values() for t in (v if isinstance(v, tuple) else (v,))
            if torch.is_tensor(t)]


@pytest.mark.parametrize("crop_draw", ["parent", "own"])
def test_crops_pass_their_images_draw_or_their_own(crop_draw, monkeypatch):
    """The real batch and the images always take the class's first draw, the same one as in the default run; the
    crops take it too, or (``own``) a second draw of their own from the class's stream."""
    cfg = fixed_net_config(ipc=2, factor=2, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="random", p=3, crop_draw=crop_draw))
    default = Distiller(tiny_data(), cfg.replace(regions=RegionConfig(policy="random", p=3)))
    default.seed()
    _, parents = default.draw_real([0])
    d = Distiller(tiny_data(), cfg)
    d.seed()
    _, draws = d.draw_real([0])
    parent, crops, pick = draws[0]
    assert pick is None  # every chosen crop enters the batch unless crop_sample < 1
    for a, b in zip(_draw_values(parent), _draw_values(parents[0][0])):
        assert torch.equal(a, b)
    assert (crops is parent) == (crop_draw == "parent")
    applied = []
    real_apply = d.dsa.apply
    monkeypatch.setattr(d.dsa, "apply", lambda x, draw: applied.append(draw) or real_apply(x, draw))
    d.seed()
    syn = d.init_synthetic().requires_grad_(True)
    net = d.new_network()
    d.matching_gradient(net, syn, d.class_embeddings(net, syn), step=0)
    n = 2 * 4  # each class's decoded images; then n * p crops
    on_syn = applied[1]  # class 0: its real batch, then its synthetic batch
    for got, first, second in zip(_draw_values(on_syn), _draw_values(parent), _draw_values(crops)):
        assert got.shape[0] == n * 4
        assert torch.equal(got[:n], first.expand(n)) and torch.equal(got[n:], second.expand(3 * n))
    if crop_draw == "own":
        assert any(not torch.equal(a, b) for a, b in zip(_draw_values(parent), _draw_values(crops)))


def test_own_crop_draw_batched_equals_loop():
    """The crops' own draw lands on the same samples in the vmapped step as in the per-class loop."""
    cfg = fixed_net_config(ipc=2, factor=2, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="jitter", p=3, crop_draw="own"))
    g_loop, t_loop, _ = one_step(cfg.replace(step="loop"))
    g_batch, t_batch, _ = one_step(cfg.replace(step="batched"))
    g_parent, _, _ = one_step(cfg.replace(step="loop", regions=RegionConfig(policy="jitter", p=3)))
    assert rel(g_batch, g_loop) < 1e-4 and torch.allclose(t_batch, t_loop, rtol=1e-5)
    assert rel(g_parent, g_loop) > 1e-3


def test_sampled_crops_batched_equals_loop():
    """Under crop_sample each class draws which crops enter its batch from its own stream: the vmapped step and
    the per-class loop pick the same ones; the step differs from the one with every crop."""
    cfg = fixed_net_config(ipc=2, factor=2, dsa="color_crop_cutout",
                           regions=RegionConfig(policy="jitter", p=3, crop_share=0.2, crop_sample=0.25))
    g_loop, t_loop, _ = one_step(cfg.replace(step="loop"))
    g_batch, t_batch, _ = one_step(cfg.replace(step="batched"))
    g_all, _, _ = one_step(cfg.replace(step="loop", regions=replace(cfg.regions, crop_sample=1.0)))
    assert rel(g_batch, g_loop) < 1e-4 and torch.allclose(t_batch, t_loop, rtol=1e-5)
    assert rel(g_all, g_loop) > 1e-3
    d = Distiller(tiny_data(), cfg)
    d.seed()
    _, draws = d.draw_real([0, 1])
    assert all(draws[c][2].shape == (6,) and len(set(draws[c][2].tolist())) == 6 for c in (0, 1))  # 6 of 8 * 3
