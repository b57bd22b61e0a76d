"Faults an independent tester found in checkpoints, loading, subscriber arguments, loaders and the CSV log (chapters 02, 05, 07, 11)."
import copy, errno, math, os, textwrap, warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from conftest import run_python
from nntrain.dataloaders import DataLoaders
from nntrain.learner import DeviceS, Learner, LRFindS, MetricsS, Subscriber
from nntrain.checkpoints import (CheckpointError, CheckpointS, EarlyStoppingS, checkpoints, latest_checkpoint,
                                 load_checkpoint, save_checkpoint)
from nntrain.experiments import fit_iterations
from nntrain.logging import CSVLoggerS

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- helpers

def batches(n, seed=0):
    data = torch.Generator().manual_seed(seed)   # the same batches whatever the seed of the model
    return [(torch.randn(8, 4, generator=data), torch.randint(0, 2, (8,), generator=data)) for _ in range(n)]

def quiet_metrics():
    metrics = MetricsS(accuracy=MulticlassAccuracy()); metrics.output = lambda log: None
    return metrics

def learner(seed=0, metrics=True, n_train=4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    return Learner(model, DataLoaders(batches(n_train), batches(2, seed=1)), subs=[quiet_metrics()] if metrics else [])

def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}

def same(a: dict, b: dict) -> bool:
    "Whether two nested states hold equal tensors and values."
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b or (a != a and b != b)

def raises(exc, f, message: str):
    with pytest.raises(exc) as info: f()
    assert str(info.value) == message
    return info.value

def checkpoint_in_a_fit(tmp_path) -> Path:
    "The newest checkpoint of a one-epoch fit that wrote one every 2 batches (with a position in the fit)."
    learner().fit(1, subs=[CheckpointS(tmp_path/'ck', every_batches=2, every_epochs=None)])
    return checkpoints(tmp_path/'ck')[-1]

def edited(path: Path, edit, to: Path) -> Path:
    state = load_checkpoint(path)
    edit(state)
    return save_checkpoint(state, to)

# ---------------------------------------------------------------- 1. only regular files are checkpoints

def test_fifo_is_refused_not_read(tmp_path):
    "A named pipe, as a file or named like a checkpoint in a folder, is refused or skipped; nothing blocks on it."
    code = textwrap.dedent(f'''
        import os, warnings
        from pathlib import Path
        import torch
        from torch import nn
        from nntrain.dataloaders import DataLoaders
        from nntrain.learner import Learner
        from nntrain.checkpoints import CheckpointError, CheckpointS, checkpoints, latest_checkpoint, load_checkpoint
        tmp = Path({str(tmp_path)!r})
        b = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 2
        make = lambda: Learner(nn.Linear(4, 2), DataLoaders(b, b))
        os.mkfifo(tmp/'pipe.pt')
        try: load_checkpoint(tmp/'pipe.pt')
        except CheckpointError as e: print('LOAD', e)
        make().fit(1, subs=[CheckpointS(tmp/'ck')])
        good = checkpoints(tmp/'ck')[-1]
        os.mkfifo(tmp/'ck'/'checkpoint-e0009-b00000099.pt')
        (tmp/'ck'/'checkpoint-e0009-b00000098.pt').mkdir()
        print('LIST', [p.name for p in checkpoints(tmp/'ck')])
        print('LATEST', latest_checkpoint(tmp/'ck') == good)
        make().fit(2, resume=tmp/'ck')
        print('RESUMED')
    ''')
    result = run_python(code, ROOT, env={'OMP_NUM_THREADS': '1'}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"LOAD {tmp_path/'pipe.pt'} is a named pipe (FIFO), not a regular file; only regular files are checkpoints"
    assert lines[1:] == ["LIST ['checkpoint-e0000-b00000002.pt']", 'LATEST True', 'RESUMED']

def test_character_device_is_refused():
    raises(CheckpointError, lambda: load_checkpoint('/dev/null'),
           "/dev/null is a character device, not a regular file; only regular files are checkpoints")

# ---------------------------------------------------------------- 2. a refused load changes nothing

LOAD_EDITS = {
    'wrong shape': (lambda s: s['model'].__setitem__('1.weight', torch.zeros(5, 5)),
                    "the checkpoint's weights do not fit this Sequential: size mismatch for 1.weight: copying a param with shape "
                    "torch.Size([5, 5]) from checkpoint, the shape in current model is torch.Size([2, 3])."),
    'renamed key': (lambda s: s['model'].__setitem__('zzz', s['model'].pop('0.bias')),
                    "the checkpoint's weights do not fit this Sequential: Missing key(s) in state_dict: \"0.bias\"."),
    'extra key': (lambda s: s['model'].__setitem__('extra', torch.zeros(1)),
                  "the checkpoint's weights do not fit this Sequential: Unexpected key(s) in state_dict: \"extra\"."),
    'MetricsS count': (lambda s: s['subs']['MetricsS'].__setitem__('count', 'x'),
                       "the checkpoint's state of subscriber MetricsS does not fit it (ValueError: MetricsS.load_state_dict expected "
                       "count to be an int >= 0 (not a bool), got 'x')"),
    'MetricsS metric state': (lambda s: s['subs']['MetricsS']['metrics'].__setitem__('accuracy', {'bogus': torch.zeros(())}),
                              "the checkpoint's state of subscriber MetricsS does not fit it (RuntimeError: Error(s) in loading "
                              "state_dict for MulticlassAccuracy. Encountered missing keys: {'num_correct', 'num_total'} and "
                              "unexpected keys: {'bogus'}.)"),
}

@pytest.mark.parametrize('name', LOAD_EDITS)
def test_refused_load_changes_nothing(tmp_path, name):
    edit, message = LOAD_EDITS[name]
    source = learner(seed=0)
    source.fit(1)
    path = edited(source.save(tmp_path/'good.pt'), edit, tmp_path/'bad.pt')
    learn = learner(seed=1)
    learn.fit(1)                                   # a history and running sums of its own, to be kept
    before, metrics_before = weights(learn), copy.deepcopy(learn.metrics.state_dict())
    if name == 'MetricsS metric state' and "{'num_total', 'num_correct'}" in _torcheval_message():
        message = message.replace("{'num_correct', 'num_total'}", "{'num_total', 'num_correct'}")  # a set: its order varies
    raises(CheckpointError, lambda: learn.load(path), f"{path}: {message}")
    raises(CheckpointError, lambda: learn.load_state_dict(load_checkpoint(path)), message)
    assert same(weights(learn), before)
    assert same(learn.metrics.state_dict(), metrics_before)

def _torcheval_message() -> str:
    try: MulticlassAccuracy().load_state_dict({'bogus': torch.zeros(())})
    except RuntimeError as e: return str(e)

def test_refused_optimizer_state_restores_the_model_and_optimizer(tmp_path):
    learn = learner(seed=1)
    learn.fit(1)
    state = learner(seed=0).state_dict()
    state['opt'] = copy.deepcopy(learn.opt.state_dict())
    state['opt']['param_groups'][0]['params'] = [0]          # one parameter where the model has four
    before, opt_before = weights(learn), copy.deepcopy(learn.opt.state_dict())
    with pytest.raises(CheckpointError) as info: learn.load_state_dict(state)
    assert str(info.value).startswith("the checkpoint's optimizer state does not fit this SGD (ValueError: ")
    assert same(weights(learn), before) and same(learn.opt.state_dict(), opt_before)

def test_good_load_still_loads(tmp_path):
    source = learner(seed=0)
    source.fit(1)
    path = source.save(tmp_path/'a.pt')
    learn = learner(seed=1).load(path)
    assert same(weights(learn), weights(source)) and same(learn.subs[0].state_dict(), source.subs[0].state_dict())

# ---------------------------------------------------------------- 3. optimizer hyper-parameters

@pytest.mark.parametrize('key, value, expected', [
    ('lr', -5.0, "lr=-5.0; expected a finite number >= 0"),
    ('lr', 'fast', "lr='fast'; expected a finite number >= 0"),
    ('lr', math.nan, "lr=nan; expected a finite number >= 0"),
    ('lr', None, "lr=None; expected a finite number >= 0"),
    ('momentum', math.inf, "momentum=inf; expected a finite number"),
    ('weight_decay', '0', "weight_decay='0'; expected a finite number"),
    ('betas', (0.9, math.nan), "betas=a tuple; expected a tuple of finite numbers"),
    ('my_factor', math.nan, "my_factor=nan; expected a finite number"),
])
def test_optimizer_hyper_parameters_are_checked(tmp_path, key, value, expected):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['opt']['param_groups'][0].__setitem__(key, value), tmp_path/'bad.pt')
    message = f"{path} is not a valid nntrain checkpoint: 'opt' param group 0 has {expected}"
    raises(CheckpointError, lambda: load_checkpoint(path), message)
    raises(CheckpointError, lambda: learner().fit(2, resume=path), message)

def test_zero_lr_is_a_valid_optimizer_state(tmp_path):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['opt']['param_groups'][0].__setitem__('lr', 0.0), tmp_path/'zero.pt')
    learner().fit(2, resume=path)

def test_optimizer_group_that_lacks_a_hyper_parameter(tmp_path):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['opt']['param_groups'][0].pop('momentum'), tmp_path/'bad.pt')
    learn = learner()
    raises(CheckpointError, lambda: learn.fit(2, resume=path),
           f"{path}: the checkpoint's optimizer state does not fit this SGD: its param group 0 lacks ['momentum'], which this SGD steps with")

# ---------------------------------------------------------------- 4. MetricsS state, and subscribers without state

METRICS_STATES = {
    'count str': (lambda s: s.__setitem__('count', 'x'), ValueError, "MetricsS.load_state_dict expected count to be an int >= 0 (not a bool), got 'x'"),
    'count negative': (lambda s: s.__setitem__('count', -1), ValueError, "MetricsS.load_state_dict expected count to be an int >= 0 (not a bool), got -1"),
    'loss_sum float': (lambda s: s.__setitem__('loss_sum', 1.5), TypeError, "MetricsS.load_state_dict expected loss_sum to be a one-element tensor, got 1.5"),
    'history int': (lambda s: s.__setitem__('history', 5), TypeError, "MetricsS.load_state_dict expected history to be a list of dicts (one per pass), got 5"),
    'history entry': (lambda s: s.__setitem__('history', [{}, 3]), TypeError,
                      "MetricsS.load_state_dict expected history to be a list of dicts (one per pass), got a list whose entry 1 is not a dict"),
    'metrics empty': (lambda s: s.__setitem__('metrics', {}), ValueError,
                      "MetricsS.load_state_dict expected metrics to be a dict with a state dict for each of its metrics ['accuracy'], got none for ['accuracy']"),
    'metrics list': (lambda s: s.__setitem__('metrics', []), ValueError,
                     "MetricsS.load_state_dict expected metrics to be a dict with a state dict for each of its metrics ['accuracy'], got a list"),
    'not a dict': (lambda s: s.clear(), KeyError, "\"MetricsS.load_state_dict expected the keys ['loss_sum', 'count', 'history', 'metrics'], "
                                                 "got no ['loss_sum', 'count', 'history', 'metrics']\""),
}

@pytest.mark.parametrize('name', METRICS_STATES)
def test_metrics_state_is_checked(tmp_path, name):
    edit, error, message = METRICS_STATES[name]
    metrics = quiet_metrics()
    learner(metrics=False).fit(1, subs=[metrics])
    state, before = metrics.state_dict(), copy.deepcopy(metrics.state_dict())
    edit(state)
    raises(error, lambda: metrics.load_state_dict(state), message)
    assert same(metrics.state_dict(), before)

def test_metrics_state_at_resume_names_the_file(tmp_path):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['subs']['MetricsS'].__setitem__('count', 'x'), tmp_path/'bad.pt')
    raises(CheckpointError, lambda: learner().fit(2, resume=path),
           f"{path}: the checkpoint's state of subscriber MetricsS does not fit it (ValueError: MetricsS.load_state_dict "
           "expected count to be an int >= 0 (not a bool), got 'x')")

def test_subscriber_without_state_in_the_checkpoint_warns(tmp_path):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['subs'].pop('MetricsS'), tmp_path/'no-metrics.pt')
    message = f"{path} holds no state for the subscriber MetricsS; it starts afresh"
    extra = (f"{path} holds the state of a subscriber CheckpointS, which this learner does not have; that state is left out "
             "(resume with the same subscribers to continue it)")   # the run that wrote it had a CheckpointS
    with pytest.warns(UserWarning) as record: learner().load(path)
    assert [str(w.message) for w in record] == [message, extra]
    learn = learner()
    with pytest.warns(UserWarning) as record: learn.fit(2, resume=path)
    assert [str(w.message) for w in record] == [message, extra]
    assert [h['epoch'] for h in learn.metrics.history] == [0, 0, 1, 1]

# ---------------------------------------------------------------- 5. a position beyond the loader

def test_position_beyond_the_loader_names_the_file(tmp_path):
    path = edited(checkpoint_in_a_fit(tmp_path), lambda s: s['position'].update(next_iter=10**6, pass_done=False), tmp_path/'far.pt')
    raises(CheckpointError, lambda: learner().fit(2, resume=path),
           f"the checkpoint is at batch 1000000 of its epoch, but the training loader has only 4 batches; expected the loader "
           f"of the run that wrote it ({path})")

# ---------------------------------------------------------------- 6. save only what loads back

PLAIN = ("save_checkpoint expected a state of tensors, numbers, str, bool, None and lists, tuples and dicts of them "
         "(what load_checkpoint can read back), but ")

@pytest.mark.parametrize('state, error, message', [
    ({'x': object()}, TypeError, PLAIN + "state['x'] is of type object"),
    ({'format': 'x', 'subs': {'A': {'f': [1, (2, object())]}}}, TypeError, PLAIN + "state['subs']['A']['f'][1][1] is of type object"),
    ({'fn': len}, TypeError, PLAIN + "state['fn'] is of type builtin_function_or_method"),
    ({'s': {1, 2}}, TypeError, PLAIN + "state['s'] is of type set"),
    ({object(): 1}, TypeError, PLAIN + "state has a key of type object"),
    ([1, 2], TypeError, "save_checkpoint expected state to be a dict (a learner state dict), got a list"),
    (None, TypeError, "save_checkpoint expected state to be a dict (a learner state dict), got None"),
])
def test_save_refuses_what_load_cannot_read(tmp_path, state, error, message):
    raises(error, lambda: save_checkpoint(state, tmp_path/'a.pt'), message)
    assert list(tmp_path.iterdir()) == []

def test_save_accepts_plain_values(tmp_path):
    state = {'a': torch.ones(2), 'b': [1, 2.5, 'x', None, True, (torch.Size([2, 3]), torch.float32)], 'c': {0: {'d': b'raw'}}}
    path = save_checkpoint(state, tmp_path/'a.pt')
    assert path.is_file()

# ---------------------------------------------------------------- 7. subscriber arguments

ARGUMENTS = {
    'keep True': (lambda tmp: CheckpointS(tmp/'ck', keep=True), ValueError, "CheckpointS expected keep to be an int >= 1 (not a bool), got True"),
    'monitor 5': (lambda tmp: CheckpointS(tmp/'ck', monitor=5), TypeError,
                  "CheckpointS expected monitor to be the name of a value MetricsS reports, such as 'loss' or 'accuracy' (or None), got 5"),
    'mode list': (lambda tmp: CheckpointS(tmp/'ck', mode=['min']), ValueError, "CheckpointS expected mode to be 'min' or 'max' (or None), got ['min']"),
    'folder is a file': (lambda tmp: CheckpointS(tmp/'afile'), NotADirectoryError,
                         "[Errno 20] CheckpointS expected a folder, got a file: {tmp}/afile"),
    'folder is a number': (lambda tmp: CheckpointS(5), TypeError, "CheckpointS expected folder to be a path (a str or a Path), got 5"),
    'every_batches True': (lambda tmp: CheckpointS(tmp/'ck', every_batches=True), ValueError, "CheckpointS expected every_batches to be an int >= 1 (not a bool) or None, got True"),
    'early monitor None': (lambda tmp: EarlyStoppingS(monitor=None), TypeError,
                           "EarlyStoppingS expected monitor to be the name of a value MetricsS reports, such as 'loss' or 'accuracy', got None"),
    'patience True': (lambda tmp: EarlyStoppingS(patience=True), ValueError, "EarlyStoppingS expected patience to be an int >= 1 (not a bool), got True"),
    'min_delta nan': (lambda tmp: EarlyStoppingS(min_delta=math.nan), ValueError,
                      "EarlyStoppingS expected min_delta to be a finite number >= 0 (the least change that counts as an improvement), got nan"),
    'min_delta negative': (lambda tmp: EarlyStoppingS(min_delta=-0.1), ValueError,
                           "EarlyStoppingS expected min_delta to be a finite number >= 0 (the least change that counts as an improvement), got -0.1"),
    'restore_best y': (lambda tmp: EarlyStoppingS(restore_best='y'), ValueError, "EarlyStoppingS expected restore_best to be True or False, got 'y'"),
}

@pytest.mark.parametrize('name', ARGUMENTS)
def test_subscriber_arguments_are_checked_at_construction(tmp_path, name):
    make, error, message = ARGUMENTS[name]
    (tmp_path/'afile').write_text('')
    raises(error, lambda: make(tmp_path), message.format(tmp=tmp_path))
    assert not (tmp_path/'ck').exists()

def test_good_subscriber_arguments_are_accepted(tmp_path):
    CheckpointS(tmp_path/'new', keep=3, monitor='accuracy', mode='max')
    EarlyStoppingS(monitor='accuracy', patience=2, min_delta=0, restore_best=False)

def test_resume_that_is_not_a_path():
    raises(TypeError, lambda: learner().fit(1, resume=123),
           "fit expected resume to be a checkpoint file or a folder of them (a str or a Path), or None, got 123")

# ---------------------------------------------------------------- 8. fit_iterations' arguments

def test_fit_iterations_checks_learn_and_subs():
    raises(TypeError, lambda: fit_iterations(None, 10), "fit_iterations expected learn to be a Learner, got None")
    learn = learner()
    train = learn.dls.train
    raises(TypeError, lambda: fit_iterations(learn, 10, 3, subs=MetricsS()),
           "fit_iterations expected subs to be a list of subscribers, got a MetricsS (wrap a single subscriber in a list: [sub])")
    assert learn.dls.train is train

# ---------------------------------------------------------------- 9, 10. DeviceS('meta'), LRFindS' bound

def test_meta_device_is_refused():
    raises(ValueError, lambda: DeviceS('meta'),
           "DeviceS expected a device a fit can train on, got 'meta': meta tensors have shapes but no values, so no loss or "
           "metric can be computed there; use 'cpu' or an accelerator")
    raises(ValueError, lambda: DeviceS(torch.device('meta')), str(pytest.raises(ValueError, DeviceS, 'meta').value))

@pytest.mark.parametrize('mult, got', [(1e300, '1e+300'), (101, '101'), (100.5, '100.5')])
def test_lr_find_mult_is_bounded(mult, got):
    raises(ValueError, lambda: LRFindS(mult),
           f"LRFindS expected mult to be at most 100 (the rate is multiplied by it at every batch, so a larger one overflows "
           f"within a few batches), got {got}")

def test_lr_find_mult_of_100_runs():
    learn = learner(metrics=False, n_train=8)
    learn.fit(2, lr=1e-4, subs=[finder := LRFindS(100)])
    assert finder.lrs[:2] == [1e-4, pytest.approx(1e-2)]

# ---------------------------------------------------------------- 11. a generator as a loader

def test_generator_loader_is_named_when_used_up():
    def gen(): yield from batches(2)
    learn = Learner(nn.Linear(4, 2), DataLoaders(gen(), gen()))
    raises(ValueError, lambda: learn.fit(2),
           "the training loader produced no batches; expected at least one: it is a generator, an iterator, which yields its "
           "batches only once (an earlier pass used them up, or it was empty); give a loader that can be iterated again for "
           "every pass: a list, a TensorLoader or a DataLoader")
    raises(ValueError, lambda: Learner(nn.Linear(4, 2), DataLoaders([], [])).fit(1),
           "the training loader produced no batches; expected at least one")

# ---------------------------------------------------------------- 12. the CSV log on a full disk

@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_csv_logger_on_a_full_disk_names_the_file():
    error = raises(OSError, lambda: learner().fit(1, subs=[CSVLoggerS('/dev/full')]),
                   f"[Errno {errno.ENOSPC}] CSVLoggerS cannot write /dev/full: disk full (No space left on device)")
    assert error.errno == errno.ENOSPC

class FullFile:
    "A file whose writes fail as on a full disk, after `room` of them."
    def __init__(self, file, room): self.file, self.room = file, room
    def write(self, data):
        if self.room == 0: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return self.file.write(data)
    def flush(self): pass
    def close(self): self.file.close()

def test_csv_logger_row_on_a_full_disk_names_the_file(tmp_path):
    "The header goes with the first row, and that first write finds the disk full: the error names the file, nothing is half-written."
    logger = CSVLoggerS(tmp_path/'log.csv')
    class FillDisk(Subscriber):
        order = logger.order - 0.5
        def before_epoch(self, learn):
            if logger.file is not None and not isinstance(logger.file, FullFile): logger.file = FullFile(logger.file, 0)
    raises(OSError, lambda: learner().fit(1, subs=[logger, FillDisk()]),
           f"[Errno {errno.ENOSPC}] CSVLoggerS cannot write {tmp_path/'log.csv'}: disk full (No space left on device)")
    assert (tmp_path/'log.csv').read_text() == ''
