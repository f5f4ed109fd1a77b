"""lipnotes.longtail and lipnotes.data.long_tailed: agreement with independent references (F.cross_entropy on shifted
logits, numpy counts, scikit-learn's balanced accuracy) over random inputs, and bad input refused before any work."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from sklearn.metrics import balanced_accuracy_score

from lipnotes.data import long_tailed
from lipnotes.longtail import (LogitAdjustedLoss, balanced_error, class_priors, logit_adjusted_loss, per_class_error,
                               posthoc_adjust)

P4 = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)
X, T = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 7), extra=st.lists(st.integers(1, 3), max_size=2), batched=st.booleans(),
       tau=st.floats(0, 3), scale=st.sampled_from([1.0, 30.0, 1e4]), seed=st.integers(0, 2**31 - 1),
       reduction=st.sampled_from(['mean', 'sum', 'none']))
def test_loss_is_cross_entropy_of_shifted_logits(k, extra, batched, tau, scale, seed, reduction):
    g = torch.Generator().manual_seed(seed)
    priors = torch.rand(k, generator=g, dtype=torch.float64) + 0.01
    priors = priors / priors.sum()
    shape = (5, k, *extra) if batched else (k,)
    logits = scale * torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    cdim = 1 if batched else 0
    target = torch.randint(0, k, shape[:cdim] + shape[cdim + 1:], generator=g)
    shifted = logits + tau * priors.log().view(-1, *[1] * (len(shape) - cdim - 1))
    ours, ref = logit_adjusted_loss(logits, target, priors, tau, reduction), F.cross_entropy(shifted, target, reduction=reduction)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12 * scale)
    g1, = torch.autograd.grad(ours.sum(), logits); g2, = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-12)


def test_tau_zero_is_cross_entropy_exactly_and_extras_pass_through():
    assert torch.equal(logit_adjusted_loss(X, T, P4, tau=0), F.cross_entropy(X, T))
    t = T.clone(); t[2] = -100
    assert torch.allclose(logit_adjusted_loss(X, t, P4), F.cross_entropy(X + P4.log(), t), rtol=1e-12)
    soft = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)
    assert torch.allclose(logit_adjusted_loss(X, soft, P4), F.cross_entropy(X + P4.log(), soft), rtol=1e-12)
    m = LogitAdjustedLoss(P4, tau=0.5, reduction='none')
    assert torch.allclose(m(X, T), F.cross_entropy(X + 0.5 * P4.log(), T, reduction='none'), rtol=1e-12)
    assert 'priors' in dict(m.named_buffers())


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 8), n=st.integers(1, 300), smoothing=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_class_priors_against_numpy(k, n, smoothing, seed):
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    counts = np.bincount(labels.numpy(), minlength=k)
    if smoothing == 0 and (counts == 0).any():
        with pytest.raises(ValueError, match='class_priors: classes .* have no examples'):
            class_priors(labels, k)
        return
    ref = (counts + smoothing) / (n + k * smoothing)
    assert np.allclose(class_priors(labels, k, smoothing).numpy(), ref, rtol=1e-15, atol=0)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 6), n=st.integers(20, 300), seed=st.integers(0, 2**31 - 1))
def test_balanced_error_against_sklearn(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.arange(k), torch.randint(0, k, (n,), generator=g)])        # every class present
    pred = torch.where(torch.rand(len(target), generator=g) < 0.6, target, torch.randint(0, k, (len(target),), generator=g))
    ber = balanced_error(pred, target, k)
    assert abs(1 - ber.item() - balanced_accuracy_score(target.numpy(), pred.numpy())) < 1e-12
    per = per_class_error(pred, target, k)
    assert torch.equal(per.count, torch.bincount(target, minlength=k))


def test_posthoc_adjust_is_the_balanced_bayes_rule():
    "Exact posterior of a 1-D mixture: argmax P(y|x)/pi_y picks argmax p(x|y) at every point."
    pi, mu = torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64), torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    x = torch.linspace(-5, 5, 2001, dtype=torch.float64)
    log_lik = -0.5 * (x[:, None] - mu) ** 2
    top2 = log_lik.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-9                                        # off the thresholds +-1 (ties)
    assert clear.sum() >= 1995
    assert torch.equal(posthoc_adjust(log_lik + pi.log(), pi).argmax(1)[clear], log_lik.argmax(1)[clear])
    assert not torch.equal((log_lik + pi.log()).argmax(1)[clear], log_lik.argmax(1)[clear])   # unadjusted: different


def test_long_tailed_profile_and_determinism():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(40)[torch.randperm(200, generator=g)]
    x = torch.randn(200, 3, generator=g)
    xs, ys = long_tailed((x, y), 16.0, seed=3)
    assert torch.bincount(ys).tolist() == [max(1, math.floor(40 * 16 ** (-k / 4) + 1e-9)) for k in range(5)] == [40, 20, 10, 5, 2]
    idx = [int((x == r).all(1).nonzero()) for r in xs]
    assert idx == sorted(idx) and torch.equal(y[idx], ys)                       # a subset, in the input's order
    assert all(torch.equal(a, b) for a, b in zip(long_tailed((x, y), 16.0, seed=3), (xs, ys)))


@pytest.mark.parametrize("call, exc, words", [
    (lambda: class_priors(torch.tensor([0.0, 1.0]), 2), TypeError, "class_priors: labels must hold integer"),
    (lambda: class_priors(torch.tensor([0, 1]), 0), ValueError, "class_priors: num_classes must be a positive int"),
    (lambda: class_priors(torch.tensor([0, 3]), 3), ValueError, "class_priors: labels must lie in [0, 2]"),
    (lambda: class_priors(torch.tensor([0, 0]), 2), ValueError, "class_priors: classes [1] have no examples"),
    (lambda: class_priors(torch.tensor([0, 0]), 2, smoothing=-1.0), ValueError, "class_priors: smoothing must lie in [0, inf]"),
    (lambda: logit_adjusted_loss(X, T, torch.tensor([0.7, 0.4, -0.1, 0.0], dtype=torch.float64)), ValueError,
     "logit_adjusted_loss: priors must be finite and non-negative"),
    (lambda: logit_adjusted_loss(X, T, torch.tensor([0.5, 0.2, 0.1, 0.1], dtype=torch.float64)), ValueError,
     "logit_adjusted_loss: priors must sum to 1"),
    (lambda: logit_adjusted_loss(X, T, torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)), ValueError,
     "logit_adjusted_loss: priors contain zeros"),
    (lambda: logit_adjusted_loss(X, T, P4[:3] / P4[:3].sum()), ValueError, "logit_adjusted_loss: priors must have shape (4,)"),
    (lambda: logit_adjusted_loss(X, T, [0.25] * 4), TypeError, "logit_adjusted_loss: priors must be a torch.Tensor"),
    (lambda: logit_adjusted_loss(X, torch.tensor([0, 1, 2, 4, 0, 1]), P4), ValueError, "logit_adjusted_loss: target must lie in [0, 3]"),
    (lambda: logit_adjusted_loss(X, T[:5], P4), ValueError, "logit_adjusted_loss: target must have shape (6,)"),
    (lambda: logit_adjusted_loss(X, T, P4, tau=-0.5), ValueError, "logit_adjusted_loss: tau must lie in [0, inf]"),
    (lambda: logit_adjusted_loss(X, T, P4, tau=float('nan')), ValueError, "logit_adjusted_loss: tau must be finite"),
    (lambda: logit_adjusted_loss(X, T, P4, reduction='avg'), ValueError, "logit_adjusted_loss: reduction must be"),
    (lambda: logit_adjusted_loss(X.long(), T, P4), TypeError, "logit_adjusted_loss: logits must have a real floating dtype"),
    (lambda: LogitAdjustedLoss(torch.tensor([0.9, 0.2])), ValueError, "LogitAdjustedLoss: priors must sum to 1"),
    (lambda: LogitAdjustedLoss(P4, tau=-1), ValueError, "LogitAdjustedLoss: tau must lie in [0, inf]"),
    (lambda: posthoc_adjust(X, P4, tau=-1), ValueError, "posthoc_adjust: tau must lie in [0, inf]"),
    (lambda: posthoc_adjust(X, P4[:2] / P4[:2].sum()), ValueError, "posthoc_adjust: priors must have shape (4,)"),
    (lambda: balanced_error(torch.tensor([0, 1]), torch.tensor([0, 0]), 2), ValueError, "balanced_error: classes [1] have no examples"),
    (lambda: balanced_error(torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 2), ValueError, "balanced_error: pred and target must be"),
    (lambda: per_class_error(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), 2), ValueError,
     "per_class_error: floating pred must be logits"),
    (lambda: long_tailed((X, T), 0.5), ValueError, "long_tailed: imbalance must lie in"),
    (lambda: long_tailed((X, T.double()), 10.0), ValueError, "long_tailed: y must be 1-D int64"),
    (lambda: long_tailed(X, 10.0), TypeError, "long_tailed: dataset must be a pair"),
    (lambda: long_tailed((X, torch.tensor([0, 2, 0, 2, 0, 2])), 10.0), ValueError, "long_tailed: every class 0..2 needs examples"),
])
def test_longtail_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


def test_module_rechecks_priors_after_load_and_tau_after_assignment():
    "Issue 14 item 10: a zero prior loaded by load_state_dict gave an infinite loss, a negative tau set later was used."
    m = LogitAdjustedLoss(P4)
    with pytest.raises(ValueError, match=r"^LogitAdjustedLoss: priors contain zeros"):
        m.load_state_dict({'priors': torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)})
    assert torch.equal(m.priors, P4) and torch.isfinite(m(X, T))
    with pytest.raises(ValueError, match=r"^LogitAdjustedLoss: tau must lie in \[0, inf\]"):
        m.tau = -1.0
    assert m.tau == 1.0
    with torch.no_grad(): m.priors[3] = 0.0; m.priors[0] += 0.05              # edited in place: refused at the call
    with pytest.raises(ValueError, match=r"^LogitAdjustedLoss: priors contain zeros"):
        m(X, T)


def test_nan_logits_are_refused_everywhere():
    "Issue 14 item 11: NaN passed silently through logit_adjusted_loss and posthoc_adjust; per_class_error scored it."
    x = X.clone(); x[2, 1] = float('nan')
    for call, name in [(lambda: logit_adjusted_loss(x, T, P4), 'logit_adjusted_loss'), (lambda: posthoc_adjust(x, P4), 'posthoc_adjust'),
                       (lambda: LogitAdjustedLoss(P4)(x, T), 'LogitAdjustedLoss'), (lambda: per_class_error(x, T, 4), 'per_class_error'),
                       (lambda: balanced_error(x, T, 4), 'balanced_error')]:
        with pytest.raises(ValueError, match=rf"^{name}: (pred )?logits contain NaN"):
            call()


def test_any_non_finite_logit_is_refused_by_the_loss():
    "Reader a1: Ch08 says infinite logits are refused, but a -inf logit the loss survived returned a finite loss (0)."
    x = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    assert F.cross_entropy(x, torch.tensor([0])).item() == 0                 # finite: the old code returned it
    for call, name in [(lambda: logit_adjusted_loss(x, torch.tensor([0]), torch.tensor([0.5, 0.5])), 'logit_adjusted_loss'),
                       (lambda: LogitAdjustedLoss(torch.tensor([0.5, 0.5]))(x, torch.tensor([0])), 'LogitAdjustedLoss'),
                       (lambda: logit_adjusted_loss(x, torch.tensor([[1.0, 0.0]]), torch.tensor([0.5, 0.5]), tau=0),
                        'logit_adjusted_loss')]:
        with pytest.raises(ValueError, match=rf"^{name}: logits contain inf or -inf"):
            call()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16])
def test_narrow_targets_match_cross_entropy_with_int64(dtype):
    "Issue 14 obscure errors: int32/int16 targets were accepted, then F.cross_entropy failed."
    ref = F.cross_entropy(X + 0.3 * P4.log(), T)
    assert torch.allclose(logit_adjusted_loss(X, T.to(dtype), P4, tau=0.3), ref, rtol=1e-12)
    assert torch.allclose(LogitAdjustedLoss(P4, tau=0.3)(X, T.to(dtype)), ref, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# posthoc_adjust with a target label distribution (issue 18)
# ------------------------------------------------------------------------------------------------------------------
def _random_distribution(k, g):
    p = torch.rand(k, generator=g, dtype=torch.float64) + 0.05
    return p / p.sum()


@pytest.mark.parametrize('seed', range(5))
@pytest.mark.parametrize('tau', [0.0, 0.5, 1.0, 2.3])
def test_posthoc_target_priors_is_the_formula(seed, tau):
    "f - tau log pi + tau log q, computed entry by entry with math.log (no tensor broadcasting), for (N, K) and (N, K, d)."
    g = torch.Generator().manual_seed(seed)
    k = 2 + seed
    pi, q = _random_distribution(k, g), _random_distribution(k, g)
    logits = torch.randn(7, k, 3, generator=g, dtype=torch.float64)
    ref = logits.clone()
    for n in range(7):
        for y in range(k):
            for j in range(3):
                ref[n, y, j] = logits[n, y, j].item() - tau * math.log(pi[y].item()) + tau * math.log(q[y].item())
    assert torch.allclose(posthoc_adjust(logits, pi, tau, target_priors=q), ref, rtol=0, atol=1e-13)
    assert torch.allclose(posthoc_adjust(logits[..., 0], pi, tau, target_priors=q), ref[..., 0], rtol=0, atol=1e-13)
    assert torch.allclose(posthoc_adjust(logits[0, :, 0], pi, tau, target_priors=q), ref[0, :, 0], rtol=0, atol=1e-13)


@pytest.mark.parametrize('tau', [0.0, 0.7, 1.0, 3.0])
def test_uniform_target_priors_is_the_balanced_rule(tau):
    "q uniform adds the constant -tau log K: the same argmax and softmax as target_priors=None, values shifted by tau log K."
    g = torch.Generator().manual_seed(1)
    pi = _random_distribution(6, g)
    logits = torch.randn(50, 6, generator=g, dtype=torch.float64)
    balanced = posthoc_adjust(logits, pi, tau)
    uniform = posthoc_adjust(logits, pi, tau, target_priors=torch.full((6,), 1 / 6, dtype=torch.float64))
    assert torch.allclose(uniform, balanced - tau * math.log(6), rtol=0, atol=1e-13)
    assert torch.equal(uniform.argmax(1), balanced.argmax(1))
    assert torch.allclose(uniform.softmax(1), balanced.softmax(1), rtol=1e-12, atol=1e-15)


def test_target_equal_to_train_priors_leaves_the_logits():
    "q = pi: the test distribution is the training one, and the plain argmax is already Bayes (nothing to adjust)."
    g = torch.Generator().manual_seed(2)
    pi = _random_distribution(5, g)
    logits = torch.randn(20, 5, generator=g, dtype=torch.float64)
    assert torch.allclose(posthoc_adjust(logits, pi, 1.3, target_priors=pi), logits, rtol=0, atol=1e-14)


def test_target_priors_rule_minimises_the_error_under_q():
    """Exact 1-D posterior, label shift to q: the adjusted rule's q-weighted error (per-class errors by quadrature) is the
    smallest among the rules argmax f - log pi + log q' for q' on a grid, and equals the closed form's (thresholds)."""
    pi = torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64)
    mu = torch.tensor([-2.0, 0.0, 2.0], dtype=torch.float64)
    q = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    h = 1e-3
    x = torch.arange(-9, 9, h, dtype=torch.float64) + h / 2
    dens = torch.exp(-0.5 * (x[:, None] - mu) ** 2) / math.sqrt(2 * math.pi) * h   # p(x|y) dx per cell
    log_post = pi.log() - 0.5 * (x[:, None] - mu) ** 2
    def q_error(pred):
        correct = dens.gather(1, pred[:, None])[:, 0]
        per_class = 1 - torch.stack([correct[pred == k].sum() for k in range(3)])
        return (q * per_class).sum().item()
    best = q_error(posthoc_adjust(log_post, pi, target_priors=q).argmax(1))
    Phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))
    t1, t2 = -1 + 0.5 * math.log(0.1 / 0.3), 1 + 0.5 * math.log(0.3 / 0.6)
    closed = 0.1 * Phi(-(t1 + 2)) + 0.3 * (Phi(t1) + Phi(-t2)) + 0.6 * Phi(t2 - 2)
    assert abs(best - closed) < 1e-5
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        other = _random_distribution(3, g)
        assert q_error(posthoc_adjust(log_post, pi, target_priors=other).argmax(1)) >= best - 1e-12
    assert q_error(posthoc_adjust(log_post, pi).argmax(1)) > best + 0.01          # the balanced rule loses under q
