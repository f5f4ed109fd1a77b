"""Bad input for lipnotes.certificates (issue 14; activation_lipschitz's cases are in test_bad_input_lipschitz.py): every
case ends in a ValueError/TypeError whose message starts with the public function's name and names the argument, raised
before any work, or in a correct result checked against an independent reference (a dense Jacobian from
torch.func.jacrev, torch.linalg)."""
import pytest
import torch
from torch import nn
from torch.func import jacrev

from lipnotes.certificates import (check_lower_bound_arguments, check_upper_bound_layers, jacobian_spectral_norm,
                                   lipschitz_lower_bound, lipschitz_upper_bound)

torch.manual_seed(0)
mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double()
x = torch.randn(3, 4, dtype=torch.float64)
nan_x = x.clone(); nan_x[1, 2] = float('nan')
inf_x = x.clone(); inf_x[0, 0] = float('inf')


def declared(c):
    m = nn.Linear(4, 4).double(); m.lipschitz_constant = c
    return nn.Sequential(m)


def nan_weight():
    m = nn.Linear(4, 2).double()
    with torch.no_grad(): m.weight[0, 0] = float('nan')
    return nn.Sequential(m)


class BigLinear(nn.Linear):
    "A Linear whose forward returns 100x its output: not a Linear as far as any rule is concerned."
    def forward(self, z): return 100 * super().forward(z)


class BigReLU(nn.ReLU):
    def forward(self, z): return 100 * super().forward(z)


def hooked(module):
    module.register_forward_hook(lambda m, i, o: 100 * o)
    return module


def prelu(value):
    p = nn.PReLU()
    with torch.no_grad(): p.weight.fill_(value)
    return p


CASES = [
    # lipschitz_upper_bound: wrong types, declared constants, parameters, shapes, modes
    (lambda: lipschitz_upper_bound(lambda z: z), TypeError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(mlp, breakdown=1), TypeError, "lipschitz_upper_bound", "breakdown"),
    (lambda: lipschitz_upper_bound(declared(float('nan'))), ValueError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(declared(float('inf'))), ValueError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(declared(-0.5)), ValueError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(declared("1")), TypeError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(declared(False)), TypeError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(declared(1j)), TypeError, "lipschitz_upper_bound", "lipschitz_constant"),
    (lambda: lipschitz_upper_bound(nan_weight()), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 3, device='meta'))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(3, 3, dtype=torch.complex64))), TypeError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.LazyLinear(3))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.BatchNorm1d(4))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.LayerNorm(4))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Threshold(0.1, 0.0))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.MaxPool2d(2, return_indices=True))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.Softplus()).double()), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Softplus())), ValueError, "lipschitz_upper_bound", "model"),    # float64 assumed
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.CELU(-1.0))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.Hardshrink())), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(BigLinear(2, 2))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), BigReLU())), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(hooked(nn.Linear(2, 2)))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(nn.Sequential(hooked(nn.Sequential(nn.Linear(2, 2))))), ValueError, "lipschitz_upper_bound", "model"),
    (lambda: lipschitz_upper_bound(cnn), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.AvgPool2d(2))), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.AdaptiveMaxPool2d(2))), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, 5), TypeError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, 5.0, 5)), TypeError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, True, 5)), TypeError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, 0, 5)), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, -5, 5)), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, 2, 2)), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (2, 5, 5)), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.MaxPool2d((2, 1), 1, (1, 0), (2, 1))), (1, 1, 4)), ValueError,
     "lipschitz_upper_bound", "input_shape"),
    # jacobian_spectral_norm
    (lambda: jacobian_spectral_norm("f", x), TypeError, "jacobian_spectral_norm", "f"),
    (lambda: jacobian_spectral_norm(mlp, [[1.0] * 4]), TypeError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, x[0]), ValueError, "jacobian_spectral_norm", "x"),                 # 1-D
    (lambda: jacobian_spectral_norm(mlp, torch.tensor(1.0)), ValueError, "jacobian_spectral_norm", "x"),   # 0-D
    (lambda: jacobian_spectral_norm(mlp, nan_x), ValueError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, inf_x), ValueError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, torch.ones(3, 4, dtype=torch.int64)), TypeError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, torch.ones(3, 4, dtype=torch.bool)), TypeError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, x.to(torch.complex128)), TypeError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, x.half()), ValueError, "jacobian_spectral_norm", "x"),              # dtype mismatch
    (lambda: jacobian_spectral_norm(mlp, x.float()), ValueError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, torch.empty(3, 4, device='meta')), ValueError, "jacobian_spectral_norm", "x"),
    (lambda: jacobian_spectral_norm(mlp, torch.randn(3, 5, dtype=torch.float64)), ValueError, "jacobian_spectral_norm", "f"),
    (lambda: jacobian_spectral_norm(lambda z: (z, z), x), TypeError, "jacobian_spectral_norm", "f"),        # tuple output
    (lambda: jacobian_spectral_norm(lambda z: z.argmax(1), x), TypeError, "jacobian_spectral_norm", "f"),   # integer output
    (lambda: jacobian_spectral_norm(nn.Sequential(nn.Linear(4, 4), nn.Dropout()).double(), x), ValueError,
     "jacobian_spectral_norm", "f"),                                                                          # train mode
    (lambda: jacobian_spectral_norm(nn.Sequential(nn.Linear(4, 4), nn.RReLU()).double(), x), ValueError,
     "jacobian_spectral_norm", "f"),                                                                          # random slopes
    (lambda: jacobian_spectral_norm(mlp, x, n_iter=0), ValueError, "jacobian_spectral_norm", "n_iter"),
    (lambda: jacobian_spectral_norm(mlp, x, n_iter=2.5), TypeError, "jacobian_spectral_norm", "n_iter"),
    (lambda: jacobian_spectral_norm(mlp, x, n_iter=True), TypeError, "jacobian_spectral_norm", "n_iter"),
    (lambda: jacobian_spectral_norm(mlp, x, v=torch.randn(3, 5)), ValueError, "jacobian_spectral_norm", "v"),
    (lambda: jacobian_spectral_norm(mlp, x, v=torch.full_like(x, float('nan'))), ValueError, "jacobian_spectral_norm", "v"),
    (lambda: jacobian_spectral_norm(mlp, x, v=torch.ones(3, 4, dtype=torch.int64)), TypeError, "jacobian_spectral_norm", "v"),
    (lambda: jacobian_spectral_norm(mlp, x, v=[0.0]), TypeError, "jacobian_spectral_norm", "v"),
    # lipschitz_lower_bound
    (lambda: lipschitz_lower_bound(3, x), TypeError, "lipschitz_lower_bound", "f"),
    (lambda: lipschitz_lower_bound(mlp, x[:0]), ValueError, "lipschitz_lower_bound", "x"),                  # no start point
    (lambda: lipschitz_lower_bound(mlp, x[0]), ValueError, "lipschitz_lower_bound", "x"),
    (lambda: lipschitz_lower_bound(mlp, nan_x), ValueError, "lipschitz_lower_bound", "x"),
    (lambda: lipschitz_lower_bound(mlp, x.float()), ValueError, "lipschitz_lower_bound", "x"),
    (lambda: lipschitz_lower_bound(mlp, torch.empty(3, 4, device='meta')), ValueError, "lipschitz_lower_bound", "x"),
    (lambda: lipschitz_lower_bound(lambda z: (z, z), x), TypeError, "lipschitz_lower_bound", "f"),
    (lambda: lipschitz_lower_bound(mlp, x, steps=0), ValueError, "lipschitz_lower_bound", "steps"),
    (lambda: lipschitz_lower_bound(mlp, x, steps=1.0), TypeError, "lipschitz_lower_bound", "steps"),
    (lambda: lipschitz_lower_bound(mlp, x, lr=0.0), ValueError, "lipschitz_lower_bound", "lr"),
    (lambda: lipschitz_lower_bound(mlp, x, lr=float('nan')), ValueError, "lipschitz_lower_bound", "lr"),
    (lambda: lipschitz_lower_bound(mlp, x, lr="0.1"), TypeError, "lipschitz_lower_bound", "lr"),
    (lambda: lipschitz_lower_bound(mlp, x, n_iter=-1), ValueError, "lipschitz_lower_bound", "n_iter"),
    (lambda: lipschitz_lower_bound(mlp, x, beta=(1.0, float('inf'))), ValueError, "lipschitz_lower_bound", "beta"),
    (lambda: lipschitz_lower_bound(mlp, x, beta=(0.0, 10.0)), ValueError, "lipschitz_lower_bound", "beta"),
    (lambda: lipschitz_lower_bound(mlp, x, beta=(True, 10.0)), ValueError, "lipschitz_lower_bound", "beta"),
    (lambda: lipschitz_lower_bound(mlp, x, beta=1.0), ValueError, "lipschitz_lower_bound", "beta"),
    # dtype (issue 16): the inputs' dtype of the upper bound, the values' dtype of the lower bound; the public checks
    (lambda: lipschitz_upper_bound(mlp, dtype=torch.int64), TypeError, "lipschitz_upper_bound", "dtype"),
    (lambda: lipschitz_upper_bound(mlp, dtype='float32'), TypeError, "lipschitz_upper_bound", "dtype"),
    (lambda: lipschitz_lower_bound(mlp, x, dtype=torch.int32), TypeError, "lipschitz_lower_bound", "dtype"),
    (lambda: lipschitz_lower_bound(mlp, x, dtype=torch.complex128), TypeError, "lipschitz_lower_bound", "dtype"),
    (lambda: check_lower_bound_arguments(mlp, x, steps=0), ValueError, "check_lower_bound_arguments", "steps"),
    (lambda: check_lower_bound_arguments(mlp, x.float(), argname='model'), ValueError, "check_lower_bound_arguments", "model"),
    (lambda: check_upper_bound_layers("net"), TypeError, "check_upper_bound_layers", "model"),
    (lambda: check_upper_bound_layers(mlp, dtype=torch.int64), TypeError, "check_upper_bound_layers", "dtype"),
    (lambda: check_upper_bound_layers(nn.Sequential(nn.LayerNorm(4))), ValueError, "check_upper_bound_layers", "LayerNorm"),
    # H1: (H, W) for a Conv2d, which torch would read as an unbatched (C, W)
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Conv2d(1, 2, 3)), (6, 6)), ValueError, "lipschitz_upper_bound", "input_shape"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Flatten(0), nn.Unflatten(0, (1, 6, 6)), nn.Conv2d(1, 2, 3)), (36,)),
     ValueError, "lipschitz_upper_bound", "input_shape"),
]

# D: BatchNorm statistics that give no finite map (running_var + eps <= 0, NaN or Inf in a statistic or the affine parameters)
def bad_bn(attr, value, eps=1e-5):
    bn = nn.BatchNorm1d(3, eps=eps).double().eval()
    with torch.no_grad(): getattr(bn, attr)[1] = value
    return nn.Sequential(nn.Linear(4, 3).double(), bn)

BN_CASES = [("running_var", -1.0), ("running_var", -1e-5), ("running_var", float('nan')), ("running_var", float('inf')),
            ("running_mean", float('nan')), ("running_mean", float('-inf')), ("weight", float('nan')), ("bias", float('inf'))]
for attr, value in BN_CASES:
    CASES += [(lambda a=attr, v=value: lipschitz_upper_bound(bad_bn(a, v)), ValueError, "lipschitz_upper_bound", attr)]


@pytest.mark.parametrize("call, exc, fname, arg", CASES)
def test_bad_input(call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


# --- degenerate but valid input: the right answer, against an independent reference ------------------------------------
def dense_norms(f, x):
    return torch.stack([torch.linalg.matrix_norm(jacrev(lambda z: f(z.unsqueeze(0))[0])(xi).reshape(-1, xi.numel()), 2)
                        for xi in x]).detach()


def test_non_contiguous_and_expanded_x():
    xt = torch.randn(4, 3, dtype=torch.float64).T                       # (3, 4), not contiguous
    xe = torch.randn(1, 4, dtype=torch.float64).expand(3, 4)            # stride 0 along the batch
    for xx in (xt, xe):
        assert not xx.is_contiguous()
        assert torch.allclose(jacobian_spectral_norm(mlp, xx, n_iter=300), dense_norms(mlp, xx), rtol=1e-8)


def test_function_constant_in_x_has_zero_jacobian():
    "A function that ignores its input: ||J|| = 0 and the lower bound 0 (not autograd's 'does not require grad')."
    const = lambda z: torch.ones(z.shape[0], 3, dtype=z.dtype)
    assert torch.equal(jacobian_spectral_norm(const, x), torch.zeros(3, dtype=torch.float64))
    assert lipschitz_lower_bound(const, x, steps=3).value == 0


def test_empty_batch_gives_empty_result():
    out = jacobian_spectral_norm(mlp, x[:0])
    assert out.shape == (0,) and out.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_keeps_dtype(dtype):
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)
    xl = torch.randn(3, 4).to(dtype)
    s = jacobian_spectral_norm(net, xl, n_iter=100)
    ref = dense_norms(net.double(), xl.double())
    assert s.dtype == dtype and torch.allclose(s.double(), ref, rtol=2e-2)
    assert lipschitz_upper_bound(net.to(dtype)).item() >= ref.max().item() * (1 - 1e-2)


def test_modes_train_and_eval():
    "Dropout: 1/(1-p) in train mode (each mask scales kept units by that), 1 in eval; BatchNorm refused in train, exact in eval."
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Dropout(0.5)).double()
    W = torch.linalg.matrix_norm(net[0].weight.detach(), 2).item()
    assert lipschitz_upper_bound(net.train()).item() == pytest.approx(2 * W, rel=1e-12)
    assert lipschitz_upper_bound(net.eval()).item() == pytest.approx(W, rel=1e-12)
    bn = nn.BatchNorm1d(4).double().eval()
    with torch.no_grad(): bn.running_var.copy_(torch.tensor([1.0, 0.25, 4.0, 1.0])); bn.weight.copy_(torch.tensor([1.0, -2.0, 1.0, 0.5]))
    J = jacrev(lambda z: bn(z.unsqueeze(0))[0])(torch.zeros(4, dtype=torch.float64))
    assert lipschitz_upper_bound(nn.Sequential(bn)).item() == pytest.approx(torch.linalg.matrix_norm(J, 2).item(), rel=1e-9)


def test_valid_declared_constants():
    for c, want in ((0, 0.0), (2.5, 2.5), (torch.tensor(3.0), 3.0)):
        assert lipschitz_upper_bound(declared(c)).item() == want
