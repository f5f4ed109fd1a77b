"""Bad input to every export of lipnotes.data: each case ends in a ValueError/TypeError whose message starts with the
public name the user called and names the argument, or in a result checked against an independent reference."""
import numpy as np
import pytest
import torch

from lipnotes.data import Split, digits, gaussian_mixture, long_tailed, two_moons

MEANS = [[0.0, 0.0], [3.0, 1.0]]
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
XS = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
x2, y2 = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
META = lambda *s, **k: torch.empty(*s, device='meta', **k)
D, TM, GM, LT, S = 'digits', 'two_moons', 'gaussian_mixture', 'long_tailed', 'Split'

CASES = [  # (name, call, exception, function name, argument name)
    # Split
    ('split list x', lambda: Split(x2.tolist(), y2, x2, y2), TypeError, S, 'x_train'),
    ('split int x', lambda: Split(x2, y2, x2.long(), y2), TypeError, S, 'x_test'),
    ('split 0-d x', lambda: Split(torch.tensor(1.0), y2, x2, y2), TypeError, S, 'x_train'),
    ('split float y', lambda: Split(x2, y2.double(), x2, y2), TypeError, S, 'y_train'),
    ('split int32 y', lambda: Split(x2, y2, x2, y2.int()), TypeError, S, 'y_test'),
    ('split 2-D y', lambda: Split(x2, y2[:, None], x2, y2), TypeError, S, 'y_train'),
    ('split length', lambda: Split(x2, y2[:3], x2, y2), ValueError, S, 'x_train'),
    ('split empty', lambda: Split(x2, y2, x2[:0], y2[:0]), ValueError, S, 'x_test'),
    ('split dtype', lambda: Split(x2, y2, x2.double(), y2), ValueError, S, 'x_train'),
    ('split feature shape', lambda: Split(x2, y2, torch.zeros(4, 3), y2), ValueError, S, 'x_train'),
    # digits
    ('digits tiny test_fraction', lambda: digits(test_fraction=1e-9), ValueError, D, 'test_fraction'),
    ('digits test_fraction at edge', lambda: digits(test_fraction=0.5 / 174), ValueError, D, 'test_fraction'),
    ('digits test_fraction near 1', lambda: digits(test_fraction=1 - 1e-9), ValueError, D, 'test_fraction'),
    ('digits test_fraction 0', lambda: digits(test_fraction=0.0), ValueError, D, 'test_fraction'),
    ('digits test_fraction 1', lambda: digits(test_fraction=1), ValueError, D, 'test_fraction'),
    ('digits test_fraction nan', lambda: digits(test_fraction=float('nan')), ValueError, D, 'test_fraction'),
    ('digits test_fraction inf', lambda: digits(test_fraction=float('inf')), ValueError, D, 'test_fraction'),
    ('digits test_fraction str', lambda: digits(test_fraction='0.2'), TypeError, D, 'test_fraction'),
    ('digits test_fraction bool', lambda: digits(test_fraction=True), TypeError, D, 'test_fraction'),
    ('digits test_fraction tensor', lambda: digits(test_fraction=torch.tensor(0.2)), TypeError, D, 'test_fraction'),
    ('digits seed negative', lambda: digits(seed=-1), ValueError, D, 'seed'),
    ('digits seed 2**64', lambda: digits(seed=2**64), ValueError, D, 'seed'),
    ('digits seed float', lambda: digits(seed=1.0), TypeError, D, 'seed'),
    ('digits seed bool', lambda: digits(seed=True), TypeError, D, 'seed'),
    ('digits int dtype', lambda: digits(dtype=torch.int64), TypeError, D, 'dtype'),
    ('digits complex dtype', lambda: digits(dtype=torch.complex64), TypeError, D, 'dtype'),
    ('digits str dtype', lambda: digits(dtype='float32'), TypeError, D, 'dtype'),
    ('digits images int', lambda: digits(images=1), TypeError, D, 'images'),
    # two_moons
    ('moons n 1', lambda: two_moons(1), ValueError, TM, 'n'),
    ('moons n float', lambda: two_moons(10.0), TypeError, TM, 'n'),
    ('moons n bool', lambda: two_moons(True), TypeError, TM, 'n'),
    ('moons noise overflows float32', lambda: two_moons(10, noise=1e300), ValueError, TM, 'noise'),
    ('moons noise overflows float64', lambda: two_moons(10, noise=1.7e308, dtype=torch.float64), ValueError, TM, 'noise'),
    ('moons noise overflows float16', lambda: two_moons(10, noise=1e6, dtype=torch.float16), ValueError, TM, 'noise'),
    ('moons noise negative', lambda: two_moons(10, noise=-0.1), ValueError, TM, 'noise'),
    ('moons noise nan', lambda: two_moons(10, noise=float('nan')), ValueError, TM, 'noise'),
    ('moons noise inf', lambda: two_moons(10, noise=float('inf')), ValueError, TM, 'noise'),
    ('moons noise complex', lambda: two_moons(10, noise=1j), TypeError, TM, 'noise'),
    ('moons seed 2**64', lambda: two_moons(seed=2**64), ValueError, TM, 'seed'),
    ('moons seed negative', lambda: two_moons(seed=-3), ValueError, TM, 'seed'),
    ('moons dtype', lambda: two_moons(dtype=torch.int32), TypeError, TM, 'dtype'),
    # gaussian_mixture
    ('gm means None', lambda: gaussian_mixture(5, None), TypeError, GM, 'means'),
    ('gm means str', lambda: gaussian_mixture(5, 'ab'), TypeError, GM, 'means'),
    ('gm means ragged', lambda: gaussian_mixture(5, [[0.0], [1.0, 2.0]]), TypeError, GM, 'means'),
    ('gm means complex', lambda: gaussian_mixture(5, [[0.0, 1j]]), TypeError, GM, 'means'),
    ('gm means complex tensor', lambda: gaussian_mixture(5, torch.zeros(2, 2, dtype=torch.complex64)), TypeError, GM, 'means'),
    ('gm means bool', lambda: gaussian_mixture(5, [[True, False]]), TypeError, GM, 'means'),
    ('gm means meta', lambda: gaussian_mixture(5, META(2, 2)), ValueError, GM, 'means'),
    ('gm means nan', lambda: gaussian_mixture(5, [[0.0, float('nan')]]), ValueError, GM, 'means'),
    ('gm means inf', lambda: gaussian_mixture(5, [[0.0, float('inf')]]), ValueError, GM, 'means'),
    ('gm means 1-D', lambda: gaussian_mixture(5, [0.0, 1.0]), ValueError, GM, 'means'),
    ('gm means empty', lambda: gaussian_mixture(5, torch.zeros(0, 2)), ValueError, GM, 'means'),
    ('gm means overflow float32', lambda: gaussian_mixture(5, [[1e300, 0.0]]), ValueError, GM, 'means'),
    ('gm cov inf', lambda: gaussian_mixture(5, MEANS, cov=[[1.0, 0.0], [0.0, float('inf')]]), ValueError, GM, 'cov'),
    ('gm cov nan', lambda: gaussian_mixture(5, MEANS, cov=[[1.0, float('nan')], [float('nan'), 1.0]]), ValueError, GM, 'cov'),
    ('gm cov complex', lambda: gaussian_mixture(5, MEANS, cov=[[1.0, 0j], [0j, 1.0]]), TypeError, GM, 'cov'),
    ('gm cov shape', lambda: gaussian_mixture(5, MEANS, cov=[[1.0]]), ValueError, GM, 'cov'),
    ('gm cov not symmetric', lambda: gaussian_mixture(5, MEANS, cov=[[1.0, 0.5], [0.0, 1.0]]), ValueError, GM, 'cov'),
    ('gm cov not PD', lambda: gaussian_mixture(5, MEANS, cov=[[1.0, 2.0], [2.0, 1.0]]), ValueError, GM, 'cov'),
    ('gm cov meta', lambda: gaussian_mixture(5, MEANS, cov=META(2, 2)), ValueError, GM, 'cov'),
    ('gm priors complex', lambda: gaussian_mixture(5, MEANS, priors=[0.5, 0.5j]), TypeError, GM, 'priors'),
    ('gm priors nan', lambda: gaussian_mixture(5, MEANS, priors=[0.5, float('nan')]), ValueError, GM, 'priors'),
    ('gm priors negative', lambda: gaussian_mixture(5, MEANS, priors=[1.5, -0.5]), ValueError, GM, 'priors'),
    ('gm priors sum', lambda: gaussian_mixture(5, MEANS, priors=[0.5, 0.6]), ValueError, GM, 'priors'),
    ('gm priors shape', lambda: gaussian_mixture(5, MEANS, priors=[1.0]), ValueError, GM, 'priors'),
    ('gm priors None entries', lambda: gaussian_mixture(5, MEANS, priors=[None, None]), TypeError, GM, 'priors'),
    ('gm n 0', lambda: gaussian_mixture(0, MEANS), ValueError, GM, 'n'),
    ('gm n float', lambda: gaussian_mixture(5.0, MEANS), TypeError, GM, 'n'),
    ('gm seed 2**64', lambda: gaussian_mixture(5, MEANS, seed=2**64), ValueError, GM, 'seed'),
    ('gm dtype', lambda: gaussian_mixture(5, MEANS, dtype=torch.bool), TypeError, GM, 'dtype'),
    # long_tailed
    ('lt not a pair', lambda: long_tailed(XS, 10.0), TypeError, LT, 'dataset'),
    ('lt non-tensors', lambda: long_tailed((XS.tolist(), Y), 10.0), TypeError, LT, 'dataset'),
    ('lt 0-d x', lambda: long_tailed((torch.tensor(1.0), Y), 10.0), ValueError, LT, 'dataset'),
    ('lt 0-d y', lambda: long_tailed((XS, torch.tensor(1)), 10.0), ValueError, LT, 'dataset'),
    ('lt meta x', lambda: long_tailed((META(9, 3), Y), 10.0), ValueError, LT, 'dataset'),
    ('lt meta y', lambda: long_tailed((XS, META(9, dtype=torch.long)), 10.0), ValueError, LT, 'dataset'),
    ('lt int32 y', lambda: long_tailed((XS, Y.int()), 10.0), ValueError, LT, 'dataset'),
    ('lt float y', lambda: long_tailed((XS, Y.double()), 10.0), ValueError, LT, 'dataset'),
    ('lt bool y', lambda: long_tailed((XS, Y > 0), 10.0), ValueError, LT, 'dataset'),
    ('lt 2-D y', lambda: long_tailed((XS, Y[:, None]), 10.0), ValueError, LT, 'dataset'),
    ('lt length', lambda: long_tailed((XS[:8], Y), 10.0), ValueError, LT, 'dataset'),
    ('lt empty', lambda: long_tailed((XS[:0], Y[:0]), 10.0), ValueError, LT, 'dataset'),
    ('lt negative label', lambda: long_tailed((XS, Y - 1), 10.0), ValueError, LT, 'dataset'),
    ('lt missing class', lambda: long_tailed((XS, Y * 2), 10.0), ValueError, LT, 'dataset'),
    ('lt one class', lambda: long_tailed((XS, Y * 0), 10.0), ValueError, LT, 'dataset'),
    ('lt imbalance < 1', lambda: long_tailed((XS, Y), 0.5), ValueError, LT, 'imbalance'),
    ('lt imbalance nan', lambda: long_tailed((XS, Y), float('nan')), ValueError, LT, 'imbalance'),
    ('lt imbalance inf', lambda: long_tailed((XS, Y), float('inf')), ValueError, LT, 'imbalance'),
    ('lt imbalance str', lambda: long_tailed((XS, Y), '10'), TypeError, LT, 'imbalance'),
    ('lt imbalance bool', lambda: long_tailed((XS, Y), True), TypeError, LT, 'imbalance'),
    ('lt seed 2**64', lambda: long_tailed((XS, Y), 10.0, seed=2**64), ValueError, LT, 'seed'),
]


@pytest.mark.parametrize("name, call, exc, fname, arg", CASES, ids=[c[0] for c in CASES])
def test_refused_with_a_clear_error(name, call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


def test_valid_edges_give_correct_results():
    for seed in (0, 2**64 - 1):                                           # the whole range torch's generator takes
        x, y = two_moons(50, seed=seed)
        assert x.shape == (50, 2) and torch.isfinite(x).all()
    x, y = two_moons(np.int64(10), seed=np.uint64(3))                     # numpy integers are integers (torch's
    assert torch.equal(x, two_moons(10, seed=3)[0])                       # generator refused np.uint64 before)
    x, y = two_moons(10, noise=1e300, dtype=torch.float64)                # huge but representable in float64
    assert torch.isfinite(x).all() and x.abs().max() > 1e299
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x, y = two_moons(20, dtype=dtype)
        assert x.dtype == dtype and torch.allclose(x.double(), two_moons(20, dtype=torch.float64)[0], atol=1e-2)
    edge = 0.5 / 174                                                      # smallest class: 174 images
    for f in (edge * (1 + 1e-9), 1 - edge * (1 + 1e-9)):
        s = digits(test_fraction=f)
        assert s.y_train.unique().numel() == 10 and s.y_test.unique().numel() == 10


def test_gaussian_mixture_accepts_any_real_array_the_same_way():
    ref = gaussian_mixture(50, MEANS, cov=[[1.0, 0.2], [0.2, 1.0]], priors=[0.3, 0.7], seed=4, dtype=torch.float64)
    as_float32 = torch.tensor(MEANS, dtype=torch.float32)
    transposed = torch.tensor(MEANS).t().contiguous().t()                 # not contiguous
    assert not transposed.is_contiguous()
    for means in (as_float32, transposed, np.array(MEANS), [[0, 0], [3, 1]]):
        out = gaussian_mixture(50, means, cov=np.array([[1.0, 0.2], [0.2, 1.0]]), priors=torch.tensor([0.3, 0.7]), seed=4,
                               dtype=torch.float64)
        assert torch.equal(out[1], ref[1]) and torch.allclose(out[0], ref[0], rtol=1e-6, atol=1e-6)
    expanded = torch.tensor([1.0, 2.0]).expand(3, 2)                      # three classes with one mean: stride 0
    x, y = gaussian_mixture(200, expanded, seed=1, dtype=torch.float64)
    assert torch.allclose(x.mean(0), torch.tensor([1.0, 2.0], dtype=torch.float64), atol=0.3)


def test_long_tailed_layouts_and_nan_features():
    base = torch.randn(3, 9, generator=torch.Generator().manual_seed(1))
    xt = base.t()                                                         # (9, 3), not contiguous
    xs, ys = long_tailed((xt, Y), 3.0, seed=2)
    xc, yc = long_tailed((xt.contiguous(), Y), 3.0, seed=2)
    assert torch.equal(xs, xc) and torch.equal(ys, yc) and torch.bincount(ys).tolist() == [3, 1, 1]
    xn = XS.clone(); xn[0] = float('nan')                                 # features pass through untouched
    xs, ys = long_tailed((xn, Y), 1.0)
    assert torch.equal(ys, Y) and torch.isnan(xs[0]).all() and torch.equal(xs[1:], XS[1:])
