"""Bad input gets a clear ValueError/TypeError naming the function and the argument, before any work is done;
degenerate but valid input (a zero matrix, a zero start) gives finite answers, never NaN."""
import math

import pytest
import torch
from torch import nn

from lipnotes.norms import conv_overlap_factor, frobenius_lipschitz_bound, l2_penalty, weight_matrices
from lipnotes.spectral import conv_operator_norm, power_iteration, spectral_penalty

W = torch.randn(5, 4)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(W=[[1.0, 2.0]]), TypeError, "W must be a torch.Tensor"),
    (dict(W=torch.randn(3)), ValueError, "shape (3,)"),
    (dict(W=torch.randn(0, 4)), ValueError, "non-empty"),
    (dict(W=torch.ones(3, 3, dtype=torch.int64)), TypeError, "floating dtype"),
    (dict(W=torch.ones(3, 3, dtype=torch.bool)), TypeError, "floating dtype"),
    (dict(W=W, n_iter=0), ValueError, "n_iter must be >= 1"),
    (dict(W=W, n_iter=2.5), TypeError, "n_iter must be an int"),
    (dict(W=W, n_iter=True), TypeError, "n_iter must be an int"),
    (dict(W=W, eps=0.0), ValueError, "eps must be positive"),
    (dict(W=W, eps=-1e-3), ValueError, "eps must be positive"),
    (dict(W=W, eps=float('nan')), ValueError, "eps must be positive"),
    (dict(W=W, u=torch.randn(4)), ValueError, "u must have shape (5,)"),
    (dict(W=W, u=torch.randn(5, dtype=torch.float64)), ValueError, "u must have shape (5,), dtype torch.float32"),
    (dict(W=W, u=torch.ones(5, dtype=torch.int32)), TypeError, "u must have a real floating dtype"),
])
def test_power_iteration_rejects(kwargs, exc, words):
    with pytest.raises(exc, match="^power_iteration: ") as e:
        power_iteration(**kwargs)
    assert words in str(e.value)


@pytest.mark.parametrize("bad", [float('nan'), float('inf'), -float('inf')])
def test_power_iteration_non_finite(bad):
    A = torch.randn(6, 6); A[2, 3] = bad
    with pytest.raises(ValueError, match="power_iteration: the estimate is not finite"):
        power_iteration(A, n_iter=3)
    with pytest.raises(ValueError, match="power_iteration: the estimate is not finite"):
        power_iteration(torch.randn(6, 6), n_iter=3, u=torch.full((6,), bad))


def test_power_iteration_non_finite_in_batch():
    A = torch.randn(4, 6, 6); A[3, 0, 0] = float('nan')
    with pytest.raises(ValueError, match="not finite"):
        power_iteration(A, n_iter=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_matrix_and_zero_start(dtype):
    sigma, u, v = power_iteration(torch.zeros(4, 3, dtype=dtype), n_iter=5)
    assert sigma == 0 and torch.isfinite(u).all() and torch.isfinite(v).all()
    assert math.isclose(torch.linalg.vector_norm(u).item(), 1, rel_tol=1e-6)
    assert math.isclose(torch.linalg.vector_norm(v).item(), 1, rel_tol=1e-6)
    # a warm start from those vectors (or from zero) on a non-zero matrix recovers the norm
    A = torch.randn(4, 3, dtype=dtype)
    for start in (u, torch.zeros(4, dtype=dtype)):
        s, _, _ = power_iteration(A, n_iter=300, u=start)
        assert torch.isclose(s, torch.linalg.matrix_norm(A, 2), rtol=1e-4)


def test_zero_member_of_a_batch():
    A = torch.randn(3, 5, 4, dtype=torch.float64); A[1] = 0
    sigma, u, v = power_iteration(A, n_iter=200)
    assert sigma[1] == 0 and torch.isfinite(u).all() and torch.isfinite(v).all()
    assert torch.allclose(sigma, torch.linalg.matrix_norm(A, 2), rtol=1e-6)


@pytest.mark.parametrize("args, kwargs, exc, words", [
    ((torch.randn(2, 3, 3), (3, 8, 8)), {}, ValueError, "weight must be a non-empty 4-D"),
    ((torch.ones(2, 3, 3, 3, dtype=torch.int64), (3, 8, 8)), {}, TypeError, "weight must have a real floating dtype"),
    ((torch.randn(2, 3, 3, 3), (8, 8)), {}, ValueError, "input_shape must be (C, H, W)"),
    ((torch.randn(2, 3, 3, 3), (4, 8, 8)), {}, ValueError, "input_shape has 4 channels"),
    ((torch.randn(2, 3, 3, 3), (3, 2, 8)), {}, ValueError, "does not fit"),
    ((torch.randn(2, 3, 5, 5), (3, 8, 8)), dict(dilation=2), ValueError, "does not fit"),
    ((torch.randn(2, 3, 3, 3), (3, 0, 8)), {}, ValueError, "input_shape must be 3 integer(s) >= 1"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(stride=0), ValueError, "stride must be 2 integer(s) >= 1"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(padding=-1), ValueError, "padding must be 2 integer(s) >= 0"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(padding='same'), TypeError, "padding must be an int or a pair"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(padding_mode='reflect'), ValueError, "padding_mode must be"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(n_iter=0), ValueError, "n_iter must be >= 1"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(tol=0.0), ValueError, "tol must be positive"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(groups=0), ValueError, "groups must be >= 1"),
    ((torch.randn(3, 1, 3, 3), (2, 8, 8)), dict(groups=2), ValueError, "not divisible by groups=2"),
    ((torch.randn(2, 3, 3, 3), (3, 8, 8)), dict(v=torch.randn(3, 7, 7)), ValueError, "v must have shape (3, 8, 8)"),
    ((torch.randn(2, 3, 3, 3), (3, 2, 2)), dict(padding=3, padding_mode='circular'), ValueError, "circular padding"),
])
def test_conv_operator_norm_rejects(args, kwargs, exc, words):
    with pytest.raises(exc, match="^conv_operator_norm: ") as e:
        conv_operator_norm(*args, **kwargs)
    assert words in str(e.value)


def test_conv_operator_norm_non_finite_and_zero():
    w = torch.randn(2, 3, 3, 3); w[0, 0, 1, 1] = float('inf')
    with pytest.raises(ValueError, match="conv_operator_norm: weight contains NaN or Inf"):
        conv_operator_norm(w, (3, 8, 8))
    res = conv_operator_norm(torch.zeros(2, 3, 3, 3), (3, 8, 8))
    assert res.sigma == 0 and torch.isfinite(res.u).all() and torch.isfinite(res.v).all()


@pytest.mark.parametrize("fn", [weight_matrices, l2_penalty, frobenius_lipschitz_bound, spectral_penalty])
def test_model_functions_reject(fn):
    name = fn.__name__
    with pytest.raises(TypeError, match=f"^{name}: model must be a torch.nn.Module"):
        fn(torch.randn(3, 3))
    with pytest.raises(ValueError, match=f"^{name}: model has no Linear or Conv weight matrices"):
        fn(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(ValueError, match=f"^{name}: module '0' has an uninitialised lazy weight"):
        fn(nn.Sequential(nn.LazyLinear(3)))


@pytest.mark.parametrize("fn", [l2_penalty, frobenius_lipschitz_bound, spectral_penalty])
def test_model_functions_non_finite(fn):
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad(): net[2].weight[0, 0] = float('nan')
    with pytest.raises(ValueError, match=f"^{fn.__name__}: .*(NaN|Inf)"):
        fn(net)


def test_frobenius_bound_rejects_what_it_cannot_bound():
    with pytest.raises(ValueError, match=r"frobenius_lipschitz_bound: cannot bound module '1' \(BatchNorm1d\)"):
        frobenius_lipschitz_bound(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        frobenius_lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode='reflect')))

    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__(); self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        def forward(self, x): return self.a(x) + self.b(x)
    with pytest.raises(ValueError, match=r"cannot bound module 'TwoBranch'"):
        frobenius_lipschitz_bound(TwoBranch())


@pytest.mark.parametrize("args, exc", [((0,), ValueError), ((3, 0), ValueError), ((3, 1, -2), ValueError),
                                       ((2.5,), TypeError), (((3, 3), (1, 1, 1)), ValueError)])
def test_conv_overlap_factor_rejects(args, exc):
    with pytest.raises(exc, match="^conv_overlap_factor: "):
        conv_overlap_factor(*args)
