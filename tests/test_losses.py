import math

import pytest
import torch

from udd_fast.errors import UDDError
from torch.func import grad

from udd_fast.losses import (batch_loss, cfc_loss, distance, ema_update, grad_match, matched_names,
                             real_gradients)
from udd_fast.models import ConvNet
from udd_fast.regions import batch_weights


def test_distances_by_hand():
    r = [torch.tensor([[1.0, 2.0], [0.0, 1.0]])]
    s = [torch.tensor([[0.0, 2.0], [1.0, 1.0]])]
    assert distance(r, s, "mse").item() == pytest.approx(2.0)
    assert distance(r, s, "l1").item() == pytest.approx(2.0)
    # rows: cos((1,2),(0,2)) = 4/(sqrt5*2); cos((0,1),(1,1)) = 1/sqrt2
    want = (1 - 4 / (math.sqrt(5) * 2)) + (1 - 1 / math.sqrt(2))
    assert distance(r, s, "cos").item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(UDDError):
        distance(r, s, "bogus")


def test_matched_names_conv_weights_by_default():
    net = ConvNet(1, 10, 28, width=4)
    assert matched_names(net) == ["blocks.0.0.weight", "blocks.1.0.weight", "blocks.2.0.weight"]
    assert "classifier.weight" in matched_names(net, "conv+fc")
    assert len(matched_names(net, "all")) == len(list(net.parameters()))


def test_grad_match_zero_for_identical_batches_and_differentiable():
    torch.manual_seed(0)
    net = ConvNet(1, 3, 28, width=4)
    params = dict(net.named_parameters())
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 0])
    syn = x.clone().requires_grad_(True)
    uniform = torch.full((4,), 0.25)
    loss, emb = grad_match(net, params, matched_names(net), x, y, syn, y, uniform, "mse")
    assert loss.item() == pytest.approx(0.0, abs=1e-10) and emb.shape == (4, 64)
    other = torch.rand(4, 1, 28, 28, requires_grad=True)
    loss, _ = grad_match(net, params, matched_names(net), x, y, other, y, uniform, "l1")
    loss.backward()
    assert loss.item() > 0 and other.grad.abs().sum() > 0
    # weights: the real batch's gradient is the plain mean, so the batch matches itself only with equal weights
    skewed = torch.tensor([0.7, 0.1, 0.1, 0.1])
    assert grad_match(net, params, matched_names(net), x, y, syn, y, skewed, "mse")[0].item() > 1e-6


def test_batch_weights():
    torch.testing.assert_close(batch_weights(2, 3, None), torch.full((8,), 1 / 8))
    torch.testing.assert_close(batch_weights(2, 3, 0.5), torch.tensor([0.25, 0.25] + [0.5 / 6] * 6))
    torch.testing.assert_close(batch_weights(4, 0, 0.5), torch.full((4,), 0.25))
    # on top: each image keeps its weight without regions (1/2), its crops add 0.5 of it
    torch.testing.assert_close(batch_weights(2, 3, 0.5, on_top=True), torch.tensor([0.5, 0.5] + [0.5 / 6] * 6))
    torch.testing.assert_close(batch_weights(2, 3, 0.5, on_top=True)[:2], batch_weights(2, 0, 0.5))
    # 2 of the 6 crops in the batch: the images keep their weights, the crops' share is spread over the 2
    torch.testing.assert_close(batch_weights(2, 3, 0.5, crops=2), torch.tensor([0.25, 0.25, 0.25, 0.25]))
    torch.testing.assert_close(batch_weights(2, 3, 0.5, on_top=True, crops=2), torch.tensor([0.5, 0.5, 0.25, 0.25]))
    torch.testing.assert_close(batch_weights(2, 3, None, crops=2), torch.tensor([1 / 8, 1 / 8, 3 / 8, 3 / 8]))
    torch.testing.assert_close(batch_weights(2, 3, 0.5, crops=6), batch_weights(2, 3, 0.5))


def test_cfc_loss_by_hand():
    f = torch.tensor([1.0, 0.0])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    tau = 0.7
    # sims: 1, 0, -1 ; loss for c=0 = -(1/tau) + log(exp(0) + exp(-1/tau))
    want0 = -1 / tau + math.log(1 + math.exp(-1 / tau))
    # for c=1: positive sim 0, negatives 1 and -1
    want1 = 0 + math.log(math.exp(1 / tau) + math.exp(-1 / tau))
    got = cfc_loss(torch.stack([f, f]), bank, torch.tensor([0, 1]), tau)
    assert got.tolist() == pytest.approx([want0, want1], rel=1e-6)
    assert cfc_loss(f[None], bank, torch.tensor([1]), tau).item() == pytest.approx(want1, rel=1e-6)


def test_ema_update_formula_and_detached():
    bank = torch.zeros(3, 2)
    f = torch.tensor([[2.0, 4.0], [6.0, 8.0]], requires_grad=True)
    new = ema_update(bank, torch.tensor([2, 0]), f, alpha=0.5)
    assert new.tolist() == [[3, 4], [0, 0], [1, 2]] and bank.abs().sum() == 0 and not new.requires_grad


def test_grad_match_bf16_close_to_fp32():
    """bf16 autocast of the network passes: gradients and distance stay fp32 and near the fp32 values."""
    torch.manual_seed(0)
    net = ConvNet(1, 3, 28, width=8)
    params = {n: p.detach() for n, p in net.named_parameters()}
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    syn = torch.rand(3, 1, 28, 28, requires_grad=True)
    out = {}
    for precision in ("fp32", "bf16"):
        syn.grad = None
        loss, emb = grad_match(net, params, matched_names(net), x, y, syn, y[:3], torch.full((3,), 1 / 3), "mse",
                               precision)
        loss.backward()
        assert loss.dtype == emb.dtype == syn.grad.dtype == torch.float32
        out[precision] = loss.item(), syn.grad.clone()
    assert out["bf16"][0] == pytest.approx(out["fp32"][0], rel=0.05)
    g32, g16 = out["fp32"][1].flatten(), out["bf16"][1].flatten()
    # the update direction survives bf16 (8-bit mantissa through a double backward): cosine, not elementwise
    assert torch.cosine_similarity(g16, g32, 0) > 0.95


def test_real_gradients_are_func_grads_without_a_graph():
    """The loop step's real gradients (plain autograd) equal torch.func's, carry no graph, and stand in for the
    real batch in grad_match."""
    torch.manual_seed(0)
    net = ConvNet(1, 3, 28, width=8)
    params = {n: p.detach() for n, p in net.named_parameters()}
    names = matched_names(net)
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    got = real_gradients(net, params, names, x, y)
    want, _ = grad(batch_loss(net, params, names), has_aux=True)({n: params[n] for n in names}, x, y)
    assert list(got) == names
    for n in names:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-5)
        assert not got[n].requires_grad and got[n].grad_fn is None
    syn = torch.rand(3, 1, 28, 28, requires_grad=True)
    w = torch.full((3,), 1 / 3)
    a, _ = grad_match(net, params, names, x, y, syn, y[:3], w, "mse")
    b, _ = grad_match(net, params, names, None, None, syn, y[:3], w, "mse", g_real=got)
    torch.testing.assert_close(a, b)
