"Batches and models of any shape (issue 12): dict batches, several inputs and outputs, metric transforms, lr_find."
import copy
import math
import warnings


import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import BinaryAccuracy, MulticlassAccuracy, MultilabelAccuracy

from nntrain.dataloaders import DataLoaders, load_mnist
from nntrain.learner import Learner, LRFinder, LRFindS, MetricsS, TransformedMetric, n_samples
import nntrain.trial  # noqa: F401  (adds Learner.get_preds and Learner.evaluate)


def _data(n=64, features=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, (x.sum(1) > 0).long()


def _dict_batches(bs=16):
    x, y = _data()
    return [{'pixels': x[i:i + bs], 'label': y[i:i + bs], 'id': torch.arange(i, i + bs)} for i in range(0, len(x), bs)]


class TwoInTwoOut(nn.Module):
    "Two inputs, two outputs: class logits from `a`, a regression from `b`."
    def __init__(self):
        super().__init__()
        self.classify, self.regress = nn.Linear(3, 2), nn.Linear(3, 1)

    def forward(self, a, b): return self.classify(a), self.regress(b).squeeze(1)


def _two_batches(bs=16):
    x, y = _data()
    x2 = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(1))
    return [(x[i:i + bs], x2[i:i + bs], y[i:i + bs], x2[i:i + bs].sum(1)) for i in range(0, len(x), bs)]


def _two_loss(preds, labels, values): return F.cross_entropy(preds[0], labels) + F.mse_loss(preds[1], values)


# --- dict batches ---

def test_dict_batch_fit_metrics_save_and_load(tmp_path):
    batches = _dict_batches()
    def make():
        torch.manual_seed(0)
        return Learner(nn.Linear(3, 2), DataLoaders(batches, batches), inputs='pixels', targets='label',
                       subs=[MetricsS(accuracy=MulticlassAccuracy())])
    learn = make()
    learn.fit(3)
    history = learn.metrics.history
    assert [h['mode'] for h in history] == ['train', 'eval'] * 3
    x = torch.cat([b['pixels'] for b in batches]); y = torch.cat([b['label'] for b in batches])
    with torch.no_grad(): expected = (learn.model(x).argmax(1) == y).float().mean().item()
    assert history[-1]['accuracy'] == pytest.approx(expected)
    # resume: two epochs, save, a third resumed, equals three unbroken
    broken = make()
    broken.fit(2)
    path = broken.save(tmp_path / 'two.pt')
    loaded = make().load(path)
    for p, q in zip(broken.model.parameters(), loaded.model.parameters()): assert torch.equal(p, q)


def test_dict_batch_checkpoint_resume_is_exact(tmp_path):
    from nntrain.checkpoints import CheckpointS
    batches = _dict_batches()
    def make(*subs):
        torch.manual_seed(0)
        return Learner(nn.Linear(3, 2), DataLoaders(batches, batches), inputs='pixels', targets='label', subs=[MetricsS(), *subs])
    unbroken = make()
    unbroken.fit(3)
    first = make(CheckpointS(tmp_path, every_epochs=1))
    first.fit(2)
    resumed = make(CheckpointS(tmp_path, every_epochs=1))
    resumed.fit(3, resume=tmp_path)
    for a, b in zip(unbroken.model.parameters(), resumed.model.parameters()): assert torch.equal(a, b)
    assert resumed.metrics.history[-1] == unbroken.metrics.history[-1]


def test_dict_batch_without_keys_says_what_to_give():
    batches = _dict_batches()
    with pytest.raises(TypeError) as e: Learner(nn.Linear(3, 2), DataLoaders(batches, batches)).fit(1)
    assert str(e.value) == ("the Learner takes its inputs from batch[0], but got a dict with keys ['pixels', 'label', 'id']; a dict batch "
                            "needs keys: tell the Learner which hold the inputs and the targets, e.g. Learner(..., inputs='pixels', targets=...)")


def test_wrong_key_names_the_batch():
    batches = _dict_batches()
    with pytest.raises(TypeError, match=r"the Learner takes its targets from batch\['labels'\], but got a dict with keys \['pixels', 'label', 'id'\]"):
        Learner(nn.Linear(3, 2), DataLoaders(batches, batches), inputs='pixels', targets='labels').fit(1)


@pytest.mark.parametrize('inputs, message', [
    (1.5, "Learner expected inputs to be a position in the batch (an int), a key of a dict batch (a str), a tuple of them, or a function of the batch; got 1.5"),
    ((), "Learner expected inputs to be a position in the batch (an int), a key of a dict batch (a str), a tuple of them, or a function of the batch; got ()"),
    (None, "Learner expected inputs to be a position in the batch (an int), a key of a dict batch (a str), a tuple of them, or a function of the batch; got None"),
    (True, "got True"),
])
def test_bad_inputs_argument(inputs, message):
    with pytest.raises(TypeError) as e: Learner(nn.Linear(3, 2), DataLoaders([], []), inputs=inputs)
    assert message in str(e.value)


def test_targets_none_with_a_loss_is_refused_before_training():
    x, _ = _data()
    model = nn.Linear(3, 2); before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"the Learner has targets=None \(batches without targets\), but loss_fn=the function cross_entropy needs them"):
        Learner(model, DataLoaders([(x,)], [(x,)]), targets=None).fit(1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_function_selectors_spread_a_tuple():
    batches = _two_batches()
    seen = []
    class Record(nn.Module):
        def __init__(self): super().__init__(); self.inner = TwoInTwoOut()
        def forward(self, a, b):
            seen.append((a.shape, b.shape))
            return self.inner(a, b)
    learn = Learner(Record(), DataLoaders(batches, batches), _two_loss, inputs=lambda b: (b[0], b[1]), targets=lambda b: (b[2], b[3]))
    learn.fit(1)
    assert seen[0] == (torch.Size([16, 3]), torch.Size([16, 3]))


# --- several inputs and outputs ---

def test_two_inputs_two_outputs_fit_metrics_and_exact_resume(tmp_path):
    from nntrain.checkpoints import CheckpointS
    batches = _two_batches()
    def make(*subs):
        torch.manual_seed(0)
        metrics = MetricsS(accuracy=TransformedMetric(MulticlassAccuracy(), preds=0, targets=0))
        return Learner(TwoInTwoOut(), DataLoaders(batches, batches), _two_loss, inputs=(0, 1), targets=(2, 3), subs=[metrics, *subs])
    unbroken = make(); unbroken.fit(3)
    a, b = torch.cat([t[0] for t in batches]), torch.cat([t[1] for t in batches])
    y = torch.cat([t[2] for t in batches])
    with torch.no_grad(): logits, _ = unbroken.model(a, b)
    assert unbroken.metrics.history[-1]['accuracy'] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    make(CheckpointS(tmp_path, every_epochs=1)).fit(2)
    resumed = make(CheckpointS(tmp_path, every_epochs=1)); resumed.fit(3, resume=tmp_path)
    for p, q in zip(unbroken.model.parameters(), resumed.model.parameters()): assert torch.equal(p, q)


def test_plain_metric_on_two_outputs_says_which_to_pick():
    batches = _two_batches()
    learn = Learner(TwoInTwoOut(), DataLoaders(batches, batches), _two_loss, inputs=(0, 1), targets=(2, 3),
                    subs=[MetricsS(accuracy=MulticlassAccuracy())])
    with pytest.raises(ValueError) as e: learn.fit(1)
    assert str(e.value).startswith("MetricsS: metric 'accuracy' takes one tensor of preds, got a tuple of 2 (tensor (16, 2) float32, "
                                   "tensor (16,) float32); pick one with TransformedMetric(MulticlassAccuracy(), preds=0)")
    assert learn.iteration == 1   # refused at the first batch


def test_metric_without_targets_is_refused():
    x, _ = _data()
    learn = Learner(nn.Linear(3, 2), DataLoaders([(x,)], [(x,)]), loss_fn=None, targets=None, subs=[MetricsS(accuracy=MulticlassAccuracy())])
    with pytest.raises(ValueError, match="MetricsS: metric 'accuracy' needs targets, but the Learner has targets=None"):
        learn.fit(1, train=False)


def test_loss_only_metrics_without_targets_weigh_by_inputs():
    x, _ = _data()
    batches = [(x[:10],), (x[10:40],)]
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches, batches), loss_fn=None, targets=None, subs=[metrics := MetricsS()])
    from nntrain.trial import on
    add = on('after_loss')(lambda learn: setattr(learn, 'loss', learn.loss + learn.preds.pow(2).mean()))
    learn.fit(1, train=False, subs=[add])
    with torch.no_grad():
        per_batch = [learn.model(b[0]).pow(2).mean() for b in batches]
    expected = (per_batch[0] * 10 + per_batch[1] * 30) / 40
    assert metrics.history[-1]['loss'] == pytest.approx(expected.item(), rel=1e-5)


def test_n_samples():
    assert n_samples(torch.zeros(5, 2)) == 5
    assert n_samples((None, {'a': torch.zeros(3)})) == 3
    assert n_samples(torch.tensor(2.)) is None and n_samples((torch.tensor(2.), torch.zeros(4, 1))) == 4   # 0-d parts have no length
    assert n_samples(['text']) is None


# --- metric transforms ---

def _multilabel(n=200, labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    w = torch.randn(6, labels, generator=g)
    y = ((x @ w + 0.5 * torch.randn(n, labels, generator=g)) > 0).long()
    return x, y


def test_multilabel_accuracy_with_sigmoid_equals_hand_computation():
    x, y = _multilabel()
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, len(x), 50)]
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    metrics = MetricsS(right=TransformedMetric(MultilabelAccuracy(criteria='hamming'), preds=torch.sigmoid),
                       raw=MultilabelAccuracy(criteria='hamming'))
    learn = Learner(model, DataLoaders(batches, batches), loss_fn=lambda p, t: F.binary_cross_entropy_with_logits(p, t.float()),
                    lr=0.5, subs=[metrics])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.fit(2)
    with torch.no_grad(): probs = torch.sigmoid(model(x))
    hand = ((probs > 0.5).long() == y).float().mean().item()
    assert metrics.history[-1]['right'] == pytest.approx(hand)
    # the untransformed metric thresholds logits at 0.5: a different (wrong) figure, and a warning that says so
    assert metrics.history[-1]['raw'] != pytest.approx(hand)
    messages = [str(w.message) for w in caught if 'thresholds its predictions' in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("MetricsS: metric 'raw' (MultilabelAccuracy) thresholds its predictions at 0.5")
    assert 'TransformedMetric(MultilabelAccuracy(), preds=torch.sigmoid)' in messages[0]


def test_binary_accuracy_on_logits_with_sigmoid():
    x, y = _data(200)
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, len(x), 50)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    metrics = MetricsS(accuracy=TransformedMetric(BinaryAccuracy(), preds=torch.sigmoid))
    learn = Learner(model, DataLoaders(batches, batches), loss_fn=lambda p, t: F.binary_cross_entropy_with_logits(p, t.float()), subs=[metrics])
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # probabilities in [0, 1]: no warning
        learn.fit(2)
    with torch.no_grad(): hand = ((model(x) > 0).long() == y).float().mean().item()
    assert metrics.history[-1]['accuracy'] == pytest.approx(hand)


def test_transformed_metric_steps_in_turn_and_repr():
    m = TransformedMetric(MultilabelAccuracy(), preds=('logits', torch.sigmoid), targets='labels')
    m.update({'logits': torch.tensor([[5., -5.]])}, {'labels': torch.tensor([[1, 0]])})
    assert m.compute().item() == 1.0
    assert repr(m).startswith('TransformedMetric(') and "preds=('logits'," in repr(m)


@pytest.mark.parametrize('make, error, message', [
    (lambda: TransformedMetric(MulticlassAccuracy, preds=0), TypeError, "TransformedMetric expected metric to be a torcheval metric instance"),
    (lambda: TransformedMetric(MulticlassAccuracy(), preds=1.5), TypeError,
     "TransformedMetric expected preds to be a position or key picking one of several (an int or a str), a function such as torch.sigmoid, "
     "a tuple of those applied in turn, or None; got 1.5"),
    (lambda: TransformedMetric(MulticlassAccuracy(), targets=[0]), TypeError, "TransformedMetric expected targets to be a position or key"),
])
def test_transformed_metric_refuses_bad_arguments(make, error, message):
    with pytest.raises(error) as e: make()
    assert message in str(e.value)


def test_transformed_metric_picking_a_missing_output():
    m = TransformedMetric(MulticlassAccuracy(), preds=2)
    with pytest.raises(TypeError, match=r"TransformedMetric picks preds\[2\], but got a tuple of 2"):
        m.update((torch.zeros(2, 3), torch.zeros(2)), torch.zeros(2, dtype=torch.long))


def test_transformed_metric_state_round_trip_through_metrics():
    metrics = MetricsS(acc=TransformedMetric(MulticlassAccuracy(), preds=0))
    twin = MetricsS(acc=TransformedMetric(MulticlassAccuracy(), preds=0))
    metrics.metrics['acc'].update((torch.tensor([[0., 1.], [1., 0.]]),), torch.tensor([1, 1]))
    twin.load_state_dict(metrics.state_dict())
    assert twin.compute()['acc'] == 0.5


# --- the learning-rate finder ---

@pytest.fixture(scope='module')
def mnist_20():
    dd = load_mnist()
    dd = {'train': dd['train'].select(range(1280)), 'test': dd['test'].select(range(1000))}
    return dd


def _mlp():
    return nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))


def test_lr_find_on_20_batches_diverges_restores_and_suggests_a_rate_that_trains(mnist_20):
    dls = DataLoaders.from_hf_dd(mnist_20, 64, seed=0)
    assert len(dls.train) == 20
    torch.manual_seed(0)
    learn = Learner(_mlp(), dls, optim_class=torch.optim.Adam, lr=1e-3, subs=[MetricsS()])
    learn.fit(1)   # an optimizer with state, to see that it comes back
    opt, opt_state = learn.opt, copy.deepcopy(learn.opt.state_dict())
    weights, iteration, history = copy.deepcopy(learn.model.state_dict()), learn.iteration, list(learn.metrics.history)
    rng, loader = torch.get_rng_state(), dls.train.generator.get_state()
    found = learn.lr_find()
    assert isinstance(found, LRFinder) and found.stopped == 'divergence'
    assert len(found.lrs) > 20   # it cycled the 20-batch loader
    assert found.lrs[0] == pytest.approx(1e-7) and found.lrs[-1] < 10
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    assert learn.opt is opt and str(learn.opt.state_dict()) == str(opt_state)
    assert learn.iteration == iteration and learn.metrics.history == history
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(dls.train.generator.get_state(), loader)
    assert 1e-5 < found.suggestion < found.lrs[-1]
    # the suggestion trains well: from a fresh model, two epochs at it beat two at a tenth of it and reach a good accuracy
    def valid_loss(lr):
        torch.manual_seed(0)
        fresh = Learner(_mlp(), DataLoaders.from_hf_dd(mnist_20, 64, seed=0), optim_class=torch.optim.Adam, subs=[MetricsS()])
        fresh.fit(2, lr=lr)
        return fresh.metrics.history[-1]['loss']
    at_suggestion = valid_loss(found.suggestion)
    assert at_suggestion < 0.6 and at_suggestion < valid_loss(found.suggestion / 10)


def test_lr_find_leaves_the_next_fit_unchanged(mnist_20):
    def run(find):
        torch.manual_seed(0)
        learn = Learner(_mlp(), DataLoaders.from_hf_dd(mnist_20, 64, seed=0), subs=[MetricsS()])
        if find: learn.lr_find(num_it=30)
        learn.fit(1)
        return learn.model.state_dict()
    a, b = run(False), run(True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_find_plot_marks_the_suggestion(mnist_20):
    import matplotlib
    matplotlib.use('Agg')
    torch.manual_seed(0)
    found = Learner(_mlp(), DataLoaders.from_hf_dd(mnist_20, 64, seed=0)).lr_find(num_it=40)
    ax = found.plot()
    assert ax.get_xscale() == 'log'
    assert any(line.get_xdata()[0] == found.suggestion for line in ax.get_lines())
    assert f'suggestion {found.suggestion:.2g}' in [t.get_text() for t in ax.get_legend().get_texts()]
    assert repr(found).startswith(f'LRFinder(suggestion={found.suggestion:.3g}: 40 rates from 1e-07')


def test_lr_find_leaves_out_checkpoints_and_loggers(tmp_path, mnist_20):
    from nntrain.checkpoints import CheckpointS
    from nntrain.logging import CSVLoggerS
    torch.manual_seed(0)
    learn = Learner(_mlp(), DataLoaders.from_hf_dd(mnist_20, 64, seed=0),
                    subs=[MetricsS(), CheckpointS(tmp_path / 'ckpt', every_batches=1), CSVLoggerS(tmp_path / 'log.csv')])
    learn.lr_find(num_it=10)
    assert not (tmp_path / 'ckpt').exists() or not any((tmp_path / 'ckpt').iterdir())
    assert not (tmp_path / 'log.csv').exists()


def test_lr_find_stops_at_a_nan():
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    class NaNAt(nn.Module):
        def __init__(self): super().__init__(); self.lin, self.calls = nn.Linear(3, 2), 0
        def forward(self, x):
            self.calls += 1
            out = self.lin(x)
            return out * math.nan if self.calls == 15 else out
    with pytest.warns(UserWarning, match='lr_find has no rate to suggest: the loss never fell'):
        found = Learner(NaNAt(), DataLoaders([(x, y)] * 4, [])).lr_find()
    assert found.stopped == 'divergence' and len(found.lrs) == 15 and found.suggestion is None


@pytest.mark.parametrize('kwargs, error, message', [
    ({'start_lr': 0}, ValueError, 'lr_find (start_lr) expected lr to be a finite number > 0'),
    ({'start_lr': 1, 'end_lr': 0.1}, ValueError, 'lr_find expected end_lr > start_lr, got start_lr=1, end_lr=0.1'),
    ({'num_it': 1}, ValueError, 'lr_find expected num_it to be an int >= 2'),
    ({'num_it': True}, ValueError, 'lr_find expected num_it to be an int >= 2 (not a bool)'),
    ({'stop_div': 'yes'}, TypeError, 'stop_div'),
])
def test_lr_find_refuses_bad_arguments(kwargs, error, message):
    x = torch.randn(8, 3); y = torch.randint(0, 2, (8,))
    learn = Learner(nn.Linear(3, 2), DataLoaders([(x, y)], []))
    with pytest.raises((ValueError, TypeError)) as e: learn.lr_find(**kwargs)
    assert message in str(e.value)


def test_lr_find_during_a_fit_is_refused():
    x = torch.randn(8, 3); y = torch.randint(0, 2, (8,))
    from nntrain.trial import on
    calls = []
    def find(learn):
        try: learn.lr_find()
        except RuntimeError as e: calls.append(str(e))
    Learner(nn.Linear(3, 2), DataLoaders([(x, y)], [])).fit(1, valid=False, subs=[on('after_batch')(find)])
    assert calls == ['lr_find was called during a fit; expected a call between fits (it runs a fit of its own)']


def test_lrfinds_keeps_the_spec_behaviour():
    x = torch.randn(8, 3); y = torch.randint(0, 2, (8,))
    finder = LRFindS(mult=2)
    Learner(nn.Linear(3, 2), DataLoaders([(x, y)] * 3, [(x, y)]), lr=1e-3).fit(1, subs=[finder])
    assert finder.lrs == [1e-3, 2e-3, 4e-3]


# --- the Learner's parts ---

def test_swapped_arguments_name_what_was_given():
    dls = DataLoaders([], [])
    with pytest.raises(TypeError) as e: Learner(dls, nn.Linear(3, 2))
    assert str(e.value) == "Learner expected model to be an nn.Module (its .parameters() are trained), got a DataLoaders"
    with pytest.raises(TypeError) as e: Learner(nn.Linear(3, 2), nn.Linear(3, 2))
    assert str(e.value).startswith("Learner expected dls to be a DataLoaders (or any object with .train and .valid loaders), got a Linear")


# --- other subscribers read the batch through the learner ---

class _TwoParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x): return self.b(self.a(x))


def test_csv_logger_writes_each_named_optimizers_rate(tmp_path):
    from nntrain.logging import CSVLoggerS
    x, y = _data()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    learn = Learner(_TwoParts(), DataLoaders(batches, batches), optimizers={'a': 'a', 'b': ('b', torch.optim.SGD, 0.01)},
                    subs=[MetricsS(), CSVLoggerS(tmp_path / 'm.csv')])
    learn.fit(1)
    header, row = (tmp_path / 'm.csv').read_text().splitlines()
    columns = dict(zip(header.split(','), row.split(',')))
    assert (float(columns['lr_a']), float(columns['lr_b'])) == (0.1, 0.01)


def _recording_linear():
    "A list, and a Linear class that appends each input it is called on to it."
    seen = []
    class Record(nn.Linear):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)
    return seen, Record


def test_normalization_reads_the_named_input():
    from nntrain.activations import NormalizationS
    x = torch.rand(64, 3) * 5 + 2
    y = (x.sum(1) > 10).long()
    batches = [{'px': x[i:i + 16], 'y': y[i:i + 16]} for i in range(0, 64, 16)]
    seen, Record = _recording_linear()
    norm = NormalizationS()
    Learner(Record(3, 2), DataLoaders(batches, batches), inputs='px', targets='y', subs=[norm]).fit(1)
    assert norm.mean == pytest.approx(x.double().mean().item()) and norm.std == pytest.approx(x.double().std().item())
    assert torch.allclose(seen[0], (x[:16] - norm.mean) / norm.std, atol=1e-6)
    with pytest.raises(ValueError, match=r"NormalizationS normalizes one input, the part of the batch at a position or key; the Learner's inputs are \('px',\)"):
        Learner(Record(3, 2), DataLoaders(batches, batches), inputs=('px',), targets='y', subs=[NormalizationS()]).fit(1)


def test_export_refuses_a_model_of_two_inputs(tmp_path):
    pytest.importorskip('onnx')
    from nntrain.export import export_onnx
    batches = _two_batches()
    learn = Learner(TwoInTwoOut(), DataLoaders(batches, batches), _two_loss, inputs=(0, 1), targets=(2, 3))
    with pytest.raises(ValueError, match=r"export_onnx exports a model of one tensor input; this learner's model takes 2 inputs \(inputs=\(0, 1\)\)"):
        export_onnx(learn, tmp_path / 'm.onnx')


def test_progress_plot_with_dict_batches_and_two_outputs(capsys):
    from nntrain.learner import ProgressS
    batches = _two_batches()
    dict_batches = [{'a': a, 'b': b, 'y': y, 'v': v} for a, b, y, v in batches]
    progress = ProgressS(plot=True, plain=True)
    learn = Learner(TwoInTwoOut(), DataLoaders(dict_batches, dict_batches[:2]), _two_loss, inputs=('a', 'b'), targets=('y', 'v'),
                    subs=[MetricsS(), progress])
    learn.fit(2)
    assert len(progress.train_losses) == 8 and len(progress.valid_losses) == 2
    with torch.no_grad():
        expected = sum(_two_loss(learn.model(d['a'], d['b']), d['y'], d['v']) * 16 for d in dict_batches[:2]) / 32
    assert progress.valid_losses[-1] == pytest.approx(expected.item(), rel=1e-5)
    assert 'eval' in capsys.readouterr().out


def test_augment_transforms_the_named_input():
    from nntrain.acceleration import AugmentS
    x, y = _data()
    batches = [{'px': x[i:i + 16], 'y': y[i:i + 16]} for i in range(0, 64, 16)]
    seen, Record = _recording_linear()
    Learner(Record(3, 2), DataLoaders(batches, batches[:1]), inputs='px', targets='y', subs=[AugmentS(lambda t: t * 0)]).fit(1)
    assert all(not s.any() for s in seen[:4]) and torch.equal(seen[4], batches[0]['px'])   # training batches only
    with pytest.raises(ValueError, match=r"AugmentS transforms one input, the part of the batch at a position or key; the Learner's inputs are \(0, 1\)"):
        Learner(TwoInTwoOut(), DataLoaders(_two_batches(), []), _two_loss, inputs=(0, 1), targets=(2, 3), subs=[AugmentS()]).fit(1, valid=False)


# --- found by the independent break-it passes ---

def test_lr_find_never_suggests_outside_its_sweep_and_says_why():
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    flat = lambda preds, targets: (preds * 0).sum() + 1.0   # a loss that never falls
    with pytest.warns(UserWarning) as caught: found = Learner(nn.Linear(3, 2), DataLoaders([(x, y)] * 4, []), flat).lr_find()
    assert found.suggestion is None and found.stopped == 'end_lr'
    assert str(caught[0].message).startswith("lr_find has no rate to suggest: the loss never fell by more than its spread between batches "
                                             "(from about 1 to at best 1; the first batches' losses vary by 0) over the rates 1e-07 to 10")
    assert repr(found).startswith('LRFinder(suggestion=None: 100 rates')
    found.plot()   # nothing to mark, the curve still drawn


def test_lr_find_with_too_few_points_before_the_minimum_suggests_nothing():
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    class NaNFrom3(nn.Linear):
        calls = 0
        def forward(self, x):
            NaNFrom3.calls += 1
            return super().forward(x) * (math.nan if NaNFrom3.calls >= 3 else 1)
    with pytest.warns(UserWarning, match='lr_find has no rate to suggest'):
        found = Learner(NaNFrom3(3, 2), DataLoaders([(x, y)] * 4, [])).lr_find()
    assert found.suggestion is None and len(found.lrs) == 3


def test_lr_find_refuses_named_optimizers():
    learn = Learner(_TwoParts(), DataLoaders([(torch.randn(4, 3), torch.randint(0, 2, (4,)))], []), optimizers={'a': 'a', 'b': 'b'})
    with pytest.raises(ValueError, match=r"lr_find sweeps one learning rate against one loss, but this learner has the named optimizers \['a', 'b'\]"):
        learn.lr_find()


def test_lr_find_runs_clipping_and_accumulation_as_the_fit_will():
    from nntrain.acceleration import GradAccumS, GradClipS
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    norms, steps = [], []
    class Watch(nn.Linear):
        pass
    clip, accumulate = GradClipS(1e-3), GradAccumS(4)
    from nntrain.trial import on
    record = on('after_step')(lambda learn: (steps.append(learn.iteration),
                                            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in learn.model.parameters()])).item())))
    record.in_lr_find = True
    learn = Learner(nn.Linear(3, 2), DataLoaders([(x, y)] * 4, []), subs=[clip, accumulate, record])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.lr_find(num_it=20)
    assert steps == [4, 8, 12, 16, 20]   # accumulated over four batches
    assert max(norms) <= 1e-3 * 1.0001   # clipped


def test_lr_find_cancelled_by_a_subscriber_says_so():
    from nntrain.learner import CancelFitException
    from nntrain.trial import on
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    def stop(learn):
        if learn.iteration == 10: raise CancelFitException()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        found = Learner(nn.Linear(3, 2), DataLoaders([(x, y)] * 4, []), subs=[on('after_batch')(stop)]).lr_find(num_it=30)
    assert found.stopped == 'a cancel' and len(found.lrs) == 10


@pytest.mark.parametrize('max_lr, message', [
    (-1.0, 'fit_one_cycle (max_lr) expected lr to be a finite number > 0'),
    (0, 'fit_one_cycle (max_lr) expected lr to be a finite number > 0'),
    (math.nan, 'fit_one_cycle (max_lr) expected lr to be a finite number > 0'),
    ('1e-3', "fit_one_cycle (max_lr) expected lr to be a finite number > 0 and at most 3.4e+38 (the largest float32), got '1e-3'"),
    (True, 'fit_one_cycle (max_lr) expected lr to be a finite number > 0'),
    ({'a': -1.0}, "fit_one_cycle (max_lr['a']) expected lr to be a finite number > 0"),
    ({}, "fit_one_cycle expected max_lr to be a number, None (each optimizer's own lr), or a dict by optimizer name; got an empty dict"),
])
def test_fit_one_cycle_checks_max_lr_before_training(max_lr, message):
    from nntrain.acceleration import fit_one_cycle
    learn = Learner(_TwoParts(), DataLoaders([(torch.randn(4, 3), torch.randint(0, 2, (4,)))], []), optimizers={'a': 'a', 'b': 'b'})
    before = copy.deepcopy(learn.model.state_dict())
    with pytest.raises((ValueError, TypeError)) as e: fit_one_cycle(learn, 1, max_lr=max_lr)
    assert message in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


def test_grad_accumulation_of_one_batch_works_with_named_optimizers():
    from nntrain.acceleration import GradAccumS
    learn = Learner(_TwoParts(), DataLoaders([(torch.randn(4, 3), torch.randint(0, 2, (4,)))], []), optimizers={'a': 'a', 'b': 'b'},
                    subs=[GradAccumS(1)])
    learn.fit(1, valid=False)


def test_resume_with_another_schedule_names_the_scheduler(tmp_path):
    from nntrain.acceleration import SchedulerS
    from nntrain.core import CheckpointError
    from torch.optim.lr_scheduler import CosineAnnealingLR
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))] * 2
    class SaveAt2(MetricsS): pass
    first = Learner(nn.Linear(3, 2), DataLoaders(batches, []), optim_class=torch.optim.Adam)
    from nntrain.trial import on
    first.fit(2, valid=False, subs=[on('after_batch')(lambda learn: learn.save(tmp_path / 'c.pt') if learn.iteration == 2 else None)])
    second = Learner(nn.Linear(3, 2), DataLoaders(batches, []), optim_class=torch.optim.Adam, subs=[SchedulerS(CosineAnnealingLR)])
    with pytest.raises(CheckpointError) as e: second.fit(2, resume=tmp_path / 'c.pt')
    assert ("its param group 0 lacks ['initial_lr'], which this Adam steps with (initial_lr is written by a learning-rate scheduler: "
            "this fit schedules the rate, the run that wrote the checkpoint did not, or scheduled another optimizer; expected the same SchedulerS)") in str(e.value)


def test_optimizers_in_another_order_are_refused_saying_order_matters():
    from nntrain.core import CheckpointError
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    ab = Learner(_TwoParts(), DataLoaders(batches, []), optimizers={'a': 'a', 'b': 'b'}); ab.fit(1, valid=False)
    ba = Learner(_TwoParts(), DataLoaders(batches, []), optimizers={'b': 'b', 'a': 'a'}); ba.fit(1, valid=False)
    with pytest.raises(CheckpointError, match=r"expected the same names in the same order \(the order is the order of the phases\)"):
        ba.load_state_dict(ab.state_dict())


def test_parameters_no_optimizer_steps_are_named_in_a_warning():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.cls, self.reg = nn.Linear(3, 3), nn.Linear(3, 2), nn.Linear(3, 1)
    with pytest.warns(UserWarning, match=r"Learner: no optimizer steps the parameters of \['body'\], so they are not trained"):
        Learner(Shared(), DataLoaders([], []), optimizers={'a': 'cls', 'b': 'reg'})
    model = Shared(); model.body.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # frozen on purpose: no warning
        Learner(model, DataLoaders([], []), optimizers={'a': 'cls', 'b': 'reg'})


@pytest.mark.parametrize('spec, message', [
    (('a', torch.optim.SGD(nn.Linear(1, 1).parameters(), 0.1)), "its optim_class is an optimizer already made (SGD): pass its class, e.g. torch.optim.SGD"),
    (('a', torch.optim.SGD, 0.1, 'x'), "got a tuple of 4, expected 2 or 3 items"),
    (('a',), "got a tuple of 1, expected 2 or 3 items"),
])
def test_malformed_optimizer_entries_say_what_is_wrong(spec, message):
    with pytest.raises(TypeError) as e: Learner(_TwoParts(), DataLoaders([], []), optimizers={'a': spec, 'b': 'b'})
    assert message in str(e.value)


def test_csv_lr_column_is_the_first_named_optimizers(tmp_path):
    from nntrain.logging import CSVLoggerS
    x, y = _data()
    learn = Learner(_TwoParts(), DataLoaders([(x, y)], [(x, y)]), optimizers={'a': ('a', torch.optim.SGD, 0.5), 'b': 'b'},
                    subs=[MetricsS(), CSVLoggerS(tmp_path / 'm.csv')])
    learn.fit(1)
    header, row = (tmp_path / 'm.csv').read_text().splitlines()
    columns = dict(zip(header.split(','), row.split(',')))
    assert float(columns['lr']) == float(columns['lr_a']) == 0.5


def test_namedtuple_outputs_through_metrics():
    import collections
    NT = collections.namedtuple('NT', 'logits feats')
    class NTOut(nn.Module):
        def __init__(self): super().__init__(); self.l = nn.Linear(3, 2)
        def forward(self, x): return NT(self.l(x), x)
    x, y = _data()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    metrics = MetricsS(acc=TransformedMetric(MulticlassAccuracy(), preds='logits'))
    learn = Learner(NTOut(), DataLoaders(batches, batches), lambda p, t: F.cross_entropy(p.logits, t), subs=[metrics])
    learn.fit(1)
    with torch.no_grad(): hand = (learn.model(x).logits.argmax(1) == y).float().mean().item()
    assert metrics.history[-1]['acc'] == pytest.approx(hand)
    preds, _ = learn.get_preds()
    assert isinstance(preds, NT) and preds.logits.shape == (64, 2)


def test_outputs_of_other_shapes_per_batch_are_measured_batch_by_batch():
    g = torch.Generator().manual_seed(0)
    seq = [(torch.randn(4, t, 3, generator=g), torch.randint(0, 5, (4, t), generator=g)) for t in (6, 9)]
    flat = TransformedMetric(MulticlassAccuracy(), preds=lambda p: p.flatten(0, 1), targets=lambda t: t.flatten())
    torch.manual_seed(0)
    learn = Learner(nn.Linear(3, 5), DataLoaders(seq, seq), lambda p, t: F.cross_entropy(p.flatten(0, 1), t.flatten()), subs=[metrics := MetricsS(acc=flat)])
    learn.fit(1)
    with torch.no_grad():
        right = sum((learn.model(x).argmax(-1) == t).sum().item() for x, t in seq)
    assert metrics.history[-1]['acc'] == pytest.approx(right / sum(t.numel() for _, t in seq))
    with pytest.raises(ValueError, match=r"get_preds cannot join the batches: the model's output: batch 2 gives the shape \(4, 9, 5\), batch 1 gave \(4, 6, 5\)"):
        learn.get_preds()


def test_an_empty_batch_weighs_nothing():
    x, y = _data(8)
    batches = [(x, y), (x[:0], y[:0])]
    metrics = MetricsS()
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches, batches), subs=[metrics])
    learn.fit(1, train=False)
    with torch.no_grad(): expected = F.cross_entropy(learn.model(x), y).item()
    assert metrics.history[-1]['loss'] == pytest.approx(expected)


def test_tensor_batches_without_targets_are_the_input():
    from nntrain.trial import on
    x, _ = _data()
    batches = [x[i:i + 16] for i in range(0, 64, 16)]
    square = on('after_loss')(lambda learn: setattr(learn, 'loss', learn.loss + learn.preds.pow(2).mean()))
    metrics = MetricsS()
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches, batches), None, targets=None, subs=[metrics, square])
    learn.fit(1)
    assert math.isfinite(metrics.history[-1]['loss'])


def test_zero_dimensional_outputs_are_stacked_for_the_metrics():
    from torcheval.metrics import MeanSquaredError
    x, y = _data()
    batches = [(x[i:i + 1], y[i:i + 1].float().squeeze()) for i in range(8)]
    class Scalar(nn.Linear):
        def forward(self, x): return super().forward(x).squeeze()
    metrics = MetricsS(mse=MeanSquaredError())
    learn = Learner(Scalar(3, 1), DataLoaders(batches, batches), F.mse_loss, subs=[metrics])
    learn.fit(1, train=False)
    with torch.no_grad(): hand = torch.stack([(learn.model(b[0]) - b[1]) ** 2 for b in batches]).mean().item()
    assert metrics.history[-1]['mse'] == pytest.approx(hand, rel=1e-5)


def test_an_int_pick_on_a_single_tensor_is_refused():
    m = TransformedMetric(MulticlassAccuracy(), preds=0)
    with pytest.raises(TypeError, match=r"TransformedMetric picks preds\[0\], but got a single tensor \(4, 2\), not several preds; leave preds= out"):
        m.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_a_threshold_chosen_for_logits_does_not_warn():
    x, y = _data(64)
    batches = [(x, y)]
    model = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    metrics = MetricsS(acc=BinaryAccuracy(threshold=0.0))
    learn = Learner(model, DataLoaders(batches, batches), lambda p, t: F.binary_cross_entropy_with_logits(p, t.float()), subs=[metrics])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        learn.fit(1, train=False)
    with torch.no_grad(): hand = ((model(x) >= 0).long() == y).float().mean().item()
    assert metrics.history[-1]['acc'] == pytest.approx(hand)


def test_an_output_that_changes_structure_is_named():
    class Changing(nn.Linear):
        calls = 0
        def forward(self, x):
            Changing.calls += 1
            out = super().forward(x)
            return out if Changing.calls == 1 else (out, out)
    x, y = _data()
    learn = Learner(Changing(3, 2), DataLoaders([], []), lambda p, t: F.cross_entropy(p if isinstance(p, torch.Tensor) else p[0], t))
    with pytest.raises(ValueError, match=r"get_preds cannot join the batches: the model's output: batch 2 gives a tuple of 2 \(tensor \(16, 2\) float32, "
                                         r"tensor \(16, 2\) float32\), batch 1 gave a tensor; expected the same structure in every batch"):
        learn.get_preds([(x[:16], y[:16]), (x[16:32], y[16:32])])


def test_namedtuple_batches_by_field_name_on_a_device():
    import collections
    from nntrain.learner import DeviceS
    Batch = collections.namedtuple('Batch', 'pixels label')
    x, y = _data()
    batches = [Batch(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    metrics = MetricsS(accuracy=MulticlassAccuracy())
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches, batches), inputs='pixels', targets='label', subs=[metrics, DeviceS('cpu')])
    learn.fit(1)
    with torch.no_grad(): hand = (learn.model(x).argmax(1) == y).float().mean().item()
    assert metrics.history[-1]['accuracy'] == pytest.approx(hand)


def test_lr_find_sees_no_fall_in_the_spread_between_batches():
    from nntrain.learner import CancelStepException, Subscriber
    class Frozen(Subscriber):   # no step ever moves the weights: the curve is the batches' own spread
        in_lr_find = True
        def before_step(self, learn): raise CancelStepException()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(8)]
    torch.manual_seed(0)
    learn = Learner(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)), DataLoaders(batches, []), subs=[Frozen()])
    with pytest.warns(UserWarning, match='the loss never fell by more than its spread between batches'): found = learn.lr_find()
    assert found.suggestion is None


def test_lr_find_puts_back_the_gradients_of_an_accumulation_it_ended():
    from nntrain.acceleration import GradAccumS
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(8)]
    def make():
        torch.manual_seed(0)
        return Learner(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)), DataLoaders(batches, []), subs=[GradAccumS(2)])
    a, b = make(), make()
    a.fit(1, valid=False); b.fit(1, valid=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        b.lr_find(num_it=3, stop_div=False)   # ends half-way through an accumulation
    assert all(p.grad is None for p in b.model.parameters())
    a.fit(1, valid=False); b.fit(1, valid=False)
    for p, q in zip(a.model.parameters(), b.model.parameters()): assert torch.equal(p, q)


def test_lr_find_on_a_first_loss_that_is_nan_blames_no_rate():
    nan_batches = [(torch.full((16, 10), math.nan), torch.zeros(16, dtype=torch.long))] * 4
    with pytest.raises(RuntimeError, match=r"lr_find: the loss of the first batch, before any step, is nan: no learning rate caused it; "
                                           r"check the data, the model and the loss"):
        Learner(nn.Linear(10, 3), DataLoaders(nan_batches, [])).lr_find()


def test_an_optimizer_of_a_module_outside_the_model_is_refused():
    with pytest.raises(ValueError, match=r"Learner expected optimizers\['a'\] to step parameters of the model, got 2 of 2 that are not its "
                                         r"\(from a Linear, a module outside the model\?\); name a submodule, e.g. one of \['a', 'b'\]"):
        Learner(_TwoParts(), DataLoaders([], []), optimizers={'a': nn.Linear(3, 3), 'b': 'b'})


def test_a_zero_dimensional_first_target_weighs_by_the_inputs():
    class Identity(nn.Module):
        def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(()))
        def forward(self, x): return x * self.w
    batches = [(torch.ones(10, 1), torch.tensor(0.), torch.ones(10, 1) * 2), (torch.zeros(2, 1), torch.tensor(0.), torch.ones(2, 1))]
    metrics = MetricsS()
    Learner(Identity(), DataLoaders([], batches), lambda p, s, t: F.mse_loss(p, t), targets=(1, 2), subs=[metrics]).fit(1, train=False)
    assert metrics.history[-1]['loss'] == pytest.approx((1.0 * 10 + 1.0 * 2) / 12)


def test_a_metric_that_fails_is_named():
    seq = [(torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3)))]
    learn = Learner(nn.Linear(4, 4), DataLoaders(seq, seq), lambda p, t: F.cross_entropy(p.flatten(0, 1), t.flatten()),
                    subs=[MetricsS(acc=MulticlassAccuracy())])
    with pytest.raises(ValueError) as e: learn.fit(1)
    assert ("nntrain: raised by MetricsS's metric 'acc' (MulticlassAccuracy), given predictions a tensor (2, 3, 4) float32 and targets "
            "a tensor (2, 3) int64; a TransformedMetric can pick or reshape them") in e.value.__notes__


def test_a_namedtuple_output_missing_a_field_lists_the_fields():
    import collections
    Out = collections.namedtuple('Out', 'logits emb')
    m = TransformedMetric(MulticlassAccuracy(), preds='nope')
    with pytest.raises(TypeError, match=r"TransformedMetric picks preds\['nope'\], but got a Out \(a namedtuple\) with the fields \['logits', 'emb'\]"):
        m.update(Out(torch.zeros(2, 3), torch.zeros(2, 5)), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize('max_norm', [0, math.nan, math.inf, -1, '1', True])
def test_grad_clip_names_itself_in_its_refusals(max_norm):
    from nntrain.acceleration import GradClipS
    with pytest.raises(ValueError, match='GradClipS expected max_norm to be a finite number > 0, got'): GradClipS(max_norm)


def test_get_preds_on_a_one_dimensional_tensor_says_how_to_pass_one_sample():
    learn = Learner(nn.Linear(4, 3), DataLoaders([], []))
    with pytest.raises(ValueError, match=r"get_preds got 4 samples \(the first dimension of the inputs\), but the model gave 3 predictions; "
                                         r"for a single sample, pass x\[None\]"):
        learn.get_preds(torch.randn(4))
    assert learn.get_preds(torch.randn(4)[None]).shape == (1, 3)


def test_get_preds_reads_only_the_dict_keys_the_model_takes():
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.l = nn.Linear(3, 2)
        def forward(self, p, q): return self.l(p + q)
    learn = Learner(Two(), DataLoaders([], []), inputs=('p', 'q'))
    preds = learn.get_preds({'p': torch.randn(10, 3), 'q': torch.randn(10, 3), 'z': torch.randn(3)})
    assert preds.shape == (10, 2)


def test_resume_from_a_folder_never_made_says_so(tmp_path):
    from nntrain.core import CheckpointError
    learn = Learner(nn.Linear(3, 2), DataLoaders([(torch.randn(4, 3), torch.randint(0, 2, (4,)))], []))
    with pytest.raises(CheckpointError, match=r"no such checkpoint file or folder \(a run that was stopped before its first checkpoint has "
                                              r"nothing to resume from: start it without resume\)"):
        learn.fit(1, resume=tmp_path / 'never-made')


# --- found by the third break-it pass ---

def test_metrics_do_not_depend_on_whether_checkpoints_were_written(tmp_path):
    "A checkpoint holds the predictions buffered for the metrics: writing one must not update the metrics in pieces (float32 sums round differently)."
    from nntrain.checkpoints import CheckpointS
    from torch.utils.data import DataLoader, Dataset
    from torcheval.metrics import MeanSquaredError
    torch.manual_seed(0)
    x = torch.randn(160, 4); y = (x[:, 0] > 0).long(); r = x[:, 1] * 3
    class Rows(Dataset):
        def __init__(self, start, stop): self.start, self.stop = start, stop
        def __len__(self): return self.stop - self.start
        def __getitem__(self, i): return {'x': x[self.start + i], 't': {'y': y[self.start + i], 'r': r[self.start + i]}}
    class Two(nn.Module):
        def __init__(self): super().__init__(); self.l, self.c, self.r = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 1)
        def forward(self, x): h = F.relu(self.l(x)); return self.c(h), self.r(h).squeeze(1)
    loss = lambda p, t: F.cross_entropy(p[0], t['y']) + F.mse_loss(p[1], t['r'])
    def run(*subs):
        torch.manual_seed(5)
        metrics = MetricsS(acc=TransformedMetric(MulticlassAccuracy(), preds=0, targets='y'),
                           mse=TransformedMetric(MeanSquaredError(), preds=1, targets='r'))
        metrics.output = lambda log: None
        dls = DataLoaders(DataLoader(Rows(0, 128), batch_size=16, shuffle=True), DataLoader(Rows(128, 160), batch_size=16))
        Learner(Two(), dls, loss, torch.optim.Adam, 1e-2, [metrics, *subs], inputs='x', targets='t').fit(3)
        return metrics.history
    assert run() == run(CheckpointS(tmp_path, every_batches=5))


def test_a_key_on_a_list_batch_says_lists_are_read_by_position():
    x, y = _data()
    with pytest.raises(TypeError, match=r"a list or tuple batch is read by position: from_hf_dd\(\.\.\., inputs=, targets=\) gives batches "
                                         r"\[\*inputs, \*targets\], which the defaults \(inputs=0, targets=1\) read"):
        Learner(nn.Linear(3, 2), DataLoaders([[x, y]], []), inputs='image', targets='label').fit(1)


def test_the_no_suggestion_warning_points_at_the_callers_line():
    x = torch.randn(32, 3); y = torch.randint(0, 2, (32,))
    flat = lambda preds, targets: (preds * 0).sum() + 1.0
    with pytest.warns(UserWarning) as caught: Learner(nn.Linear(3, 2), DataLoaders([(x, y)], []), flat).lr_find(num_it=10)
    assert caught[0].filename == __file__


def test_a_metrics_state_without_a_buffer_still_loads():
    metrics = MetricsS(acc=MulticlassAccuracy())
    state = metrics.state_dict()
    del state['buffer']   # as checkpoints written before the buffer was kept
    MetricsS(acc=MulticlassAccuracy()).load_state_dict(state)
    state['buffer'] = {'preds': torch.zeros(3, 2)}
    with pytest.raises(ValueError, match="MetricsS.load_state_dict expected buffer to be empty or a dict of 'preds' and 'targets'"):
        MetricsS(acc=MulticlassAccuracy()).load_state_dict(state)
