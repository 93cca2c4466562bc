"""The image update: IDC's per-class SGD steps with one momentum buffer, for all classes at once.

IDC updates S inside its class loop: for each class c in turn, the matching loss of class c is backpropagated
and one SGD step (``lr`` in pixel units, momentum ``mu``) is taken on the whole of S, with one momentum buffer
for all of it. Every such step moves *every* row by ``lr`` times its buffer, so the rows of class c also move,
by their decaying momentum, on the steps of the other K-1 classes: ``k_c`` of them before c's own step (the
classes before c in the loop) and ``K-1-k_c`` after it. Per inner step, class c's rows therefore move by
``lr * (1 + mu + ... + mu**(K-1-k_c))`` times their new gradient (about ``lr / (1 - mu)``, 1.998 lr for
K=10 and mu=0.5, for the first class) and carry little momentum into the next step.

Class c's loss depends only on its own rows, so the same sequence can be applied to all classes together:
:meth:`ClassSGD.before` makes the momentum-only moves that precede each class's own step (before any gradient
is computed), :meth:`ClassSGD.step` the own step and the moves that follow it. This is IDC's sequence of
optimizer steps exactly, whatever order (or batching, or split over processes) the class gradients are
computed in.
"""
from __future__ import annotations

import torch


def _geometric(mu: float, n: torch.Tensor) -> torch.Tensor:
    """``mu + mu**2 + ... + mu**n`` for every entry of ``n``."""
    if mu == 1:
        return n.double()
    return mu * (1 - mu ** n.double()) / (1 - mu)


class ClassSGD:
    """Per-class SGD steps in class order over rows labelled ``labels`` (class ``c`` is the ``c``-th step of
    every inner step), one momentum buffer; ``lr`` in the units of the rows (pixels)."""

    def __init__(self, syn: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float, momentum: float):
        self.lr, self.mu = lr, momentum
        shape = (-1,) + (1,) * (syn.dim() - 1)
        before, after = labels.view(shape), (num_classes - 1 - labels).view(shape)
        coefficients = [_geometric(momentum, before), momentum ** before.double(), _geometric(momentum, after),
                        momentum ** after.double()]
        self.before_move, self.before_decay, self.after_move, self.after_decay = (c.to(syn.dtype) for c in coefficients)
        self.buffer = torch.zeros_like(syn)

    @torch.no_grad()
    def before(self, syn: torch.Tensor) -> None:
        """The momentum-only moves each class's rows make on the steps of the classes before it."""
        syn -= self.lr * self.before_move * self.buffer
        self.buffer *= self.before_decay

    @torch.no_grad()
    def step(self, syn: torch.Tensor, grad: torch.Tensor) -> None:
        """Each class's own step with its gradient, then its moves on the steps of the classes after it."""
        self.buffer.mul_(self.mu).add_(grad)
        syn -= self.lr * (1 + self.after_move) * self.buffer
        self.buffer *= self.after_decay
