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



# ------------------------------------------------------------------------------------------------------------------
# pgd: restarts against a brute-force search, targeted mode, the uniform start in the L2 ball (issue 18)
# ------------------------------------------------------------------------------------------------------------------
f64 = torch.float64
torch.manual_seed(1)
net64 = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)).double()
x64 = torch.randn(12, 5, dtype=f64)
y64 = torch.randint(0, 4, (12,))
t64 = (y64 + 1) % 4
loss64 = lambda z: F.cross_entropy(net64(z), y64, reduction='none')
tloss64 = lambda z: F.cross_entropy(net64(z), t64, reduction='none')
fooled = lambda z: net64(z).argmax(1) != y64
reached = lambda z: net64(z).argmax(1) == t64


def brute_force(loss_fn, seed, restarts, success, targeted, **kw):
    "restarts single runs after one seed; per example, a loop picks the first run with the largest (success, +-loss)."
    torch.manual_seed(seed)
    runs = [pgd(loss_fn, x64, 0.8, targeted=targeted, **kw) for _ in range(restarts)]
    best = []
    for i in range(len(x64)):
        def key(r):
            with torch.no_grad():
                ok = bool(success(runs[r])[i]) if success is not None else False
                val = loss_fn(runs[r])[i].item()
            return (ok, -val if targeted else val, -r)
        best.append(runs[max(range(restarts), key=key)][i])
    return torch.stack(best)


@pytest.mark.parametrize('norm', [2, math.inf])
@pytest.mark.parametrize('targeted, success', [(False, None), (False, 'fooled'), (True, None), (True, 'reached')])
@pytest.mark.parametrize('restarts', [2, 5])
def test_pgd_restarts_equal_a_brute_force_search(norm, targeted, success, restarts):
    succ = {'fooled': fooled, 'reached': reached, None: None}[success]
    lf = tloss64 if targeted else loss64
    kw = dict(steps=4, norm=norm, step_size=0.3)
    ref = brute_force(lf, 10 + restarts, restarts, succ, targeted, **kw)
    torch.manual_seed(10 + restarts)
    got = pgd(lf, x64, 0.8, targeted=targeted, restarts=restarts, success=succ, **kw)
    assert torch.equal(got, ref)


def test_pgd_restarts_keep_the_per_example_extreme_and_a_box():
    "Without success, the kept loss is the per-example max (untargeted) or min (targeted) over the runs; every run's box holds."
    for targeted, lf, pick in ((False, loss64, torch.max), (True, tloss64, torch.min)):
        xc = x64.clamp(-1.5, 1.5)
        torch.manual_seed(3)
        runs = [pgd(lf, xc, 0.8, steps=3, targeted=targeted, clamp=(-1.5, 1.5)) for _ in range(6)]
        torch.manual_seed(3)
        got = pgd(lf, xc, 0.8, steps=3, targeted=targeted, clamp=(-1.5, 1.5), restarts=6)
        with torch.no_grad():
            assert torch.equal(lf(got), pick(torch.stack([lf(r) for r in runs]), 0).values)
        assert ((got - xc).norm(dim=1) <= 0.8 * (1 + 1e-12)).all() and got.abs().max() <= 1.5


def test_pgd_success_outranks_the_loss():
    "A run that succeeded wins over one that did not, even at a lower loss (a success callable that disagrees with the loss)."
    lin = lambda z: z[:, 0]
    only_low = lambda z: z[:, 0] < x64[:, 0]                      # 'success' where the loss went down
    torch.manual_seed(7)
    runs = [pgd(lin, x64, 0.5, steps=1, step_size=1e-3) for _ in range(8)]
    torch.manual_seed(7)
    got = pgd(lin, x64, 0.5, steps=1, step_size=1e-3, restarts=8, success=only_low)
    for i in range(len(x64)):
        oks = [bool(only_low(r)[i]) for r in runs]
        cands = [r[i, 0].item() for r, ok in zip(runs, oks) if ok == any(oks)]
        assert got[i, 0].item() == max(cands)


def test_pgd_restarts_one_is_the_plain_run_and_calls_loss_fn_steps_times():
    calls = []
    counting = lambda z: calls.append(1) or loss64(z)
    torch.manual_seed(2); a = pgd(counting, x64, 0.5, steps=3)
    torch.manual_seed(2); b = pgd(loss64, x64, 0.5, steps=3, restarts=1, success=fooled)
    assert torch.equal(a, b) and len(calls) == 3
    calls.clear(); pgd(counting, x64, 0.5, steps=3, restarts=4)
    assert len(calls) == 4 * 3 + 4                                 # each run's steps, and one ranking call per run


def test_targeted_pgd_descends_and_reaches_the_target_more_often():
    "Targeted steps go along -g: on a linear loss the iterate ends at x - eps w/||w||; on a trained net it hits the target."
    w = torch.randn(5, dtype=f64)
    lin = lambda z: z @ w
    end = pgd(lin, x64, 0.7, steps=5, random_start=False, targeted=True)
    assert torch.allclose(end, x64 - 0.7 * w / w.norm(), rtol=1e-12, atol=1e-14)
    end_inf = pgd(lin, x64, 0.7, steps=5, random_start=False, targeted=True, norm=math.inf)
    assert torch.allclose(end_inf, x64 - 0.7 * w.sign(), rtol=1e-12, atol=1e-14)
    torch.manual_seed(0)
    centres = 3 * torch.randn(4, 5, dtype=f64)                     # an easy 4-class problem
    labels = torch.arange(4).repeat(100)
    pts = centres[labels] + torch.randn(400, 5, dtype=f64)
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 4)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad(); F.cross_entropy(model(pts), labels).backward(); opt.step()
    target = (labels + 1) % 4
    with torch.no_grad(): assert (model(pts).argmax(1) == labels).double().mean() > 0.9
    torch.manual_seed(1)
    adv_t = pgd(lambda z: F.cross_entropy(model(z), target, reduction='none'), pts, 4.0, steps=30, targeted=True)
    adv_u = pgd(lambda z: F.cross_entropy(model(z), labels, reduction='none'), pts, 4.0, steps=30)
    with torch.no_grad():
        hit_t = (model(adv_t).argmax(1) == target).double().mean().item()
        hit_u = (model(adv_u).argmax(1) == target).double().mean().item()
    assert hit_t > hit_u + 0.3, (hit_t, hit_u)          # 0.69 against 0.27 here


def test_l2_random_start_is_uniform_in_the_ball():
    """With a zero gradient pgd returns its start: the fraction within eps/2 is 2^-d, the radii's CDF (r/eps)^d (KS), the
    direction is uniform (mean 0, second moment I/d); a radius uniform on [0, eps] (torchattacks#161) fails the test."""
    n = 20000
    crit = 1.95 / math.sqrt(n)                                     # Kolmogorov-Smirnov at the 0.1 % level
    for d, eps in ((2, 1.0), (3, 0.5), (10, 2.0), (64, 1.0)):
        torch.manual_seed(d)
        start = pgd(lambda z: 0 * z.sum(1), torch.zeros(n, d, dtype=f64), eps, steps=1)
        r = start.norm(dim=1) / eps
        assert r.max() <= 1 + 1e-12
        frac = (r <= 0.5).double().mean().item()
        p = 2.0 ** -d
        assert abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (d, frac, p)
        ks = (r.sort().values ** d - torch.arange(1, n + 1, dtype=f64) / n).abs().max().item()
        assert ks < crit, (d, ks)
        u = start / start.norm(dim=1, keepdim=True)
        assert u.mean(0).abs().max() < 5 / math.sqrt(d * n)
        assert (u.T @ u / n - torch.eye(d, dtype=f64) / d).abs().max() < 5 * math.sqrt(2 / n) / d + 0.01 / d
    wrong = torch.rand(n, dtype=f64)                               # the radius torchattacks draws
    assert (wrong.sort().values ** 3 - torch.arange(1, n + 1, dtype=f64) / n).abs().max() > 10 * crit


def test_random_start_stays_in_the_ball_for_images_and_per_example_eps():
    torch.manual_seed(4)
    imgs = torch.zeros(3000, 1, 4, 4, dtype=f64)
    eps = torch.tensor([0.5, 1.0, 2.0], dtype=f64).repeat(1000)
    r = pgd(lambda z: 0 * z.sum((1, 2, 3)), imgs, eps, steps=1).flatten(1).norm(dim=1) / eps
    assert r.max() <= 1 + 1e-12
    ks = (r.sort().values ** 16 - torch.arange(1, 3001, dtype=f64) / 3000).abs().max().item()
    assert ks < 1.95 / math.sqrt(3000)
