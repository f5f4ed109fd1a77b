"""lipnotes.core: the error naming, the checks, `unit` and the model walk, against plain Python/torch references."""
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes import core
from lipnotes.core import (as_tuple, caller, check_int, check_positive_float, check_real, check_tensor, declared_constant,
                           fail, forward_hooks, harmless_hook, is_plain_sequential, leaves, naming, overrides_forward,
                           public, unit, uses_torch_call_path, weight_layers)


def test_public_keeps_signature_docments_and_restores_the_name_on_error():
    from fastcore.docments import docments
    from inspect import signature

    def f(x: int,  # the x
          y=2):    # the y
        "doc"
        raise fail("x must be ...")
    g = public(f)
    assert signature(g) == signature(f) and g.__doc__ == "doc" and g.__wrapped__ is f
    assert docments(g) == docments(f)
    with pytest.raises(ValueError, match=r"^f: x must be \.\.\.$"):
        g(1)
    assert caller() == 'lipnotes'


def test_the_name_is_per_thread():
    seen = {}

    @public(name='outer')
    def wait(ev_in, ev_out):
        ev_in.set(); ev_out.wait(5); return caller()

    a, b = threading.Event(), threading.Event()
    t = threading.Thread(target=lambda: seen.setdefault('t', wait(a, b)))
    t.start(); a.wait(5)
    seen['main'] = caller()                      # the other thread is inside `outer` now
    b.set(); t.join()
    assert seen == {'t': 'outer', 'main': 'lipnotes'}


@pytest.mark.parametrize("value,kw,ok", [
    (3, {}, 3), (np.int32(3), {}, 3), (0, {'minimum': 0}, 0), (10, {'maximum': 10}, 10),
])
def test_check_int_accepts_and_normalises(value, kw, ok):
    out = check_int(value, 'n', **kw)
    assert out == ok and type(out) is int


@pytest.mark.parametrize("value,kw,exc", [
    (True, {}, TypeError), (3.0, {}, TypeError), ('3', {}, TypeError), (None, {}, TypeError),
    (-1, {'minimum': 0}, ValueError), (11, {'maximum': 10}, ValueError),
])
def test_check_int_refuses(value, kw, exc, rejects):
    with naming('data.digits'):
        rejects(lambda: check_int(value, 'seed', **kw), exc, 'data.digits', 'seed')


@pytest.mark.parametrize("value,exc", [(math.inf, ValueError), (math.nan, ValueError), (0.0, ValueError),
                                       (-1e-300, ValueError), (False, TypeError), (1j, TypeError), ('1', TypeError)])
def test_check_positive_float_refuses(value, exc, rejects):
    with naming('pgd'):
        rejects(lambda: check_positive_float(value, 'step_size'), exc, 'pgd', 'step_size')
    assert check_positive_float(np.float32(0.5), 'x') == 0.5


def test_check_real_interval_ends():
    assert check_real(0, 'x', 0, 1) == 0.0 and check_real(1, 'x', 0, 1) == 1.0
    for x, kw in [(0, {'lo_open': True}), (1, {'hi_open': True}), (-1e-12, {}), (1 + 1e-12, {})]:
        with pytest.raises(ValueError, match=r"^lipnotes: x must lie in"):
            check_real(x, 'x', 0, 1, **kw)


def test_check_tensor_order_and_pass_through():
    x = torch.randn(2, 3)
    assert check_tensor(x, 'x', floating=True, finite=True, nonempty=True, dim=2, min_dim=1) is x
    assert check_tensor(torch.zeros(0, 3), 'x', finite=True) is not None            # empty is finite
    with pytest.raises(ValueError, match="must not be empty"):
        check_tensor(torch.zeros(0, 3), 'x', nonempty=True)
    with pytest.raises(TypeError, match="real floating"):                       # dtype is checked before values
        check_tensor(torch.empty(2, dtype=torch.int64, device='meta'), 'x', floating=True, finite=True)
    assert check_tensor(torch.empty(2, device='meta'), 'x') is not None           # shape-only checks accept meta
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        check_tensor(torch.zeros(3), 'x', min_dim=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_unit_matches_normalize_in_every_dtype(dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=dtype) * 3
    ref = F.normalize(x.double(), dim=1)
    out = unit(x, dim=1)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.allclose(out.double(), ref, rtol=0, atol=4 * torch.finfo(dtype).eps)


def test_unit_of_small_vectors_and_of_those_whose_square_underflows():
    x = torch.tensor([1e-150, 1e-150], dtype=torch.float64)          # below 1/tiny^(1/2) the norm is still exact
    assert torch.allclose(unit(x), torch.full((2,), 2 ** -0.5, dtype=torch.float64))
    y = torch.tensor([1e-300, 1e-300], dtype=torch.float64)          # x^2 underflows: vector_norm is 0, so this is `keep`
    assert torch.linalg.vector_norm(y) == 0 and (unit(y, keep=torch.ones(2, dtype=torch.float64)) == 1).all()


def test_as_tuple_matches_torch_layers_own_expansion():
    for k in (3, (2, 3), [1, 4]):
        assert as_tuple(k, 2, 'kernel_size') == tuple(nn.Conv2d(1, 1, k).kernel_size)
    with pytest.raises(ValueError):
        as_tuple((1, 2, 3), 2, 'kernel_size')


def test_call_path_detects_every_replacement():
    class F1(nn.ReLU):
        def forward(self, x): return x
    class F2(nn.ReLU):
        def __call__(self, x): return x
    class Same(nn.ReLU):
        pass
    inst = nn.Linear(2, 2); inst._call_impl = lambda *a, **k: 0
    assert overrides_forward(F1()) and overrides_forward(F2()) and overrides_forward(inst)
    assert not overrides_forward(Same()) and uses_torch_call_path(Same())
    class S(nn.Sequential):
        def __getitem__(self, i): return nn.Identity()
    assert not is_plain_sequential(S()) and is_plain_sequential(type('T', (nn.Sequential,), {})())
    class Custom(nn.Module):
        def forward(self, x): return x
    assert not overrides_forward(Custom())                       # not a torch layer: no torch rule to betray


def test_leaves_counts_repeats_and_stops_at_hooks_and_declared_constants():
    lin = nn.Linear(2, 2)
    inner = nn.Sequential(lin, lin)
    net = nn.Sequential(inner, nn.ReLU())
    ref = [m for m in net.modules() if not isinstance(m, nn.Sequential)]             # named_modules skips the repeat
    got = [m for _, m in leaves(net)]
    assert len(ref) == 2 and got == [lin, lin, net[1]]
    inner.register_forward_hook(lambda m, a, o: o)
    assert [n for n, _ in leaves(net)] == ['0', '1']
    assert len(forward_hooks(inner)) == 1
    assert [n for n, _ in leaves(nn.ReLU())] == ['ReLU']


def test_harmless_hooks_are_only_those_registered():
    def check(module, args): return None
    m = nn.Linear(2, 2)
    m.register_forward_pre_hook(check)
    assert len(forward_hooks(m)) == 1
    harmless_hook(check)
    assert forward_hooks(m) == []


def test_declared_constant_accepts_numpy_and_tensor_and_refuses_the_rest(rejects):
    m = nn.Identity()
    for c, v in [(np.float64(2.0), 2.0), (torch.tensor([3.0]), 3.0), (0, 0.0)]:
        m.lipschitz_constant = c
        assert declared_constant(m) == v
    for c, exc in [(torch.tensor(1 + 1j), TypeError), (torch.tensor([1.0, 2.0]), TypeError), (math.inf, ValueError)]:
        m.lipschitz_constant = c
        with naming('lipschitz_upper_bound'):
            rejects(lambda: declared_constant(m, 'head'), exc, 'lipschitz_upper_bound', 'lipschitz_constant')


def test_weight_layers_against_named_modules():
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)))
    ref = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert weight_layers(net) == ref
    assert weight_layers(nn.Linear(2, 2))[0][0] == 'Linear'
    with pytest.raises(ValueError, match="has no Linear or Conv weight"):
        weight_layers(nn.ReLU())


def test_core_imports_no_other_lipnotes_module():
    import ast, inspect
    tree = ast.parse(inspect.getsource(core))
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
           [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m and ('lipnotes' in m or m.startswith('.'))], mods
