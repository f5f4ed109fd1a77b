"""Bad input to lipnotes.norms (weight_matrices, l2_penalty, conv_overlap_factor, frobenius_lipschitz_bound): every case
ends in a ValueError/TypeError whose message starts with the public function's name and names the argument, or in a
correct result checked against an independent reference (torch.linalg in float64, a brute-force count)."""
import math

import pytest
import torch
from torch import nn

from lipnotes.norms import conv_overlap_factor, frobenius_lipschitz_bound, l2_penalty, weight_matrices

FNS = {f.__name__: f for f in (weight_matrices, l2_penalty, frobenius_lipschitz_bound)}


def mlp(*layers):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), *layers)


def with_weight(w):
    "A Linear whose weight is replaced by the tensor `w` (any dtype, layout or device)."
    lin = nn.Linear(3, 4)
    del lin.weight
    lin.weight = nn.Parameter(w, requires_grad=w.is_floating_point() or w.is_complex())
    return lin


def nan_weight(value):
    net = mlp(nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad(): net[2].weight[0, 0] = value
    return net


def with_attr(module, **attrs):
    for k, v in attrs.items(): setattr(module, k, v)
    return module


def prelu(value, device=None):
    p = nn.PReLU(device=device)
    if device != 'meta':
        with torch.no_grad(): p.weight.fill_(value)
    return p


def hooked():
    net = mlp(nn.ReLU())
    net[0].register_forward_hook(lambda m, i, o: 10 * o)
    return net


class Doubled(nn.Sequential):
    def forward(self, x): return 2 * super().forward(x)


class Big(nn.Linear):
    def forward(self, x): return 100 * super().forward(x)


def declared(c):
    block = nn.Sequential(nn.Linear(3, 3))
    block.lipschitz_constant = c
    return mlp(block)


MODEL_FNS = ['weight_matrices', 'l2_penalty', 'frobenius_lipschitz_bound']
# (function name, model factory, exception, fragment); "model" must appear in every message
MODEL_CASES = [(fn, make, exc, frag) for fn in MODEL_FNS for make, exc, frag in [
    (lambda: torch.randn(3, 3), TypeError, "model must be a torch.nn.Module, got Tensor"),
    (lambda: [nn.Linear(2, 2)], TypeError, "model must be a torch.nn.Module, got list"),
    (lambda: None, TypeError, "model must be a torch.nn.Module, got NoneType"),
    (lambda: nn.Sequential(), ValueError, "model has no Linear or Conv weight matrices"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Tanh()), ValueError, "model has no Linear or Conv weight matrices"),
    (lambda: nn.Sequential(nn.LazyLinear(3)), ValueError, "has an uninitialised lazy weight; run model forward once"),
    (lambda: nn.Sequential(nn.LazyConv2d(3, 3)), ValueError, "has an uninitialised lazy weight; run model forward once"),
]] + [(fn, make, exc, frag) for fn in ['l2_penalty', 'frobenius_lipschitz_bound'] for make, exc, frag in [
    (lambda: nan_weight(float('nan')), ValueError, "NaN or Inf"),
    (lambda: nan_weight(float('inf')), ValueError, "NaN or Inf"),
    (lambda: with_weight(torch.ones(4, 3, dtype=torch.int64)), TypeError, "model must have real floating weights"),
    (lambda: with_weight(torch.ones(4, 3, dtype=torch.bool)), TypeError, "model must have real floating weights"),
    (lambda: with_weight(torch.ones(4, 3, dtype=torch.complex64)), TypeError, "model must have real floating weights"),
]] + [('frobenius_lipschitz_bound', make, exc, frag) for make, exc, frag in [
    (lambda: nn.Sequential(nn.Linear(3, 3, device='meta')), ValueError, "meta device (no values); materialise model"),
    (lambda: nn.Sequential(nn.Linear(3, 3)).to_empty(device='meta'), ValueError, "meta device (no values); materialise model"),
    (lambda: with_weight(torch.full((4, 3), 30000.0, dtype=torch.float16)), ValueError, "overflows torch.float16; cast model"),
    (lambda: mlp(nn.BatchNorm1d(3)), ValueError, "cannot bound module '1' (BatchNorm1d) of model"),
    (lambda: mlp(nn.LogSoftmax(dim=-1)), ValueError, "cannot bound module '1' (LogSoftmax) of model"),
    (lambda: mlp(nn.MultiheadAttention(3, 1)), ValueError, "cannot bound module '1' (MultiheadAttention) of model"),
    (lambda: nn.ModuleList([nn.Linear(2, 2)]), ValueError, "cannot bound module 'ModuleList' (ModuleList) of model"),
    (lambda: Doubled(nn.Linear(2, 2)), ValueError, "cannot bound module 'Doubled' (Doubled) of model"),
    (hooked, ValueError, "module '0' of model has forward hooks"),
    (lambda: nn.Sequential(Big(3, 3)), ValueError, "module '0' (Big) of model: its class overrides torch's forward"),
    (lambda: mlp(nn.ELU(float('nan'))), ValueError, "(ELU) of model: alpha=nan must be finite"),
    (lambda: mlp(nn.ELU(float('inf'))), ValueError, "(ELU) of model: alpha=inf must be finite"),
    (lambda: mlp(nn.LeakyReLU(float('nan'))), ValueError, "(LeakyReLU) of model: negative_slope=nan must be finite"),
    (lambda: mlp(with_attr(nn.LeakyReLU(), negative_slope="0.1")), ValueError, "negative_slope='0.1' must be finite"),
    (lambda: mlp(nn.CELU(-1.0)), ValueError, "(CELU) of model: alpha=-1.0 < 0 makes the slope"),
    (lambda: mlp(nn.CELU(0.0)), ValueError, "(CELU) of model: alpha=0.0 must be finite and non-zero"),
    (lambda: mlp(nn.RReLU(0.5, 0.1)), ValueError, "(RReLU) of model: lower=0.5 <= upper=0.1"),
    (lambda: mlp(nn.Softshrink(-1.0)), ValueError, "(Softshrink) of model: lambd=-1.0 must be finite and >= 0"),
    (lambda: mlp(with_attr(nn.Hardtanh(), min_val=float('nan'))), ValueError, "(Hardtanh) of model: min_val=nan"),
    (lambda: mlp(nn.Softplus(beta=0.0)), ValueError, "(Softplus) of model: beta=0.0"),
    (lambda: mlp(nn.Softplus(threshold=float('nan'))), ValueError, "(Softplus) of model: beta=1.0 and threshold=nan"),
    (lambda: mlp(nn.Softplus(threshold=0.0)), ValueError, "(Softplus) of model: torch's Softplus jumps"),
    (lambda: mlp(nn.Softplus()).double(), ValueError, "(Softplus) of model: torch's Softplus jumps"),
    (lambda: mlp(nn.Hardshrink(0.5)), ValueError, "(Hardshrink) of model: it jumps"),
    (lambda: mlp(nn.Threshold(0.0, 1.0)), ValueError, "(Threshold) of model: it jumps"),
    (lambda: mlp(with_attr(nn.GELU(), approximate='fast')), ValueError, "(GELU) of model: approximate='fast'"),
    (lambda: mlp(prelu(float('nan'))), ValueError, "(PReLU) of model: its weight must hold finite real values"),
    (lambda: mlp(prelu(0.0, device='meta')), ValueError, "(PReLU) of model: its weight must hold finite real values"),
    (lambda: mlp(with_attr(nn.Dropout(0.5), p=float('nan'))), ValueError, "(Dropout) of model: p=nan must be in [0, 1]"),
    (lambda: mlp(with_attr(nn.Dropout(0.5), p=1.5)), ValueError, "(Dropout) of model: p=1.5 must be in [0, 1]"),
    (lambda: nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode='reflect')), ValueError,
     "module '0' of model uses padding_mode='reflect'"),
    (lambda: nn.Sequential(nn.Conv1d(1, 1, 3, padding=1, padding_mode='replicate')), ValueError,
     "module '0' of model uses padding_mode='replicate'"),
    (lambda: declared(float('nan')), ValueError, "module '1' of model declares lipschitz_constant=nan"),
    (lambda: declared(-2.0), ValueError, "module '1' of model declares lipschitz_constant=-2.0"),
    (lambda: declared("1"), TypeError, "module '1' of model declares lipschitz_constant='1'"),
    (lambda: declared(torch.tensor(1j)), TypeError, "module '1' of model declares lipschitz_constant="),
]]


@pytest.mark.parametrize("fn, make, exc, frag", MODEL_CASES,
                         ids=[f"{fn}-{i}" for i, (fn, *_) in enumerate(MODEL_CASES)])
def test_model_functions_reject(fn, make, exc, frag):
    model = make()
    with pytest.raises(exc) as info:
        FNS[fn](model)
    msg = str(info.value)
    assert msg.startswith(f"{fn}: ") and "model" in msg and frag in msg, msg


@pytest.mark.parametrize("args, exc, frag", [
    (((),), ValueError, "kernel_size, stride and dilation need at least one dimension"),
    (([],), ValueError, "kernel_size, stride and dilation need at least one dimension"),
    (((), (), ()), ValueError, "kernel_size, stride and dilation need at least one dimension"),
    ((0,), ValueError, "kernel_size must be 1 integer(s) >= 1"),
    ((-3,), ValueError, "kernel_size must be 1 integer(s) >= 1"),
    ((3, 0), ValueError, "stride must be 1 integer(s) >= 1"),
    ((3, 1, -2), ValueError, "dilation must be 1 integer(s) >= 1"),
    (((3, 3), (1, 1, 1)), ValueError, "stride must be 2 integer(s)"),
    (((3, 3), 1, (1, 1, 1)), ValueError, "dilation must be 2 integer(s)"),
    ((2.5,), TypeError, "kernel_size must be an int or a tuple of ints"),
    ((float('nan'),), TypeError, "kernel_size must be an int or a tuple of ints"),
    ((True,), TypeError, "kernel_size must be an int or a tuple of ints"),
    (("3",), TypeError, "kernel_size must be an int or a tuple of ints"),
    ((None,), TypeError, "kernel_size must be an int or a tuple of ints"),
    ((torch.tensor(3),), TypeError, "kernel_size must be an int or a tuple of ints"),
    (((3, 3.0),), TypeError, "kernel_size must be an int or a tuple of ints"),
    ((3, (1, True)), TypeError, "stride must be an int or a tuple of ints"),
])
def test_conv_overlap_factor_rejects(args, exc, frag):
    with pytest.raises(exc) as info:
        conv_overlap_factor(*args)
    msg = str(info.value)
    assert msg.startswith("conv_overlap_factor: ") and frag in msg, msg


def brute_force_overlap(k, s, d, n=80):
    "Most (output position, tap) pairs reading one index of a long 1-D signal (the independent reference)."
    counts = [0] * n
    for p in range((n - d * (k - 1) - 1) // s + 1):
        for q in range(k): counts[s * p + d * q] += 1
    return max(counts)


@pytest.mark.parametrize("args, axes", [((3,), [(3, 1, 1)]), (([3, 2], [2, 1]), [(3, 2, 1), (2, 1, 1)]),
                                        ((torch.Size([5, 3]), 2, 2), [(5, 2, 2), (3, 2, 2)]),
                                        (((3, 3, 3), (3, 1, 2), 4), [(3, 3, 4), (3, 1, 4), (3, 2, 4)]),
                                        ((7, 10 ** 6, 10 ** 6), [(7, 10 ** 6, 10 ** 6)])])
def test_conv_overlap_factor_accepts(args, axes):
    ref = math.prod(brute_force_overlap(*a) if a[1] < 100 else a[0] for a in axes)   # stride 1e6 = dilation: all taps on one pixel
    assert conv_overlap_factor(*args) == pytest.approx(math.sqrt(ref), rel=1e-15)


# --- correct results for degenerate, low-precision, strided and meta input ----------------------------------------------
def ref_bound(net):
    "Product of float64 Frobenius norms (the chapter's bound for a chain of Linear layers and ReLU)."
    return math.prod(torch.linalg.vector_norm(m.weight.detach().double()).item() for m in net if isinstance(m, nn.Linear))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_low_precision_results_in_the_callers_dtype(dtype):
    net = mlp(nn.ReLU(), nn.Linear(3, 2)).to(dtype)
    b = frobenius_lipschitz_bound(net)
    assert b.dtype == dtype and b.item() >= ref_bound(net)                      # rounded up, never below
    assert b.item() <= ref_bound(net) * (1 + 2 * torch.finfo(dtype).eps)
    p = l2_penalty(net)
    ref = sum(m.weight.double().pow(2).sum().item() for m in net if isinstance(m, nn.Linear))
    assert p.dtype == dtype and p.item() == pytest.approx(ref, rel=2 * torch.finfo(dtype).eps)
    assert all(W.dtype == dtype for _, W in weight_matrices(net))


def test_half_penalty_beyond_half_range_is_refused_not_called_nan():
    net = with_weight(torch.full((4, 3), 100.0, dtype=torch.float16))          # 12 * 1e4 > 65504, every weight finite
    with pytest.raises(ValueError, match=r"^l2_penalty: the penalty 1.2e\+05 overflows torch.float16; model's"):
        l2_penalty(net)
    small = with_weight(torch.full((4, 3), 70.0, dtype=torch.float16))          # 70^2 = 4900: squares fine, sum 58800
    assert l2_penalty(small).item() == pytest.approx(12 * 4900, rel=1e-3)


def test_meta_models():
    "weight_matrices and l2_penalty give the right meta result; the certificate refuses (tested above)."
    net = nn.Sequential(nn.Linear(4, 3, device='meta'), nn.ReLU(), nn.Conv1d(1, 2, 3, device='meta'))
    mats = weight_matrices(net)
    assert [W.shape for _, W in mats] == [(3, 4), (2, 3)] and all(W.is_meta for _, W in mats)
    p = l2_penalty(net)
    assert p.is_meta and p.shape == () and p.dtype == torch.float32


def test_non_contiguous_and_expanded_weights():
    base = torch.randn(3, 4, dtype=torch.float64)
    for w in (base.t(), torch.randn(1, 3, dtype=torch.float64).expand(4, 3), torch.randn(4, 6, dtype=torch.float64)[:, ::2]):
        assert not w.is_contiguous()
        net = nn.Sequential(with_weight(w))
        assert torch.equal(weight_matrices(net)[0][1], w)
        assert l2_penalty(net).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-14)
        assert frobenius_lipschitz_bound(net).item() == pytest.approx(torch.linalg.matrix_norm(w).item(), rel=1e-14)


def test_train_and_eval_modes():
    "Dropout scales by 1/(1-p) only in training; RReLU's constant is its mean slope in eval, its widest in training."
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.RReLU(-4.0, -2.0))
    fro = torch.linalg.matrix_norm(net[0].weight.detach().double()).item()
    assert frobenius_lipschitz_bound(net.train()).item() == pytest.approx(fro * 2 * 4, rel=1e-6)
    assert frobenius_lipschitz_bound(net.eval()).item() == pytest.approx(fro * 3, rel=1e-6)
    assert l2_penalty(net.train()).item() == l2_penalty(net.eval()).item()


def test_zero_and_degenerate_models():
    "A zero weight gives 0, an all-zero conv 0, a Dropout(p=1) in training a bound that still holds (its output is 0)."
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad(): net[0].weight.zero_()
    assert frobenius_lipschitz_bound(net).item() == 0 and l2_penalty(net).item() == 0
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(1.0)).train()
    assert frobenius_lipschitz_bound(net).item() >= 0
