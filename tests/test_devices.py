"""Library code runs on the device and dtype of its inputs and returns results there. CUDA cases skip without a GPU."""
import pytest
import torch
from torch import nn

from lipnotes.norms import frobenius_lipschitz_bound, l2_penalty, weight_matrices
from lipnotes.spectral import conv_operator_norm, power_iteration, power_method, spectral_normalize, spectral_penalty

devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
if not torch.cuda.is_available():
    devices.append(pytest.param('cuda', marks=pytest.mark.skip(reason='no CUDA device on this machine')))


# Half precision: the iteration runs in float32, so the only error left is rounding sigma to the dtype (half an ulp,
# 2**-9 relative for bfloat16, 2**-12 for float16); the tolerances allow twice that. Many random starts: stepping in
# bfloat16 itself stalled on a wrong vector from some starts (sigma 10.375 against 11.19).
@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype, rtol', [(torch.float64, 1e-10), (torch.float32, 1e-4),
                                         (torch.bfloat16, 2 ** -8), (torch.float16, 2 ** -11)])
def test_power_iteration_device_dtype(device, dtype, rtol):
    g = torch.Generator().manual_seed(0)
    W64 = torch.randn(3, 40, 30, generator=g, dtype=torch.float64)
    W = W64.to(device=device, dtype=dtype)
    ref = torch.linalg.matrix_norm(W.double().cpu(), 2)
    for seed in range(20):
        torch.manual_seed(seed)
        sigma, u, v = power_iteration(W, n_iter=400)
        for t, shape in [(sigma, (3,)), (u, (3, 40)), (v, (3, 30))]:
            assert t.device.type == device and t.dtype == dtype and t.shape == shape
        assert torch.allclose(sigma.double().cpu(), ref, rtol=rtol, atol=0), (seed, sigma, ref)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype, rtol', [(torch.float64, 1e-8), (torch.float32, 1e-5), (torch.bfloat16, 2 ** -8),
                                         (torch.float16, 2 ** -11)])
def test_conv_operator_norm_device_dtype(device, dtype, rtol):
    w = torch.full((1, 1, 3, 3), 1 / 3, dtype=dtype, device=device)
    res = conv_operator_norm(w, (1, 8, 8), padding=1, tol=1e-10, n_iter=5000)
    for t in (res.sigma, res.u, res.v):
        assert t.device.type == device and t.dtype == dtype
    assert res.v.shape == (1, 8, 8)
    # the exact norm of the rounded kernel (1/3 is not representable in half precision): 3x3 all-equal kernel c on 8x8
    # with zero padding is c (1 + 2 cos(pi/9))^2
    c = w[0, 0, 0, 0].double().item()
    closed = c * (1 + 2 * torch.cos(torch.tensor(torch.pi / 9, dtype=torch.float64))).item() ** 2
    assert abs(res.sigma.double().item() - closed) <= rtol * closed


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype, rtol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_power_method_device_dtype(device, dtype, rtol):
    "Both forms, with and without tol and restart: results on the input's device and dtype, against torch.linalg."
    g = torch.Generator().manual_seed(1)
    A = torch.randn(7, 5, generator=g, dtype=torch.float64)
    H = A.T @ A - 2 * torch.eye(5, dtype=torch.float64)
    lam = torch.linalg.eigvalsh(H); top = lam[lam.abs().argmax()]
    A, H = A.to(device=device, dtype=dtype), H.to(device=device, dtype=dtype)
    v0 = torch.randn(5, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    restart = lambda: torch.randn(7, dtype=dtype, device=device)
    for kw in (dict(), dict(tol=1e-12), dict(restart=restart), dict(tol=1e-12, restart=restart, every=5)):
        r = power_method(A.__matmul__, v0, 3000, A.T.__matmul__, **kw)
        for t in (r.sigma, r.u, r.v): assert t.device.type == device and t.dtype == dtype
        assert torch.isclose(r.sigma.double().cpu(), torch.linalg.svdvals(A.double().cpu())[0], rtol=rtol)
    r = power_method(H.__matmul__, v0, 3000)
    assert r.sigma.device.type == device and torch.isclose(r.sigma.double().cpu(), top, rtol=rtol)


@pytest.mark.parametrize('device', devices)
def test_spectral_normalize_device(device):
    torch.manual_seed(2)
    conv = spectral_normalize(nn.Conv2d(2, 3, 3, padding=1).to(device), mode='operator', input_shape=(2, 6, 6))
    lin = spectral_normalize(nn.Linear(5, 4).to(device))
    conv(torch.randn(2, 2, 6, 6, device=device)); lin(torch.randn(2, 5, device=device))
    for m in (conv, lin):
        sn = m.parametrizations.weight[0]
        assert sn._u.device.type == device and sn._v.device.type == device and m.weight.device.type == device
    assert torch.isclose(torch.linalg.matrix_norm(lin.weight.detach().double().cpu(), 2), torch.tensor(1.0, dtype=torch.float64), rtol=1e-4)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_model_functions_device_dtype(device, dtype):
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).to(device=device, dtype=dtype)
    for value in (l2_penalty(net), frobenius_lipschitz_bound(net), spectral_penalty(net)):
        assert value.device.type == device and value.dtype == dtype and value.requires_grad
    assert all(W.device.type == device for _, W in weight_matrices(net))


def test_spectral_penalty_state_follows_the_model():
    "The stored vectors move with the model (.double()), the model's state_dict is untouched, eval mode does not iterate."
    from lipnotes import spectral
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    keys = set(net.state_dict())
    spectral_penalty(net)
    net.double()
    p = spectral_penalty(net)
    assert p.dtype == torch.float64 and set(net.state_dict()) == keys
    net.eval()
    before = [t.clone() for t in spectral._PENALTY_VECTORS[net[0]]]
    spectral_penalty(net)
    assert all(torch.equal(a, b) for a, b in zip(before, spectral._PENALTY_VECTORS[net[0]]))
    net.train(); spectral_penalty(net)
    assert not torch.equal(before[0], spectral._PENALTY_VECTORS[net[0]][0])


def test_spectral_penalty_tracks_a_changing_weight():
    "Each call is one warm step; after a weight change the penalty re-converges to the new sigma_1^2 (torch.linalg)."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10)).double()
    with torch.no_grad(): net[0].weight.mul_(3.0)
    for _ in range(200): p = spectral_penalty(net)
    assert torch.isclose(p, torch.linalg.matrix_norm(net[0].weight, 2) ** 2, rtol=1e-8)


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_gradient_functions_device_dtype(device, dtype):
    from lipnotes.gradients import gradient_inequality, input_grad_norm, param_grad_norm
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(device=device, dtype=dtype)
    x = torch.randn(4, 5, device=device, dtype=dtype)
    y = torch.randint(0, 3, (4,), device=device)
    ce = lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction='none')
    r = gradient_inequality(net, x, ce, (y,))
    for t in (input_grad_norm(lambda z, t: ce(net(z), t), x, (y,)), param_grad_norm(ce, net, x, (y,)), r.lhs, r.rhs,
              r.lhs_terms, r.weight_norms, r.jacobian_norms):
        assert t.device.type == device and t.dtype == dtype
    assert (r.lhs <= r.rhs * (1 + 1e-5)).all()


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_adversarial_functions_device_dtype(device, dtype):
    import torch.nn.functional as F
    from lipnotes.adversarial import fgm, input_gradient_penalty, pgd, wgan_gradient_penalty
    m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(device=device, dtype=dtype)
    xs, ys = torch.randn(4, 5, device=device, dtype=dtype), torch.randint(0, 3, (4,), device=device)
    lf = lambda z: F.cross_entropy(m(z), ys, reduction='none')
    for out in (fgm(lf, xs, 0.1), pgd(lf, xs, 0.1, steps=2), input_gradient_penalty(lf, xs),
                wgan_gradient_penalty(lambda z: m(z)[:, 0], xs, torch.randn_like(xs))):
        assert out.device.type == device and out.dtype == dtype


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype, rtol', [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2 ** -6)])
def test_longtail_functions_device_dtype(device, dtype, rtol):
    "Priors in float64 on the CPU, logits elsewhere: the loss, the module and the post-hoc rule follow the logits."
    import torch.nn.functional as F
    from lipnotes.longtail import LogitAdjustedLoss, class_priors, logit_adjusted_loss, posthoc_adjust
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    priors = class_priors(labels, 5)
    logits = torch.randn(16, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (16,), generator=g)
    ref = F.cross_entropy(logits + priors.log(), target)
    lx, tx = logits.to(device=device, dtype=dtype), target.to(device)
    for loss in (logit_adjusted_loss(lx, tx, priors), LogitAdjustedLoss(priors).to(device)(lx, tx)):
        assert loss.device.type == device and loss.dtype == dtype
        assert torch.allclose(loss.double().cpu(), ref, rtol=rtol)
    adj = posthoc_adjust(lx, priors)
    assert adj.device.type == device and adj.dtype == dtype
    assert class_priors(labels.to(device), 5).device.type == device
