"""Issue 18, item 6: export_normalized turns a normalised model into a plain one (no parametrizations) that keeps the
normalised weights: torch.save works on it, its state_dict loads strictly into the same architecture without normalisation,
and in eval mode the outputs are identical (torch.equal) to the normalised model's."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from lipnotes.spectral import export_normalized, spectral_normalize


def architecture(sn, dtype=torch.float32):
    "A conv net touching every kind of normalisation; `sn(module, kwargs)` normalises a layer (or leaves it plain)."
    return nn.Sequential(
        sn(nn.Conv2d(2, 4, 3, padding=1, padding_mode='circular', dtype=dtype), dict(mode='operator', input_shape=(2, 6, 6))),
        nn.ReLU(),
        sn(nn.Conv2d(4, 4, 3, stride=2, padding=1, dtype=dtype), dict(mode='operator', input_shape=(4, 6, 6), exact=True)),
        nn.BatchNorm2d(4, dtype=dtype), nn.Dropout(0.5),
        sn(nn.ConvTranspose2d(4, 3, 2, stride=2, dtype=dtype), dict(mode='operator', input_shape=(4, 3, 3))),
        sn(nn.Conv2d(3, 3, 1, dtype=dtype), dict(exact=True)),
        sn(nn.Conv2d(3, 2, 3, padding=1, dtype=dtype), dict(coeff=0.7, n_power_iterations=2)),
        nn.Flatten(), sn(nn.Linear(2 * 36, 5, dtype=dtype), {}))


def trained(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    net = architecture(lambda m, kw: spectral_normalize(m, **kw), dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        loss = net(torch.randn(8, 2, 6, 6, dtype=dtype)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    return net


def test_what_torch_refuses():
    net = trained()
    for save in (lambda: torch.save(net, io.BytesIO()), lambda: pickle.dumps(net)):
        with pytest.raises(RuntimeError, match="Serialization of parametrized modules is only supported through state_dict"):
            save()
    keys = set(net.state_dict())
    assert '0.parametrizations.weight.original' in keys and '0.parametrizations.weight.0._u' in keys and '0.weight' not in keys
    with pytest.raises(RuntimeError, match="Missing key"):
        architecture(lambda m, kw: m).load_state_dict(net.state_dict())
    copy.deepcopy(net)                                                  # deepcopy is allowed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_export_loads_into_plain_model_with_identical_outputs(dtype):
    net = trained(dtype)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    was_training = net.training
    plain_copy = export_normalized(net)
    assert net.training == was_training == plain_copy.training
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())     # the model is untouched, buffers too
    assert not any(parametrize.is_parametrized(m) for m in plain_copy.modules())
    assert all(not m._forward_pre_hooks for m in plain_copy.modules())
    plain = architecture(lambda m, kw: m, dtype)
    plain.load_state_dict(plain_copy.state_dict())                              # strict: the plain keys, nothing else
    net.eval(); plain.eval(); plain_copy.eval()
    x = torch.randn(7, 2, 6, 6, dtype=dtype)
    assert torch.equal(plain(x), net(x)) and torch.equal(plain_copy(x), net(x))
    for layer_net, layer_plain in zip(net, plain):                               # the stored weight is the eval-mode one
        if parametrize.is_parametrized(layer_net): assert torch.equal(layer_net.weight, layer_plain.weight)
    buf = io.BytesIO(); torch.save(plain_copy, buf); buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), net(x))          # a whole module needs weights_only=False
    buf = io.BytesIO(); torch.save(plain_copy.state_dict(), buf); buf.seek(0)
    fresh = architecture(lambda m, kw: m, dtype); fresh.load_state_dict(torch.load(buf)); fresh.eval()
    assert torch.equal(fresh(x), net(x))


def test_export_keeps_train_mode_value_out():
    "Exporting a model in training mode does not take a power step: the weight exported is the eval-mode one."
    net = trained()
    assert net.training
    u = net[0].parametrizations.weight[0]._u.clone()
    plain_copy = export_normalized(net)
    assert torch.equal(net[0].parametrizations.weight[0]._u, u)
    net.eval()
    assert torch.equal(plain_copy[0].weight, net[0].weight)


def test_export_torch_spectral_norm_and_unnormalised_model():
    torch.manual_seed(3)
    net = nn.Sequential(torch_spectral_norm(nn.Linear(4, 6)), nn.Tanh(), nn.Linear(6, 2))
    net(torch.randn(3, 4))
    plain_copy = export_normalized(net)
    net.eval(); x = torch.randn(5, 4)
    assert torch.equal(plain_copy.eval()(x), net(x)) and set(plain_copy.state_dict()) == {'0.weight', '0.bias', '2.weight', '2.bias'}
    bare = nn.Linear(2, 2)
    out = export_normalized(bare)
    assert out is not bare and torch.equal(out.weight, bare.weight)


def test_export_rejects(rejects):
    rejects(lambda: export_normalized("model"), TypeError, 'export_normalized', 'model')
