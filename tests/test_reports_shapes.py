"""ReportS and MisclassifiedS: class indices outside the scores' classes are refused at the first batch; a report that fails writes nothing."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, Subscriber
from nntrain.reports import MisclassifiedS, ReportS
from conftest import raises


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch): monkeypatch.chdir(tmp_path)


class Steps(Subscriber):
    "Records the iteration of each batch started and each optimizer step taken."
    def __init__(self): self.seen = []
    def before_batch(self, learn): self.seen.append(learn.iteration)
    def after_step(self, learn): self.seen.append('step')

def data(seed=0, n=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)

OUTSIDE = ("{who} expected {targets} to be class indices in [0, 3) for class scores of shape ({n}, 3), got {values} "
           "({count} of {n} targets in the fit's first batch); {preds} has 3 columns, one per class")

@pytest.mark.parametrize('make', [lambda: MisclassifiedS(), lambda: ReportS('report')])
@pytest.mark.parametrize('shift, values, count', [(5, '5, 6, 7', 50), (-1, '-1', None)])
def test_targets_outside_the_classes_are_refused_at_the_first_batch(make, shift, values, count):
    "Once MisclassifiedS().matrix() was all True, and ReportS trained the whole fit before failing in after_fit."
    x, y = data()
    y = y + shift
    sub, steps = make(), Steps()
    learn = Learner(nn.Linear(3, 3), DataLoaders([(x, y)] * 3, [(x, y)]), lambda p, t: p.sum(), subs=[sub, steps])
    message = OUTSIDE.format(who=type(sub).__name__, targets='the targets', n=50, values=values,
                             count=count if count is not None else int((y < 0).sum()), preds="the model's output")
    with raises(ValueError, message): learn.fit(2)
    assert steps.seen == [1]   # before the first step
    assert not Path('report').exists()

def test_many_values_outside_are_listed_five_at_most():
    x = torch.randn(12, 3)
    y = torch.arange(10, 22)
    with raises(ValueError, OUTSIDE.format(who='MisclassifiedS', targets='the targets', n=12, values='10, 11, 12, 13, 14, ...', count=12,
                                           preds="the model's output")):
        Learner(nn.Linear(3, 3), DataLoaders([(x, y)], [(x, y)]), lambda p, t: p.sum(), subs=[MisclassifiedS()]).fit(1)

def test_the_message_names_the_selectors():
    x, y = data(n=8)
    class TwoOutputs(nn.Linear):
        def forward(self, x): return super().forward(x), x
    batches = [(x, (y + 3, torch.rand(8)))]
    learn = Learner(TwoOutputs(3, 3), DataLoaders(batches, batches), lambda p, t: p[0].sum(),
                    subs=[ReportS('report', preds=0, targets=0)])
    with raises(ValueError, OUTSIDE.format(who='ReportS', targets='the targets[0]', n=8, values=', '.join(map(str, sorted(set((y + 3).tolist())))),
                                           count=int((y + 3 >= 3).sum()), preds="the model's output[0]")):
        learn.fit(1)

def test_targets_inside_the_classes_still_train_and_report():
    x, y = data()
    misclassified, report = MisclassifiedS(), ReportS('report', k_worst=4)
    learn = Learner(nn.Linear(3, 3), DataLoaders([(x, y)], [(x, y)]), F.cross_entropy, subs=[misclassified, report])
    with pytest.warns(UserWarning, match='ReportS leaves out'): learn.fit(2)
    assert misclassified.matrix().shape == (50, 2)
    assert sorted(p.name for p in report.files) == ['classification_report.json', 'classification_report.txt', 'confusion_matrix.png',
                                                    'misclassified.png', 'roc.png']


# -- a report that fails writes nothing ------------------------------------------------------------------------------

class NaNWhenEvaluating(nn.Linear):
    "Finite scores while training; NaN (or `value`) for the validation rows whose first feature is above 1."
    value = math.nan
    def forward(self, x):
        out = super().forward(x)
        return out if self.training else torch.where(x[:, :1] > 1, self.value, out)

def nan_learner(sub, value=math.nan):
    x, y = data()
    torch.manual_seed(0)
    model = NaNWhenEvaluating(3, 3)
    model.value = value
    valid = DataLoader(TensorDataset(x, y), batch_size=10)
    return Learner(model, DataLoaders([(x, y)], valid), F.cross_entropy, subs=[sub]), x

def nan_message(x, folder):
    bad = (x[:, 0] > 1).nonzero()[:, 0]
    return (f"ReportS got NaN class scores (NaN or infinite values in the model's output) for {len(bad)} of 50 validation samples, "
            f"the first at sample {int(bad[0])} (in batch {int(bad[0]) // 10} of the validation pass, of 10 samples each); "
            f"did the training diverge? Nothing was written to {folder!r}")

@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_nan_scores_write_no_file(value):
    "Once the fit trained, then after_fit raised 'roc_curve got NaN scores' with 3 of the report's files written."
    report = ReportS('report')
    learn, x = nan_learner(report, value)
    with raises(ValueError, nan_message(x, 'report')): learn.fit(1)
    assert not Path('report').exists() and report.files == [] and report.report is None

def test_nan_scores_leave_an_earlier_report_as_it_was(tmp_path):
    folder = tmp_path/'report'
    x, y = data()
    good = ReportS(folder)
    with pytest.warns(UserWarning, match='ReportS leaves out'): Learner(nn.Linear(3, 3), DataLoaders([(x, y)], [(x, y)]), F.cross_entropy, subs=[good]).fit(1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ['classification_report.json', 'classification_report.txt', 'confusion_matrix.png', 'roc.png']
    learn, x = nan_learner(ReportS(folder))
    with raises(ValueError, nan_message(x, str(folder))): learn.fit(1)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with raises(ValueError, nan_message(x, str(folder))): ReportS(folder).write(learn)   # write() refuses too
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

def test_a_loader_without_batch_size_names_the_sample_only():
    x, y = data()
    model = NaNWhenEvaluating(3, 3)
    bad = (x[:, 0] > 1).nonzero()[:, 0]
    learn = Learner(model, DataLoaders([(x, y)], [(x, y)]), F.cross_entropy)
    with raises(ValueError, f"ReportS got NaN class scores (NaN or infinite values in the model's output) for {len(bad)} of 50 validation "
                            f"samples, the first at sample {int(bad[0])}; did the training diverge? Nothing was written to 'report'"):
        ReportS('report').write(learn)

def test_a_figure_that_fails_leaves_no_file(monkeypatch):
    "Every figure and table is made before the first file is written: a failure in the last one writes nothing."
    x, y = data()
    misclassified = MisclassifiedS()
    def broken(self): raise RuntimeError('the misclassified plot failed')
    monkeypatch.setattr(MisclassifiedS, 'plot', broken)
    learn = Learner(nn.Linear(3, 3), DataLoaders([(x, y)], [(x, y)]), F.cross_entropy, subs=[misclassified, ReportS('report')])
    with pytest.warns(UserWarning, match='ReportS leaves out'), raises(RuntimeError, 'the misclassified plot failed'): learn.fit(1)
    assert not Path('report').exists()
