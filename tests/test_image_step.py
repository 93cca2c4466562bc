"""The image update is IDC's: one SGD step per class, in class order, with one momentum buffer over all of S."""
import pytest
import torch

from udd_fast import Distiller, preset
from udd_fast.image_step import ClassSGD

from tiny import tiny_data


def per_class_sgd(syn, class_loss, classes, inner_steps, lr, momentum):
    """IDC's loop, literally: for every inner step and every class c, backpropagate class c's loss and take one
    step of torch's SGD on the whole tensor."""
    syn = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    for t in range(inner_steps):
        for c in range(classes):
            opt.zero_grad()
            class_loss(syn, t, c).backward()
            opt.step()
    return syn.detach()


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_class_sgd_is_idc_per_class_steps(momentum):
    """Losses whose gradient depends on where it is taken: the momentum-only moves before a class's own step
    must happen before its gradient is computed, as in IDC's loop."""
    g = torch.Generator().manual_seed(0)
    k, ipc = 4, 2
    syn0 = torch.rand(k * ipc, 1, 3, 3, generator=g, dtype=torch.float64)
    a = torch.rand(3, k * ipc, 1, 3, 3, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(3, k * ipc, 1, 3, 3, generator=g, dtype=torch.float64)
    labels = torch.arange(k).repeat_interleave(ipc)

    def class_loss(s, t, c):
        rows = labels == c
        return (0.5 * a[t, rows] * s[rows] ** 2 + b[t, rows] * s[rows]).sum()

    want = per_class_sgd(syn0, class_loss, k, 3, 0.1, momentum)
    syn = syn0.clone()
    opt = ClassSGD(syn, labels, k, 0.1, momentum)
    for t in range(3):
        opt.before(syn)
        s = syn.clone().requires_grad_(True)
        sum(class_loss(s, t, c) for c in range(k)).backward()  # every class's gradient at once, in no order
        opt.step(syn, s.grad)
    torch.testing.assert_close(syn, want, rtol=0, atol=1e-12)
    assert not torch.equal(syn, syn0)


def test_idc_preset_inner_steps_move_s_as_idc_per_class_sgd():
    """Two inner steps of the ``idc`` preset (multi-formation, l1 matching of conv weights, the network trained
    between them) against IDC's loop written out with torch's SGD, one step per class: the same S to 1e-6."""
    data = tiny_data(classes=3, per_class=8, size=12)
    cfg = preset("idc", "fashion-mnist", 1).replace(outer=1, inner=2, width=8, batch_real=8, net_batch=8,
                                                     net_batches=2, lr_img=1e-2)
    got = Distiller(data, cfg).run(progress=False).images

    d = Distiller(data, cfg)  # the same pieces, driven as IDC's condense loop drives them
    d.seed()
    syn = d.init_synthetic().clamp(0, 1)
    net = d.new_network()
    net_opt = torch.optim.SGD(net.parameters(), lr=cfg.net_lr, momentum=0.9, weight_decay=5e-4)
    bank = d.class_embeddings(net, syn)
    draws = []

    def class_loss(s, t, c):
        if c == 0:  # a new inner step: train the network (not before the first), draw every class's real batch
            if t > 0:
                d.train_network(net, net_opt, s)
            draws[:] = d.draw_real(d.classes)
        params = {n: p.detach() for n, p in net.named_parameters()}
        return d.class_losses(net, params, s, None, *draws, [c], bank)[0]

    want = per_class_sgd(syn, class_loss, d.num_classes, cfg.inner, cfg.lr_img, cfg.mom_img)
    assert (got - d.init_synthetic()).abs().max() > 1e-3  # S moved
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_paper_preset_step_sizes_do_not_blow_up():
    """The ``paper`` preset's image steps (IDC's, per dataset) on a toy problem, 50 inner steps with the network
    trained between them, against the same run with S frozen (same seeds: same networks, batches and draws).
    The matching loss stays finite and never ends above the frozen run's; a step 100x larger lowers it
    clearly, so the comparison sees what the steps do."""
    cfg = preset("paper", "fashion-mnist", 1).replace(outer=1, inner=50, width=8, batch_real=8, net_batch=8,
                                                      net_batches=1, step="loop", precision="fp32")
    assert cfg.lr_img == pytest.approx(1e-4 / 10 * (28 / 32) ** 2) and cfg.regions.policy == "jitter" and cfg.cfc

    def last_losses(mult):
        d = Distiller(tiny_data(classes=3, per_class=8, size=12), cfg.replace(lr_img=cfg.lr_img * mult))
        d.run(progress=False)
        match = torch.tensor([h["match"] for h in d.history])
        assert torch.isfinite(match).all()
        return match[-10:].mean().item()

    frozen = last_losses(1e-9)
    assert last_losses(1) <= frozen * 1.001
    assert last_losses(100) < frozen * 0.99
