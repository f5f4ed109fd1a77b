"""Bad-input suite for lipnotes.adversarial (issue 14): for every exported function, each class of bad or unusual input
(NaN/inf, empty, wrong rank, int/bool/complex/half dtypes, non-contiguous and expanded tensors, meta tensors, wrong
Python types, out-of-range hyperparameters, train/eval mode) ends either in a ValueError/TypeError whose message starts
with the public function's name and names the argument, or in a correct result checked against an independent
reference (torch.autograd.grad / torch.func on the same loss, a closed form, Dykstra's projection)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jacrev, vmap

from lipnotes.adversarial import (embedding_fgm, fgm, input_gradient_penalty, perturb_output, pgd,
                                  wgan_gradient_penalty)

f64 = torch.float64
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
net32 = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
x = torch.randn(6, 5, dtype=f64)
y = torch.randint(0, 3, (6,))
loss = lambda z: F.cross_entropy(net(z), y, reduction='none')
loss32 = lambda z: F.cross_entropy(net32(z), y, reduction='none')
critic = nn.Linear(5, 1).double()
emb = nn.Embedding(4, 3).double()
tokens = torch.tensor([[0, 1], [2, 3], [1, 1]])
emb_loss = lambda: emb(tokens).pow(2).sum((1, 2))
meta = lambda *s: torch.empty(*s, device='meta', dtype=f64)
nan_x, inf_x = x.clone(), x.clone()
nan_x[2, 3], inf_x[0, 0] = float('nan'), float('inf')


def run_hooked(module, delta, inputs):
    with perturb_output(module, delta):
        return module(inputs)


# (public function, call, exception, argument named in the message)
CASES = [
    # fgm: x
    ('fgm', lambda: fgm(loss, nan_x, 0.1), ValueError, 'x'),
    ('fgm', lambda: fgm(loss, inf_x, 0.1), ValueError, 'x'),
    ('fgm', lambda: fgm(loss, x[:0], 0.1), ValueError, 'x'),
    ('fgm', lambda: fgm(loss, torch.tensor(1.0, dtype=f64), 0.1), ValueError, 'x'),
    ('fgm', lambda: fgm(loss, x.long(), 0.1), TypeError, 'x'),
    ('fgm', lambda: fgm(loss, x > 0, 0.1), TypeError, 'x'),
    ('fgm', lambda: fgm(loss, x.to(torch.complex128), 0.1), TypeError, 'x'),
    ('fgm', lambda: fgm(loss, meta(6, 5), 0.1), ValueError, 'x'),
    ('fgm', lambda: fgm(loss, x.tolist(), 0.1), TypeError, 'x'),
    # fgm: eps
    ('fgm', lambda: fgm(loss, x, -0.1), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, float('nan')), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, float('inf')), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss32, x.float(), 1e300), ValueError, 'eps'),        # finite as a float, inf in float32
    ('fgm', lambda: fgm(loss, x, '0.1'), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, None), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, True), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, 0.1 + 0j), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.tensor(True)), TypeError, 'eps'),      # read as 1.0 before issue 14
    ('fgm', lambda: fgm(loss, x, torch.ones(6, dtype=torch.bool)), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.tensor(1 + 0j)), TypeError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.tensor(-1.0)), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.tensor(float('nan'))), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.ones(5)), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, torch.ones(6, 1)), ValueError, 'eps'),
    ('fgm', lambda: fgm(loss, x, meta(6)), ValueError, 'eps'),
    # fgm: norm, loss_fn
    ('fgm', lambda: fgm(loss, x, 0.1, norm=1), ValueError, 'norm'),
    ('fgm', lambda: fgm(loss, x, 0.1, norm='l2'), ValueError, 'norm'),
    ('fgm', lambda: fgm(loss, x, 0.1, norm=True), ValueError, 'norm'),
    ('fgm', lambda: fgm('loss', x, 0.1), TypeError, 'loss_fn'),
    ('fgm', lambda: fgm(lambda z: net(z), x, 0.1), ValueError, 'loss_fn'),
    ('fgm', lambda: fgm(lambda z: loss(z).long(), x, 0.1), ValueError, 'loss_fn'),
    ('fgm', lambda: fgm(lambda z: loss(z) * float('nan'), x, 0.1), ValueError, 'loss_fn'),
    ('fgm', lambda: fgm(loss32, x, 0.1), TypeError, 'loss_fn'),               # model float32, x float64
    ('fgm', lambda: fgm(loss, x.half(), 0.1), TypeError, 'loss_fn'),          # model float64, x float16
    ('fgm', lambda: fgm(net32, x, 0.1), TypeError, 'loss_fn'),                # a Module: checked before any work
    # pgd
    ('pgd', lambda: pgd(loss, nan_x, 0.1), ValueError, 'x'),
    ('pgd', lambda: pgd(loss, x[:0], 0.1), ValueError, 'x'),
    ('pgd', lambda: pgd(loss, x.int(), 0.1), TypeError, 'x'),
    ('pgd', lambda: pgd(loss, meta(6, 5), 0.1), ValueError, 'x'),
    ('pgd', lambda: pgd(loss, x, torch.tensor(True)), TypeError, 'eps'),
    ('pgd', lambda: pgd(loss, x, -1.0), ValueError, 'eps'),
    ('pgd', lambda: pgd(loss, x, 0.1, steps=0), ValueError, 'steps'),
    ('pgd', lambda: pgd(loss, x, 0.1, steps=2.5), TypeError, 'steps'),
    ('pgd', lambda: pgd(loss, x, 0.1, steps=True), TypeError, 'steps'),
    ('pgd', lambda: pgd(loss, x, 0.1, step_size=-1.0), ValueError, 'step_size'),
    ('pgd', lambda: pgd(loss, x, 0.1, step_size=float('nan')), ValueError, 'step_size'),
    ('pgd', lambda: pgd(loss, x, 0.1, step_size='1'), TypeError, 'step_size'),
    ('pgd', lambda: pgd(loss, x, 0.1, norm=3), ValueError, 'norm'),
    ('pgd', lambda: pgd(loss, x, 0.1, random_start=1), TypeError, 'random_start'),
    ('pgd', lambda: pgd(loss, x, 0.1, clamp=(1.0, 0.0)), ValueError, 'clamp'),
    ('pgd', lambda: pgd(loss, x, 0.1, clamp=(0.0,)), ValueError, 'clamp'),
    ('pgd', lambda: pgd(loss, x, 0.1, clamp=(0.0, float('nan'))), ValueError, 'clamp'),
    ('pgd', lambda: pgd(loss, x, 0.1, clamp=(False, True)), ValueError, 'clamp'),
    ('pgd', lambda: pgd(loss, x, 0.1, clamp='box'), ValueError, 'clamp'),
    # x outside the box, farther than eps from it: no point satisfies both (before issue 14: points far outside the ball)
    ('pgd', lambda: pgd(loss, 5 * x, 0.1, clamp=(-1.0, 1.0)), ValueError, 'clamp'),
    ('pgd', lambda: pgd(loss, 5 * x, 0.1, norm=math.inf, clamp=(-1.0, 1.0)), ValueError, 'clamp'),
    ('pgd', lambda: pgd('loss', x, 0.1), TypeError, 'loss_fn'),
    ('pgd', lambda: pgd(lambda z: torch.sqrt(z[:, 0] - z[:, 0]), x, 0.1), ValueError, 'loss_fn'),
    ('pgd', lambda: pgd(loss32, x, 0.1), TypeError, 'loss_fn'),
    # pgd: targeted, restarts, success (issue 18)
    ('pgd', lambda: pgd(loss, x, 0.1, targeted=1), TypeError, 'targeted'),
    ('pgd', lambda: pgd(loss, x, 0.1, targeted='yes'), TypeError, 'targeted'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=0), ValueError, 'restarts'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=-2), ValueError, 'restarts'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=2.0), TypeError, 'restarts'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=True), TypeError, 'restarts'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=3, random_start=False), ValueError, 'random_start'),
    ('pgd', lambda: pgd(lambda z: loss(z).mean(), x, 0.1, restarts=2), ValueError, 'loss_fn'),
    ('pgd', lambda: pgd(lambda z: loss(z).mean(), x, 0.1, restarts=2, targeted=True), ValueError, 'loss_fn'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=2, success='argmax'), TypeError, 'success'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=2, success=lambda z: net(z).argmax(1)), ValueError, 'success'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=2, success=lambda z: (net(z).argmax(1) != y)[:3]), ValueError, 'success'),
    ('pgd', lambda: pgd(loss, x, 0.1, restarts=2, success=lambda z: [True] * 6), ValueError, 'success'),
    # input_gradient_penalty
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, inf_x), ValueError, 'x'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, x[:0]), ValueError, 'x'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, torch.tensor(2.0)), ValueError, 'x'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, x.to(torch.complex128)), TypeError, 'x'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, meta(6, 5)), ValueError, 'x'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, x, p=3), ValueError, 'p'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, x, p='fro'), ValueError, 'p'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss, x, squared=1), TypeError, 'squared'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(lambda z: loss(z).mean(), x), ValueError, 'loss_fn'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(lambda z: loss(z) * float('inf'), x), ValueError, 'loss_fn'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(loss32, x), TypeError, 'loss_fn'),
    ('input_gradient_penalty', lambda: input_gradient_penalty(3, x), TypeError, 'loss_fn'),
    # perturb_output (the shape is known only at the forward: the hook raises there, the hook is removed)
    ('perturb_output', lambda: run_hooked('net', torch.zeros(6, 8), x), TypeError, 'module'),
    ('perturb_output', lambda: run_hooked(net[0], [[0.0] * 8] * 6, x), TypeError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], torch.zeros(6, 8, dtype=torch.long), x), TypeError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], torch.zeros(6, 8, dtype=torch.complex128), x), TypeError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], torch.full((6, 8), float('nan'), dtype=f64), x), ValueError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], torch.full((6, 8), float('inf'), dtype=f64), x), ValueError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], meta(6, 8), x), ValueError, 'delta'),
    ('perturb_output', lambda: run_hooked(net[0], torch.zeros(2, 8, dtype=f64), x), ValueError, 'delta'),
    # embedding_fgm
    ('embedding_fgm', lambda: embedding_fgm('loss', emb, 0.1), TypeError, 'loss_fn'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, 'embed', 0.1), TypeError, 'module'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, emb, 0.1, norm=1), ValueError, 'norm'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, emb, -1.0), ValueError, 'eps'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, emb, torch.tensor(True)), TypeError, 'eps'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, emb, torch.ones(2)), ValueError, 'eps'),
    ('embedding_fgm', lambda: embedding_fgm(emb_loss, net[0], 0.1), ValueError, 'module'),    # never ran
    ('embedding_fgm', lambda: embedding_fgm(lambda: emb(tokens).sum(2), emb, 0.1), ValueError, 'loss_fn'),
    ('embedding_fgm', lambda: embedding_fgm(lambda: emb(tokens).sum((1, 2)) * float('nan'), emb, 0.1), ValueError, 'loss_fn'),
    ('embedding_fgm', lambda: embedding_fgm(lambda: net32(emb(tokens)[:, 0, :].repeat(1, 2)[:, :5]).sum(1), emb, 0.1),
     TypeError, 'loss_fn'),                                                   # float64 embedding into a float32 model
    ('embedding_fgm', lambda: embedding_fgm(lambda: nn.Embedding(4, 3)(tokens).sum((1, 2)), emb, 0.1), ValueError, 'module'),
    # wgan_gradient_penalty
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty('critic', x, x), TypeError, 'critic'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, nan_x, x), ValueError, 'real'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, inf_x), ValueError, 'fake'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x[:0], x[:0]), ValueError, 'real'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x.long(), x.long()), TypeError, 'real'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, meta(6, 5), meta(6, 5)), ValueError, 'real'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x[:4]), ValueError, 'fake'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x.float()), ValueError, 'fake'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, target=0.0), ValueError, 'target'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, target=float('inf')), ValueError, 'target'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, target=True), TypeError, 'target'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, one_sided=1), TypeError, 'one_sided'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, alpha=torch.full((6,), 2.0)), ValueError, 'alpha'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, alpha=torch.full((6,), float('nan'))),
     ValueError, 'alpha'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, alpha=torch.rand(6, 1)), ValueError, 'alpha'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, alpha=torch.ones(6, dtype=torch.long)),
     TypeError, 'alpha'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(critic, x, x, alpha=meta(6)), ValueError, 'alpha'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(nn.Linear(5, 1), x, x), TypeError, 'critic'),  # float32 critic
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(lambda z: net32(z)[:, 0], x, x), TypeError, 'critic'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(lambda z: z, x, x), ValueError, 'critic'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(lambda z: (z > 0).sum(1), x, x), ValueError, 'critic'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(
        nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().train(), x, x), ValueError, 'critic'),
    ('wgan_gradient_penalty', lambda: wgan_gradient_penalty(
        nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 1)).double().eval(), x, x),
     ValueError, 'critic'),
]


@pytest.mark.parametrize('name, call, exc, arg', CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(CASES)])
def test_refused_with_the_function_and_argument_named(name, call, exc, arg, rejects):
    rejects(call, exc, name, arg)


def test_perturb_output_removes_its_hook_after_a_refusal():
    with pytest.raises(ValueError, match='^perturb_output: delta has shape'):
        run_hooked(net[0], torch.zeros(2, 8, dtype=f64), x)
    assert len(net[0]._forward_hooks) == 0


@pytest.mark.parametrize('eps', [-1.0, float('nan'), '0.1', torch.tensor(True), torch.tensor(1j)])
def test_embedding_fgm_checks_eps_before_running_the_model(eps):
    "A bad eps is refused before loss_fn() runs (no forward: no BatchNorm statistics updated, no time spent)."
    calls = []
    with pytest.raises((ValueError, TypeError), match='^embedding_fgm: eps'):
        embedding_fgm(lambda: calls.append(1) or emb_loss(), emb, eps)
    assert calls == []


def test_embedding_fgm_scalar_loss_is_accepted():
    "A scalar loss (the sum) gives the same per-example direction as one loss per example."
    assert torch.allclose(embedding_fgm(lambda: emb(tokens).pow(2).sum(), emb, 0.3),
                          embedding_fgm(emb_loss, emb, 0.3), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Correct results, each against an independent reference
# ------------------------------------------------------------------------------------------------------------------
def reference_grad(per_example_loss, xs):
    "grad_x of one example's loss, per example, by torch.func (no autograd.grad on a summed loss)."
    return vmap(grad(per_example_loss))(xs)


def reference_fgm(xs, eps, norm=2):
    "x + eps g/||g|| per example (or eps sign g), g from torch.func with each example's own label."
    g = torch.stack([grad(lambda z, i=i: F.cross_entropy(net(z.unsqueeze(0)), y[i:i + 1]))(xs[i]) for i in range(len(xs))])
    if norm == math.inf: return xs + eps * g.sign()
    return xs + eps * g / g.flatten(1).norm(dim=1, keepdim=True)


def test_one_dimensional_x_is_a_batch_of_scalars():
    "1-D x (IndexError before issue 14): each entry is one example; its gradient is a scalar, so the L2 step is eps sign(g)."
    w = torch.tensor([2.0, -3.0, 0.5, -0.1, 4.0, 1.0], dtype=f64)
    x1 = torch.randn(6, dtype=f64)
    f = lambda z: w * z + z ** 3                                  # one loss per scalar example
    g_ref = vmap(grad(lambda z, wi: wi * z + z ** 3))(x1, w)      # = w + 3 z^2
    assert torch.allclose(g_ref, w + 3 * x1 ** 2, rtol=1e-14)
    for norm in (2, math.inf):
        assert torch.allclose(fgm(f, x1, 0.25, norm=norm), x1 + 0.25 * g_ref.sign(), rtol=1e-14)
    for p in (1, 2, math.inf):
        assert torch.allclose(input_gradient_penalty(f, x1, p=p), g_ref.abs(), rtol=1e-14)
    assert torch.allclose(input_gradient_penalty(f, x1, squared=True), g_ref ** 2, rtol=1e-14)
    lin = lambda z: w * z                                         # linear: PGD ends on the boundary along sign(w)
    assert torch.allclose(pgd(lin, x1, 0.3, steps=4, random_start=False), x1 + 0.3 * w.sign(), rtol=1e-14)
    out = pgd(lin, x1, 0.3, steps=4)                              # a random start: still within the ball
    assert ((out - x1).abs() <= 0.3 * (1 + 1e-12)).all()
    real, fake, al = torch.randn(6, dtype=f64), torch.randn(6, dtype=f64), torch.rand(6, dtype=f64)
    x_hat = al * real + (1 - al) * fake                           # critic sin: |D'| = |cos x_hat|
    ref = (torch.cos(x_hat).abs() - 1).pow(2).mean()
    assert torch.allclose(wgan_gradient_penalty(torch.sin, real, fake, alpha=al), ref, rtol=1e-12)


def test_a_loss_constant_in_x_has_gradient_zero():
    "Before issue 14: autograd's 'does not require grad'. Now: FGM and PGD return x, the penalty is 0."
    constant = lambda z: torch.ones(z.shape[0], dtype=z.dtype)
    params_only = lambda z: net[0].bias.sum().expand(z.shape[0])  # depends on the parameters, not on x
    for f in (constant, params_only):
        for norm in (2, math.inf):
            assert torch.equal(fgm(f, x, 0.5, norm=norm), x)
            assert torch.equal(pgd(f, x, 0.5, steps=3, norm=norm, random_start=False), x)
        for p in (1, 2, math.inf):
            assert torch.equal(input_gradient_penalty(f, x, p=p), torch.zeros(6, dtype=f64))
    assert torch.equal(embedding_fgm(lambda: torch.ones(3, dtype=f64) + 0 * emb(tokens).detach().sum((1, 2)), emb, 0.5),
                       torch.zeros(3, 2, 3, dtype=f64))


def test_a_critic_that_ignores_its_input():
    "The gradient is 0: the penalty is (0 - target)^2 two-sided and 0 one-sided (autograd errors before issue 14)."
    lin = nn.Linear(5, 1).double()
    for c in (lambda z: torch.zeros(z.shape[0], dtype=f64), lambda z: lin.bias.expand(z.shape[0]),
              lambda z: lin(torch.zeros_like(z))):
        for target in (1.0, 0.5):
            assert wgan_gradient_penalty(c, x, -x, target=target).item() == target ** 2
        assert wgan_gradient_penalty(c, x, -x, one_sided=True).item() == 0


def test_wgan_penalty_against_a_per_sample_loop_and_eval_mode_batchnorm():
    "Eval-mode BatchNorm is per-sample: accepted, and equal to a loop over samples with torch.autograd.grad."
    torch.manual_seed(1)
    c = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()
    c.train(); c(torch.randn(32, 5, dtype=f64)); c.eval()          # running statistics that are not (0, 1)
    real, fake, al = torch.randn(6, 5, dtype=f64), torch.randn(6, 5, dtype=f64), torch.rand(6, dtype=f64)
    ref = []
    for i in range(6):
        xh = (al[i] * real[i:i + 1] + (1 - al[i]) * fake[i:i + 1]).requires_grad_()
        ref.append((torch.autograd.grad(c(xh).sum(), xh)[0].norm() - 1) ** 2)
    assert torch.allclose(wgan_gradient_penalty(c, real, fake, alpha=al), torch.stack(ref).mean(), rtol=1e-12)


def test_fgm_in_train_mode_batchnorm_moves_along_the_gradient_of_the_summed_loss():
    "With BatchNorm in training mode the examples interact; FGM and the penalty use block i of grad(sum_j L_j)."
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Tanh(), nn.Linear(4, 3)).double()
    lf = lambda z: F.cross_entropy(m(z), y, reduction='none')     # batch statistics, and no buffers for jacrev to mutate
    J = jacrev(lf)(x)                                              # (6, 6, 5): J[j, i] = dL_j/dx_i
    g_sum = J.sum(0)                                               # d(sum_j L_j)/dx_i, row i
    g_own = torch.stack([J[i, i] for i in range(6)])                # dL_i/dx_i: a different vector
    assert (g_sum - g_own).norm() > 1e-3 * g_own.norm()
    assert torch.allclose(input_gradient_penalty(lf, x), g_sum.norm(dim=1), rtol=1e-10)
    assert torch.allclose(fgm(lf, x, 0.2), x + 0.2 * g_sum / g_sum.norm(dim=1, keepdim=True), rtol=1e-10)


def test_non_contiguous_and_expanded_inputs():
    "A transposed (non-contiguous) and an expanded (stride 0) x give the torch.func reference, like a contiguous copy."
    xt = torch.randn(5, 6, dtype=f64).t()
    xe = torch.randn(1, 5, dtype=f64).expand(6, 5)
    assert not xt.is_contiguous() and xe.stride(0) == 0
    for xs in (xt, xe):
        for norm in (2, math.inf):
            assert torch.allclose(fgm(loss, xs, 0.3, norm=norm), reference_fgm(xs, 0.3, norm), rtol=1e-12)
        g = reference_fgm(xs, 1.0) - xs
        assert torch.allclose(pgd(loss, xs, 0.3, steps=1, step_size=0.3, random_start=False), xs + 0.3 * g, rtol=1e-12)
        g_ref = torch.stack([grad(lambda z, i=i: F.cross_entropy(net(z.unsqueeze(0)), y[i:i + 1]))(xs[i]) for i in range(6)])
        assert torch.allclose(input_gradient_penalty(loss, xs), g_ref.norm(dim=1), rtol=1e-12)
        al = torch.rand(6, dtype=f64)
        wn = critic.weight.norm()
        assert torch.allclose(wgan_gradient_penalty(critic, xs, xs.flip(0), alpha=al), (wn - 1) ** 2, rtol=1e-12)


@pytest.mark.parametrize('dtype, tol', [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-6)])
def test_tiny_gradients_in_low_precision_still_give_a_step_of_length_eps(dtype, tol):
    "||g|| below the dtype's smallest normal (fp16: 6e-5; float32 with g ~ 1e-30): the step still has length eps."
    scale = 1e-30 if dtype == torch.float32 else 1e-6
    w = torch.tensor([3.0, -4.0, 0.0, 1.0, 2.0])
    xs = torch.zeros(4, 5, dtype=dtype)
    f = lambda z: (z * (scale * w).to(dtype)).sum(1)
    w_eff = (scale * w).to(dtype).double()                          # the gradient the loss has in this dtype
    expected = 0.5 * w_eff / w_eff.norm()                           # closed form: eps w / ||w||
    d = fgm(f, xs, 0.5).double()
    assert d.dtype == torch.float64 and torch.allclose(d, expected.expand(4, 5), atol=tol * 0.5, rtol=0)
    assert fgm(f, xs, 0.5).dtype == dtype


def test_half_precision_model_matches_float64_reference():
    "A float16 model and input: the FGM step agrees with the float64 reference to half precision."
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    xs = torch.randn(6, 5, dtype=f64)
    ref = fgm(lambda z: F.cross_entropy(m(z), y, reduction='none'), xs, 0.5) - xs
    mh = m.half()
    xh = xs.half()
    d = fgm(lambda z: F.cross_entropy(mh(z), y, reduction='none'), xh, 0.5) - xh
    assert d.dtype == torch.float16
    assert (d.double() - ref).norm(dim=1).max() < 0.02


def test_eps_as_an_int_tensor_or_a_numpy_number():
    import numpy as np
    a = fgm(loss, x, 1.0)
    assert torch.equal(fgm(loss, x, torch.tensor(1)), a)
    assert torch.equal(fgm(loss, x, np.float32(1.0)), a) and torch.equal(fgm(loss, x, np.int64(1)), a)
    assert torch.allclose((fgm(loss, x, torch.arange(6)) - x).norm(dim=1), torch.arange(6, dtype=f64), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# pgd with a box: the exact projection onto (eps-ball) ∩ (box), against Dykstra's alternating projections
# ------------------------------------------------------------------------------------------------------------------
def dykstra(p, proj_a, proj_b, iters=500):
    "Dykstra's algorithm: the Euclidean projection of p onto A ∩ B from the projections onto A and onto B."
    z, pa, qb = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    for _ in range(iters):
        a = proj_a(z + pa); pa = z + pa - a
        z_new = proj_b(a + qb); qb = a + qb - z_new
        z = z_new
    return z


def ball(x0, eps, norm):
    if norm == math.inf: return lambda q: x0 + (q - x0).clamp(-eps, eps)
    return lambda q: x0 + (q - x0) * (eps / (q - x0).norm(dim=1, keepdim=True)).clamp(max=1)


@pytest.mark.parametrize('norm', [2, math.inf])
def test_pgd_box_projection_is_exact_for_x_inside_and_outside_the_box(norm):
    "One PGD step on a linear loss from x: project(x), then project(that + step w/||w||) (or sign w), against Dykstra."
    torch.manual_seed(4)
    w = torch.randn(3, 4, dtype=f64)
    lin = lambda z: (z * w).sum(1)
    box = (-1.0, 1.0)
    x0 = torch.tensor([[0.2, -0.5, 0.9, 0.0],             # inside the box
                       [1.3, 0.4, -1.2, 0.2],             # outside, by 0.3 and 0.2: within eps = 0.5 of the box
                       [1.1, 1.1, 1.1, 1.1]], dtype=f64)  # outside in every coordinate
    eps, step = 0.5, 0.4
    box_proj = lambda q: q.clamp(*box)
    unit = w.sign() if norm == math.inf else w / w.norm(dim=1, keepdim=True)
    z0 = dykstra(x0, ball(x0, eps, norm), box_proj)
    z1 = dykstra(z0 + step * unit, ball(x0, eps, norm), box_proj)
    out = pgd(lin, x0, eps, steps=1, step_size=step, norm=norm, random_start=False, clamp=box)
    assert torch.allclose(out, z1, atol=1e-9)
    size = (out - x0).norm(dim=1) if norm == 2 else (out - x0).abs().amax(1)
    assert (size <= eps * (1 + 1e-12)).all() and out.min() >= -1 and out.max() <= 1


def test_pgd_box_projection_closed_form():
    "x = (0.9, 0), eps = 0.5, box [-1, 1]: one step to (1.5, 0.3) projects to (1, 0.3), the nearest point of the disc on"
    "the edge x = 1 (projecting on the disc and then clamping, as before issue 14, gives (1, 0.224))."
    x0 = torch.tensor([[0.9, 0.0]], dtype=f64)
    w = torch.tensor([[0.6, 0.3]], dtype=f64)
    out = pgd(lambda z: (z * w).sum(1), x0, 0.5, steps=1, step_size=w.norm().item(), random_start=False, clamp=(-1.0, 1.0))
    assert torch.allclose(out, torch.tensor([[1.0, 0.3]], dtype=f64), atol=1e-12)
    assert torch.allclose(out, dykstra(x0 + w, ball(x0, 0.5, 2), lambda q: q.clamp(-1, 1)), atol=1e-9)


@pytest.mark.parametrize('norm', [2, math.inf])
def test_pgd_with_x_outside_the_box_stays_in_both_sets(norm):
    "Before issue 14, x outside the box gave points far outside the eps-ball; now every iterate is in both."
    torch.manual_seed(5)
    xs = torch.randn(16, 10, dtype=f64) * 0.3 + 1.0                  # many coordinates above 1
    dist = (xs - xs.clamp(0, 1)).norm(dim=1) if norm == 2 else (xs - xs.clamp(0, 1)).abs().amax(1)
    eps = dist.max().item() + 0.2
    m = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    yy = torch.randint(0, 3, (16,))
    out = pgd(lambda z: F.cross_entropy(m(z), yy, reduction='none'), xs, eps, steps=7, norm=norm, clamp=(0.0, 1.0))
    size = (out - xs).norm(dim=1) if norm == 2 else (out - xs).abs().amax(1)
    assert (size <= eps * (1 + 1e-12)).all(), size.max()
    assert out.min() >= 0 and out.max() <= 1


def test_pgd_per_example_eps_with_a_box():
    xs = torch.tensor([[1.2, 0.5], [0.5, 0.5]], dtype=f64)
    eps = torch.tensor([0.1, 0.3], dtype=f64)                       # example 0 is 0.2 from the box: unreachable
    with pytest.raises(ValueError, match=r'^pgd: x lies farther than eps from the box clamp=\(0.0, 1.0\) for 1 of 2'):
        pgd(lambda z: z.sum(1), xs, eps, clamp=(0.0, 1.0))
    eps = torch.tensor([0.25, 0.3], dtype=f64)
    out = pgd(lambda z: z.sum(1), xs, eps, steps=5, clamp=(0.0, 1.0))
    assert ((out - xs).norm(dim=1) <= eps * (1 + 1e-12)).all() and out.max() <= 1


# ------------------------------------------------------------------------------------------------------------------
# tuple outputs: embedding_fgm and perturb_output on an nn.LSTM act on its output tensor (the first element)
# ------------------------------------------------------------------------------------------------------------------
def test_embedding_fgm_and_perturb_output_on_an_lstm():
    torch.manual_seed(6)
    lstm, head = nn.LSTM(3, 4, batch_first=True).double(), nn.Linear(4, 2).double()
    xs, ys = torch.randn(5, 7, 3, dtype=f64), torch.randint(0, 2, (5,))
    run = lambda: F.cross_entropy(head(lstm(xs)[0].mean(1)), ys, reduction='none')
    delta = embedding_fgm(run, lstm, 0.4)
    out, (h, c) = lstm(xs)
    out = out.detach()
    ref = fgm(lambda o: F.cross_entropy(head(o.mean(1)), ys, reduction='none'), out, 0.4) - out   # no hooks
    assert torch.allclose(delta, ref, rtol=1e-10, atol=1e-14)
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((5,), 0.4, dtype=f64), rtol=1e-12)
    with perturb_output(lstm, delta):
        out2, (h2, c2) = lstm(xs)
    assert torch.allclose(out2, out + delta, rtol=1e-14) and torch.equal(h2, h) and torch.equal(c2, c)


def test_embedding_fgm_refuses_an_output_that_is_not_a_tensor():
    class Dicty(nn.Module):
        def forward(self, t): return {'out': emb(t)}
    d = Dicty()
    with pytest.raises(ValueError, match="^embedding_fgm: module's output must be a tensor or a tuple"):
        embedding_fgm(lambda: d(tokens)['out'].sum((1, 2)), d, 0.1)
    assert len(d._forward_hooks) == 0
