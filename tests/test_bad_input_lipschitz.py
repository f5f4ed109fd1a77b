"""Bad input to lipnotes.lipschitz (activation_lipschitz, layer_constant, composition_bound, layer_rule): every case ends
in a ValueError/TypeError whose message starts with the public function's name and names the argument (or the layer),
raised before any work, or in a correct result checked against an independent reference (autograd slopes, torch.linalg)."""
import math

import pytest
import torch
from torch import nn

from lipnotes.lipschitz import activation_lipschitz, composition_bound, layer_constant, layer_rule


class BigReLU(nn.ReLU):
    def forward(self, z): return 100 * super().forward(z)


def hooked(module):
    module.register_forward_hook(lambda m, i, o: 100 * o)
    return module


def prelu(value):
    p = nn.PReLU()
    with torch.no_grad(): p.weight.fill_(value)
    return p


def spectral(name, m): return torch.linalg.matrix_norm(m.weight.detach().double(), 2)


def mlp(*layers):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), *layers)


CASES = [
    # activation_lipschitz (moved from test_bad_input_certificates.py)
    (lambda: activation_lipschitz("relu"), TypeError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.ReLU), TypeError, "activation_lipschitz", "module"),          # the class, not an instance
    (lambda: activation_lipschitz(nn.Linear(2, 2)), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.Hardshrink()), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(prelu(float('nan'))), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(prelu(float('inf'))), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.PReLU(device='meta')), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.ReLU(), torch.int64), TypeError, "activation_lipschitz", "dtype"),
    (lambda: activation_lipschitz(nn.ReLU(), torch.complex64), TypeError, "activation_lipschitz", "dtype"),
    (lambda: activation_lipschitz(nn.ReLU(), "float32"), TypeError, "activation_lipschitz", "dtype"),
    (lambda: activation_lipschitz(nn.ReLU(), torch.bool), TypeError, "activation_lipschitz", "dtype"),
    (lambda: activation_lipschitz(nn.Softplus()), ValueError, "activation_lipschitz", "module"),          # float64: a jump
    (lambda: activation_lipschitz(nn.Softplus(beta=0.0)), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.Softplus(threshold=float('nan')), torch.float32), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.CELU(alpha=-1.0)), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.ELU(alpha=float('inf'))), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.RReLU(0.5, 0.1)), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(BigReLU()), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(hooked(nn.ReLU())), ValueError, "activation_lipschitz", "module"),
    (lambda: activation_lipschitz(nn.Dropout()), ValueError, "activation_lipschitz", "Dropout"),      # a layer, not an activation
    (lambda: activation_lipschitz(nn.Identity()), ValueError, "activation_lipschitz", "Identity"),
    # layer_constant
    (lambda: layer_constant("relu"), TypeError, "layer_constant", "m"),
    (lambda: layer_constant(nn.ReLU(), torch.int32), TypeError, "layer_constant", "dtype"),
    (lambda: layer_constant(nn.ReLU(), 'float32'), TypeError, "layer_constant", "dtype"),
    (lambda: layer_constant(nn.Linear(2, 2)), ValueError, "layer_constant", "Linear"),
    (lambda: layer_constant(nn.LayerNorm(2)), ValueError, "layer_constant", "LayerNorm"),
    (lambda: layer_constant(nn.BatchNorm1d(2)), ValueError, "layer_constant", "training mode"),
    (lambda: layer_constant(nn.Softplus(), torch.float64), ValueError, "layer_constant", "Softplus"),
    (lambda: layer_constant(nn.CELU(-1.0), name='3'), ValueError, "layer_constant", "module '3' (CELU) of model"),
    (lambda: layer_constant(BigReLU()), ValueError, "layer_constant", "BigReLU"),
    (lambda: layer_constant(hooked(nn.Tanh())), ValueError, "layer_constant", "forward hooks"),
    (lambda: layer_constant(nn.LogSoftmax(-1)), ValueError, "layer_constant", "LogSoftmax"),
    (lambda: layer_constant(nn.GLU()), ValueError, "layer_constant", "GLU"),
    (lambda: layer_constant(nn.MultiheadAttention(4, 1)), ValueError, "layer_constant", "MultiheadAttention"),
    # composition_bound
    (lambda: composition_bound("net", spectral), TypeError, "composition_bound", "model"),
    (lambda: composition_bound(mlp(), "spectral"), TypeError, "composition_bound", "weight_bound"),
    (lambda: composition_bound(mlp(), spectral, torch.int64), TypeError, "composition_bound", "dtype"),
    (lambda: composition_bound(nn.Sequential(nn.ReLU()), spectral), ValueError, "composition_bound", "model"),
    (lambda: composition_bound(mlp(nn.BatchNorm1d(3)), spectral), ValueError, "composition_bound", "module '1' (BatchNorm1d)"),
    (lambda: composition_bound(mlp(nn.LayerNorm(3)), spectral), ValueError, "composition_bound", "module '1' (LayerNorm)"),
    (lambda: composition_bound(mlp(BigReLU()), spectral), ValueError, "composition_bound", "module '1' (BigReLU)"),
    (lambda: composition_bound(mlp(hooked(nn.ReLU())), spectral), ValueError, "composition_bound", "module '1' of model"),
    (lambda: composition_bound(mlp(nn.Linear(3, 3, device='meta')), spectral), ValueError, "composition_bound", "meta"),
]


@pytest.mark.parametrize("call, exc, fname, arg", CASES)
def test_bad_input(call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


def test_declared_constant_is_checked_by_layer_constant():
    "A declared lipschitz_constant is trusted only if it is a finite real >= 0."
    for c, exc in ((float('nan'), ValueError), (-1.0, ValueError), ("1", TypeError), (True, TypeError)):
        m = nn.ReLU(); m.lipschitz_constant = c
        with pytest.raises(exc, match=r"^layer_constant: module 'ReLU' of model declares lipschitz_constant="):
            layer_constant(m)
    m = hooked(nn.ReLU()); m.lipschitz_constant = 2.5
    assert layer_constant(m) == 2.5


def test_layer_rule_takes_anything():
    "layer_rule is a lookup: any object, module or not, that no rule covers gives None."
    for m in ("relu", None, nn.ReLU, nn.Linear(2, 2), nn.Conv2d(1, 1, 3), nn.MaxPool2d(2), nn.ModuleList(), nn.LayerNorm(2)):
        assert layer_rule(m) is None


# --- correct results for edge settings, against independent references ---------------------------------------------------
def test_activation_lipschitz_prelu_against_slopes():
    p = prelu(-3.0)
    t = torch.linspace(-2, 2, 4001, dtype=torch.float32, requires_grad=True)
    (g,) = torch.autograd.grad(p(t).sum(), t)
    assert activation_lipschitz(p) == pytest.approx(g.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_lipschitz_softplus_in_coarse_dtypes(dtype):
    "The default Softplus's jump (2.06e-9) is below half an ulp at 20 in float32 and coarser: constant 1, the largest slope."
    assert activation_lipschitz(nn.Softplus(), dtype) == 1.0
    assert math.log1p(math.exp(-20)) < 0.5 * torch.finfo(dtype).eps * 20
    t = torch.linspace(-30, 30, 60001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(nn.Softplus()(t).sum(), t)
    assert g.max().item() == 1.0


def test_batchnorm_edge_statistics():
    "Eval BatchNorm: the constant is max |weight| / sqrt(running_var + eps) (the Jacobian's norm); bad statistics are refused."
    bn = nn.BatchNorm1d(3, affine=False).double().eval()
    with torch.no_grad(): bn.running_var.copy_(torch.tensor([0.0, 4.0, 1.0]))
    J = torch.func.jacrev(bn)(torch.zeros(1, 3, dtype=torch.float64))[0, :, 0]
    assert layer_constant(bn) == pytest.approx(torch.linalg.matrix_norm(J, 2).item(), rel=1e-12)
    assert layer_constant(bn) == pytest.approx(1 / math.sqrt(1e-5), rel=1e-12)
    for attr, value, frag in (("running_var", -1.0, "running_var + eps <= 0"), ("running_mean", float('nan'), "running_mean"),
                              ("running_var", float('inf'), "running_var")):
        bad = nn.BatchNorm1d(3).double().eval()
        with torch.no_grad(): getattr(bad, attr)[1] = value
        with pytest.raises(ValueError, match=f"^layer_constant: cannot bound BatchNorm1d.*{frag.replace('+', '[+]')}"):
            layer_constant(bad)
    untracked = nn.BatchNorm1d(3, track_running_stats=False).eval()        # batch statistics even in eval
    with pytest.raises(ValueError, match="depends on the batch"):
        layer_constant(untracked)


def test_dropout_edge_rates():
    "p = 0 and p = 1 are accepted (identity; zero output), p outside [0, 1] or NaN refused."
    assert layer_constant(nn.Dropout(0.0).train()) == 1.0 and layer_constant(nn.Dropout(1.0).train()) == 1.0
    assert layer_constant(nn.Dropout(0.5).eval()) == 1.0 and layer_constant(nn.AlphaDropout(0.5).train()) == 2.0
    torch.manual_seed(0)                                                   # AlphaDropout: a * (mask x + ...), a < 1/(1-p)
    J = torch.func.jacrev(nn.AlphaDropout(0.5).train())(torch.ones(200, dtype=torch.float64))
    assert 0 < torch.linalg.matrix_norm(J, 2).item() <= 2.0
    for p in (float('nan'), -0.1, 1.5, "0.5"):
        d = nn.Dropout(0.5); d.p = p
        with pytest.raises(ValueError, match=r"^layer_constant: cannot bound Dropout.*must be in \[0, 1\]"):
            layer_constant(d)
