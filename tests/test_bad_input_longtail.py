"""Bad input to every export of lipnotes.longtail: each case ends in a ValueError/TypeError whose message starts with the
public name the user called and names the argument, or in a result checked against an independent reference
(F.cross_entropy on logits shifted by hand, in float64 with int64 targets; numpy; scikit-learn)."""
import copy, pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from lipnotes.longtail import (LogitAdjustedLoss, balanced_error, class_priors, logit_adjusted_loss, per_class_error,
                               posthoc_adjust)

P = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)
X = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
T = torch.tensor([0, 1, 2, 3, 0, 1])
NAN_X = X.clone(); NAN_X[1, 2] = float('nan')
INF_X = X.clone(); INF_X[0, 0] = float('inf')
NINF_OFF = X.clone(); NINF_OFF[0, 3] = -float('inf')       # -inf on a class that is not the target: the loss would be finite
META = lambda *s: torch.empty(*s, device='meta')
f64 = lambda *v: torch.tensor(v, dtype=torch.float64)
L, M, PH, PCE, BE, CP = 'logit_adjusted_loss', 'LogitAdjustedLoss', 'posthoc_adjust', 'per_class_error', 'balanced_error', 'class_priors'


def _module_with(attr, value):
    m = LogitAdjustedLoss(P)
    setattr(m, attr, value)


def _edited_in_place():
    m = LogitAdjustedLoss(P)
    with torch.no_grad(): m.priors[3] = 0.0; m.priors[0] += 0.05
    m(X, T)


CASES = [  # (name, call, exception, function name, argument name)
    # class_priors
    ('cp float labels', lambda: class_priors(torch.tensor([0.0, 1.0]), 2), TypeError, CP, 'labels'),
    ('cp bool labels', lambda: class_priors(torch.tensor([True, False]), 2), TypeError, CP, 'labels'),
    ('cp complex labels', lambda: class_priors(torch.tensor([1j]), 2), TypeError, CP, 'labels'),
    ('cp meta labels', lambda: class_priors(torch.empty(3, dtype=torch.long, device='meta'), 2), ValueError, CP, 'labels'),
    ('cp list labels', lambda: class_priors([0, 1], 2), TypeError, CP, 'labels'),
    ('cp 2-D labels', lambda: class_priors(torch.tensor([[0, 1]]), 2), ValueError, CP, 'labels'),
    ('cp empty labels', lambda: class_priors(torch.tensor([], dtype=torch.long), 2), ValueError, CP, 'labels'),
    ('cp out of range', lambda: class_priors(torch.tensor([0, 2]), 2), ValueError, CP, 'labels'),
    ('cp num_classes 0', lambda: class_priors(T, 0), ValueError, CP, 'num_classes'),
    ('cp num_classes bool', lambda: class_priors(T, True), ValueError, CP, 'num_classes'),
    ('cp num_classes float', lambda: class_priors(T, 4.0), ValueError, CP, 'num_classes'),
    ('cp smoothing nan', lambda: class_priors(T, 4, float('nan')), ValueError, CP, 'smoothing'),
    ('cp smoothing inf', lambda: class_priors(T, 4, float('inf')), ValueError, CP, 'smoothing'),
    ('cp smoothing negative', lambda: class_priors(T, 4, -1.0), ValueError, CP, 'smoothing'),
    ('cp smoothing str', lambda: class_priors(T, 4, '1'), TypeError, CP, 'smoothing'),
    ('cp missing class', lambda: class_priors(torch.tensor([0, 0]), 2), ValueError, CP, 'smoothing'),
    # logit_adjusted_loss: logits
    ('loss NaN logits', lambda: logit_adjusted_loss(NAN_X, T, P), ValueError, L, 'logits'),
    ('loss inf logits', lambda: logit_adjusted_loss(INF_X, T, P), ValueError, L, 'logits'),
    ('loss -inf logits', lambda: logit_adjusted_loss(-INF_X, T, P), ValueError, L, 'logits'),
    ('loss -inf non-target logit', lambda: logit_adjusted_loss(NINF_OFF, T, P), ValueError, L, 'logits'),
    ('loss -inf non-target, probability target', lambda: logit_adjusted_loss(NINF_OFF, F.one_hot(T, 4).double(), P),
     ValueError, L, 'logits'),
    ('module -inf non-target logit', lambda: LogitAdjustedLoss(P)(NINF_OFF, T), ValueError, M, 'logits'),
    ('loss int logits', lambda: logit_adjusted_loss(X.long(), T, P), TypeError, L, 'logits'),
    ('loss bool logits', lambda: logit_adjusted_loss(X > 0, T, P), TypeError, L, 'logits'),
    ('loss complex logits', lambda: logit_adjusted_loss(X.to(torch.complex128), T, P), TypeError, L, 'logits'),
    ('loss scalar logits', lambda: logit_adjusted_loss(X[0, 0], T[0], P), ValueError, L, 'logits'),
    ('loss meta logits', lambda: logit_adjusted_loss(META(6, 4), T, P), ValueError, L, 'logits'),
    ('loss list logits', lambda: logit_adjusted_loss(X.tolist(), T, P), TypeError, L, 'logits'),
    # target
    ('loss meta target', lambda: logit_adjusted_loss(X, torch.empty(6, dtype=torch.long, device='meta'), P), ValueError, L, 'target'),
    ('loss bool target', lambda: logit_adjusted_loss(X, T > 1, P), TypeError, L, 'target'),
    ('loss complex target', lambda: logit_adjusted_loss(X, T.to(torch.complex64), P), TypeError, L, 'target'),
    ('loss list target', lambda: logit_adjusted_loss(X, T.tolist(), P), TypeError, L, 'target'),
    ('loss target out of range', lambda: logit_adjusted_loss(X, T + 1, P), ValueError, L, 'target'),
    ('loss target negative', lambda: logit_adjusted_loss(X, T - 1, P), ValueError, L, 'target'),
    ('loss target shape', lambda: logit_adjusted_loss(X, T[:5], P), ValueError, L, 'target'),
    ('loss target 2-D', lambda: logit_adjusted_loss(X, T[:, None], P), ValueError, L, 'target'),
    ('loss prob target shape', lambda: logit_adjusted_loss(X, torch.rand(6, 3, dtype=torch.float64), P), ValueError, L, 'target'),
    ('loss NaN prob target', lambda: logit_adjusted_loss(X, torch.full((6, 4), float('nan'), dtype=torch.float64), P),
     ValueError, L, 'target'),
    ('loss empty batch mean', lambda: logit_adjusted_loss(X[:0], T[:0], P), ValueError, L, 'reduction'),
    ('loss all ignored mean', lambda: logit_adjusted_loss(X, torch.full((6,), -100), P), ValueError, L, 'ignore_index'),
    # priors
    ('loss NaN priors', lambda: logit_adjusted_loss(X, T, f64(0.5, float('nan'), 0.25, 0.25)), ValueError, L, 'priors'),
    ('loss inf priors', lambda: logit_adjusted_loss(X, T, f64(float('inf'), 0.0, 0.0, 0.0)), ValueError, L, 'priors'),
    ('loss negative priors', lambda: logit_adjusted_loss(X, T, f64(0.7, 0.4, -0.1, 0.0)), ValueError, L, 'priors'),
    ('loss zero priors', lambda: logit_adjusted_loss(X, T, f64(0.5, 0.5, 0.0, 0.0)), ValueError, L, 'priors'),
    ('loss priors sum', lambda: logit_adjusted_loss(X, T, f64(0.5, 0.2, 0.1, 0.1)), ValueError, L, 'priors'),
    ('loss int priors', lambda: logit_adjusted_loss(X, T, torch.tensor([1, 0, 0, 0])), TypeError, L, 'priors'),
    ('loss complex priors', lambda: logit_adjusted_loss(X, T, P.to(torch.complex128)), TypeError, L, 'priors'),
    ('loss 2-D priors', lambda: logit_adjusted_loss(X, T, P[None]), ValueError, L, 'priors'),
    ('loss short priors', lambda: logit_adjusted_loss(X, T, f64(0.5, 0.5)), ValueError, L, 'priors'),
    ('loss meta priors', lambda: logit_adjusted_loss(X, T, META(4)), ValueError, L, 'priors'),
    ('loss list priors', lambda: logit_adjusted_loss(X, T, [0.25] * 4), TypeError, L, 'priors'),
    # hyperparameters
    ('loss tau negative', lambda: logit_adjusted_loss(X, T, P, tau=-0.5), ValueError, L, 'tau'),
    ('loss tau nan', lambda: logit_adjusted_loss(X, T, P, tau=float('nan')), ValueError, L, 'tau'),
    ('loss tau inf', lambda: logit_adjusted_loss(X, T, P, tau=float('inf')), ValueError, L, 'tau'),
    ('loss tau str', lambda: logit_adjusted_loss(X, T, P, tau='1'), TypeError, L, 'tau'),
    ('loss tau bool', lambda: logit_adjusted_loss(X, T, P, tau=True), TypeError, L, 'tau'),
    ('loss tau tensor', lambda: logit_adjusted_loss(X, T, P, tau=torch.tensor(1.0)), TypeError, L, 'tau'),
    ('loss reduction', lambda: logit_adjusted_loss(X, T, P, reduction='avg'), ValueError, L, 'reduction'),
    ('loss reduction None', lambda: logit_adjusted_loss(X, T, P, reduction=None), ValueError, L, 'reduction'),
    ('loss ignore_index float', lambda: logit_adjusted_loss(X, T, P, ignore_index=1.5), TypeError, L, 'ignore_index'),
    ('loss ignore_index bool', lambda: logit_adjusted_loss(X, T, P, ignore_index=True), TypeError, L, 'ignore_index'),
    # LogitAdjustedLoss
    ('module zero priors', lambda: LogitAdjustedLoss(f64(0.5, 0.5, 0.0)), ValueError, M, 'priors'),
    ('module NaN priors', lambda: LogitAdjustedLoss(f64(0.5, float('nan'))), ValueError, M, 'priors'),
    ('module meta priors', lambda: LogitAdjustedLoss(META(3)), ValueError, M, 'priors'),
    ('module int priors', lambda: LogitAdjustedLoss(torch.tensor([1, 0])), TypeError, M, 'priors'),
    ('module tau negative', lambda: LogitAdjustedLoss(P, tau=-1), ValueError, M, 'tau'),
    ('module reduction', lambda: LogitAdjustedLoss(P, reduction='avg'), ValueError, M, 'reduction'),
    ('module ignore_index', lambda: LogitAdjustedLoss(P, ignore_index='x'), TypeError, M, 'ignore_index'),
    ('module tau set negative', lambda: _module_with('tau', -0.5), ValueError, M, 'tau'),
    ('module tau set nan', lambda: _module_with('tau', float('nan')), ValueError, M, 'tau'),
    ('module reduction set', lambda: _module_with('reduction', 'max'), ValueError, M, 'reduction'),
    ('module ignore_index set', lambda: _module_with('ignore_index', None), TypeError, M, 'ignore_index'),
    ('module load zero prior', lambda: LogitAdjustedLoss(P).load_state_dict({'priors': f64(0.5, 0.5, 0.0, 0.0)}), ValueError, M, 'priors'),
    ('module load negative', lambda: LogitAdjustedLoss(P).load_state_dict({'priors': f64(0.6, 0.5, -0.1, 0.0)}), ValueError, M, 'priors'),
    ('module load NaN', lambda: LogitAdjustedLoss(P).load_state_dict({'priors': f64(0.5, 0.5, float('nan'), 0.0)}),
     ValueError, M, 'priors'),
    ('module load sum', lambda: LogitAdjustedLoss(P).load_state_dict({'priors': f64(0.5, 0.5, 0.5, 0.5)}), ValueError, M, 'priors'),
    ('module load shape', lambda: LogitAdjustedLoss(P).load_state_dict({'priors': f64(0.5, 0.5)}), ValueError, M, 'priors'),
    ('module edited in place', _edited_in_place, ValueError, M, 'priors'),
    ('module NaN logits', lambda: LogitAdjustedLoss(P)(NAN_X, T), ValueError, M, 'logits'),
    ('module meta logits', lambda: LogitAdjustedLoss(P)(META(6, 4), T), ValueError, M, 'logits'),
    ('module int target dtype bool', lambda: LogitAdjustedLoss(P)(X, T > 0), TypeError, M, 'target'),
    ('module wrong K', lambda: LogitAdjustedLoss(P)(X[:, :3], T.clamp(max=2)), ValueError, M, 'priors'),
    # posthoc_adjust
    ('posthoc NaN logits', lambda: posthoc_adjust(NAN_X, P), ValueError, PH, 'logits'),
    ('posthoc int logits', lambda: posthoc_adjust(X.long(), P), TypeError, PH, 'logits'),
    ('posthoc complex logits', lambda: posthoc_adjust(X.to(torch.complex128), P), TypeError, PH, 'logits'),
    ('posthoc scalar logits', lambda: posthoc_adjust(X[0, 0], P), ValueError, PH, 'logits'),
    ('posthoc meta logits', lambda: posthoc_adjust(META(6, 4), P), ValueError, PH, 'logits'),
    ('posthoc zero priors', lambda: posthoc_adjust(X, f64(0.5, 0.5, 0.0, 0.0)), ValueError, PH, 'priors'),
    ('posthoc short priors', lambda: posthoc_adjust(X, f64(0.5, 0.5)), ValueError, PH, 'priors'),
    ('posthoc meta priors', lambda: posthoc_adjust(X, META(4)), ValueError, PH, 'priors'),
    ('posthoc tau negative', lambda: posthoc_adjust(X, P, tau=-1), ValueError, PH, 'tau'),
    ('posthoc tau nan', lambda: posthoc_adjust(X, P, tau=float('nan')), ValueError, PH, 'tau'),
    # posthoc_adjust: target_priors (issue 18)
    ('posthoc target zeros', lambda: posthoc_adjust(X, P, target_priors=f64(0.5, 0.5, 0.0, 0.0)), ValueError, PH, 'target_priors'),
    ('posthoc target negative', lambda: posthoc_adjust(X, P, target_priors=f64(0.6, 0.6, -0.1, -0.1)), ValueError, PH,
     'target_priors'),
    ('posthoc target sum', lambda: posthoc_adjust(X, P, target_priors=f64(0.4, 0.3, 0.2, 0.2)), ValueError, PH, 'target_priors'),
    ('posthoc target nan', lambda: posthoc_adjust(X, P, target_priors=f64(0.5, float('nan'), 0.25, 0.25)), ValueError, PH,
     'target_priors'),
    ('posthoc target short', lambda: posthoc_adjust(X, P, target_priors=f64(0.5, 0.5)), ValueError, PH, 'target_priors'),
    ('posthoc target long', lambda: posthoc_adjust(X, P, target_priors=f64(0.2, 0.2, 0.2, 0.2, 0.2)), ValueError, PH,
     'target_priors'),
    ('posthoc target 2-D', lambda: posthoc_adjust(X, P, target_priors=P[None]), ValueError, PH, 'target_priors'),
    ('posthoc target int', lambda: posthoc_adjust(X, P, target_priors=torch.tensor([1, 0, 0, 0])), TypeError, PH,
     'target_priors'),
    ('posthoc target list', lambda: posthoc_adjust(X, P, target_priors=[0.25] * 4), TypeError, PH, 'target_priors'),
    ('posthoc target meta', lambda: posthoc_adjust(X, P, target_priors=META(4)), ValueError, PH, 'target_priors'),
    # per_class_error, balanced_error
    ('pce NaN logits', lambda: per_class_error(NAN_X, T, 4), ValueError, PCE, 'pred'),
    ('be NaN logits', lambda: balanced_error(NAN_X, T, 4), ValueError, BE, 'pred'),
    ('pce bool pred', lambda: per_class_error(T > 0, T, 4), TypeError, PCE, 'pred'),
    ('pce complex pred', lambda: per_class_error(T.to(torch.complex64), T, 4), TypeError, PCE, 'pred'),
    ('pce list pred', lambda: per_class_error(T.tolist(), T, 4), TypeError, PCE, 'pred'),
    ('pce meta pred', lambda: per_class_error(torch.empty(6, dtype=torch.long, device='meta'), T, 4), ValueError, PCE, 'pred'),
    ('pce float target', lambda: per_class_error(T, T.double(), 4), TypeError, PCE, 'target'),
    ('pce meta target', lambda: per_class_error(T, torch.empty(6, dtype=torch.long, device='meta'), 4), ValueError, PCE, 'target'),
    ('pce logits shape', lambda: per_class_error(X[:, :3], T, 4), ValueError, PCE, 'pred'),
    ('pce 2-D int pred', lambda: per_class_error(T[:, None], T, 4), ValueError, PCE, 'pred'),
    ('pce length', lambda: per_class_error(T[:5], T, 4), ValueError, PCE, 'target'),
    ('pce empty', lambda: per_class_error(T[:0], T[:0], 4), ValueError, PCE, 'target'),
    ('pce pred out of range', lambda: per_class_error(T + 1, T, 4), ValueError, PCE, 'pred'),
    ('pce num_classes', lambda: per_class_error(T, T, 0), ValueError, PCE, 'num_classes'),
    ('be missing class', lambda: balanced_error(torch.tensor([0, 1]), torch.tensor([0, 0]), 2), ValueError, BE, 'target'),
    ('be bool target', lambda: balanced_error(T, T > 0, 4), TypeError, BE, 'target'),
]


@pytest.mark.parametrize("name, call, exc, fname, arg", CASES, ids=[c[0] for c in CASES])
def test_refused_with_a_clear_error(name, call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


def _ref(logits, target, priors=P, tau=1.0, **kw):
    "F.cross_entropy on logits shifted by hand, in float64, with int64 targets."
    cdim = 1 if logits.dim() > 1 else 0
    shift = tau * priors.double().log().view(-1, *[1] * (logits.dim() - cdim - 1))
    t = target.double() if target.is_floating_point() else target.long()
    return F.cross_entropy(logits.double() + shift, t, **kw)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_narrow_integer_targets_are_int64_targets(dtype):
    for fn in (lambda l, t: logit_adjusted_loss(l, t, P, 0.7), lambda l, t: LogitAdjustedLoss(P, 0.7)(l, t)):
        for red in ('mean', 'sum', 'none'):
            ours = (lambda l, t: logit_adjusted_loss(l, t, P, 0.7, reduction=red))(X, T.to(dtype))
            assert torch.allclose(ours, _ref(X, T, tau=0.7, reduction=red), rtol=1e-12, atol=1e-12)
        assert torch.allclose(fn(X, T.to(dtype)), _ref(X, T, tau=0.7), rtol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_low_precision_logits_follow_the_float64_reference(dtype, tol):
    out = logit_adjusted_loss(X.to(dtype), T, P)
    assert out.dtype == dtype and abs(out.double() - _ref(X.to(dtype), T)) < tol * 4
    adj = posthoc_adjust(X.to(dtype), P)
    assert adj.dtype == dtype and torch.allclose(adj.double(), X.to(dtype).double() - P.log(), atol=tol * 8)


def test_non_contiguous_and_expanded_inputs():
    base = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xt = base.t()                                                      # (6, 4), not contiguous
    assert not xt.is_contiguous()
    assert torch.allclose(logit_adjusted_loss(xt, T, P), _ref(xt.contiguous(), T), rtol=1e-12)
    row = X[:1].expand(6, 4)                                           # stride 0
    assert torch.allclose(logit_adjusted_loss(row, T, P), _ref(row.contiguous(), T), rtol=1e-12)
    p_exp = torch.tensor(0.25, dtype=torch.float64).expand(4)
    assert torch.allclose(logit_adjusted_loss(X, T, p_exp), F.cross_entropy(X, T), rtol=1e-12)  # uniform priors: a constant shift
    assert torch.allclose(posthoc_adjust(xt, P), xt.contiguous() - P.log(), rtol=1e-15)
    tt = torch.stack([T, T], 1)[:, 0]                                  # non-contiguous targets
    assert not tt.is_contiguous() and torch.allclose(logit_adjusted_loss(X, tt, P), _ref(X, T), rtol=1e-12)
    ref = 1 - balanced_accuracy_score(T.numpy(), xt.argmax(1).numpy())
    assert abs(balanced_error(xt, tt, 4).item() - ref) < 1e-12


def test_degenerate_but_valid_inputs_have_their_right_answer():
    assert logit_adjusted_loss(X[:0], T[:0], P, reduction='sum').item() == 0
    assert logit_adjusted_loss(X[:0], T[:0], P, reduction='none').shape == (0,)
    t = T.clone(); t[:3] = -100                                          # some ignored: the mean over the rest
    assert torch.allclose(logit_adjusted_loss(X, t, P), _ref(X, t), rtol=1e-12)
    assert posthoc_adjust(X[:0], P).shape == (0, 4)
    inf = X.clone(); inf[2, 1] = float('inf')                             # +inf: that class, whatever the shift
    assert posthoc_adjust(inf, P).argmax(1)[2] == 1 and per_class_error(inf, T, 4).count.sum() == 6
    assert torch.equal(posthoc_adjust(X, P, tau=0), X)
    assert torch.allclose(class_priors(T.to(torch.int32), 4), torch.tensor(np.bincount(T.numpy()) / 6), rtol=1e-15)
    assert torch.allclose(class_priors(torch.tensor(0).expand(5), 2, smoothing=1.0), f64(6 / 7, 1 / 7), rtol=1e-15)


def test_module_modes_copies_and_valid_loads():
    m = LogitAdjustedLoss(P, tau=0.5)
    a = m.train()(X, T); b = m.eval()(X, T)
    assert torch.equal(a, b) and torch.allclose(a, _ref(X, T, tau=0.5), rtol=1e-12)
    q = f64(0.4, 0.3, 0.2, 0.1)
    m.load_state_dict({'priors': q})
    assert torch.equal(m.priors, q) and torch.allclose(m(X, T), _ref(X, T, q, 0.5), rtol=1e-12)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.allclose(clone(X, T), m(X, T), rtol=0, atol=0)
        with pytest.raises(ValueError, match='^LogitAdjustedLoss: tau'):
            clone.tau = -1.0
        with pytest.raises(ValueError, match='^LogitAdjustedLoss: priors'):
            clone.load_state_dict({'priors': f64(1.0, 0.0, 0.0, 0.0)})
    before = m.priors.clone()
    with pytest.raises(ValueError):
        m.load_state_dict({'priors': f64(1.0, 0.0, 0.0, 0.0)})
    assert torch.equal(m.priors, before)                                 # nothing copied
