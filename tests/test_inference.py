"""get_preds and evaluate for batches and outputs of any shape, on unlabelled inputs, and the reports that read them (issue 12)."""
import contextlib, io
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torcheval.metrics import MeanSquaredError, MulticlassAccuracy

import nntrain.trial  # noqa: F401 (Learner.get_preds, Learner.evaluate)
from nntrain.acceleration import MixedPrecisionS
from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, MetricsS, Subscriber, TransformedMetric
from nntrain.reports import MisclassifiedS, ReportS
from conftest import raises


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch): monkeypatch.chdir(tmp_path)


def quiet_fit(learn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()): learn.fit(*args, **kwargs)

def xy_batches(n=3, size=8, features=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g), torch.randint(0, classes, (size,), generator=g)) for _ in range(n)]

def xy_learner(*subs, **kwargs):
    torch.manual_seed(0)
    return Learner(nn.Linear(4, 3), DataLoaders(xy_batches(), xy_batches(2, seed=1)), subs=list(subs), **kwargs)

# -- a dict-batch model ------------------------------------------------------------------------------------------------

def dict_batches(n=3, seed=0):
    return [{'image': x, 'label': y, 'id': torch.arange(len(y))} for x, y in xy_batches(n, seed=seed)]

def dict_learner(*subs):
    torch.manual_seed(0)
    return Learner(nn.Linear(4, 3), DataLoaders(dict_batches(), dict_batches(2, seed=1)), inputs='image', targets='label', subs=list(subs))

def test_a_dict_batch_model_fits_predicts_and_evaluates():
    learn = dict_learner(MetricsS(accuracy=MulticlassAccuracy()))
    quiet_fit(learn, 2)
    preds, targets = learn.get_preds()
    valid = dict_batches(2, seed=1)
    assert preds.shape == (16, 3) and torch.equal(targets, torch.cat([b['label'] for b in valid]))
    with torch.no_grad(): assert torch.allclose(preds, learn.model(torch.cat([b['image'] for b in valid])), atol=1e-6)
    result = learn.evaluate()
    assert result['loss'] == pytest.approx(F.cross_entropy(preds, targets).item(), rel=1e-5)
    assert result['accuracy'] == pytest.approx((preds.argmax(1) == targets).float().mean().item())

def test_a_dict_batch_model_evaluates_to_the_loss_alone_without_metrics():
    learn = dict_learner(MetricsS())
    quiet_fit(learn, 1)
    preds, targets = learn.get_preds()
    assert set(learn.evaluate()) == {'loss'}
    assert learn.evaluate()['loss'] == pytest.approx(F.cross_entropy(preds, targets).item(), rel=1e-5)
    plain = dict_learner()   # no MetricsS: evaluate brings its own
    assert plain.evaluate()['loss'] == pytest.approx(F.cross_entropy(*plain.get_preds()).item(), rel=1e-5)

def test_a_dict_of_inputs_is_read_with_the_learners_input_key():
    learn = dict_learner()
    x = torch.randn(10, 4)
    preds = learn.get_preds({'image': x, 'id': torch.arange(10)}, batch_size=3)
    with torch.no_grad(): assert torch.allclose(preds, learn.model(x), atol=1e-6)
    assert torch.allclose(learn.get_preds(x), preds, atol=1e-6)   # the tensor itself is the input too

# -- a two-input, two-output model -------------------------------------------------------------------------------------

class TwoInTwoOut(nn.Module):
    def __init__(self): super().__init__(); self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)
    def forward(self, x1, x2):
        h = self.a(x1) + self.b(x2)
        return h, h.sum(1)

def two_losses(preds, label, value): return F.cross_entropy(preds[0], label) + F.mse_loss(preds[1], value)

def pair_batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g), torch.randint(0, 3, (8,), generator=g), torch.randn(8, generator=g))
            for _ in range(n)]

def pair_learner(*subs):
    torch.manual_seed(0)
    return Learner(TwoInTwoOut(), DataLoaders(pair_batches(), pair_batches(2, seed=1)), two_losses, inputs=(0, 1), targets=(2, 3), subs=list(subs))

def test_a_two_input_two_output_model_fits_predicts_and_evaluates():
    metrics = MetricsS(accuracy=TransformedMetric(MulticlassAccuracy(), preds=0, targets=0),
                       mse=TransformedMetric(MeanSquaredError(), preds=1, targets=1))
    learn = pair_learner(metrics)
    quiet_fit(learn, 2)
    (scores, sums), (labels, values) = learn.get_preds()
    valid = pair_batches(2, seed=1)
    assert (scores.shape, sums.shape) == ((16, 3), (16,))
    assert torch.equal(labels, torch.cat([b[2] for b in valid])) and torch.equal(values, torch.cat([b[3] for b in valid]))
    result = learn.evaluate()
    assert set(result) == {'loss', 'accuracy', 'mse'}
    assert result['loss'] == pytest.approx(two_losses((scores, sums), labels, values).item(), rel=1e-5)
    assert result['accuracy'] == pytest.approx((scores.argmax(1) == labels).float().mean().item())
    assert result['mse'] == pytest.approx(F.mse_loss(sums, values).item(), rel=1e-5)
    assert metrics.history[-1]['loss'] == pytest.approx(result['loss'], rel=1e-6)

def test_a_two_output_model_evaluates_to_the_loss_alone_with_an_empty_metrics():
    learn = pair_learner(MetricsS())
    quiet_fit(learn, 1)
    preds, targets = learn.get_preds()
    assert learn.evaluate() == {'loss': pytest.approx(two_losses(preds, *targets).item(), rel=1e-5)}

def test_a_tuple_of_inputs_goes_to_the_model_as_its_arguments():
    learn = pair_learner()
    x1, x2 = torch.randn(7, 4), torch.randn(7, 2)
    scores, sums = learn.get_preds((x1, x2), batch_size=3)
    with torch.no_grad(): expected = learn.model(x1, x2)
    assert torch.allclose(scores, expected[0], atol=1e-6) and torch.allclose(sums, expected[1], atol=1e-6)

def test_a_tuple_of_inputs_is_put_where_the_learner_looks_for_them():
    "inputs=(2, 0): the batch holds the second input at position 0 and the first at position 2."
    swapped = [(x2, y, x1) for x1, x2, y, _ in pair_batches()]
    learn = Learner(TwoInTwoOut(), DataLoaders(swapped, swapped), lambda preds, y: F.cross_entropy(preds[0], y), inputs=(2, 0), targets=1)
    x1, x2 = torch.randn(5, 4), torch.randn(5, 2)
    with torch.no_grad(): expected = learn.model(x1, x2)
    assert torch.allclose(learn.get_preds((x1, x2))[0], expected[0], atol=1e-6)
    keyed = Learner(TwoInTwoOut(), DataLoaders([], []), inputs=('a', 'b'), targets='y')
    with torch.no_grad(): expected = keyed.model(x1, x2)
    assert torch.allclose(keyed.get_preds((x1, x2))[1], expected[1], atol=1e-6)

# -- unlabelled inputs ---------------------------------------------------------------------------------------------------

def test_get_preds_on_an_unlabelled_tensor_under_mixed_precision_is_float32():
    learn = xy_learner(MixedPrecisionS())
    quiet_fit(learn, 1)
    seen = []
    class Look(Subscriber):
        order = 99
        def after_batch(self, learn): seen.append(learn.preds.dtype)
    learn.subs.append(Look()); learn.subscribers_changed()
    x = torch.randn(20, 4)
    preds = learn.get_preds(x, batch_size=8)
    assert seen == [torch.bfloat16] * 3   # the model ran under autocast, in three batches
    assert isinstance(preds, torch.Tensor) and preds.dtype == torch.float32 and preds.shape == (20, 3)
    assert preds.numpy().dtype == np.float32
    with torch.no_grad(): assert torch.allclose(preds, learn.model(x), atol=0.1)
    preds, targets = learn.get_preds()   # a labelled loader: float32 predictions, the targets as they were
    assert preds.dtype == torch.float32 and targets.dtype == torch.int64

def test_a_loader_of_inputs_only():
    learn = xy_learner()
    xs = [torch.randn(5, 4), torch.randn(3, 4)]
    preds = learn.get_preds(xs, labelled=False)
    with torch.no_grad(): assert torch.allclose(preds, learn.model(torch.cat(xs)), atol=1e-6)
    loader = DataLoader(TensorDataset(torch.cat(xs)), batch_size=4)   # batches [x]: read with inputs=0
    assert torch.allclose(learn.get_preds(loader, labelled=False), preds, atol=1e-6)
    labelled, _ = learn.get_preds()
    assert torch.allclose(learn.get_preds(learn.dls.valid, labelled=False), labelled)   # (x, y) batches, targets unread

def test_unlabelled_batches_go_through_the_learners_subscribers():
    class Double(Subscriber):
        def before_batch(self, learn):
            if isinstance(learn.batch, torch.Tensor): learn.batch = 2 * learn.batch
    learn = xy_learner(Double())
    x = torch.randn(6, 4)
    with torch.no_grad(): assert torch.allclose(learn.get_preds(x), learn.model(2 * x), atol=1e-6)

def test_the_batch_size_is_the_validation_loaders_else_256():
    sizes = []
    class Sizes(Subscriber):
        def before_batch(self, learn): sizes.append(len(learn.batch))
    x = torch.randn(600, 4)
    xy_learner(Sizes()).get_preds(x)   # a list of batches has no batch size
    assert sizes == [256, 256, 88]
    sizes.clear()
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=100)
    Learner(nn.Linear(4, 3), DataLoaders(loader, loader), subs=[Sizes()]).get_preds(x)
    assert sizes == [100] * 6
    sizes.clear()
    xy_learner(Sizes()).get_preds(x, batch_size=500)
    assert sizes == [500, 100]

# -- errors ---------------------------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_before_the_pass():
    learn, x = xy_learner(), torch.randn(5, 4)
    with raises(ValueError, "get_preds takes a tensor (5, 4) float32 as inputs without targets, got labelled=True; for the targets too, "
                            "pass a loader of batches, e.g. [(x, y)]"):
        learn.get_preds(x, labelled=True)
    with raises(ValueError, "get_preds takes batch_size only with inputs in memory (a tensor, or a tuple or dict of tensors), which it "
                            "splits into batches; a loader brings its own batches, got batch_size=4 with a list"):
        learn.get_preds(learn.dls.valid, batch_size=4)
    with raises(ValueError, "get_preds takes batch_size only with inputs in memory (a tensor, or a tuple or dict of tensors), which it "
                            "splits into batches; a loader brings its own batches, got batch_size=4 with the validation loader"):
        learn.get_preds(batch_size=4)
    with raises(ValueError, "get_preds expected batch_size to be an int >= 1 (not a bool) or None, got 0"): learn.get_preds(x, batch_size=0)
    with raises(ValueError, "get_preds expected batch_size to be an int >= 1 (not a bool) or None, got True"): learn.get_preds(x, batch_size=True)
    with raises(ValueError, "get_preds expected labelled to be True or False, got 'no'"): learn.get_preds(x, labelled='no')
    with raises(ValueError, "get_preds expected at least one sample, got a tensor (0, 4) float32"): learn.get_preds(torch.zeros(0, 4))
    with raises(ValueError, "get_preds expected tensors of samples along their first dimension, got a 0-d tensor; for a single sample, pass x[None]"):
        learn.get_preds(torch.tensor(1.0))
    with raises(TypeError, "evaluation expected dl to be an iterable of batches (a list, a DataLoader), got 5"): learn.get_preds(5)
    with raises(TypeError, "evaluate expected dl to be a loader of batches with targets (a list such as [(x, y)], a DataLoader), got a tensor "
                           "(5, 4) float32: inputs without targets have no loss to compute; get_preds(x) gives their predictions"):
        learn.evaluate(x)

def first_two(batch): return batch[0], batch[1]

def test_bad_tuples_and_dicts_of_inputs_are_refused():
    learn, pair = xy_learner(), pair_learner()
    with raises(ValueError, "get_preds got a tuple of 2 tensors, the model's inputs, but the Learner gives its model 1 input (inputs=0); "
                            "expected a tuple of 1, or the tensor itself"):
        learn.get_preds((torch.randn(5, 4), torch.randn(5, 4)))
    with raises(ValueError, "get_preds got a tensor, the model's one input, but the Learner gives its model 2 inputs (inputs=(0, 1)); "
                            "expected a tuple of 2 tensors"):
        pair.get_preds(torch.randn(5, 4))
    with raises(ValueError, "get_preds expected the tensors of a tuple to hold the same number of samples (their first dimension), got 5 in [0] and 4 in [1]"):
        pair.get_preds((torch.randn(5, 4), torch.randn(4, 2)))
    with raises(TypeError, "get_preds expected a tuple of tensors (inputs, which it splits into batches) or a loader of batches, got a tuple of 2 "
                           "(tensor (5, 4) float32, list)"):
        pair.get_preds((torch.randn(5, 4), [1, 2]))
    by_function = Learner(TwoInTwoOut(), DataLoaders([], []), inputs=first_two, targets=2)
    with raises(TypeError, "get_preds got a tuple of 2 tensors, the model's inputs, but the Learner reads its inputs with the function "
                           "first_two, so which tensor goes where is not known; expected a loader of batches that function reads, with labelled=False"):
        by_function.get_preds((torch.randn(5, 4), torch.randn(5, 2)))
    keyed = dict_learner()
    with raises(TypeError, "get_preds reads a dict of inputs as the Learner reads a batch (inputs='image'), but got a dict with keys ['x']; "
                           "expected it to hold ['image']"):
        keyed.get_preds({'x': torch.randn(5, 4)})
    with raises(TypeError, "get_preds reads a dict of inputs as the Learner reads a batch (inputs=0), but got a dict with keys ['image']; "
                           "a dict is read by key: expected the Learner's inputs= to name its keys, e.g. Learner(..., inputs='image')"):
        learn.get_preds({'image': torch.randn(5, 4)})
    # keys the model does not read are not checked: a list, or another length
    assert keyed.get_preds({'image': torch.randn(5, 4), 'id': [1, 2, 3, 4, 5]}).shape[0] == 5
    assert keyed.get_preds({'image': torch.randn(5, 4), 'id': torch.arange(3)}).shape[0] == 5
    with raises(TypeError, "get_preds expected a dict of tensors (inputs, which it splits into batches) or a loader of batches, got a dict "
                           "with keys ['image']; ['image'] is a list"):
        keyed.get_preds({'image': [1, 2, 3, 4, 5]})
    with raises(ValueError, "get_preds expected a dict of input tensors, got an empty dict"): keyed.get_preds({})

def test_outputs_that_are_not_tensors_are_refused():
    class Words(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(4, 3)
        def forward(self, x): return {'scores': self.lin(x), 'text': 'hello'}
    learn = Learner(Words(), DataLoaders(xy_batches(), xy_batches()), lambda p, y: F.cross_entropy(p['scores'], y))
    with raises(TypeError, "get_preds expected the model's output['text'] to be a tensor, or a tuple, list or dict of tensors, got 'hello'"):
        learn.get_preds()

def test_an_output_whose_structure_changes_between_batches_is_refused():
    class Changing(nn.Module):
        def __init__(self): super().__init__(); self.lin, self.calls = nn.Linear(4, 3), 0
        def forward(self, x):
            self.calls += 1
            return {'a': self.lin(x)} if self.calls == 1 else {'a': self.lin(x), 'b': self.lin(x)}
    learn = Learner(Changing(), DataLoaders([], []), None)
    with raises(ValueError, "get_preds cannot join the batches: the model's output: batch 2 gives the keys ['a', 'b'], batch 1 gave ['a']"):
        learn.get_preds(torch.randn(10, 4), batch_size=5)

# -- what stays as it was, and structures kept ---------------------------------------------------------------------------

def test_xy_batches_give_preds_and_targets_as_before():
    learn = xy_learner()
    quiet_fit(learn, 1)
    preds, targets = learn.get_preds()
    valid = xy_batches(2, seed=1)
    assert isinstance(preds, torch.Tensor) and preds.dtype == torch.float32 and preds.shape == (16, 3) and not preds.requires_grad
    assert targets.dtype == torch.int64 and torch.equal(targets, torch.cat([y for _, y in valid]))
    preds, targets = learn.get_preds(valid[:1])
    assert preds.shape == (8, 3) and torch.equal(targets, valid[0][1])
    assert set(learn.evaluate()) == {'loss'}

def test_float64_stays_float64_and_namedtuples_and_per_batch_numbers_keep_their_form():
    Out = namedtuple('Out', 'scores penalty')
    class Named(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(4, 3).double()
        def forward(self, x):
            scores = self.lin(x)
            return Out(scores, scores.pow(2).mean())
    batches = [(x.double(), y) for x, y in xy_batches()]
    learn = Learner(Named(), DataLoaders(batches, batches), lambda p, y: F.cross_entropy(p.scores, y))
    out, targets = learn.get_preds()
    assert type(out) is Out and out.scores.dtype == torch.float64 and out.scores.shape == (24, 3)
    assert out.penalty.shape == (3,)   # one 0-d output per batch, stacked

def test_a_learner_without_targets_returns_none_for_them():
    learn = Learner(nn.Linear(4, 3), DataLoaders(xy_batches(), xy_batches()), loss_fn=None, targets=None)
    preds, targets = learn.get_preds()
    assert preds.shape == (24, 3) and targets is None

# -- reports -------------------------------------------------------------------------------------------------------------

class ScoresAndSums(nn.Module):
    "A 16-pixel image classifier that also returns a second output."
    def __init__(self): super().__init__(); self.lin = nn.Linear(16, 3)
    def forward(self, image):
        scores = self.lin(image)
        return scores, scores.sum(1)

def image_dict_batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{'image': torch.rand(8, 16, generator=g), 'label': torch.randint(0, 3, (8,), generator=g)} for _ in range(n)]

def report_learner(*subs):
    torch.manual_seed(0)
    return Learner(ScoresAndSums(), DataLoaders(image_dict_batches(), image_dict_batches(seed=1)), lambda p, y: F.cross_entropy(p[0], y),
                   inputs='image', targets='label', subs=list(subs))

def test_reports_pick_one_output_from_several(tmp_path):
    report, misclassified = ReportS(tmp_path/'report', k_worst=4, n_samples=4, preds=0), MisclassifiedS(preds=lambda out: out[0])
    learn = report_learner(report, misclassified)
    quiet_fit(learn, 2)
    assert sorted(p.name for p in report.files) == sorted(['classification_report.json', 'classification_report.txt', 'confusion_matrix.png',
                                                           'misclassified.png', 'roc.png', 'samples_train.png', 'samples_valid.png', 'worst_samples.png'])
    (scores, _), targets = learn.get_preds()
    assert report.report['accuracy'] == pytest.approx((scores.argmax(1) == targets).float().mean().item())
    assert torch.equal(misclassified.matrix()[:, -1], scores.argmax(1) != targets)

def test_reports_refuse_several_outputs_without_a_selector(tmp_path):
    message = ("ReportS expected the model's output to be one tensor of class scores, got a tuple of 2 (tensor (8, 3) float32, "
               "tensor (8,) float32); choose one with ReportS(..., preds=0)")
    learn = report_learner(ReportS(tmp_path/'report'))
    seen = []
    class Count(Subscriber):
        def before_batch(self, learn): seen.append(learn.iteration)
        def after_step(self, learn): seen.append('step')
    with raises(TypeError, message): quiet_fit(learn, 1, subs=[Count()])
    assert seen == [1]   # refused at the first batch's predictions, before its step, not after the training
    with raises(TypeError, message.replace('ReportS', 'MisclassifiedS')): quiet_fit(report_learner(MisclassifiedS()), 1)
    with raises(TypeError, "ReportS picks preds[2], but the model's output is a tuple of 2 (tensor (8, 3) float32, tensor (8,) float32)"):
        quiet_fit(report_learner(ReportS(tmp_path/'report', preds=2)), 1)
    with raises(TypeError, "ReportS picks targets[0], but the targets are a tensor (8,) int64, one tensor; expected targets=None"):
        quiet_fit(report_learner(ReportS(tmp_path/'report', preds=0, targets=0)), 1)
    with raises(TypeError, "MisclassifiedS expected preds to be None (the model's output is one tensor of class scores), a position or key "
                           "picking one of several (an int or a str), or a function of them; got 1.5"):
        MisclassifiedS(preds=1.5)
    with raises(TypeError, "ReportS expected targets to be None (the targets are one tensor of class indices), a position or key picking one "
                           "of several (an int or a str), or a function of them; got the class list"):
        ReportS(tmp_path/'report', targets=list)
    unlabelled = Learner(nn.Linear(16, 3), DataLoaders(image_dict_batches(), image_dict_batches()), None, inputs='image', targets=None,
                         subs=[ReportS(tmp_path/'report')])
    with raises(ValueError, "ReportS needs class targets, but the Learner has targets=None (batches without targets); expected targets= "
                            "to say where they are in a batch"):
        unlabelled.fit(1, train=False)

# -- reports: inputs that are not images, one logit per sample, targets that are not class indices ------------------------

def tabular_batches(n=40, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = (x.sum(1) > 0).long()
    return [(x[i:i + size], y[i:i + size], torch.rand(len(y[i:i + size]), generator=g)) for i in range(0, n, size)]

class Steps(Subscriber):
    "Records the iteration of each batch started and each optimizer step taken."
    def __init__(self): self.seen = []
    def before_batch(self, learn): self.seen.append(learn.iteration)
    def after_step(self, learn): self.seen.append('step')

def tabular_learner(model, *subs, loss_fn=F.cross_entropy, **kwargs):
    torch.manual_seed(0)
    return Learner(model, DataLoaders(tabular_batches(), tabular_batches(seed=1)), loss_fn, subs=list(subs), **kwargs)

REPORT_FILES = ['classification_report.json', 'classification_report.txt', 'confusion_matrix.png', 'roc.png']

@pytest.mark.parametrize('features, shape', [(3, '(16, 3)'), (10, '(16, 10)')])
def test_a_report_on_tabular_inputs_leaves_out_the_images_with_one_warning(tmp_path, features, shape):
    torch.manual_seed(0)
    x = torch.randn(40, features); y = (x.sum(1) > 0).long()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    report = ReportS(tmp_path/'report')
    with pytest.warns(UserWarning) as record: quiet_fit(Learner(nn.Linear(features, 2), DataLoaders(batches, batches), subs=[report]), 3)
    assert [str(w.message) for w in record if 'ReportS' in str(w.message)] == [
        "ReportS leaves out worst_samples.png, samples_train.png and samples_valid.png: the validation inputs are a tensor "
        f"{shape} float32, not images that plot_samples draws ([N, 1 or 3, H, W], [N, H, W] or [N, H*W] with a square H*W)"]
    assert sorted(p.name for p in (tmp_path/'report').iterdir()) == REPORT_FILES == sorted(p.name for p in report.files)
    assert report.report['macro avg']['support'] == 40 and report.worst.shape == (16,)

def test_a_report_on_inputs_of_four_channels_leaves_out_the_images(tmp_path):
    batches = [(torch.rand(8, 4, 3, 3), torch.randint(0, 2, (8,)))]
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    with pytest.warns(UserWarning, match=r"the validation inputs are a tensor \(8, 4, 3, 3\) float32, not images"):
        files = ReportS(tmp_path/'report').write(Learner(model, DataLoaders(batches, batches)))
    assert sorted(p.name for p in files) == REPORT_FILES

def test_image_inputs_still_give_the_sample_images(tmp_path):
    batches = [(torch.rand(8, 16), torch.randint(0, 2, (8,)))]   # flattened 4x4 images
    files = ReportS(tmp_path/'report', k_worst=4, n_samples=4).write(Learner(nn.Linear(16, 2), DataLoaders(batches, batches)))
    assert sorted(p.name for p in files) == sorted(REPORT_FILES + ['samples_train.png', 'samples_valid.png', 'worst_samples.png'])

ONE_LOGIT = ("ReportS expected the model's output to be class scores [N, C] (one score per class, C >= 2), got float32 {}; "
             "for one logit per sample, give preds=lambda p: torch.{}([torch.zeros_like(p), p], 1)")
bce = lambda p, y, w: F.binary_cross_entropy_with_logits(p.reshape(-1), y.float())

@pytest.mark.parametrize('model, shape, join', [(lambda: nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), '(16,)', 'stack'),
                                                (lambda: nn.Linear(3, 1), '(16, 1)', 'cat')])
def test_a_report_refuses_one_logit_per_sample_at_the_first_batch(tmp_path, model, shape, join):
    steps = Steps()
    learn = tabular_learner(model(), ReportS(tmp_path/'report', targets=0), steps, loss_fn=bce, targets=(1, 2))
    with raises(ValueError, ONE_LOGIT.format(shape, join)): quiet_fit(learn, 3)
    assert steps.seen == [1] and not (tmp_path/'report').exists()   # before the first step, nothing written

def test_one_logit_per_sample_reported_as_the_hint_says(tmp_path):
    report = ReportS(tmp_path/'report', preds=lambda p: torch.stack([torch.zeros_like(p), p], 1), targets=0)
    learn = tabular_learner(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), report, loss_fn=bce, targets=(1, 2))
    with pytest.warns(UserWarning, match='ReportS leaves out worst_samples.png'): quiet_fit(learn, 3)
    logits, (labels, _) = learn.get_preds()
    assert report.report['accuracy'] == pytest.approx(((logits > 0).long() == labels).float().mean().item())
    assert sorted(p.name for p in report.files) == REPORT_FILES

def test_write_refuses_one_logit_per_sample_before_writing(tmp_path):
    learn = tabular_learner(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)), loss_fn=bce, targets=(1, 2))
    with raises(ValueError, ONE_LOGIT.format('(40,)', 'stack')): ReportS(tmp_path/'report', targets=0).write(learn)
    assert not (tmp_path/'report').exists()

FLOAT_TARGETS = "{} expected {} to be class indices (an integer tensor) of shape [N], got float32 (16,)"
def second(targets): return targets[1]
def predicted_labels(scores): return scores.argmax(1)

@pytest.mark.parametrize('sub, message', [
    (lambda folder: ReportS(folder, targets=1), FLOAT_TARGETS.format('ReportS', 'the targets[1]')),
    (lambda folder: MisclassifiedS(targets=1), FLOAT_TARGETS.format('MisclassifiedS', 'the targets[1]')),
    (lambda folder: ReportS(folder, targets=second), FLOAT_TARGETS.format('ReportS', 'the result of targets=the function second')),
])
def test_reports_refuse_float_targets_at_the_first_batch(tmp_path, sub, message):
    steps = Steps()
    learn = tabular_learner(nn.Linear(3, 2), sub(tmp_path/'report'), steps, loss_fn=lambda p, y, w: F.cross_entropy(p, y), targets=(1, 2))
    with raises(ValueError, message): quiet_fit(learn, 3)
    assert steps.seen == [1] and not (tmp_path/'report').exists()

def test_misclassified_refuses_float_targets_of_a_plain_learner(tmp_path):
    batches = [(x, y.float()) for x, y, _ in tabular_batches()]
    steps = Steps()
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches, batches), lambda p, y: F.cross_entropy(p, y.long()), subs=[MisclassifiedS(), steps])
    with raises(ValueError, FLOAT_TARGETS.format('MisclassifiedS', 'the targets')): quiet_fit(learn, 2)
    assert steps.seen == [1]
    with raises(ValueError, "MisclassifiedS expected the model's output to be class scores [N, C] (one score per class, C >= 2), got float32 (16, 1); "
                            "for one logit per sample, give preds=lambda p: torch.cat([torch.zeros_like(p), p], 1)"):
        quiet_fit(Learner(nn.Linear(3, 1), DataLoaders(batches, batches), lambda p, y: F.mse_loss(p[:, 0], y), subs=[MisclassifiedS()]), 1)

def test_reports_refuse_integer_labels_and_mismatched_lengths_at_the_first_batch(tmp_path):
    learn = tabular_learner(nn.Linear(3, 2), ReportS(tmp_path/'report', preds=predicted_labels, targets=0),
                            loss_fn=lambda p, y, w: F.cross_entropy(p, y), targets=(1, 2))
    with raises(ValueError, "ReportS expected the result of preds=the function predicted_labels to be class scores [N, C] (one score per class, C >= 2), "
                            "got int64 (16,)"):
        quiet_fit(learn, 1)
    learn = tabular_learner(nn.Linear(3, 2), MisclassifiedS(preds=lambda p: p[:4], targets=0),
                            loss_fn=lambda p, y, w: F.cross_entropy(p, y), targets=(1, 2))
    with raises(ValueError, "MisclassifiedS expected one target per prediction, got 4 predictions and 16 targets"): quiet_fit(learn, 1)
