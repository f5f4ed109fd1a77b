"""Issue 18, item 2: conv_norm_bound and spectral_normalize(mode='operator', exact=True) against an independent reference, the
dense SVD of the convolution operator built by applying the layer to basis images (torch.linalg.matrix_norm(ord=2))."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes.spectral import conv_norm_bound, spectral_normalize, spectral_penalty


def dense_norm(fn, shape):
    "||fn||_2 on inputs of `shape`, by the SVD of the dense matrix whose columns are fn of the basis images (float64)."
    n = math.prod(shape)
    cols = fn(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1)
    return torch.linalg.matrix_norm(cols.T, 2).item()


def layer_map(layer):
    "The layer without bias, as a float64 map on batches, its weight as it stands (normalised if parametrized)."
    w = layer.weight.detach().double()
    if isinstance(layer, nn.ConvTranspose2d):
        return lambda x: F.conv_transpose2d(x, w, None, layer.stride, layer.padding, layer.output_padding, layer.groups,
                                            layer.dilation)
    return _plain(layer, w)


def _plain(layer, w):
    "A fresh unparametrized copy of the layer's convolution with kernel w (float64): the reference runs torch's own conv."
    kind = type(layer).__mro__[1] if 'Parametrized' in type(layer).__name__ else type(layer)
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=False,
              padding_mode=layer.padding_mode, dtype=torch.float64)
    plain = kind(layer.in_channels, layer.out_channels, layer.kernel_size, **kw)
    with torch.no_grad(): plain.weight.copy_(w)
    return plain


def random_geometry(rng):
    "A random Conv2d geometry (kernel, stride, padding, dilation, groups, mode, input) whose kernel fits the input."
    while True:
        g = rng.choice([1, 1, 2]); ci, co = g * rng.randint(1, 2), g * rng.randint(1, 3)
        k, d = (rng.randint(1, 4), rng.randint(1, 3)), (rng.choice([1, 1, 2]), rng.choice([1, 2]))
        s, n = (rng.choice([1, 1, 2, 3]), rng.choice([1, 2])), (rng.randint(1, 8), rng.randint(1, 8))
        mode = rng.choice(['zeros', 'circular'])
        p = (rng.randint(0, 3), rng.randint(0, 3))
        if mode == 'circular' and rng.random() < 0.5: p, s = tuple(di * (ki - 1) // 2 for di, ki in zip(d, k)), (1, 1)
        if all(ni + 2 * pi >= di * (ki - 1) + 1 and (mode == 'zeros' or pi <= ni) for ni, pi, di, ki in zip(n, p, d, k)):
            return ci, co, k, s, p, d, g, mode, n


def test_conv_norm_bound_against_dense_svd():
    rng, torch_gen = random.Random(1801), torch.Generator().manual_seed(1801)
    exact, bounds = 0, 0
    for _ in range(250):
        ci, co, k, s, p, d, g, mode, n = random_geometry(rng)
        conv = nn.Conv2d(ci, co, k, s, p, d, g, bias=False, padding_mode=mode, dtype=torch.float64)
        with torch.no_grad(): conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch_gen, dtype=torch.float64))
        ref = dense_norm(conv, (ci, *n))
        try: b = conv_norm_bound(conv.weight.detach(), (ci, *n), s, p, d, g, mode)
        except ValueError as e:
            assert mode == 'circular' and 'reads some outputs twice' in str(e); continue
        assert b.sigma.dtype == torch.float64 and b.sigma.item() >= ref * (1 - 1e-12)
        if b.exact: exact += 1; assert b.sigma.item() == pytest.approx(ref, rel=1e-12)
        else: bounds += 1
        assert b.exact == (mode == 'circular' and s == (1, 1) and all(2 * pi == di * (ki - 1) for pi, di, ki in zip(p, d, k)))
    assert exact >= 30 and bounds >= 100


def test_exact_bound_is_attained_on_large_images():
    "The zero-padding bound is the sup of the symbol on a grid; on a large image the true norm comes close to it."
    torch.manual_seed(3)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    conv = lambda x: F.conv2d(x, w, padding=1)
    b = conv_norm_bound(w, (2, 24, 24), padding=1).sigma.item()
    assert dense_norm(conv, (2, 24, 24)) <= b and dense_norm(conv, (2, 24, 24)) >= 0.97 * b


def train_and_measure(layer, x_shape, steps=6, lr=2e-2, seed=0):
    torch.manual_seed(seed)
    opt, norms = torch.optim.Adam(layer.parameters(), lr=lr), []
    for _ in range(steps):
        loss = -layer(torch.randn(3, *x_shape, dtype=layer.weight.dtype)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        norms.append(dense_norm(layer_map(layer), x_shape))
    return norms


@pytest.mark.parametrize("make, shape, exact_one", [
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode='circular'), (2, 5, 5), True),
    (lambda: nn.Conv2d(2, 3, (3, 5), padding=(2, 4), dilation=(2, 2), padding_mode='circular'), (2, 6, 9), True),
    (lambda: nn.Conv2d(4, 2, 3, padding=1, groups=2, padding_mode='circular'), (4, 4, 5), True),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5), False),
    (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=2, dilation=2), (2, 7, 6), False),
    (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1, padding_mode='circular'), (2, 6, 6), False),
    (lambda: nn.Conv1d(2, 3, 5, padding=2, padding_mode='circular'), (2, 9), True),
    (lambda: nn.Conv1d(2, 3, 3, stride=2), (2, 11), False),
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 3, 4), False),
    (lambda: nn.ConvTranspose2d(2, 4, 3, groups=2, dilation=2), (2, 4, 4), False),
])
def test_exact_operator_normalisation_every_step(make, shape, exact_one):
    torch.manual_seed(5)
    layer = spectral_normalize(make().double(), mode='operator', input_shape=shape, exact=True)
    assert layer.parametrizations.weight[0]._u.numel() == 0            # no power vectors: nothing to lag
    norms = train_and_measure(layer, shape)
    assert max(norms) <= 1 + 1e-12
    if exact_one: assert min(norms) >= 1 - 1e-12
    layer.eval(); assert dense_norm(layer_map(layer), shape) <= 1 + 1e-12


def test_exact_operator_coeff_and_float32():
    torch.manual_seed(6)
    big = nn.Conv2d(2, 2, 3, padding=1, padding_mode='circular').double()
    with torch.no_grad(): big.weight.mul_(10)
    small = nn.Conv2d(2, 2, 3, padding=1, padding_mode='circular').double()
    with torch.no_grad(): small.weight.mul_(0.2 / conv_norm_bound(small.weight, (2, 5, 5), padding=1, padding_mode='circular').sigma)
    raw = small.weight.detach().clone()
    for m in (big, small): spectral_normalize(m, mode='operator', input_shape=(2, 5, 5), exact=True, coeff=0.5)
    assert dense_norm(layer_map(big), (2, 5, 5)) == pytest.approx(0.5, rel=1e-12)
    assert torch.allclose(small.weight, raw, rtol=1e-14)                # already below the cap: untouched
    f32 = spectral_normalize(nn.Conv2d(3, 4, 3, padding=1, padding_mode='circular'), mode='operator', input_shape=(3, 6, 6),
                             exact=True)
    norms = train_and_measure(f32, (3, 6, 6))
    absolute = dense_norm(lambda x: F.conv2d(F.pad(x, (1,) * 4, mode='circular'), f32.weight.detach().abs().double()), (3, 6, 6))
    assert max(norms) <= 1 + 2.0 ** -24 * absolute and min(norms) >= 1 - 2.0 ** -24 * absolute


@pytest.mark.parametrize("make, shape", [(lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 10)),
                                         (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1), (3, 4, 4))])
def test_power_operator_mode_conv1d_and_transpose(make, shape):
    "Without exact=True the warmed-up power iteration normalises Conv1d and ConvTranspose2d by their true operator norm."
    torch.manual_seed(7)
    layer = spectral_normalize(make().double(), mode='operator', input_shape=shape)
    assert dense_norm(layer_map(layer), shape) == pytest.approx(1.0, abs=1e-4)
    layer(torch.randn(2, *shape, dtype=torch.float64))
    bad = (shape[0], shape[1] + 1) if len(shape) == 2 else (shape[0], shape[1] + 1, shape[2])
    with pytest.raises(ValueError, match=r"spectral_normalize: this .* was normalised with mode='operator' for input_shape="):
        layer(torch.randn(2, *bad, dtype=torch.float64))


def reference_penalty(w, n):
    "||conv||^2 on the (n+2)x(n+2) torus for a 3x3 kernel, zero padding 1: full 2-D FFT of the kernel zero-padded to the torus."
    T = torch.fft.fft2(F.pad(w, (0, n - 1, 0, n - 1)))                    # (co, ci, n+2, n+2)
    return torch.linalg.svdvals(T.permute(2, 3, 0, 1)).amax() ** 2


def test_operator_penalty_value_and_gradient():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1, padding_mode='circular'),
                        nn.Flatten(), nn.Linear(2 * 36, 2)).double()
    shapes = {'0': (2, 6, 6), '2': (3, 6, 6)}
    pen = spectral_penalty(net, shapes)
    pen.backward()
    g0, g2 = net[0].weight.grad.clone(), net[2].weight.grad.clone()
    w0, w2 = net[0].weight.detach().clone().requires_grad_(), net[2].weight.detach().clone().requires_grad_()
    circ = lambda x: F.conv2d(F.pad(x, (1,) * 4, mode='circular'), w2)
    dense_circ = circ(torch.eye(108, dtype=torch.float64).reshape(108, 3, 6, 6)).reshape(108, -1).T
    r0, r2 = reference_penalty(w0, 6), torch.linalg.matrix_norm(dense_circ, 2) ** 2
    (r0 + r2).backward()
    assert r0.item() >= dense_norm(lambda x: F.conv2d(x, w0.detach(), padding=1), (2, 6, 6)) ** 2
    assert torch.allclose(g0, w0.grad, rtol=1e-8, atol=1e-12) and torch.allclose(g2, w2.grad, rtol=1e-8, atol=1e-12)
    lin = torch.linalg.matrix_norm(net[4].weight.detach(), 2) ** 2
    for _ in range(300): spectral_penalty(net, shapes)
    assert spectral_penalty(net, shapes).item() == pytest.approx((r0 + r2 + lin).item(), rel=1e-6)
