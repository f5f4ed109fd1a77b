"""lipnotes.tight's certified_radius and certified_accuracy: bad input refused before any work, naming the function and the
argument; radii checked against exact adversarial distances of linear models (closed form), against a PGD attack on ReLU
networks, and against counting by hand; dtype and device follow the logits, and the radius is never rounded up."""
import math

import pytest
import torch
from torch import nn

from lipnotes.certificates import lipschitz_upper_bound
from lipnotes.tight import certified_accuracy, certified_radius

z = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
t = torch.tensor([0, 0, 1])

CASES = [
    (lambda: certified_radius([[1.0, 0.0]], t[:1], 1.0), TypeError, "certified_radius", "logits"),
    (lambda: certified_radius(z.long(), t, 1.0), TypeError, "certified_radius", "logits"),
    (lambda: certified_radius(z.to(torch.complex64), t, 1.0), TypeError, "certified_radius", "logits"),
    (lambda: certified_radius(z[0], t, 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(z.unsqueeze(0), t, 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(z[:, :1], t, 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(z[:0], t[:0], 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(torch.empty(3, 3, device='meta'), t, 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(z.clone().fill_(math.nan), t, 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(torch.tensor([[math.inf, 0.0]]), t[:1], 1.0), ValueError, "certified_radius", "logits"),
    (lambda: certified_radius(z, [0, 0, 1], 1.0), TypeError, "certified_radius", "target"),
    (lambda: certified_radius(z, t.int(), 1.0), TypeError, "certified_radius", "target"),
    (lambda: certified_radius(z, t.float(), 1.0), TypeError, "certified_radius", "target"),
    (lambda: certified_radius(z, t[:2], 1.0), ValueError, "certified_radius", "target"),
    (lambda: certified_radius(z, t.unsqueeze(1), 1.0), ValueError, "certified_radius", "target"),
    (lambda: certified_radius(z, torch.tensor([0, 3, 1]), 1.0), ValueError, "certified_radius", "target"),
    (lambda: certified_radius(z, torch.tensor([0, -1, 1]), 1.0), ValueError, "certified_radius", "target"),
    (lambda: certified_radius(z, torch.empty(3, dtype=torch.int64, device='meta'), 1.0), ValueError, "certified_radius", "target"),
    (lambda: certified_radius(z, t, 0.0), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, -1.0), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, math.inf), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, math.nan), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, "1"), TypeError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, True), TypeError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, None), TypeError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor([1.0])), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor(math.nan)), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor(-2.0)), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor(True)), TypeError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor(1 + 1j)), TypeError, "certified_radius", "lipschitz"),
    (lambda: certified_radius(z, t, torch.tensor(1.0, device='meta')), ValueError, "certified_radius", "lipschitz"),
    (lambda: certified_accuracy(z[:, :1], t, 1.0, [0.0]), ValueError, "certified_accuracy", "logits"),
    (lambda: certified_accuracy(z, t.int(), 1.0, [0.0]), TypeError, "certified_accuracy", "target"),
    (lambda: certified_accuracy(z, t, 0.0, [0.0]), ValueError, "certified_accuracy", "lipschitz"),
    (lambda: certified_accuracy(z, t, 1.0, [-0.1]), ValueError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, [math.inf]), ValueError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, []), ValueError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, ["0.1"]), TypeError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, [True]), TypeError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, 0.5), TypeError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, torch.zeros(2, 2)), ValueError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, torch.tensor([0.1, math.nan])), ValueError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, torch.tensor([True])), TypeError, "certified_accuracy", "radii"),
    (lambda: certified_accuracy(z, t, 1.0, torch.empty(2, device='meta')), ValueError, "certified_accuracy", "radii"),
]


@pytest.mark.parametrize("call, exc, fname, arg", CASES)
def test_bad_input(call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


def test_checks_come_before_any_work(monkeypatch):
    "Bad radii are refused before the radius is computed (certified_accuracy calls certified_radius only after its checks)."
    import lipnotes.tight as tight
    calls = []
    monkeypatch.setattr(tight, '_radius_float64', lambda *a: calls.append(a))
    with pytest.raises(ValueError): tight.certified_accuracy(z, t, 1.0, [-1.0])
    with pytest.raises(ValueError): tight.certified_radius(z, torch.tensor([0, 5, 1]), 1.0)
    assert calls == []


def test_closed_form_margins_wrong_and_tie():
    r = certified_radius(z, t, 2.0)
    expected = torch.tensor([1.0, -3.0, 0.0], dtype=torch.float64) / (2 * math.sqrt(2))
    assert r.dtype == z.dtype and r[2] == 0 and r[1] < 0
    assert torch.allclose(r.double(), expected, rtol=1e-6, atol=0)
    assert (r.double() * math.sqrt(2) * 2.0 <= torch.tensor([1.0, -3.0, 0.0], dtype=torch.float64)).all()   # never rounded up


def test_tensor_lipschitz_equals_float():
    logits, target = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 5, (20,))
    for L in (torch.tensor(1.7), torch.tensor(1.7, dtype=torch.float64), torch.tensor(2)):
        assert torch.equal(certified_radius(logits, target, L), certified_radius(logits, target, L.item()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_follows_logits_and_radius_is_rounded_down(dtype):
    torch.manual_seed(0)
    logits = torch.randn(500, 4).to(dtype)
    target = torch.randint(0, 4, (500,))
    L = 0.37
    r = certified_radius(logits, target, L)
    assert r.dtype == dtype and r.device == logits.device and r.shape == (500,)
    zd = logits.double()
    margin = zd.gather(1, target.unsqueeze(1)).squeeze(1) - zd.scatter(1, target.unsqueeze(1), -math.inf).amax(1)
    exact = margin / (math.sqrt(2) * L)
    assert (r.double() <= exact).all()                                   # never above the float64 value
    rtol = 2 * torch.finfo(dtype).eps + 16 * torch.finfo(torch.float64).eps      # an ulp or two, and the 8 eps64 margin
    assert torch.allclose(r.double(), exact, rtol=rtol, atol=torch.finfo(dtype).tiny)      # and not far below
    assert ((r > 0) == (margin > 0)).all() and ((r == 0) == (margin == 0)).all()


def test_huge_radius_in_float16_is_finite_and_rounded_down():
    r = certified_radius(torch.tensor([[60000.0, -60000.0]], dtype=torch.float16), torch.tensor([0]), 1e-3)
    assert torch.isfinite(r).all() and r.item() == torch.finfo(torch.float16).max


def exact_distance(W, b, x, y):
    "Exact smallest l2 perturbation after which another class reaches y's logit (f = W x + b), its unit direction, the class."
    zz = x @ W.T + b
    diff = W[y].unsqueeze(1) - W.unsqueeze(0)
    dist = ((zz.gather(1, y.unsqueeze(1)) - zz) / diff.norm(dim=2)).scatter(1, y.unsqueeze(1), math.inf)
    d, j = dist.min(1)
    step = diff[torch.arange(len(y)), j]
    return d, -step / step.norm(dim=1, keepdim=True), j


@pytest.mark.parametrize("seed", range(8))
def test_linear_models_no_perturbation_shorter_than_the_radius_flips(seed):
    """Exactly, for linear models: the smallest flipping perturbation (closed form, confirmed by stepping just past it) is
    never shorter than the certified radius; the labels are random, so wrong predictions (radius <= 0) occur too."""
    g = torch.Generator().manual_seed(seed)
    k, d = int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
    W, b = torch.randn(k, d, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)
    x = 2 * torch.randn(300, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (300,), generator=g)
    logits = x @ W.T + b
    r = certified_radius(logits, y, torch.linalg.matrix_norm(W, 2))
    right = logits.argmax(1) == y
    assert (r[~right] <= 0).all()
    dist, u, j = exact_distance(W, b, x[right], y[right])
    assert (r[right] <= dist).all()
    past = (x[right] + (1 + 1e-9) * dist.unsqueeze(1) * u) @ W.T + b
    assert (past.gather(1, j.unsqueeze(1)) > past.gather(1, y[right].unsqueeze(1))).all()
    inside = (x[right] + (1 - 1e-9) * r[right].clamp_min(0).unsqueeze(1) * u) @ W.T + b    # the worst direction, inside
    assert (inside.argmax(1) == y[right]).all()


def test_sqrt2_is_attained():
    "W = L/sqrt(2) (e_0 - e_1) u^T: the certified radius is the exact distance to the decision boundary."
    torch.manual_seed(1)
    u = nn.functional.normalize(torch.randn(7, dtype=torch.float64), dim=0)
    W = 2.5 / math.sqrt(2) * torch.outer(torch.tensor([1.0, -1.0], dtype=torch.float64), u)
    x = torch.randn(100, 7, dtype=torch.float64)
    y = (x @ W.T).argmax(1)
    r = certified_radius(x @ W.T, y, 2.5)
    dist, u_star, _ = exact_distance(W, torch.zeros(2, dtype=torch.float64), x, y)
    assert (r <= dist).all() and torch.allclose(r, dist, rtol=1e-13, atol=0)
    assert ((x + (1 + 1e-9) * r.unsqueeze(1) * u_star) @ W.T).argmax(1).ne(y).all()


def test_one_logit_recipe_of_the_error_message():
    torch.manual_seed(2)
    w, c = torch.randn(3, dtype=torch.float64), -0.2
    x = torch.randn(40, 3, dtype=torch.float64)
    zz = (x @ w + c).unsqueeze(1)
    y = (zz[:, 0] > 0).long()
    r = certified_radius(torch.cat([-zz, zz], 1) / 2, y, w.norm() / math.sqrt(2))
    assert torch.allclose(r, zz[:, 0].abs() / w.norm(), rtol=1e-13, atol=0) and (r <= zz[:, 0].abs() / w.norm()).all()


def pgd_margin(net, x, y, eps, steps=60):
    "The smallest margin z_y - max_{j != y} z_j that projected gradient descent finds within the l2 balls of radii eps."
    delta = 1e-3 * eps.unsqueeze(1) * nn.functional.normalize(torch.randn_like(x), dim=1)
    best = torch.full((len(x),), math.inf, dtype=x.dtype)
    for _ in range(steps):
        delta.requires_grad_(True)
        zz = net(x + delta)
        m = zz.gather(1, y.unsqueeze(1)).squeeze(1) - zz.scatter(1, y.unsqueeze(1), -math.inf).amax(1)
        grad, = torch.autograd.grad(m.sum(), delta)
        with torch.no_grad():
            best = torch.minimum(best, m.detach())
            delta = delta - 0.2 * eps.unsqueeze(1) * nn.functional.normalize(grad, dim=1)
            delta = delta * (eps / delta.norm(dim=1).clamp_min(1e-300)).clamp(max=1).unsqueeze(1)
    with torch.no_grad():
        zz = net(x + delta)
        return torch.minimum(best, zz.gather(1, y.unsqueeze(1)).squeeze(1) - zz.scatter(1, y.unsqueeze(1), -math.inf).amax(1))


@pytest.mark.parametrize("seed", range(4))
def test_pgd_never_flips_a_certified_prediction_within_its_radius(seed):
    """Random ReLU MLPs, L from the product bound: no attack within the radius flips a certified prediction; the same attack
    given 30 times the radius (the radius of L / 30, not a sound constant) flips some, so the test can fail."""
    torch.manual_seed(seed)
    d, k = 3 + seed, 2 + seed
    net = nn.Sequential(nn.Linear(d, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, k)).double()
    x = torch.randn(200, d, dtype=torch.float64)
    with torch.no_grad(): logits = net(x)
    y = torch.where(torch.rand(200) < 0.8, logits.argmax(1), torch.randint(0, k, (200,)))
    L = lipschitz_upper_bound(net)
    r = certified_radius(logits, y, L)
    ok = r > 0
    assert ok.sum() > 50 and (r[~ok] <= 0).all() and (logits[~ok].argmax(1) != y[~ok]).any()
    assert (pgd_margin(net, x[ok], y[ok], r[ok] * (1 - 1e-9)) > 0).all()
    unsound = certified_radius(logits, y, L / 30)
    assert (pgd_margin(net, x[ok], y[ok], unsound[ok]) < 0).any()


def test_certified_accuracy_counts_strictly():
    torch.manual_seed(3)
    logits, target = torch.randn(300, 4, dtype=torch.float64), torch.randint(0, 4, (300,))
    r = certified_radius(logits, target, 1.5)
    top = r.max()
    radii = torch.tensor([0.0, 0.1, top.item(), torch.nextafter(top, torch.tensor(0.0, dtype=torch.float64)).item(), 5.0],
                         dtype=torch.float64)
    acc = certified_accuracy(logits, target, 1.5, radii)
    assert acc.dtype == logits.dtype and acc.shape == (5,)
    assert acc.tolist() == [sum(1 for v in r.tolist() if v > rr) / 300 for rr in radii.tolist()]
    assert acc[2] == 0 and acc[3] == 1 / 300 and acc[4] == 0                # a radius exactly r is not certified at r
    assert acc[0] == (logits.argmax(1) == target).double().mean()
    assert torch.equal(certified_accuracy(logits, target, 1.5, radii.tolist()), acc)
    assert torch.equal(certified_accuracy(logits, target, torch.tensor(1.5), radii.float()),
                       certified_accuracy(logits, target, 1.5, radii.float().double()))


def test_tie_is_not_certified_at_zero():
    logits = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert certified_accuracy(logits, torch.tensor([0, 0]), 1.0, [0.0]).item() == 0.5


def test_accuracy_dtype_follows_logits():
    acc = certified_accuracy(z.to(torch.bfloat16), t, 1.0, torch.tensor([0.0, 0.1]))
    assert acc.dtype == torch.bfloat16 and acc.device == z.device
    assert torch.equal(acc, torch.tensor([1 / 3, 1 / 3]).to(torch.bfloat16))
