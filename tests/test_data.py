"""lipnotes.data against independent references (scikit-learn's digits and numpy, closed forms of the two arcs and the
long-tailed profile, Bayes' rule on the mixture densities), and regression tests for issue 14's data items."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.datasets import load_digits

from lipnotes.data import Labelled, Split, digits, gaussian_mixture, long_tailed, two_moons


def test_digits_split_and_standardisation_against_numpy():
    raw = load_digits()
    s = digits(test_fraction=0.3, seed=5, dtype=torch.float64)
    counts = np.bincount(raw.target)
    assert np.array_equal(np.bincount(s.y_test.numpy()), np.round(0.3 * counts).astype(int))
    assert len(s.y_train) + len(s.y_test) == 1797
    x = s.x_train.numpy()                                                   # standardised by training statistics
    assert np.allclose(x.mean(0), 0, atol=1e-12)
    sd_train = x.std(0, ddof=1)
    assert np.allclose(sd_train[sd_train > 0], 1, atol=1e-12)
    always_zero = np.flatnonzero((raw.data == 0).all(0))                   # pixels 0, 32, 39: 0 in every image
    assert always_zero.tolist() == [0, 32, 39] and (x[:, always_zero] == 0).all()


@pytest.mark.parametrize("f", [1e-9, 0.5 / 174, 1 - 0.5 / 174, 1 - 1e-9])
def test_digits_refuses_splits_that_leave_a_class_out(f):
    "Issue 14 item 11: test_fraction=1e-9 gave an empty test split, near 1 an empty training split."
    with pytest.raises(ValueError, match=r"^digits: test_fraction=.* leaves a class with no (test|training) example"):
        digits(test_fraction=f)


def test_two_moons_refuses_non_finite_points_and_big_seeds():
    "Issue 14 item 11: noise=1e300 gave inf in float32; seed=2**64 crashed in torch's generator."
    with pytest.raises(ValueError, match=r"^two_moons: noise=1e\+300 gives points that are not finite in torch.float32"):
        two_moons(noise=1e300)
    with pytest.raises(ValueError, match=r"^two_moons: seed must be <= 18446744073709551615"):
        two_moons(seed=2**64)
    x = two_moons(300, noise=0.0, dtype=torch.float64)[0].numpy()       # noise-free: on the arcs, by the closed form
    assert np.allclose(np.hypot(x[:150, 0], x[:150, 1]), 1) and np.allclose(np.hypot(x[150:, 0] - 1, x[150:, 1] - 0.5), 1)


def test_gaussian_mixture_refuses_inf_cov_complex_means_and_none():
    "Issue 14 item 11 and the obscure errors: inf in cov gave non-finite data, complex means were cast to real."
    with pytest.raises(ValueError, match=r"^gaussian_mixture: cov contains NaN or Inf"):
        gaussian_mixture(5, [[0.0, 0.0]], cov=[[1.0, 0.0], [0.0, math.inf]])
    with pytest.raises(TypeError, match=r"^gaussian_mixture: means must hold real numbers, got torch.complex"):
        gaussian_mixture(5, [[1.0 + 2j, 0.0]])
    with pytest.raises(TypeError, match=r"^gaussian_mixture: means must be an array of real numbers, got NoneType"):
        gaussian_mixture(5, None)


def test_gaussian_mixture_posterior_is_a_softmax_of_linear_functions():
    "The chapters' exact answer: Bayes' rule on the densities (scipy-free, torch.distributions) against the linear form."
    M = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-2.0, 2.0]], dtype=torch.float64)
    S = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    P = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    x, y = gaussian_mixture(500, M, S, P, seed=2, dtype=torch.float64)
    dens = torch.distributions.MultivariateNormal(M, covariance_matrix=S).log_prob(x[:, None]).exp() * P
    Si = torch.linalg.inv(S)
    lin = x @ (M @ Si).T - 0.5 * torch.einsum('ki,ij,kj->k', M, Si, M) + P.log()
    assert torch.allclose(torch.softmax(lin, 1), dens / dens.sum(1, keepdim=True), atol=1e-12)


def test_long_tailed_refuses_a_0d_tensor():
    "Issue 14 obscure errors: a 0-d tensor in long_tailed raised Python's 'len() of a 0-d tensor'."
    with pytest.raises(ValueError, match=r"^long_tailed: y must be 1-D int64 labels"):
        long_tailed((torch.tensor(1.0), torch.tensor([0, 1])), 10.0)


@settings(max_examples=60, deadline=None)
@given(n_max=st.integers(1, 300), K=st.integers(2, 6), rho=st.floats(1.0, 1000.0))
def test_realised_head_to_tail_ratio(n_max, K, rho):
    "Chapter 00: n_0 / n_{K-1} = n_max / max(1, floor(n_max / rho)); rho itself only when n_max / rho is whole."
    y = torch.arange(K).repeat_interleave(n_max)
    c = torch.bincount(long_tailed((torch.zeros(len(y), 1), y), rho)[1]).tolist()
    assert c == [max(1, math.floor(n_max * rho ** (-k / (K - 1)) + 1e-9)) for k in range(K)]
    ratio = c[0] / c[-1]
    assert ratio == n_max / max(1, math.floor(n_max / rho + 1e-9))
    assert (ratio >= rho * (1 - 1e-12)) if n_max >= rho else ratio == n_max


def test_split_checks_what_it_holds():
    x, y = torch.zeros(3, 2), torch.tensor([0, 1, 0])
    s = Split(x, y, x, y)
    assert s._asdict().keys() == {'x_train', 'y_train', 'x_test', 'y_test'} and isinstance(s, tuple)
    with pytest.raises(ValueError, match=r"^Split: x_test and y_test must have the same non-zero length"):
        Split(x, y, x[:0], y[:0])


@pytest.mark.parametrize("call, exc, words", [        # moved from test_certificates.py (issue 15: one test file per module)
    (lambda: digits(test_fraction=1.0), ValueError, "digits: test_fraction must lie in (0, 1)"),
    (lambda: digits(seed=-1), ValueError, "digits: seed must be >= 0"),
    (lambda: digits(dtype=torch.int64), TypeError, "digits: dtype must be a real floating"),
    (lambda: two_moons(1), ValueError, "two_moons: n must be >= 2"),
    (lambda: two_moons(10, noise=-0.1), ValueError, "two_moons: noise"),
    (lambda: gaussian_mixture(10, [0.0, 1.0]), ValueError, "gaussian_mixture: means must be a (classes, dim)"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], cov=[[-1.0]]), ValueError, "positive definite"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], priors=[0.5, 0.6]), ValueError, "sum to 1"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], priors=[1.0]), ValueError, "one entry per class"),
])
def test_data_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


def test_synthetic_sets_return_labelled_pairs():
    "two_moons, gaussian_mixture and long_tailed return Labelled(x, y), which still unpacks as (x, y)."
    for out in (two_moons(10), gaussian_mixture(10, [[0.0], [1.0]]), long_tailed(two_moons(10), 2.0)):
        assert isinstance(out, Labelled) and out._fields == ('x', 'y')
        x, y = out
        assert x is out.x and y is out.y and y.dtype == torch.int64 and len(x) == len(y)
