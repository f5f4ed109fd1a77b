"""lipnotes.construction (Björck orthonormalisation) and lipnotes.lipschitz.GroupSort against independent references:
torch.linalg.svdvals / svd of the orthonormalised weights, the scalar map g(s) = s (3 - s^2) / 2 on the input's singular
values, Python's sorted() on each group, min/max for MaxMin, dense Jacobians from torch.func.jacrev; and bad input."""
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap
from torch.nn.utils import parametrize

from lipnotes.certificates import lipschitz_upper_bound
from lipnotes.construction import BjorckOrthonormalization, bjorck_orthonormalize, orthonormalize
from lipnotes.lipschitz import GroupSort, activation_lipschitz, layer_constant

F64 = torch.float64
SHAPES = [(1, 1), (5, 5), (64, 64), (10, 64), (64, 10), (3, 17), (40, 7)]


def g(s): return s * (3 - s * s) / 2


# --- Björck -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', SHAPES, ids=str)
@pytest.mark.parametrize('seed', range(3))
def test_bjorck_singular_values_follow_the_scalar_map_and_reach_one(shape, seed):
    "svdvals(result of k steps) = g^k(svdvals(W) / ||W||_F) for every k, never above 1; 30 steps: 1 within 1e-10, = U V^T."
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    s = torch.linalg.svdvals(W) / torch.linalg.svdvals(W).pow(2).sum().sqrt()
    for k in range(1, 31):
        s = g(s)
        got = torch.linalg.svdvals(bjorck_orthonormalize(W, k))
        assert torch.allclose(got, s, rtol=0, atol=1e-11) and got.max() <= 1 + 1e-12, k
    U, sig, Vh = torch.linalg.svd(W, full_matrices=False)
    if (sig[-1] / torch.linalg.matrix_norm(W)) > 1e-4:                  # 30 steps reach 1 from s0 >= 1e-4 (the chapter)
        Q = bjorck_orthonormalize(W)
        assert (torch.linalg.svdvals(Q) - 1).abs().max() < 1e-10
        assert torch.allclose(Q, U @ Vh, atol=1e-9)


@pytest.mark.parametrize('shape', [(64, 64), (10, 64), (64, 10)], ids=str)
def test_bjorck_float32_within_float32_tolerance(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    Q = bjorck_orthonormalize(W)
    assert Q.dtype == torch.float32 and (torch.linalg.svdvals(Q.double()) - 1).abs().max() < 2e-6


def test_bjorck_half_precision_is_computed_in_float32():
    W = torch.randn(12, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    Q = bjorck_orthonormalize(W.to(torch.bfloat16))
    assert Q.dtype == torch.bfloat16
    ref = bjorck_orthonormalize(W.to(torch.bfloat16).float()).to(torch.bfloat16)
    assert torch.equal(Q, ref)


def test_bjorck_rank_deficient_and_zero():
    "A zero singular value stays zero (a rank-1 weight is not orthonormalised); the zero matrix stays zero, finite."
    u, v = torch.randn(6, 1, dtype=F64), torch.randn(1, 4, dtype=F64)
    s = torch.linalg.svdvals(bjorck_orthonormalize(u @ v))
    assert abs(s[0] - 1) < 1e-12 and (s[1:] < 1e-15 * 1.5 ** 30).all()       # rounding noise grows by at most 3/2 a step
    assert torch.equal(bjorck_orthonormalize(torch.zeros(3, 5, dtype=F64)), torch.zeros(3, 5, dtype=F64))


def test_bjorck_gradients_match_finite_differences():
    W = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: bjorck_orthonormalize(w, 8), (W,))


# --- orthonormalize ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('shape', [(64, 64), (10, 64), (64, 10), (7, 3)], ids=str)
def test_orthonormalize_weight_is_orthonormal_after_training_steps_and_in_eval(shape):
    torch.manual_seed(0)
    out_f, in_f = shape
    lin = orthonormalize(nn.Linear(in_f, out_f).double())
    assert isinstance(lin.parametrizations.weight[0], BjorckOrthonormalization)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    for _ in range(5):
        lin(torch.randn(16, in_f, dtype=F64)).pow(2).sum().backward(); opt.step(); opt.zero_grad()
        assert (torch.linalg.svdvals(lin.weight.detach()) - 1).abs().max() < 1e-10
    w_train = lin.weight.detach().clone()
    assert torch.equal(lin.eval().weight.detach(), w_train)             # no state: eval applies the same weight
    assert lipschitz_upper_bound(nn.Sequential(lin)).item() == pytest.approx(1.0, abs=1e-10)


def test_orthonormalize_assigning_an_orthogonal_matrix_gives_it_back():
    Q, _ = torch.linalg.qr(torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=F64))
    lin = orthonormalize(nn.Linear(5, 8).double())
    with torch.no_grad(): lin.weight = Q
    assert torch.allclose(lin.weight, Q, atol=1e-13)


def test_orthogonal_groupsort_net_has_orthogonal_jacobian():
    "Square orthonormal layers and GroupSort: the Jacobian is orthogonal at random inputs; narrowing last layer: J J^T = I."
    torch.manual_seed(2)
    net = nn.Sequential(orthonormalize(nn.Linear(16, 16)), GroupSort(4), orthonormalize(nn.Linear(16, 16)), GroupSort(2),
                        orthonormalize(nn.Linear(16, 5))).double()
    J = vmap(jacrev(net))(torch.randn(50, 16, dtype=F64))
    assert torch.allclose(J @ J.mT, torch.eye(5, dtype=F64).expand(50, 5, 5), atol=1e-10)
    assert lipschitz_upper_bound(net).item() == pytest.approx(1.0, abs=1e-10)


# --- GroupSort --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('k', [1, 2, 3, 4, 6, 12])
def test_groupsort_is_a_sort_of_each_group(k):
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(k), dtype=F64)
    ref = torch.tensor([[v for j in range(0, 12, k) for v in sorted(r[j:j + k].tolist())] for r in x], dtype=F64)
    assert torch.equal(GroupSort(k)(x), ref)
    per_group = torch.sort(x.reshape(7, 12 // k, k), dim=-1).values.reshape(7, 12)
    assert torch.equal(GroupSort(k)(x), per_group)


def test_groupsort_maxmin_and_dims():
    x = torch.randn(3, 8, 5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a, b = x[:, 0::2], x[:, 1::2]
    ref = torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 2).flatten(1, 2)
    assert torch.equal(GroupSort(2, dim=1)(x), ref) and torch.equal(GroupSort(2, dim=-3)(x), ref)
    assert torch.equal(GroupSort(1)(x), x)


@pytest.mark.parametrize('k', [2, 3, 4])
def test_groupsort_jacobian_is_a_permutation_and_preserves_gradient_norms(k):
    x = torch.randn(100, 12, generator=torch.Generator().manual_seed(k), dtype=F64)
    J = vmap(jacrev(GroupSort(k)))(x)
    assert ((J == 0) | (J == 1)).all() and (J.sum(1) == 1).all() and (J.sum(2) == 1).all()
    gvec = torch.randn(100, 12, dtype=F64)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((GroupSort(k)(xr) * gvec).sum(), xr)
    assert torch.allclose(grad.norm(dim=-1), gvec.norm(dim=-1), rtol=1e-14, atol=0)


def test_groupsort_is_one_lipschitz_at_random_pairs():
    u, v = 3 * torch.randn(2, 20_000, 9, generator=torch.Generator().manual_seed(4), dtype=F64)
    for k in (3, 9):
        r = (GroupSort(k)(u) - GroupSort(k)(v)).norm(dim=-1) / (u - v).norm(dim=-1)
        assert r.max() <= 1 + 1e-12


def test_groupsort_in_the_table_with_constant_one():
    assert activation_lipschitz(GroupSort(2)) == 1.0 == activation_lipschitz(GroupSort(5, dim=1), torch.float32)
    assert layer_constant(GroupSort(3)) == 1.0

    class Doubled(GroupSort):
        def forward(self, x): return 2 * super().forward(x)
    with pytest.raises(ValueError, match="replaces GroupSort's forward"): activation_lipschitz(Doubled())
    m = GroupSort(2); m.forward = lambda x: 2 * x
    with pytest.raises(ValueError, match="replaces GroupSort's forward"): activation_lipschitz(m)
    m = GroupSort(2); m.group_size = 0
    with pytest.raises(ValueError, match="group_size=0"): activation_lipschitz(m)


# --- bad input --------------------------------------------------------------------------------------------------------
lin_done = orthonormalize(nn.Linear(3, 3))
BAD = [
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize([[1.0]]), TypeError, 'W'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.ones(3, 3, dtype=torch.int64)), TypeError, 'W'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.ones(2, 3, 4)), ValueError, 'W'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.tensor([[1.0, math.nan]])), ValueError, 'W'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.empty(2, 2, device='meta')), ValueError, 'W'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.ones(2, 2), 0), ValueError, 'n_iterations'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.ones(2, 2), 2.5), TypeError, 'n_iterations'),
    ('bjorck_orthonormalize', lambda: bjorck_orthonormalize(torch.ones(2, 2), eps=0.0), ValueError, 'eps'),
    ('orthonormalize', lambda: orthonormalize('layer'), TypeError, 'module'),
    ('orthonormalize', lambda: orthonormalize(nn.Conv2d(2, 2, 3)), ValueError, 'spectral_normalize'),
    ('orthonormalize', lambda: orthonormalize(nn.Bilinear(2, 2, 2)), ValueError, 'nn.Linear'),
    ('orthonormalize', lambda: orthonormalize(nn.LazyLinear(3)), ValueError, 'lazy'),
    ('orthonormalize', lambda: orthonormalize(lin_done), ValueError, 'already'),
    ('orthonormalize', lambda: orthonormalize(nn.Linear(2, 2), n_iterations=0), ValueError, 'n_iterations'),
    ('orthonormalize', lambda: orthonormalize(nn.Linear(2, 2), eps=-1.0), ValueError, 'eps'),
    ('orthonormalize', lambda: orthonormalize(nn.Linear(2, 2).to(torch.complex64)), TypeError, 'module.weight'),
    ('BjorckOrthonormalization', lambda: BjorckOrthonormalization(0), ValueError, 'n_iterations'),
    ('GroupSort', lambda: GroupSort(0), ValueError, 'group_size'),
    ('GroupSort', lambda: GroupSort(True), TypeError, 'group_size'),
    ('GroupSort', lambda: GroupSort(2, dim=1.0), TypeError, 'dim'),
    ('GroupSort', lambda: GroupSort(3)(torch.randn(2, 4)), ValueError, 'group_size=3'),
    ('GroupSort', lambda: GroupSort(2, dim=2)(torch.randn(2, 4)), ValueError, 'dim=2'),
    ('GroupSort', lambda: GroupSort(2)(torch.tensor(1.0)), ValueError, 'dim=-1'),
    ('GroupSort', lambda: GroupSort(2)([1.0, 2.0]), TypeError, 'x'),
]


@pytest.mark.parametrize('fname, call, exc, arg', BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_refused_with_the_function_and_argument_named(fname, call, exc, arg, rejects):
    rejects(call, exc, fname, arg)


def test_orthonormalize_refusal_leaves_the_module_unchanged():
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError): orthonormalize(lin, n_iterations=0)
    assert not parametrize.is_parametrized(lin)
