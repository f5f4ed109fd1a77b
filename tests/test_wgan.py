"""lipnotes.wgan: the chapter's critics and critic steps, checked against independent references (torch.autograd on a
copy of the critic, torch.linalg norms, plain torch updates) and on bad input (the shared `rejects` fixture)."""
import copy

import pytest
import torch
from torch import nn

from lipnotes.spectral import SpectralNormalization
from lipnotes.wgan import (CLIP, CONSTRAINTS, KINDS, LAMBDA, CriticStep, clip_weights, clipping_step, critic_step,
                           gradient_penalty_step, make_critic, relu_mlp, spectral_normalization_step, wasserstein_step)


def batches(n=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 2, generator=g, dtype=dtype) + 1
    return real, torch.randn(n, 2, generator=g, dtype=dtype), torch.rand(n, generator=g, dtype=dtype)


def tiny_critic(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).to(dtype)


def reference_loss(critic, real, fake, alpha, lam, one_sided):
    "E_g f - E_r f + lam * mean(penalty), the input gradient at each interpolate by torch.autograd.grad, one per sample."
    w = critic(fake).mean() - critic(real).mean()
    terms = []
    for a, r, f in zip(alpha, real, fake):
        x = (a * r + (1 - a) * f).detach().requires_grad_()
        g, = torch.autograd.grad(critic(x[None]).sum(), x, create_graph=True)
        e = g.norm() - 1
        terms.append(torch.relu(e) ** 2 if one_sided else e ** 2)
    penalty = torch.stack(terms).mean()
    return w + lam * penalty, w, penalty


@pytest.mark.parametrize('one_sided', [False, True])
def test_gradient_penalty_step_matches_autograd(one_sided):
    real, fake, alpha = batches(16, dtype=torch.float64)
    critic = tiny_critic()
    ref = copy.deepcopy(critic)
    loss, w, penalty = reference_loss(ref, real, fake, alpha, 3.0, one_sided)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    step = gradient_penalty_step(critic, torch.optim.SGD(critic.parameters(), lr=0.5), real, fake, alpha=alpha, lam=3.0,
                                 one_sided=one_sided)
    assert isinstance(step, CriticStep) and step.stepped
    torch.testing.assert_close(step.penalty, penalty.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(step.loss, loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(step.gap, -w.detach(), rtol=1e-12, atol=1e-14)
    for p, q, g in zip(critic.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, q - 0.5 * g, rtol=1e-12, atol=1e-14)    # SGD moved by exactly the reference gradient
    assert not step.loss.requires_grad and not step.penalty.requires_grad


def test_penalty_is_zero_for_a_unit_gradient_critic():
    "f(x) = u.x with ||u|| = 1 has ||grad f|| = 1 everywhere: both penalties vanish and the gap is u.(E_r - E_g)."
    real, fake, alpha = batches(64, dtype=torch.float64)
    critic = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad(): critic.weight.copy_(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    for one_sided in (False, True):
        s = gradient_penalty_step(critic, torch.optim.SGD(critic.parameters(), lr=0.0), real, fake, alpha=alpha,
                                  one_sided=one_sided)
        assert s.penalty.abs().item() < 1e-28
        torch.testing.assert_close(s.gap, (real - fake).mean(0) @ torch.tensor([0.6, 0.8], dtype=torch.float64))


def test_wasserstein_step_is_one_sgd_step_on_the_gap():
    real, fake, _ = batches(dtype=torch.float64)
    critic = tiny_critic(1)
    ref = copy.deepcopy(critic)
    w = ref(fake).mean() - ref(real).mean()
    grads = torch.autograd.grad(w, list(ref.parameters()))
    s = wasserstein_step(critic, torch.optim.SGD(critic.parameters(), lr=0.1), real, fake)
    assert s.stepped and s.penalty is None
    torch.testing.assert_close(s.loss, w.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s.gap, -w.detach(), rtol=1e-12, atol=1e-14)
    for p, q, g in zip(critic.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, q - 0.1 * g, rtol=1e-12, atol=1e-14)


def test_clipping_step_clamps_after_the_update():
    real, fake, _ = batches(dtype=torch.float64)
    critic = tiny_critic(2)
    ref = copy.deepcopy(critic)
    grads = torch.autograd.grad(ref(fake).mean() - ref(real).mean(), list(ref.parameters()))
    s = clipping_step(critic, torch.optim.SGD(critic.parameters(), lr=0.1), real, fake, c=0.05)
    assert s.stepped
    for p, q, g in zip(critic.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, (q - 0.1 * g).clamp(-0.05, 0.05), rtol=0, atol=0)
    assert max(p.abs().max().item() for p in critic.parameters()) == 0.05


def test_spectral_normalization_step_keeps_exact_critic_at_norm_one():
    real, fake, _ = batches(256)
    critic = make_critic('SN exact', width=16)
    opt = torch.optim.Adam(critic.parameters(), 1e-2)
    for _ in range(5): assert spectral_normalization_step(critic, opt, real, fake).stepped
    critic.eval()
    norms = [torch.linalg.matrix_norm(m.weight.double(), 2).item() for m in critic if isinstance(m, nn.Linear)]
    assert len(norms) == 3 and all(abs(s - 1) < 1e-5 for s in norms), norms


def test_a_non_finite_loss_leaves_parameters_and_optimizer_untouched():
    "Overflowed weights (an infinite output bias) make the loss NaN: no kind steps, clamps or moves its optimizer."
    real, fake, alpha = batches()
    for kind in KINDS:
        critic = make_critic(kind, width=8)
        with torch.no_grad(): critic[-1].bias.fill_(float('inf'))
        opt = torch.optim.Adam(critic.parameters(), 1e-3)
        before = [p.detach().clone() for p in critic.parameters()]
        s = critic_step(kind, critic, opt, real, fake, alpha)
        assert not s.stepped and not torch.isfinite(s.loss), kind
        assert all(torch.equal(p, q) for p, q in zip(before, critic.parameters())), kind
        assert not opt.state, kind                                                   # Adam never stepped


@pytest.mark.parametrize('kind', KINDS)
def test_critic_step_is_the_step_of_its_kind(kind):
    real, fake, alpha = batches(64)
    own = {'plain': wasserstein_step, 'clip': clipping_step, 'SN': spectral_normalization_step,
           'SN exact': spectral_normalization_step, 'GP': lambda *a: gradient_penalty_step(*a, alpha=alpha),
           'GP one-sided': lambda *a: gradient_penalty_step(*a, alpha=alpha, one_sided=True)}[kind]
    a, b = make_critic(kind, seed=3), make_critic(kind, seed=3)
    oa, ob = torch.optim.Adam(a.parameters(), 1e-3), torch.optim.Adam(b.parameters(), 1e-3)
    for _ in range(3):
        sa, sb = critic_step(kind, a, oa, real, fake, alpha), own(b, ob, real, fake)
        assert torch.equal(sa.loss, sb.loss) and torch.equal(sa.gap, sb.gap)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert (sa.penalty is None) == (not kind.startswith('GP'))


def test_make_critic_kinds_share_their_initial_weights():
    assert CONSTRAINTS == KINDS[1:] and KINDS[0] == 'plain' and (CLIP, LAMBDA) == (0.01, 10.0)
    torch.manual_seed(7); base = [p.detach().clone() for p in relu_mlp(64, 1).parameters()]
    plain = list(make_critic('plain', seed=7).parameters())
    assert all(torch.equal(p, q) for p, q in zip(base, plain))
    for kind in ('SN', 'SN exact'):
        linears = [m for m in make_critic(kind, seed=7) if isinstance(m, nn.Linear)]
        assert all(isinstance(m.parametrizations.weight[0], SpectralNormalization) for m in linears)
        assert all(torch.equal(m.parametrizations.weight.original, p) for m, p in zip(linears, base[::2]))
    clipped = list(make_critic('clip', seed=7).parameters())
    assert all(torch.equal(q, p.clamp(-CLIP, CLIP)) for p, q in zip(base, clipped))
    shapes = [tuple(m.weight.shape) for m in make_critic('GP', width=32, depth=3) if isinstance(m, nn.Linear)]
    assert shapes == [(32, 2), (32, 32), (32, 32), (1, 32)]


def test_relu_mlp_and_clip_weights():
    net = relu_mlp(16, 3, depth=2, d_in=4)
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert net(torch.randn(5, 4)).shape == (5, 3)
    assert clip_weights(net, 0.02) is net and max(p.abs().max().item() for p in net.parameters()) <= 0.02


@pytest.fixture
def setup():
    real, fake, alpha = batches(8)
    critic = make_critic('SN', width=4)
    return critic, torch.optim.SGD(critic.parameters(), lr=0.1), real, fake, alpha


def test_bad_input(rejects, setup):
    critic, opt, real, fake, alpha = setup
    plain = make_critic('plain', width=4)
    popt = torch.optim.SGD(plain.parameters(), lr=0.1)
    cases = [
        (lambda: relu_mlp(0, 1), ValueError, 'relu_mlp', 'width'),
        (lambda: relu_mlp(4, 1.5), TypeError, 'relu_mlp', 'out'),
        (lambda: relu_mlp(4, 1, depth=-1), ValueError, 'relu_mlp', 'depth'),
        (lambda: clip_weights('net'), TypeError, 'clip_weights', 'critic'),
        (lambda: clip_weights(plain, 0.0), ValueError, 'clip_weights', 'c'),
        (lambda: make_critic('WGAN'), ValueError, 'make_critic', 'kind'),
        (lambda: make_critic('SN', seed=-1), ValueError, 'make_critic', 'seed'),
        (lambda: make_critic('SN', seed=2 ** 64), ValueError, 'make_critic', 'seed'),
        (lambda: make_critic('SN', width=True), TypeError, 'make_critic', 'width'),
        (lambda: wasserstein_step(lambda x: x, popt, real, fake), TypeError, 'wasserstein_step', 'critic'),
        (lambda: wasserstein_step(plain, 'adam', real, fake), TypeError, 'wasserstein_step', 'opt'),
        (lambda: wasserstein_step(plain, popt, real.long(), fake), TypeError, 'wasserstein_step', 'real'),
        (lambda: wasserstein_step(plain, popt, real, fake[:, 0]), ValueError, 'wasserstein_step', 'fake'),
        (lambda: wasserstein_step(plain, popt, real, fake[:4]), ValueError, 'wasserstein_step', 'fake'),
        (lambda: wasserstein_step(plain, popt, real, fake.double()), ValueError, 'wasserstein_step', 'fake'),
        (lambda: wasserstein_step(plain, popt, real[:0], fake[:0]), ValueError, 'wasserstein_step', 'real'),
        (lambda: wasserstein_step(plain, popt, real.clone().fill_(float('nan')), fake), ValueError, 'wasserstein_step', 'real'),
        (lambda: clipping_step(plain, popt, real, fake / 0), ValueError, 'clipping_step', 'fake'),
        (lambda: gradient_penalty_step(plain, popt, real, fake * float('inf')), ValueError, 'gradient_penalty_step', 'fake'),
        (lambda: clipping_step(plain, popt, real, fake, c=-1.0), ValueError, 'clipping_step', 'c'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, alpha=alpha + 1), ValueError, 'gradient_penalty_step', 'alpha'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, alpha=alpha[:3]), ValueError, 'gradient_penalty_step', 'alpha'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, alpha=[0.5] * 8), TypeError, 'gradient_penalty_step', 'alpha'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, lam=-1.0), ValueError, 'gradient_penalty_step', 'lam'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, lam=float('nan')), ValueError, 'gradient_penalty_step', 'lam'),
        (lambda: gradient_penalty_step(plain, popt, real, fake, one_sided=1), TypeError, 'gradient_penalty_step', 'one_sided'),
        (lambda: spectral_normalization_step(plain, popt, real, fake), ValueError, 'spectral_normalization_step', 'critic'),
        (lambda: critic_step('sn', critic, opt, real, fake), ValueError, 'critic_step', 'kind'),
        (lambda: critic_step('SN', plain, popt, real, fake), ValueError, 'critic_step', 'critic'),
        (lambda: critic_step('GP', plain, popt, real, fake, alpha.double()[:2]), ValueError, 'critic_step', 'alpha'),
        (lambda: critic_step('clip', plain, popt, real, 'fake'), TypeError, 'critic_step', 'fake'),
    ]
    for call, exc, fname, arg in cases:
        before = [p.detach().clone() for p in list(plain.parameters()) + list(critic.parameters())]
        rejects(call, exc, fname, arg)
        after = list(plain.parameters()) + list(critic.parameters())
        assert all(torch.equal(p, q) for p, q in zip(before, after)), (fname, arg)     # refused before any change
