"""Bad input for lipnotes.spectral's exported functions (issue 14's suite): every case ends in a ValueError/TypeError whose
message starts with the public function's name and names the argument, or in a correct result checked against
torch.linalg / a dense matrix of the operator."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes.spectral import (SpectralNormalization, conv_norm_bound, conv_operator_norm, power_iteration, power_method,
                               spectral_normalize, spectral_penalty)

W = torch.randn(5, 4)
K = torch.randn(2, 3, 3, 3)
META = dict(device='meta')
nan_w = torch.randn(5, 4); nan_w[1, 1] = float('nan')
inf_k = torch.randn(2, 3, 3, 3); inf_k[0, 0, 0, 0] = float('inf')


def lin_with(weight):
    m = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad(): m.weight = nn.Parameter(weight)
    return m


def _scalar_module():
    m = nn.Module(); m.weight = nn.Parameter(torch.tensor(3.0)); return m


ident = lambda x: x
CASES = [  # (call, exception, function name, argument name / fragment)
    # power_method
    (lambda: power_method("A", torch.ones(3), 3), TypeError, 'power_method', 'apply must be callable'),
    (lambda: power_method(ident, [[1.0]], 3), TypeError, 'power_method', 'v must be a torch.Tensor'),
    (lambda: power_method(ident, torch.ones(3, dtype=torch.int64), 3), TypeError, 'power_method', 'v must have a real floating dtype'),
    (lambda: power_method(ident, torch.empty(3, **META), 3), ValueError, 'power_method', 'v is a meta tensor'),
    (lambda: power_method(ident, [torch.ones(2), torch.ones(2, dtype=torch.int32)], 3), TypeError, 'power_method', 'v must have a real floating'),
    (lambda: power_method(ident, torch.ones(3), 0), ValueError, 'power_method', 'n_iter must be >= 1'),
    (lambda: power_method(ident, torch.ones(3), 2.0), TypeError, 'power_method', 'n_iter must be an int'),
    (lambda: power_method(ident, torch.ones(3), 3, adjoint=1), TypeError, 'power_method', 'adjoint must be callable'),
    (lambda: power_method(ident, torch.ones(3), 3, tol=0.0), ValueError, 'power_method', 'tol must be positive'),
    (lambda: power_method(ident, torch.ones(3), 3, tol=float('nan')), ValueError, 'power_method', 'tol must be positive'),
    (lambda: power_method(ident, torch.ones(3), 3, tol=1e-6, every=0), ValueError, 'power_method', 'every must be >= 1'),
    (lambda: power_method(ident, torch.ones(3), 3, restart='r'), TypeError, 'power_method', 'restart must be callable'),
    (lambda: power_method(ident, torch.ones(3), 3, dim=0), ValueError, 'power_method', 'dim must be one of None, -1'),
    (lambda: power_method(ident, torch.ones(3), 3, ident, u=torch.ones(3, dtype=torch.int64)), TypeError, 'power_method', 'u must have a real floating'),
    (lambda: power_method(ident, [torch.ones(3)], 3, dim=-1), ValueError, 'power_method', 'a list v is one vector'),
    # power_iteration
    (lambda: power_iteration(torch.empty(5, 4, **META)), ValueError, 'power_iteration', 'W is a meta tensor'),
    (lambda: power_iteration(W, u=torch.empty(5, **META)), ValueError, 'power_iteration', 'u must have shape'),
    (lambda: power_iteration(W.to(torch.complex64)), TypeError, 'power_iteration', 'W must have a real floating dtype'),
    (lambda: power_iteration(W.to(torch.int32)), TypeError, 'power_iteration', 'W must have a real floating dtype'),
    (lambda: power_iteration(W.bool()), TypeError, 'power_iteration', 'W must have a real floating dtype'),
    (lambda: power_iteration(torch.randn(4)), ValueError, 'power_iteration', 'W must be a non-empty matrix'),
    (lambda: power_iteration(torch.randn(3, 0)), ValueError, 'power_iteration', 'W must be a non-empty matrix'),
    (lambda: power_iteration(nan_w), ValueError, 'power_iteration', 'W or u contains NaN or Inf'),
    (lambda: power_iteration(W, u=torch.full((5,), float('inf'))), ValueError, 'power_iteration', 'W or u contains NaN'),
    (lambda: power_iteration(W, n_iter=0), ValueError, 'power_iteration', 'n_iter must be >= 1'),
    (lambda: power_iteration(W, n_iter=1.0), TypeError, 'power_iteration', 'n_iter must be an int'),
    (lambda: power_iteration(W, eps=float('inf')), ValueError, 'power_iteration', 'eps must be positive'),
    (lambda: power_iteration(W, eps='1e-12'), TypeError, 'power_iteration', 'eps must be a real number'),
    (lambda: power_iteration(W, u=torch.randn(5).to(torch.float16)), ValueError, 'power_iteration', 'u must have shape'),
    (lambda: power_iteration(W.numpy()), TypeError, 'power_iteration', 'W must be a torch.Tensor'),
    # conv_operator_norm
    (lambda: conv_operator_norm(torch.empty(2, 3, 3, 3, **META), (3, 8, 8)), ValueError, 'conv_operator_norm', 'weight is a meta tensor'),
    (lambda: conv_operator_norm(K, (3, 8, 8), v=torch.empty(3, 8, 8, **META)), ValueError, 'conv_operator_norm', 'v is a meta tensor'),
    (lambda: conv_operator_norm(K.to(torch.complex64), (3, 8, 8)), TypeError, 'conv_operator_norm', 'weight must have a real floating dtype'),
    (lambda: conv_operator_norm(K.bool(), (3, 8, 8)), TypeError, 'conv_operator_norm', 'weight must have a real floating dtype'),
    (lambda: conv_operator_norm(inf_k, (3, 8, 8)), ValueError, 'conv_operator_norm', 'weight contains NaN or Inf'),
    (lambda: conv_operator_norm(K, (3, 8, 8), v=torch.full((3, 8, 8), float('nan'))), ValueError, 'conv_operator_norm', 'v contains NaN'),
    (lambda: conv_operator_norm(K, (3, 8, 8), v=torch.ones(3, 8, 8, dtype=torch.int64)), TypeError, 'conv_operator_norm', 'v must have a real floating'),
    (lambda: conv_operator_norm(torch.empty(0, 3, 3, 3), (3, 8, 8)), ValueError, 'conv_operator_norm', 'weight must be a non-empty 4-D'),
    (lambda: conv_operator_norm(K, [3, 8]), ValueError, 'conv_operator_norm', 'input_shape must be (C, H, W)'),
    (lambda: conv_operator_norm(K, (3, 8.0, 8)), TypeError, 'conv_operator_norm', 'input_shape must be an int or a tuple'),
    (lambda: conv_operator_norm(K, (3, True, 8)), TypeError, 'conv_operator_norm', 'input_shape'),
    (lambda: conv_operator_norm(K, (3, 8, 8), stride=(1, 0)), ValueError, 'conv_operator_norm', 'stride'),
    (lambda: conv_operator_norm(K, (3, 8, 8), dilation=(1, 2, 3)), ValueError, 'conv_operator_norm', 'dilation'),
    (lambda: conv_operator_norm(K, (3, 8, 8), groups=1.0), TypeError, 'conv_operator_norm', 'groups must be an int'),
    (lambda: conv_operator_norm(K, (3, 8, 8), tol=float('nan')), ValueError, 'conv_operator_norm', 'tol must be positive'),
    (lambda: conv_operator_norm(K, (3, 8, 8), n_iter=-1), ValueError, 'conv_operator_norm', 'n_iter must be >= 1'),
    (lambda: conv_operator_norm(K, (3, 8, 8), padding_mode='reflect'), ValueError, 'conv_operator_norm', 'padding_mode'),
    # spectral_penalty
    (lambda: spectral_penalty(nn.Sequential(nn.Linear(3, 2, device='meta'))), ValueError, 'spectral_penalty', "model's module '0' has a meta weight"),
    (lambda: spectral_penalty(nn.Sequential(nn.Linear(3, 2, dtype=torch.complex64))), TypeError, 'spectral_penalty', "model's module '0' has a torch.complex64 weight"),
    (lambda: spectral_penalty(lin_with(nan_w)), ValueError, 'spectral_penalty', 'a weight contains NaN or Inf'),
    (lambda: spectral_penalty("net"), TypeError, 'spectral_penalty', 'model must be a torch.nn.Module'),
    # spectral_normalize
    (lambda: spectral_normalize(nn.Linear(3, 2, device='meta')), ValueError, 'spectral_normalize', 'weight is a meta tensor'),
    (lambda: spectral_normalize(lin_with(W.to(torch.complex64))), TypeError, 'spectral_normalize', 'weight must have a real floating dtype'),
    (lambda: spectral_normalize(lin_with(nan_w)), ValueError, 'spectral_normalize', "'weight' contains NaN or Inf"),
    (lambda: spectral_normalize(nn.Linear(3, 2), name=3), TypeError, 'spectral_normalize', 'name must be a str'),
    (lambda: spectral_normalize(nn.Linear(3, 2), n_power_iterations=1.5), TypeError, 'spectral_normalize', 'n_power_iterations must be an int'),
    (lambda: spectral_normalize(nn.Linear(3, 2), eps=0), ValueError, 'spectral_normalize', 'eps must be positive'),
    (lambda: spectral_normalize(nn.Linear(3, 2), coeff=float('inf')), ValueError, 'spectral_normalize', 'coeff must be positive'),
    (lambda: spectral_normalize(nn.Linear(3, 2), coeff='1'), TypeError, 'spectral_normalize', 'coeff must be a real number'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3), mode='operator', input_shape=(1, 2, 2)), ValueError, 'spectral_normalize', 'does not fit'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3), mode='operator', input_shape=(1, -4, 4)), ValueError, 'spectral_normalize', 'input_shape'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3), mode='operator', input_shape="1x8x8"), ValueError, 'spectral_normalize', 'input_shape must be (C, H, W)'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3, padding=4, padding_mode='circular'), mode='operator', input_shape=(1, 3, 3)),
     ValueError, 'spectral_normalize', 'circular padding'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3, padding_mode='reflect'), mode='operator', input_shape=(1, 8, 8)),
     ValueError, 'spectral_normalize', 'padding_mode'),
    (lambda: spectral_normalize(nn.Conv1d(1, 2, 3), mode='operator', input_shape=(1, 8, 8)), ValueError, 'spectral_normalize',
     'input_shape must be (C, L) for a Conv1d'),
    (lambda: spectral_normalize(nn.ConvTranspose1d(1, 2, 3), mode='operator', input_shape=(1, 8)), ValueError, 'spectral_normalize',
     'needs an nn.Conv1d, nn.Conv2d or nn.ConvTranspose2d'),
    (lambda: spectral_normalize(nn.ConvTranspose2d(2, 1, 3), mode='operator', input_shape=(3, 8, 8)), ValueError, 'spectral_normalize',
     'input_shape has 3 channels'),
    (lambda: spectral_normalize(nn.ConvTranspose2d(2, 1, 3, padding=3), mode='operator', input_shape=(2, 1, 1)), ValueError,
     'spectral_normalize', 'would be empty'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3, padding=2, padding_mode='circular'), mode='operator', input_shape=(1, 8, 8),
                                exact=True), ValueError, 'spectral_normalize', 'reads some outputs twice'),
    # conv_norm_bound
    (lambda: conv_norm_bound([[1.0]], (1, 4, 4)), TypeError, 'conv_norm_bound', 'weight must be a torch.Tensor'),
    (lambda: conv_norm_bound(torch.randn(2, 3, 3), (3, 4, 4)), ValueError, 'conv_norm_bound', 'weight must be a non-empty 4-D'),
    (lambda: conv_norm_bound(inf_k, (3, 4, 4)), ValueError, 'conv_norm_bound', 'weight'),
    (lambda: conv_norm_bound(K, (2, 4, 4)), ValueError, 'conv_norm_bound', 'channels'),
    (lambda: conv_norm_bound(K, (3, 4)), ValueError, 'conv_norm_bound', 'input_shape must be (C, H, W)'),
    (lambda: conv_norm_bound(K, (3, 4, 4), padding='same'), TypeError, 'conv_norm_bound', 'padding'),
    (lambda: conv_norm_bound(K, (3, 4, 4), padding=2, padding_mode='circular'), ValueError, 'conv_norm_bound', 'reads some outputs twice'),
    (lambda: conv_norm_bound(K, (3, 4, 4), padding_mode='reflect'), ValueError, 'conv_norm_bound', 'padding_mode'),
    # spectral_penalty with input_shapes
    (lambda: spectral_penalty(nn.Sequential(nn.Conv2d(1, 1, 3)), [(1, 4, 4)]), TypeError, 'spectral_penalty', 'input_shapes must be a dict'),
    (lambda: spectral_penalty(nn.Sequential(nn.Conv2d(1, 1, 3)), {'1': (1, 4, 4)}), ValueError, 'spectral_penalty', "names no layer"),
    (lambda: spectral_penalty(nn.Sequential(nn.Linear(2, 2)), {'0': (2,)}), ValueError, 'spectral_penalty', 'needs an nn.Conv1d'),
    (lambda: spectral_penalty(nn.Sequential(nn.Conv2d(1, 1, 3)), {'0': (2, 4, 4)}), ValueError, 'spectral_penalty', 'channels'),
    (lambda: spectral_normalize(nn.Conv2d(1, 2, 3), name='bias', mode='operator', input_shape=(1, 8, 8)), ValueError, 'spectral_normalize', "name='bias'"),
    (lambda: spectral_normalize(_scalar_module()), ValueError, 'spectral_normalize', 'weight must have at least one dimension'),
    # SpectralNormalization (the class, used directly)
    (lambda: SpectralNormalization([[1.0]]), TypeError, 'SpectralNormalization', 'weight must be a torch.Tensor'),
    (lambda: SpectralNormalization(torch.empty(3, 2, **META)), ValueError, 'SpectralNormalization', 'weight is a meta tensor'),
    (lambda: SpectralNormalization(nan_w), ValueError, 'SpectralNormalization', "'weight' contains NaN"),
    (lambda: SpectralNormalization(W, mode='operator'), ValueError, 'SpectralNormalization', "mode='operator' needs a 3-D or 4-D conv weight"),
    (lambda: SpectralNormalization(K, mode='operator', conv=((1, 1), (0, 0), (1, 1), 1, 'zeros')), ValueError, 'SpectralNormalization', 'needs input_shape'),
    (lambda: SpectralNormalization(K, mode='operator', conv=((1, 1), (0, 0), (1, 1), 1, 'zeros'), input_shape=(2, 8, 8)),
     ValueError, 'SpectralNormalization', 'input_shape has 2 channels'),
    (lambda: SpectralNormalization(W, n_power_iterations=0), ValueError, 'SpectralNormalization', 'n_power_iterations must be >= 1'),
    (lambda: SpectralNormalization(W, warmup_tol=-1.0), ValueError, 'SpectralNormalization', 'warmup_tol must be positive'),
    (lambda: SpectralNormalization(W, max_warmup=0), ValueError, 'SpectralNormalization', 'max_warmup must be >= 1'),
    (lambda: SpectralNormalization(W, exact='yes'), TypeError, 'SpectralNormalization', 'exact must be a bool'),
]


@pytest.mark.parametrize("call, exc, fname, words", CASES, ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_refused_with_a_clear_error(rejects, call, exc, fname, words):
    rejects(call, exc, fname, words)


def dense_conv(weight, shape, **kw):
    n = math.prod(shape)
    return F.conv2d(torch.eye(n, dtype=weight.dtype).reshape(n, *shape), weight, **kw).reshape(n, -1).T


# ---- inputs with a right answer --------------------------------------------------------------------------------------
def test_power_iteration_non_contiguous_expanded_and_half():
    A = torch.randn(6, 5, dtype=torch.float64)
    ref = torch.linalg.matrix_norm(A, 2)
    assert torch.isclose(power_iteration(A.mT.contiguous().mT, 500)[0], ref, rtol=1e-8)
    assert torch.isclose(power_iteration(A.T, 500)[0], ref, rtol=1e-8)                        # non-contiguous
    batch = A.expand(3, 6, 5)                                                                   # expanded (stride 0)
    sigma, u, v = power_iteration(batch, 500, u=torch.randn(6, dtype=torch.float64).expand(3, 6))
    assert torch.allclose(sigma, ref.expand(3), rtol=1e-8)
    for dt in (torch.float16, torch.bfloat16):
        s, u, v = power_iteration(A.to(dt), 500)
        assert s.dtype == dt and math.isclose(s.item(), ref.item(), rel_tol=1e-2)


def test_power_iteration_empty_batch_and_zero():
    s, u, v = power_iteration(torch.randn(0, 3, 4))
    assert s.shape == (0,) and u.shape == (0, 3) and v.shape == (0, 4)
    s, u, v = power_iteration(torch.zeros(3, 4))
    assert s == 0 and math.isclose(u.norm().item(), 1, rel_tol=1e-6) and math.isclose(v.norm().item(), 1, rel_tol=1e-6)


def test_conv_operator_norm_non_contiguous_half_and_zero_start():
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    ref = torch.linalg.matrix_norm(dense_conv(w, (3, 6, 6), padding=1), 2)
    wt = w.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)                                 # non-contiguous, same values
    assert not wt.is_contiguous()
    assert torch.isclose(conv_operator_norm(wt, (3, 6, 6), padding=1, tol=1e-13, n_iter=20000).sigma, ref, rtol=1e-6)
    v = torch.zeros(1, 1, 1, dtype=torch.float64).expand(3, 6, 6)                               # an expanded zero start
    assert torch.isclose(conv_operator_norm(w, (3, 6, 6), padding=1, v=v, tol=1e-13, n_iter=20000).sigma, ref, rtol=1e-6)
    res = conv_operator_norm(w.to(torch.bfloat16), (3, 6, 6), padding=1, tol=1e-8)
    assert res.sigma.dtype == torch.bfloat16 and math.isclose(res.sigma.item(), ref.item(), rel_tol=2e-2)


def test_spectral_penalty_half_and_train_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).double()
    for _ in range(300): p = spectral_penalty(net)
    assert torch.isclose(p, torch.linalg.matrix_norm(net[0].weight, 2) ** 2, rtol=1e-8)
    net.eval(); assert torch.equal(spectral_penalty(net), p)                                     # eval: no step, same value
    half = nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16)
    for _ in range(50): ph = spectral_penalty(half)
    assert ph.dtype == torch.bfloat16 and torch.isfinite(ph)


def test_spectral_normalize_train_eval_and_empty():
    torch.manual_seed(1)
    lin = spectral_normalize(nn.Linear(5, 4).double())
    x = torch.randn(3, 5, dtype=torch.float64)
    lin.eval(); u = lin.parametrizations.weight[0]._u.clone(); lin(x)
    assert torch.equal(u, lin.parametrizations.weight[0]._u)                                   # eval: no power step
    lin.train(); lin(x)
    assert not torch.equal(u, lin.parametrizations.weight[0]._u)
    assert math.isclose(torch.linalg.matrix_norm(lin.weight.detach(), 2).item(), 1, rel_tol=1e-6)
    bias = spectral_normalize(nn.Linear(5, 4).double(), name='bias')                          # 1-D: divided by its norm, as torch
    assert math.isclose(torch.linalg.vector_norm(bias.bias.detach()).item(), 1, rel_tol=1e-12)
    empty = spectral_normalize(nn.Linear(0, 3))                                                # an empty weight stays empty
    assert empty.weight.shape == (3, 0) and torch.isfinite(empty(torch.randn(2, 0))).all()


def test_spectral_normalize_non_contiguous_and_half_weights():
    torch.manual_seed(2)
    lin = nn.Linear(6, 5).double()
    with torch.no_grad(): lin.weight = nn.Parameter(torch.randn(6, 5, dtype=torch.float64).T)   # non-contiguous (5, 6)
    assert not lin.weight.is_contiguous()
    spectral_normalize(lin)
    assert math.isclose(torch.linalg.matrix_norm(lin.weight.detach(), 2).item(), 1, rel_tol=1e-6)
    for dt in (torch.float16, torch.bfloat16):
        half = spectral_normalize(nn.Linear(6, 5).to(dt))
        w = half.weight.detach()
        assert w.dtype == dt and math.isclose(torch.linalg.matrix_norm(w.float(), 2).item(), 1, rel_tol=3e-2)
