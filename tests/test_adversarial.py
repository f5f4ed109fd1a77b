"""lipnotes.adversarial: bad input refused before any work with the function and argument named; eps = 0 and zero
gradients leave inputs unchanged; parameter gradients untouched. The device/dtype test is in test_devices.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes.adversarial import (embedding_fgm, fgm, input_gradient_penalty, perturb_output, pgd,
                                  wgan_gradient_penalty)

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
x = torch.randn(6, 5)
y = torch.randint(0, 3, (6,))
loss = lambda z: F.cross_entropy(net(z), y, reduction='none')
critic = nn.Linear(5, 1)


@pytest.mark.parametrize('call, exc, words', [
    (lambda: fgm(loss, x, -0.1), ValueError, "fgm: eps must be finite and >= 0"),
    (lambda: fgm(loss, x, float('nan')), ValueError, "fgm: eps must be finite"),
    (lambda: fgm(loss, x, torch.ones(5)), ValueError, "fgm: eps must be a number or a tensor of shape (6,)"),
    (lambda: fgm(loss, x, '0.1'), TypeError, "fgm: eps must be a number or a tensor"),
    (lambda: fgm(loss, x, 0.1, norm=1), ValueError, "fgm: norm must be one of 2, inf"),
    (lambda: fgm(loss, x, 0.1, norm='l2'), ValueError, "fgm: norm must be one of"),
    (lambda: fgm(lambda z: net(z), x, 0.1), ValueError, "fgm: loss_fn must return a scalar or one value per example"),
    (lambda: fgm(lambda z: loss(z) * float('nan'), x, 0.1), ValueError, "fgm: the gradient of loss_fn is NaN or Inf"),
    (lambda: pgd(lambda z: torch.sqrt(z[:, 0] - z[:, 0]), x, 0.1), ValueError, "pgd: the gradient of loss_fn is NaN or Inf"),
    (lambda: input_gradient_penalty(lambda z: loss(z) * float('inf'), x), ValueError, "input_gradient_penalty: loss_fn returned NaN"),
    (lambda: fgm(loss, x.long(), 0.1), TypeError, "fgm: x must have a real floating dtype"),
    (lambda: fgm(loss, torch.full((6, 5), float('nan')), 0.1), ValueError, "fgm: x contains NaN"),
    (lambda: fgm('loss', x, 0.1), TypeError, "fgm: loss_fn must be callable"),
    (lambda: pgd(loss, x, 0.1, steps=0), ValueError, "pgd: steps must be >= 1"),
    (lambda: pgd(loss, x, 0.1, steps=2.5), TypeError, "pgd: steps must be an int"),
    (lambda: pgd(loss, x, 0.1, step_size=-1.0), ValueError, "pgd: step_size must be positive"),
    (lambda: pgd(loss, x, -1.0), ValueError, "pgd: eps must be finite and >= 0"),
    (lambda: pgd(loss, x, 0.1, norm=3), ValueError, "pgd: norm must be one of"),
    (lambda: pgd(loss, x, 0.1, clamp=(1.0, 0.0)), ValueError, "pgd: clamp must be None or a pair (low, high)"),
    (lambda: pgd(loss, x, 0.1, random_start=1), TypeError, "pgd: random_start must be a bool"),
    (lambda: input_gradient_penalty(lambda z: loss(z).mean(), x), ValueError,
     "input_gradient_penalty: loss_fn must return one value per example"),
    (lambda: input_gradient_penalty(loss, x, p=3), ValueError, "input_gradient_penalty: p must be one of 1, 2, inf"),
    (lambda: input_gradient_penalty(loss, x, squared=1), TypeError, "squared must be a bool"),
    (lambda: wgan_gradient_penalty(critic, x, x[:4]), ValueError, "wgan_gradient_penalty: real and fake must have the same shape"),
    (lambda: wgan_gradient_penalty(critic, x, x.double()), ValueError, "real and fake must share dtype"),
    (lambda: wgan_gradient_penalty(critic, x, torch.full_like(x, float('nan'))), ValueError, "fake contains NaN"),
    (lambda: wgan_gradient_penalty(lambda z: z, x, x), ValueError, "critic must return one score per sample"),
    (lambda: wgan_gradient_penalty(critic, x, x, target=0.0), ValueError, "target must be positive"),
    (lambda: wgan_gradient_penalty(critic, x, x, alpha=torch.full((6,), 2.0)), ValueError,
     "alpha must have shape (6,) with values in [0, 1]"),
    (lambda: wgan_gradient_penalty("critic", x, x), TypeError, "critic must be callable"),
    (lambda: embedding_fgm(lambda: loss(x), nn.Embedding(3, 2), 0.1), ValueError,
     "module must run exactly once inside loss_fn(), it ran 0"),
    (lambda: embedding_fgm(lambda: loss(x), "embed", 0.1), TypeError, "embedding_fgm: module must be a torch.nn.Module"),
    (lambda: embedding_fgm(lambda: loss(x), net[0], -1.0), ValueError, "embedding_fgm: eps must be finite and >= 0"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_perturb_output_checks_the_shape():
    with pytest.raises(ValueError, match=r"perturb_output: delta has shape \(2, 8\) but Linear's output has shape \(6, 8\)"):
        with perturb_output(net[0], torch.zeros(2, 8)):
            net(x)
    assert len(net[0]._forward_hooks) == 0                 # the hook is removed even after an error


def test_zero_eps_and_zero_gradient_leave_the_input_unchanged():
    for attack in (lambda f, e, **k: fgm(f, x, e, **k), lambda f, e, **k: pgd(f, x, e, steps=3, **k)):
        for norm in (2, math.inf):
            assert torch.equal(attack(loss, 0.0, norm=norm), x)
    assert torch.equal(fgm(lambda z: (0 * z).sum(1), x, 0.5), x)
    assert torch.equal(fgm(lambda z: (0 * z).sum(1), x, 0.5, norm=math.inf), x)
    assert torch.equal(pgd(lambda z: (0 * z).sum(1), x, 0.5, random_start=False), x)
    assert torch.isfinite(input_gradient_penalty(lambda z: (0 * z).sum(1), x)).all()
    emb = nn.Embedding(4, 3)
    delta = embedding_fgm(lambda: (0 * emb(torch.tensor([[0, 1], [2, 3]]))).sum((1, 2)), emb, 0.5)
    assert torch.equal(delta, torch.zeros(2, 2, 3))


def test_attacks_leave_parameter_gradients_alone():
    for p in net.parameters(): p.grad = torch.ones_like(p)
    fgm(loss, x, 0.3); pgd(loss, x, 0.3, steps=2)
    emb = nn.Embedding(4, 3)
    embedding_fgm(lambda: emb(torch.tensor([[0, 1], [2, 3]])).sum((1, 2)), emb, 0.5)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in net.parameters()) and emb.weight.grad is None
    for p in net.parameters(): p.grad = None


def test_fgm_radius_and_pgd_ball_in_float32():
    eps = torch.rand(6) + 0.1
    d = fgm(loss, x, eps) - x
    assert torch.allclose(d.norm(dim=1), eps, rtol=1e-6)
    d = fgm(loss, x, 0.2, norm=math.inf) - x
    assert torch.allclose(d.abs().amax(1), torch.full((6,), 0.2), rtol=1e-6)
    for norm in (2, math.inf):
        d = pgd(loss, x, eps, steps=5, norm=norm) - x
        size = d.norm(dim=1) if norm == 2 else d.abs().amax(1)
        assert (size <= eps * (1 + 1e-6)).all()

