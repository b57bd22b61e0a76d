"""Bad input to the public API of chapters 01-02 fails at once, saying what was expected and what was received."""
import contextlib, io, math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import DatasetDict
from torch import nn
from torcheval.metrics import MulticlassAccuracy

import nntrain.learner as learner_module
from nntrain.dataloaders import DataLoaders, TensorLoader, dataset_to_tensors, hf_ds_collate_fn, load_mnist
from nntrain.learner import DeviceS, Learner, LRFindS, MetricsS, MomentumLearner, ProgressS, Subscriber


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch): monkeypatch.chdir(tmp_path)

@pytest.fixture(scope='module')
def dd(): return load_mnist()

@contextlib.contextmanager
def raises(exc, message: str):
    "Expect `exc` whose message is exactly `message` (notes added under the traceback aside)."
    with pytest.raises(exc) as info: yield
    assert str(info.value) == message

def batches(y, n=1, features=3):
    torch.manual_seed(0)
    return [(torch.randn(len(y), features), torch.as_tensor(y)) for _ in range(n)]

def tiny_dls(train_y=(0, 1, 1, 0), valid_y=(1, 0, 0, 1), n_train=2):
    return DataLoaders(batches(train_y, n_train), batches(valid_y))

def double(x): return 2 * x

class AddCrossEntropy(Subscriber):
    def after_loss(self, learn): learn.loss = learn.loss + F.cross_entropy(learn.preds, learn.batch[1])

class SumAsLoss(Subscriber):
    def after_loss(self, learn): learn.loss = learn.loss + learn.preds.sum()

def quiet_fit(learn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()): learn.fit(*args, **kwargs)

LR_MESSAGE = "{who} expected lr to be a finite number > 0 and at most 3.4e+38 (the largest float32), got {got}"
DLS_MESSAGE = "Learner expected dls to be a DataLoaders (or any object with .train and .valid loaders), got {}"
MODEL_MESSAGE = "Learner expected model to be an nn.Module (its .parameters() are trained), got {}"
IGNORE_HINT = "to leave a label out of the loss, set ignore_index explicitly, e.g. loss_fn=partial(F.cross_entropy, ignore_index=-100)"


# 1. dls without .train and .valid, and swapped arguments
@pytest.mark.parametrize('dls, got', [(None, 'None'), ({'train': [], 'valid': []}, 'a dict'), (F.cross_entropy, 'the function cross_entropy'), (3, '3')])
def test_dls_must_have_train_and_valid(dls, got):
    with raises(TypeError, DLS_MESSAGE.format(got)): Learner(nn.Linear(3, 2), dls)

def test_any_object_with_train_and_valid_is_accepted():
    class Loaders: train, valid = batches([0, 1]), batches([1, 0])
    Learner(nn.Linear(3, 2), Loaders()).fit(1)

def test_swapped_model_and_loss_fn():
    with raises(TypeError, MODEL_MESSAGE.format('the function cross_entropy')): Learner(F.cross_entropy, tiny_dls(), nn.Linear(3, 2))

def test_swapped_model_and_dls():
    with raises(TypeError, MODEL_MESSAGE.format('a DataLoaders')): Learner(tiny_dls(), nn.Linear(3, 2))

def test_swapped_loss_fn_and_optim_class():
    with raises(TypeError, "Learner expected loss_fn to be a function of (preds, targets), a loss module instance, or None, got the class SGD"):
        Learner(nn.Linear(3, 2), tiny_dls(), torch.optim.SGD, F.cross_entropy)

def test_lr_in_the_place_of_subs():
    with raises(TypeError, "Learner expected subs to be a list of subscribers, got 0.1"): Learner(nn.Linear(3, 2), tiny_dls(), F.cross_entropy, torch.optim.SGD, 0.1, 0.1)


# 2. the model must be an nn.Module; loss_fn callable or None; optim_class callable
@pytest.mark.parametrize('model, got', [(double, 'the function double'), (lambda x: x, 'the function <lambda>'), (nn.Linear, 'the class Linear'),
                                        (torch.zeros(3), 'a Tensor')])
def test_model_must_be_a_module(model, got):
    with raises(TypeError, MODEL_MESSAGE.format(got)): Learner(model, tiny_dls())

@pytest.mark.parametrize('loss_fn, got', [('ce', "'ce'"), (nn.CrossEntropyLoss, 'the class CrossEntropyLoss'), (3, '3')])
def test_loss_fn_must_be_callable_or_none(loss_fn, got):
    with raises(TypeError, f"Learner expected loss_fn to be a function of (preds, targets), a loss module instance, or None, got {got}"):
        Learner(nn.Linear(3, 2), tiny_dls(), loss_fn)

def test_criterion_less_training_still_works():
    model = nn.Linear(3, 2); before = model.weight.detach().clone()
    Learner(model, tiny_dls(), loss_fn=None, subs=[AddCrossEntropy()]).fit(1)
    assert not torch.equal(before, model.weight)

def test_optim_class_must_be_callable():
    model = nn.Linear(3, 2)
    with raises(TypeError, "Learner expected optim_class to be called as optim_class(params, lr), e.g. torch.optim.SGD, got 'sgd'"):
        Learner(model, tiny_dls(), optim_class='sgd')
    with raises(TypeError, "Learner expected optim_class to be called as optim_class(params, lr), e.g. torch.optim.SGD, got a SGD "
                           "(an optimizer already made; pass its class, e.g. torch.optim.SGD)"):
        Learner(model, tiny_dls(), optim_class=torch.optim.SGD(model.parameters(), 0.1))

def test_partial_optimizers_are_accepted():
    Learner(nn.Linear(3, 2), tiny_dls(), optim_class=partial(torch.optim.SGD, momentum=0.9)).fit(1)


# 3. the learning rate
def test_huge_lr_used_to_overflow_inside_the_optimizer():
    "What `lr=1e300` did before the check: SGD's float32 update cannot hold -lr."
    p = nn.Parameter(torch.ones(2)); p.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match='value cannot be converted to type float without overflow'): torch.optim.SGD([p], lr=1e300).step()

@pytest.mark.parametrize('lr, got', [(1e300, '1e+300'), (1e39, '1e+39'), (math.inf, 'inf'), (math.nan, 'nan'), (0, '0'), (-0.1, '-0.1'),
                                     (10**400, repr(10**400)[:57] + '...'), ('0.1', "'0.1'"), (True, 'True'), (torch.tensor(0.1), 'a Tensor')])
def test_lr_must_be_finite_positive_and_fit_float32(lr, got):
    with raises(ValueError, LR_MESSAGE.format(who='Learner', got=got)): Learner(nn.Linear(3, 2), tiny_dls(), lr=lr)
    learn = Learner(nn.Linear(3, 2), tiny_dls())
    with raises(ValueError, LR_MESSAGE.format(who='fit', got=got)): learn.fit(1, lr=lr)

@pytest.mark.parametrize('lr', [3e38, 1, np.float32(0.1), np.float64(0.1)])
def test_representable_lrs_are_accepted(lr):
    test = Learner(nn.Linear(3, 2), tiny_dls(), lr=lr)
    assert test.lr == lr


# fit's other arguments, and subscribers
@pytest.mark.parametrize('kwargs, message', [
    ({'epochs': '2'}, "fit expected epochs to be an int >= 0 (not a bool), got '2'"),
    ({'epochs': True}, "fit expected epochs to be an int >= 0 (not a bool), got True"),
    ({'train': 'no'}, "fit expected train to be True or False, got 'no'"),
    ({'valid': None}, "fit expected valid to be True or False, got None")])
def test_fit_arguments(kwargs, message):
    with raises(ValueError, message): Learner(nn.Linear(3, 2), tiny_dls()).fit(**kwargs)

@pytest.mark.parametrize('subs, message', [
    (MetricsS(), "Learner expected subs to be a list of subscribers, got a MetricsS (wrap a single subscriber in a list: [sub])"),
    (None, "Learner expected subs to be a list of subscribers, got None"),
    ([MetricsS], "Learner expected each subscriber to be an instance with a numeric order (a Subscriber), got the class MetricsS (make one: MetricsS())"),
    ([1], "Learner expected each subscriber to be an instance with a numeric order (a Subscriber), got 1")])
def test_subs_must_be_subscriber_instances(subs, message):
    with raises(TypeError, message): Learner(nn.Linear(3, 2), tiny_dls(), subs=subs)

def test_bad_fit_subs_leave_the_learner_as_it_was():
    learn = Learner(nn.Linear(3, 2), tiny_dls(), subs=[metrics := MetricsS()])
    with raises(TypeError, "fit expected each subscriber to be an instance with a numeric order (a Subscriber), got the class LRFindS (make one: LRFindS())"):
        learn.fit(1, subs=[LRFindS])
    assert learn.subs == [metrics]

def test_duck_typed_subscribers_are_accepted():
    class Counter:
        order, n = 0, 0
        def after_batch(self, learn): self.n += 1
    Learner(nn.Linear(3, 2), tiny_dls(), subs=[counter := Counter()]).fit(1)
    assert counter.n == 3


# DataLoaders and a loader a pass needs
def test_dataloaders_wants_iterables_or_none():
    with raises(TypeError, "DataLoaders expected valid to be an iterable of batches (or None), got 3"): DataLoaders([], 3)
    assert DataLoaders(batches([0]), None).valid is None

def test_a_none_loader_is_refused_when_a_pass_needs_it():
    class Counter(Subscriber):
        n = 0
        def after_batch(self, learn): self.n += 1
    learn = Learner(nn.Linear(3, 2), DataLoaders(batches([0, 1]), None), subs=[counter := Counter()])
    with raises(ValueError, "the validation loader is None; expected an iterable of batches (or fit(..., valid=False))"): learn.fit(1)
    assert counter.n == 0                  # said before the training pass, not after it
    learn.fit(1, valid=False)
    assert counter.n == 1                  # its one training batch
    no_train = Learner(nn.Linear(3, 2), DataLoaders(None, batches([0])), subs=[counter := Counter()])
    with raises(ValueError, "the training loader is None; expected an iterable of batches (or fit(..., train=False))"): no_train.fit(1)
    no_train.fit(1, train=False); no_train.fit(0)
    assert counter.n == 1                  # its one validation batch


# 4. batch_size and the other loader arguments
BAD_BATCH_SIZES = [(True, 'True'), (0, '0'), (-1, '-1'), (2.5, '2.5'), ('64', "'64'")]

@pytest.mark.parametrize('batch_size, got', BAD_BATCH_SIZES)
def test_from_hf_dd_batch_size(dd, batch_size, got):
    with raises(ValueError, f"from_hf_dd expected batch_size to be an int >= 1 (not a bool), got {got}"): DataLoaders.from_hf_dd(dd, batch_size)
    with raises(ValueError, f"from_hf_dd expected batch_size to be an int >= 1 (not a bool), got {got}"): DataLoaders.from_hf_dd(dd, batch_size=batch_size)

@pytest.mark.parametrize('kwargs, exc, message', [
    ({'drop_last': 'no'}, ValueError, "from_hf_dd expected drop_last to be True or False, got 'no'"),
    ({'seed': '1'}, ValueError, "from_hf_dd expected seed to be an int >= 0 (not a bool) or None, got '1'"),
    ({'max_bytes': 0}, ValueError, "from_hf_dd expected max_bytes to be an int >= 1 (not a bool), got 0"),
    ({'collate_fn': 'x'}, TypeError, "from_hf_dd expected collate_fn to be a function of a list of rows, got 'x'"),
    ({'collate_fn': list}, TypeError, "from_hf_dd expected collate_fn to be a function of a list of rows, got the class list"),
    ({'shuffle': False}, TypeError, "from_hf_dd sets shuffle itself (training batches of batch_size, shuffled; validation of twice that, "
                                    "in order; seed= seeds the shuffling), got shuffle=False")])
def test_from_hf_dd_other_arguments(dd, kwargs, exc, message):
    with raises(exc, message): DataLoaders.from_hf_dd(dd, 64, **kwargs)

def test_from_hf_dd_empty_split(dd):
    with raises(ValueError, "from_hf_dd expected the 'test' split to hold at least one row, got an empty one"):
        DataLoaders.from_hf_dd(DatasetDict(train=dd['train'], test=dd['test'].select([])), 64)

def test_from_hf_dd_accepts_numpy_ints(dd):
    assert DataLoaders.from_hf_dd(dd, np.int64(64)).train.batch_size == 64

@pytest.mark.parametrize('batch_size, got', BAD_BATCH_SIZES)
def test_tensor_loader_batch_size(batch_size, got):
    with raises(ValueError, f"TensorLoader expected batch_size to be an int >= 1 (not a bool), got {got}"): TensorLoader({'x': torch.zeros(5, 2)}, batch_size)

@pytest.mark.parametrize('kwargs, message', [
    ({'shuffle': 'yes'}, "TensorLoader expected shuffle to be True or False, got 'yes'"),
    ({'drop_last': 1}, "TensorLoader expected drop_last to be True or False, got 1"),
    ({'flatten': None}, "TensorLoader expected flatten to be True or False, got None"),
    ({'seed': -1}, "TensorLoader expected seed to be an int >= 0 (not a bool) or None, got -1")])
def test_tensor_loader_flags_and_seed(kwargs, message):
    with raises(ValueError, message): TensorLoader({'x': torch.zeros(5, 2)}, 2, **kwargs)


# 5. columns of a TensorLoader
@pytest.mark.parametrize('columns, exc, message', [
    ({}, ValueError, "TensorLoader expected at least one column (a dict of column name to tensor), got an empty mapping"),
    ({'x': torch.zeros(0, 3), 'y': torch.zeros(0)}, ValueError, "TensorLoader expected at least one row, got columns of length 0: {'x': 0, 'y': 0}"),
    ({'a': torch.zeros(3), 'b': torch.zeros(4)}, ValueError, "TensorLoader expected columns of equal length, got {'a': 3, 'b': 4}"),
    ([torch.zeros(3)], TypeError, "TensorLoader expected columns as a dict of column name to tensor, got a list"),
    ({'x': [1, 2, 3]}, TypeError, "TensorLoader expected column 'x' to be a tensor with one row per sample, got a list"),
    ({'x': torch.tensor(1.)}, TypeError, "TensorLoader expected column 'x' to be a tensor with one row per sample, got a 0-d tensor")])
def test_tensor_loader_columns(columns, exc, message):
    with raises(exc, message): TensorLoader(columns, 2)


# hf_ds_collate_fn and dataset_to_tensors
def test_collate_refuses_a_slice_of_columns(dd):
    with raises(TypeError, "hf_ds_collate_fn expected a list of rows (dicts), got a dict (one row, or a slice such as ds[:8], which holds "
                           "columns; pass [ds[i] for i in ...])"):
        hf_ds_collate_fn(dd['train'][:3])

def test_collate_flatten_and_iterators(dd):
    with raises(ValueError, "hf_ds_collate_fn expected flatten to be True or False, got 'no'"): hf_ds_collate_fn([dd['train'][0]], flatten='no')
    with raises(TypeError, "hf_ds_collate_fn expected a list of rows (dicts), got a generator"): hf_ds_collate_fn(r for r in [dd['train'][0]])

def test_dataset_to_tensors_wants_one_split(dd):
    with raises(TypeError, "dataset_to_tensors expected a Hugging Face Dataset (one split), got a DatasetDict (pick a split: dd['train'])"):
        dataset_to_tensors(dd)
    with raises(ValueError, "dataset_to_tensors expected max_bytes to be an int >= 1 (not a bool), got '1'"): dataset_to_tensors(dd['test'], '1')


# 6. class targets outside [0, C)
def targets_message(who, got, count=1, n=4, hint=IGNORE_HINT):
    return f"{who} expected class targets in [0, 2) for predictions of shape ({n}, 2), got {got} ({count} of {n} targets in the pass's first batch); {hint}"

@pytest.mark.parametrize('loss_fn', [F.cross_entropy, nn.CrossEntropyLoss(), partial(F.cross_entropy, label_smoothing=0.1)])
def test_minus_100_labels_are_refused_with_the_default_ignore_index(loss_fn):
    learn = Learner(nn.Linear(3, 2), tiny_dls(train_y=(0, -100, 1, -100)), loss_fn)
    with raises(ValueError, targets_message('Learner', -100, count=2)): learn.fit(1)

def test_minus_100_labels_used_to_give_nan():
    "What the check prevents: F.cross_entropy drops -100 targets silently, and a batch of them has a loss of nan."
    assert math.isnan(F.cross_entropy(torch.randn(2, 2), torch.tensor([-100, -100])).item())

def test_nll_loss_is_checked_too():
    model = nn.Sequential(nn.Linear(3, 2), nn.LogSoftmax(dim=1))
    with raises(ValueError, targets_message('Learner', -100)): Learner(model, tiny_dls(train_y=(0, 1, -100, 1)), F.nll_loss).fit(1)

def test_positive_labels_out_of_range_say_how_many_classes():
    with raises(ValueError, targets_message('Learner', '2, 5', count=2, hint="the model's output has 2 columns, one per class")):
        Learner(nn.Linear(3, 2), tiny_dls(train_y=(0, 5, 2, 1))).fit(1)

def test_the_validation_loader_is_checked_too():
    with raises(ValueError, targets_message('Learner', -1)): Learner(nn.Linear(3, 2), tiny_dls(valid_y=(0, -1, 1, 1))).fit(1)

@pytest.mark.parametrize('loss_fn, y', [(partial(F.cross_entropy, ignore_index=-100), (0, -100, 1, 1)),
                                        (nn.CrossEntropyLoss(ignore_index=-1), (0, -1, 1, 1)),
                                        (partial(nn.CrossEntropyLoss(ignore_index=-1)), (0, -1, 1, 1))])
def test_an_explicit_ignore_index_allows_that_label(loss_fn, y):
    learn = Learner(nn.Linear(3, 2), tiny_dls(train_y=y, valid_y=y), loss_fn, subs=[metrics := MetricsS()])
    quiet_fit(learn, 1)
    assert all(math.isfinite(h['loss']) for h in metrics.history)

def test_an_explicit_ignore_index_allows_only_that_label():
    with raises(ValueError, targets_message('Learner', -100)):
        Learner(nn.Linear(3, 2), tiny_dls(train_y=(0, -100, 1, 1)), partial(F.cross_entropy, ignore_index=-1)).fit(1)

def test_class_metrics_are_checked_whatever_the_loss():
    learn = Learner(nn.Linear(3, 2), tiny_dls(train_y=(0, -100, 1, 1)), None, subs=[MetricsS(accuracy=MulticlassAccuracy()), SumAsLoss()])
    with raises(ValueError, targets_message('MetricsS', -100)): quiet_fit(learn, 1)

def test_no_check_without_a_class_loss_or_class_metric():
    learn = Learner(nn.Linear(3, 2), tiny_dls(train_y=(0, -100, 1, 1)), None, subs=[metrics := MetricsS(), SumAsLoss()])
    quiet_fit(learn, 1)
    assert len(metrics.history) == 2

def test_regression_and_soft_targets_are_not_checked():
    x = torch.randn(4, 3)
    Learner(nn.Linear(3, 2), DataLoaders([(x, torch.randn(4, 2) * 100)], [(x, -torch.ones(4, 2))]), F.mse_loss, lr=1e-3).fit(1)
    soft = torch.tensor([[0.5, 0.5], [1., 0.], [0., 1.], [0.2, 0.8]])
    Learner(nn.Linear(3, 2), DataLoaders([(x, soft)], [(x, soft)])).fit(1)

def test_other_shapes_are_not_checked():
    "Per-position targets `(N, L)` for `(N, C, L)` predictions keep cross entropy's own behaviour (-100 dropped)."
    class PerPosition(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(3, 2)
        def forward(self, x): return self.lin(x).unsqueeze(-1).expand(-1, -1, 5)
    y = torch.tensor([[0, 1, -100, 1, 0]] * 4)
    learn = Learner(PerPosition(), DataLoaders([(torch.randn(4, 3), y)], [(torch.randn(4, 3), y)]), subs=[metrics := MetricsS()])
    quiet_fit(learn, 1)
    assert all(math.isfinite(h['loss']) for h in metrics.history)

def test_targets_are_checked_once_per_pass_kind_and_fit(monkeypatch):
    calls = []
    check = learner_module._check_class_targets
    monkeypatch.setattr(learner_module, '_check_class_targets', lambda *args: calls.append(args[-1]) or check(*args))
    learn = Learner(nn.Linear(3, 2), tiny_dls(n_train=5), subs=[MetricsS(accuracy=MulticlassAccuracy())])
    quiet_fit(learn, 3)
    assert sorted(calls) == ['Learner', 'Learner', 'MetricsS', 'MetricsS']
    calls.clear(); quiet_fit(learn, 1, valid=False)
    assert sorted(calls) == ['Learner', 'MetricsS']


# 7. subscribers' own arguments
@pytest.mark.parametrize('device, exc, message', [
    ('gpu', ValueError, "DeviceS expected a device such as 'cpu', 'cuda', 'cuda:1' or 'mps' (None: the best available), got 'gpu'"),
    (3.5, TypeError, "DeviceS expected a device name such as 'cpu', 'cuda', 'cuda:1' or 'mps', a torch.device, or None, got 3.5"),
    (True, TypeError, "DeviceS expected a device name such as 'cpu', 'cuda', 'cuda:1' or 'mps', a torch.device, or None, got True")])
def test_device_names(device, exc, message):
    with raises(exc, message): DeviceS(device)

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
@pytest.mark.parametrize('device', ['cuda', 'cuda:1', torch.device('cuda')])
def test_cuda_without_cuda(device):
    with raises(ValueError, f"DeviceS expected a device this machine has, got {str(torch.device(device))!r}: cuda is not available here; "
                            "use DeviceS() for the best available device, or 'cpu'"):
        DeviceS(device)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_index_beyond_the_devices():
    n = torch.cuda.device_count()
    with raises(ValueError, f"DeviceS expected a device this machine has, got 'cuda:{n}': there are {n} CUDA devices, from cuda:0"): DeviceS(f'cuda:{n}')

def test_known_devices_are_accepted():
    assert DeviceS('cpu').device == torch.device('cpu')
    assert DeviceS(torch.device('cpu')).device.type == 'cpu' and DeviceS().device is not None

@pytest.mark.parametrize('mult, got', [(1, '1'), (math.inf, 'inf'), (math.nan, 'nan'), ('2', "'2'"), (True, 'True')])
def test_lr_find_mult(mult, got):
    with raises(ValueError, f"LRFindS expected mult to be a finite number > 1 so that the learning rate grows, got {got}"): LRFindS(mult)

@pytest.mark.parametrize('mom, got', [(1.0, '1.0'), (-0.1, '-0.1'), (math.nan, 'nan'), ('0.9', "'0.9'"), (True, 'True')])
def test_momentum_learner_mom(mom, got):
    with raises(ValueError, f"MomentumLearner expected mom to be a number in [0, 1), got {got}"): MomentumLearner(nn.Linear(3, 2), tiny_dls(), mom=mom)

def test_momentum_learner_checks_its_parts_like_learner():
    with raises(TypeError, DLS_MESSAGE.format('None')): MomentumLearner(nn.Linear(3, 2), None)

@pytest.mark.parametrize('metrics, exc, message', [
    ({'accuracy': 3}, TypeError, "MetricsS expected each metric to be a torcheval metric instance (with update, compute, reset, to), got accuracy=3"),
    ({'accuracy': MulticlassAccuracy}, TypeError, "MetricsS expected each metric to be a torcheval metric instance (with update, compute, reset, to), "
                                                  "got accuracy=the class MulticlassAccuracy (make one: MulticlassAccuracy())"),
    ({'loss': MulticlassAccuracy()}, ValueError, "MetricsS expected metric names other than epoch, mode, loss (the log's own entries), got 'loss'")])
def test_metrics(metrics, exc, message):
    with raises(exc, message): MetricsS(**metrics)

def test_progress_plot_flag():
    with raises(ValueError, "ProgressS expected plot to be True or False, got 'yes'"): ProgressS(plot='yes')


def test_fit_with_a_single_subscriber_not_in_a_list_says_so():
    "Chapter 05's fit adds its own subscribers to `subs`; the message must still name what the user gave."
    import nntrain.checkpoints  # noqa: F401  (its fit is the one users call)
    learn = Learner(nn.Linear(2, 2), DataLoaders([], []))
    with pytest.raises(TypeError, match=r"fit expected subs to be a list of subscribers, got a MetricsS \(wrap a single subscriber in a list: \[sub\]\)"):
        learn.fit(1, subs=MetricsS())


# break-it fix: a loss that is not one number is refused at the first batch, naming what loss_fn returned

@pytest.mark.parametrize('loss_fn, returned', [(lambda p, t: p.sum(1), 'a tensor of shape (4,)'), (lambda p, t: 0.5, '0.5'),
                                               (lambda p, t: F.cross_entropy(p, t, reduction='none')[None], 'a tensor of shape (1, 4)'),
                                               (lambda p, t: F.cross_entropy(p, t).reshape(1), 'a tensor of shape (1,)')])
def test_a_loss_that_is_not_one_number_is_refused_at_the_first_batch(loss_fn, returned):
    learn = Learner(nn.Linear(3, 2), tiny_dls(), loss_fn, subs=[MetricsS()])
    with raises(ValueError, f"Learner: at the first batch of the training pass, loss_fn=the function <lambda> returned {returned}; "
                            "expected a single number (a tensor of shape ()) to backpropagate: reduce it, e.g. with .mean()"):
        learn.fit(1)
