"Issue 11: the run state is the loop's own (iteration, position, state dict, resume), frequencies are declared, logs are an event."
import csv, io, json, subprocess, sys, textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from nntrain.dataloaders import DataLoaders
from nntrain.learner import (CancelFitException, Learner, MetricsS, ProgressS, Subscriber, every, find_metrics)
from nntrain.checkpoints import CheckpointS, EarlyStoppingS, TerminateOnNaNS, checkpoints
from nntrain.logging import CSVLoggerS, TensorBoardS
from nntrain.acceleration import SchedulerS, fit_one_cycle, GradAccumS
from nntrain.experiments import fit_iterations
from nntrain.trial import on

MODULES = ['core', 'dataloaders', 'learner', 'activations', 'acceleration', 'checkpoints', 'trial', 'logging', 'reports',
           'export', 'benchmark', 'experiments', 'sessions', 'search', 'cli']

def data(n_train=12, n_valid=4, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(bs, 5, generator=g), torch.randint(0, 3, (bs,), generator=g))
    return DataLoaders([make() for _ in range(n_train)], [make() for _ in range(n_valid)])

def learner(*subs, dls=None, lr=0.1):
    torch.manual_seed(0)
    return Learner(nn.Linear(5, 3), dls or data(), F.cross_entropy, torch.optim.SGD, lr,
                   [MetricsS(accuracy=MulticlassAccuracy()), *subs])

def read_rows(path):
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))

# -- importing a module changes nothing ---------------------------------------------------------------------------

@pytest.mark.parametrize('module', MODULES)
def test_importing_a_module_does_not_change_the_learner(module):
    code = textwrap.dedent(f'''
        import nntrain.learner as l
        before = {{name: l.Learner.__dict__[name] for name in l.Learner.__dict__}}
        import nntrain.{module}
        after = dict(l.Learner.__dict__)
        changed = sorted(name for name in before if after.get(name) is not before[name])
        print(changed)
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'

def test_resume_works_without_importing_checkpoints(tmp_path):
    code = textwrap.dedent(f'''
        import sys, torch, torch.nn.functional as F
        from torch import nn
        from nntrain.learner import Learner, MetricsS, Subscriber
        from nntrain.dataloaders import DataLoaders
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(6)]
        class SaveAt3(Subscriber):
            def after_batch(self, learn):
                if learn.training and learn.iteration == 3: learn.save(r"{tmp_path}/at3.pt")
        torch.manual_seed(0); a = Learner(nn.Linear(3, 2), DataLoaders(batches, batches[:2]), subs=[MetricsS(), SaveAt3()])
        a.fit(2)
        torch.manual_seed(1); b = Learner(nn.Linear(3, 2), DataLoaders(batches, batches[:2]), subs=[MetricsS()])
        b.fit(2, resume=r"{tmp_path}/at3.pt")
        assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
        print(b.iteration, 'nntrain.checkpoints' in sys.modules)
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == '12 False'

# -- the iteration counter and declared frequencies ----------------------------------------------------------------

class EveryThird(Subscriber):
    def __init__(self): self.seen, self.epochs = [], []
    @every(3)
    def after_batch(self, learn): self.seen.append(learn.iteration)
    @every(2)
    def after_epoch(self, learn): self.epochs.append((learn.epoch, learn.training))

def test_learner_counts_training_iterations():
    learn = learner()
    assert learn.iteration == 0
    learn.fit(2)
    assert learn.iteration == 24 and learn.position is None
    learn.fit(1)                       # a new run counts from 0
    assert learn.iteration == 12

def test_every_calls_at_exactly_the_declared_iterations_and_epochs():
    sub = EveryThird()
    learner(sub).fit(4)
    assert sub.seen == list(range(3, 49, 3))                      # training batches only, from iteration 3
    assert sub.epochs == [(1, True), (1, False), (3, True), (3, False)]

def test_every_across_a_resume(tmp_path):
    unbroken = EveryThird()
    learner(unbroken).fit(3)
    class Die(Subscriber):
        def after_batch(self, learn):
            if learn.iteration == 17: raise RuntimeError('killed')
    first = EveryThird()
    with pytest.raises(RuntimeError, match='killed'):
        learner(first, CheckpointS(tmp_path, every_batches=5, every_epochs=None), Die()).fit(3)
    assert [p.name for p in checkpoints(tmp_path)][-1] == 'checkpoint-e0001-b00000015.pt'
    resumed = EveryThird()
    learn = learner(resumed)
    learn.fit(3, resume=tmp_path)
    assert learn.iteration == 36
    assert first.seen[:5] + resumed.seen == unbroken.seen             # 3..15 before the checkpoint, 18..36 after

def test_every_takes_an_attribute_name_and_none_switches_it_off():
    class Sometimes(Subscriber):
        def __init__(self, n): self.n, self.seen = n, []
        @every('n')
        def after_batch(self, learn): self.seen.append(learn.iteration)
    on_five, off = Sometimes(5), Sometimes(None)
    learner(on_five, off).fit(1)
    assert on_five.seen == [5, 10] and off.seen == []
    with pytest.raises(ValueError, match=r"Sometimes expected n to be an int >= 1 \(not a bool\), got 0"): learner(Sometimes(0)).fit(1)
    with pytest.raises(ValueError, match=r"every expected n to be an int >= 1 \(not a bool\), or the name of the subscriber.s attribute that holds it, got True"): every(True)

def test_on_takes_every():
    seen = []
    sub = on('after_batch', every=4)(lambda learn: seen.append(learn.iteration))
    learner(sub).fit(1)
    assert seen == [4, 8, 12]
    with pytest.raises(ValueError, match=r"on expected every to be an int >= 1 \(not a bool\) or None, got 0"): on('after_batch', every=0)

# -- learn.log -------------------------------------------------------------------------------------------------------

class LogsTwo(Subscriber):
    "Log a GAN-like pair of values: d_loss on training batches, g_loss on every batch."
    def after_loss(self, learn):
        if learn.training: learn.log('d_loss', learn.loss * 2)
        learn.log('g_loss', float(learn.iter))

def test_logged_values_reach_history_table_csv_and_tensorboard(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    learn = learner(LogsTwo(), CSVLoggerS(tmp_path/'log.csv'), TensorBoardS(tmp_path/'tb', log_every=4), ProgressS(plain=True))
    learn.fit(2)
    history = find_metrics(learn).history
    assert [list(h) for h in history] == [['epoch', 'mode', 'loss', 'accuracy', 'd_loss', 'g_loss'], ['epoch', 'mode', 'loss', 'accuracy', 'g_loss']] * 2
    assert history[0]['g_loss'] == pytest.approx(sum(range(12)) / 12) and history[1]['g_loss'] == pytest.approx(1.5)
    assert history[0]['d_loss'] == pytest.approx(2 * history[0]['loss'], rel=1e-5)   # equal batches: mean of 2*loss
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['epoch', 'mode', 'loss', 'accuracy', 'd_loss', 'g_loss'] and len(lines) == 5
    assert lines[2].split()[:2] == ['1', 'eval'] and lines[2].split()[-1] == '1.500' and len(lines[2].split()) == 5
    rows = read_rows(tmp_path/'log.csv')
    assert list(rows[0]) == ['epoch', 'iteration', 'lr', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy',
                             'train_d_loss', 'train_g_loss', 'valid_d_loss', 'valid_g_loss']
    assert [r['iteration'] for r in rows] == ['12', '24'] and rows[1]['valid_g_loss'] == '1.5' and rows[1]['valid_d_loss'] == ''
    assert float(rows[1]['train_d_loss']) == pytest.approx(history[2]['d_loss'], rel=1e-5)
    train = EventAccumulator(str(tmp_path/'tb'/'train')); train.Reload()
    assert [(e.step, round(e.value, 4)) for e in train.Scalars('metrics/g_loss')] == [(12, 5.5), (24, 5.5)]
    assert [e.step for e in train.Scalars('batch/loss')] == [4, 8, 12, 16, 20, 24]

def test_log_refuses_what_is_not_a_scalar():
    class Bad(Subscriber):
        def __init__(self, name, value): self.name, self.value = name, value
        def after_loss(self, learn): learn.log(self.name, self.value)
    for name, value, error, message in [('x', torch.ones(2), ValueError, "log expected 'x' to be a single real number, got a tensor of shape (2,)"),
                                        ('x', 'high', TypeError, "log expected 'x' to be a number or a one-element tensor, got 'high'"),
                                        ('x', True, TypeError, "log expected 'x' to be a number or a one-element tensor, got True"),
                                        (3, 1.0, TypeError, "log expected name to be a non-empty str of printable characters (it heads a column), got 3")]:
        with pytest.raises(error) as info: learner(Bad(name, value)).fit(1)
        assert str(info.value) == message
    with pytest.raises(ValueError, match="learn.log was given 'accuracy', a name the metrics log uses itself"):
        learner(Bad('accuracy', 1.0)).fit(1)

# -- stopping loses nothing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('stop_order', [-5, 0, 0.5, 1, 3, 200])
@pytest.mark.parametrize('stop_first', [True, False])
def test_early_stopping_in_any_order_lets_the_loggers_record_the_last_row(tmp_path, stop_order, stop_first):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    stop = EarlyStoppingS('accuracy', patience=2, restore_best=False)
    stop.order = stop_order
    class ScriptAccuracy(Subscriber):
        "Perfect predictions in the validation passes of epochs 0 and 1, useless ones from epoch 2: the stop comes at epoch 2."
        order = -1
        def after_loss(self, learn):
            if not learn.training: learn.preds = F.one_hot(learn.batch[1], 3).float() * (10.0 if learn.epoch < 2 else 0.0)
    loggers = [CSVLoggerS(tmp_path/'log.csv'), TensorBoardS(tmp_path/'tb')]
    subs = [stop, *loggers] if stop_first else [*loggers, stop]
    learn = learner(ScriptAccuracy(), *subs)
    learn.fit(6)
    assert stop.stopped_epoch == 2
    assert [r['epoch'] for r in read_rows(tmp_path/'log.csv')] == ['0', '1', '2']
    valid = EventAccumulator(str(tmp_path/'tb'/'valid')); valid.Reload()
    assert [e.step for e in valid.Scalars('metrics/accuracy')] == [12, 24, 36]

def test_a_cancelled_fit_writes_its_report(tmp_path):
    from datasets import DatasetDict
    from nntrain.dataloaders import load_mnist
    from nntrain.reports import ReportS
    dd = load_mnist()
    dls = DataLoaders.from_hf_dd(DatasetDict({'train': dd['train'].select(range(512)), 'test': dd['test'].select(range(256))}), 128)
    class StopAtEpoch1(Subscriber):
        def after_epoch(self, learn):
            if learn.epoch == 1 and not learn.training: raise CancelFitException()
    torch.manual_seed(0)
    learn = Learner(nn.Linear(784, 10), dls, subs=[MetricsS(), ReportS(tmp_path/'report', k_worst=4, n_samples=4), StopAtEpoch1()])
    learn.fit(5)
    assert [h['epoch'] for h in find_metrics(learn).history] == [0, 0, 1, 1]
    assert sorted(p.name for p in (tmp_path/'report').iterdir()) == sorted([
        'classification_report.json', 'classification_report.txt', 'confusion_matrix.png', 'history.png', 'roc.png',
        'samples_train.png', 'samples_valid.png', 'worst_samples.png'])
    report = json.loads((tmp_path/'report'/'classification_report.json').read_text())
    assert sum(row['support'] for row in report['classes'].values()) == 256   # the report is of the model as the stop left it

def test_a_stop_at_after_batch_lets_every_subscriber_see_that_batch():
    seen = []
    class Stop(Subscriber):
        order = -1
        def after_batch(self, learn):
            if learn.iteration == 3: raise CancelFitException()
    class Late(Subscriber):
        order = 10
        def after_batch(self, learn): seen.append(learn.iteration)
    learn = learner(Stop(), Late())
    learn.fit(2)
    assert seen == [1, 2, 3] and learn.iteration == 3

def test_terminate_on_nan_ignores_evaluation_passes():
    stop = TerminateOnNaNS()
    learn = learner(stop)
    learn.fit(1)
    nan_batches = [(torch.full((4, 5), float('nan')), torch.zeros(4, dtype=torch.long))]
    result = learn.evaluate(nan_batches)
    assert stop.stopped_at is None and result['loss'] != result['loss']   # the NaN loss is reported, not a stop

# -- resume leaves no duplicates ------------------------------------------------------------------------------------

def run_interrupted(tmp_path, kill_at, make_subs, epochs=3, **checkpoint):
    class Die(Subscriber):
        order = 500
        def after_batch(self, learn):
            if learn.training and learn.iteration == kill_at: raise RuntimeError('killed')
    with pytest.raises(RuntimeError, match='killed'):
        learner(*make_subs(tmp_path/'run'), CheckpointS(tmp_path/'ck', **checkpoint), Die()).fit(epochs)
    learn = learner(*make_subs(tmp_path/'run'), CheckpointS(tmp_path/'ck', **checkpoint))
    learn.fit(epochs, resume=tmp_path/'ck')
    return learn

@pytest.mark.parametrize('kill_at,checkpoint', [(13, {}), (14, {}), (20, {'every_batches': 6}), (25, {'every_batches': 4, 'every_epochs': None})])
def test_resume_leaves_history_and_csv_without_duplicates(tmp_path, kill_at, checkpoint):
    make = lambda folder: [CSVLoggerS(folder/'log.csv')]
    unbroken = learner(*make(tmp_path/'whole'))
    unbroken.fit(3)
    resumed = run_interrupted(tmp_path, kill_at, make, **checkpoint)
    assert find_metrics(resumed).history == find_metrics(unbroken).history
    assert (tmp_path/'run'/'log.csv').read_text() == (tmp_path/'whole'/'log.csv').read_text()
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), unbroken.model.parameters()))

def test_fit_one_cycle_resumes(tmp_path):
    whole = learner()
    fit_one_cycle(whole, 3, max_lr=0.5)
    class Die(Subscriber):
        def after_batch(self, learn):
            if learn.iteration == 20: raise RuntimeError('killed')
    with pytest.raises(RuntimeError, match='killed'):
        fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=7)), 3, max_lr=0.5, subs=[Die()])
    resumed = learner(CheckpointS(tmp_path, every_batches=7))
    fit_one_cycle(resumed, 3, max_lr=0.5, resume=tmp_path)
    assert resumed.iteration == 36
    assert all(torch.equal(p, q) for p, q in zip(resumed.model.parameters(), whole.model.parameters()))
    assert find_metrics(resumed).history == find_metrics(whole).history

# -- passes over any loader, iteration-based training without swapping ------------------------------------------------

def test_evaluate_and_get_preds_take_a_loader_and_leave_the_learner_alone():
    import nntrain.trial  # noqa: F401 (get_preds, evaluate)
    learn = learner()
    learn.fit(1)
    opt, dls, history = learn.opt, learn.dls, list(find_metrics(learn).history)
    other = data(n_valid=2, seed=5).valid
    preds, targets = learn.get_preds(other)
    assert preds.shape == (16, 3) and torch.equal(targets, torch.cat([y for _, y in other]))
    result = learn.evaluate(other)
    assert set(result) == {'loss', 'accuracy'} and result['loss'] == pytest.approx(F.cross_entropy(preds, targets).item(), rel=1e-5)
    assert learn.opt is opt and learn.dls is dls and find_metrics(learn).history == history and learn.iteration == 12

def test_fit_iterations_leaves_dls_train_in_place():
    learn = learner()
    original, seen = learn.dls.train, []
    class Look(Subscriber):
        def before_batch(self, learn): seen.append(learn.dls.train is original)
    fit_iterations(learn, 30, valid_every=10, subs=[Look()])
    assert learn.iteration == 30 and all(seen) and learn.dls.train is original
    assert [h['mode'] for h in find_metrics(learn).history] == ['train', 'eval'] * 3

def test_a_scheduler_spans_an_iteration_based_fit():
    from torch.optim.lr_scheduler import OneCycleLR
    learn = learner()
    lrs = []
    record = on('before_step')(lambda learn: lrs.append(learn.opt.param_groups[0]['lr']))
    fit_iterations(learn, 30, valid_every=10, subs=[SchedulerS(partial(OneCycleLR, max_lr=1.0)), record])
    assert len(lrs) == 30 and lrs[-1] < 1e-3 and max(lrs) == pytest.approx(1.0, rel=0.05)

def test_grad_accumulation_steps_at_each_pass_end_from_the_learners_pass_length():
    steps = []
    record = on('after_step')(lambda learn: steps.append(learn.iter))
    learner(GradAccumS(5), record).fit(1)
    assert steps == [4, 9, 11]

# -- progress written to a file -------------------------------------------------------------------------------------

def test_progress_piped_to_a_file_writes_one_line_per_pass(tmp_path):
    code = textwrap.dedent('''
        import torch, torch.nn.functional as F
        from torch import nn
        from nntrain.learner import Learner, MetricsS, ProgressS
        from nntrain.dataloaders import DataLoaders
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(50)]
        torch.manual_seed(0)
        Learner(nn.Linear(3, 2), DataLoaders(batches, batches[:5]), subs=[MetricsS(), ProgressS(plot=True)]).fit(20)
    ''')
    with open(tmp_path/'out.txt', 'w') as out:
        result = subprocess.run([sys.executable, '-c', code], stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path/'out.txt').read_text().splitlines()
    assert len(lines) == 41 and lines[0].split() == ['epoch', 'mode', 'loss']
    assert [line.split()[:2] for line in lines[1:3]] == [['1', 'train'], ['1', 'eval']] and lines[-1].split()[:2] == ['20', 'eval']
    assert (tmp_path/'out.txt').stat().st_size < 2000

# -- the first independent break-it pass (issue 11), each finding as a test ------------------------------------------

def test_evaluate_in_the_middle_of_a_training_pass_leaves_its_metrics_alone():
    import nntrain.trial  # noqa: F401
    other = [(torch.randn(5, 5), torch.randint(0, 3, (5,)))]
    def run(call):
        class Evaluates(Subscriber):
            in_evaluation = False
            def after_batch(self, learn):
                if call and learn.training and learn.iter == 1: learn.evaluate(other); learn.get_preds(other)
        learn = learner(Evaluates())
        learn.fit(2)
        return find_metrics(learn).history, [p.detach().clone() for p in learn.model.parameters()]
    (plain, w1), (called, w2) = run(False), run(True)
    assert plain == called and all(torch.equal(a, b) for a, b in zip(w1, w2))

def test_evaluate_over_a_dataloader_inside_a_fit_draws_no_randomness_the_fit_sees():
    import nntrain.trial  # noqa: F401
    from torch.utils.data import DataLoader, TensorDataset
    def run(call):
        torch.manual_seed(0)
        train = DataLoader(TensorDataset(torch.randn(32, 5), torch.randint(0, 3, (32,))), batch_size=8, shuffle=True)
        test = DataLoader(TensorDataset(torch.randn(10, 5), torch.randint(0, 3, (10,))), batch_size=5)
        class EvalEachEpoch(Subscriber):
            in_evaluation = False
            def after_epoch(self, learn):
                if call and learn.training: learn.evaluate(test)
        torch.manual_seed(1)
        learn = Learner(nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 3)), DataLoaders(train, test), subs=[EvalEachEpoch()])
        learn.fit(3)
        return learn.model[0].weight.detach().clone(), torch.rand(1)
    (w1, after1), (w2, after2) = run(False), run(True)
    assert torch.equal(w1, w2) and torch.equal(after1, after2)

class LogsIteration(Subscriber):
    def after_batch(self, learn):
        if learn.training: learn.log('it', float(learn.iteration)); learn.log('half', torch.tensor(learn.iteration / 2))

@pytest.mark.parametrize('kill_at', [10, 12, 13])
def test_logged_values_survive_a_resume_mid_epoch(tmp_path, kill_at):
    make = lambda folder: [LogsIteration(), CSVLoggerS(folder/'log.csv')]
    unbroken = learner(*make(tmp_path/'whole'))
    unbroken.fit(3)
    resumed = run_interrupted(tmp_path, kill_at, make, every_batches=4)
    assert find_metrics(resumed).history == find_metrics(unbroken).history
    assert (tmp_path/'run'/'log.csv').read_text() == (tmp_path/'whole'/'log.csv').read_text()

def test_resume_refuses_train_false_and_another_lr(tmp_path):
    learner(CheckpointS(tmp_path)).fit(2)
    for kwargs, given in (({'train': False}, 'train=False'), ({'lr': 0.5}, 'lr=0.5')):
        with pytest.raises(ValueError) as info: learner().fit(3, resume=tmp_path, **kwargs)
        assert str(info.value) == (f"fit(resume=...) continues the checkpoint's run, its training and its optimizer (learning rate included); "
                                   f"got {given} with it: leave it out to resume, or start a new fit without resume")
    with pytest.raises(TypeError, match="fit expected resume to be a checkpoint file or a folder of them"): learner().fit(3, resume='')

def test_logged_numbers_keep_their_precision_and_complex_is_refused():
    class Logs(Subscriber):
        def __init__(self, value): self.value = value
        def after_loss(self, learn): learn.log('x', self.value)
    for value, expected in ((0.1, 0.1), (123456789, 123456789.0), (torch.tensor(1e8 + 1, dtype=torch.float64), 1e8 + 1)):
        learn = learner(Logs(value)); learn.fit(1)
        assert find_metrics(learn).history[0]['x'] == pytest.approx(expected, rel=1e-14, abs=0)   # float64, not float32
    with pytest.raises(ValueError, match=r"log expected 'x' to be a single real number, got a complex tensor of shape \(\)"):
        learner(Logs(torch.tensor(1 + 2j))).fit(1)

def test_values_logged_later_reach_the_table_and_a_declared_csv_column(tmp_path, capsys):
    class Late(Subscriber):
        def after_batch(self, learn):
            if not learn.training: learn.log('valid_only', 1.0)
            if learn.training and learn.epoch >= 1: learn.log('late', 2.0)
    learner(Late(), ProgressS(plain=True), CSVLoggerS(tmp_path/'log.csv', logged=['late'])).fit(2)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines == [['epoch', 'mode', 'loss', 'accuracy'], lines[1], ['epoch', 'mode', 'loss', 'accuracy', 'valid_only'], lines[3],
                     ['epoch', 'mode', 'loss', 'accuracy', 'valid_only', 'late'], lines[5], lines[6]]   # a new header when a value first appears
    assert [(row[:2], len(row)) for row in (lines[1], lines[3], lines[5], lines[6])] == [(['1', 'train'], 4), (['1', 'eval'], 5), (['2', 'train'], 5), (['2', 'eval'], 5)]   # an empty valid_only cell
    assert lines[3][-1] == '1.000' and lines[5][-1] == '2.000' 
    rows = read_rows(tmp_path/'log.csv')
    assert [r['train_late'] for r in rows] == ['', '2'] and [r['valid_valid_only'] for r in rows] == ['1', '1']
    with pytest.raises(TypeError, match=r"CSVLoggerS expected logged to be names \(str\) of values given to learn.log, got \[3\]"):
        CSVLoggerS(tmp_path/'x.csv', logged=[3])

def test_log_where_no_pass_reads_it_is_refused_or_warned():
    learn = learner()
    with pytest.raises(RuntimeError, match=r"log\('x'\) was called outside a pass"): learn.log('x', 1.0)
    class AtFit(Subscriber):
        def before_fit(self, learn): learn.log('x', 1.0)
    with pytest.raises(RuntimeError, match=r"log\('x'\) was called outside a pass"): learner(AtFit()).fit(1)
    class AfterMetrics(Subscriber):
        order = MetricsS.order + 1
        def after_epoch(self, learn): learn.log('late', 1.0)
    with pytest.raises(RuntimeError, match="after MetricsS had read the pass's log at after_epoch"): learner(AfterMetrics()).fit(1)
    class Logs(Subscriber):
        def after_loss(self, learn): learn.log('x', 1.0)
    bare = Learner(nn.Linear(5, 3), data(), subs=[Logs()])
    with pytest.warns(UserWarning, match=r"learn.log was given \['x'\], but no MetricsS takes part in this fit") as caught: bare.fit(2)
    assert len(caught) == 1

def test_every_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="@every\\(2\\) on .*before_fit: expected a batch event .* before_fit happens once per fit"):
        class AtFit(Subscriber):
            @every(2)
            def before_fit(self, learn): pass
    with pytest.raises(ValueError, match=r"after_batch is declared @every twice \(3 and 2\); expected one frequency"):
        class Twice(Subscriber):
            @every(2)
            @every(3)
            def after_batch(self, learn): pass
    class Missing(Subscriber):
        @every('nope')
        def after_batch(self, learn): pass
    with pytest.raises(AttributeError) as info: learner(Missing())
    assert str(info.value) == ("Missing.after_batch is declared @every('nope'), but Missing has no attribute 'nope'; "
                               "expected it to hold the frequency (an int >= 1, or None: never)")
    with pytest.raises(ValueError, match="or the name of the subscriber's attribute that holds it, got None"): every(None)
    with pytest.raises(ValueError, match="before_fit happens once per fit"): on('before_fit', every=2)(lambda learn: None)

def test_evaluate_from_a_subscriber_that_takes_part_in_evaluation_says_so():
    import nntrain.trial  # noqa: F401
    class EvalEachEpoch(Subscriber):
        def after_epoch(self, learn): learn.evaluate()
    with pytest.raises(RuntimeError, match="evaluation was called during an evaluation pass .* expected `in_evaluation = False`"):
        learner(EvalEachEpoch()).fit(1)
    with pytest.raises(TypeError, match="evaluation expected dl to be an iterable of batches .*, got 5"): learner().get_preds(5)
    with pytest.raises(TypeError, match=r"got a DataLoaders \(pass one of its loaders, e.g. dls.valid\)"): learner().evaluate(data())
    no_valid = learner(dls=DataLoaders(data().train, None))
    with pytest.raises(ValueError, match=r"evaluate has no loader to run over: .*expected evaluate\(dl\)"): no_valid.evaluate()

def test_a_stop_at_after_fit_publishes_no_after_cancel_fit():
    events = []
    class Stop(Subscriber):
        def after_fit(self, learn): events.append('after_fit'); raise CancelFitException()
        def after_cancel_fit(self, learn): events.append('after_cancel_fit')
        def cleanup_fit(self, learn): events.append('cleanup_fit')
    learner(Stop()).fit(1)
    assert events == ['after_fit', 'cleanup_fit']

def test_the_last_short_block_of_an_iteration_fit_has_its_own_length():
    lengths = []
    record = on('before_batch')(lambda learn: lengths.append(learn.n_batches) if learn.training else None)
    fit_iterations(learner(), 10, valid_every=3, subs=[record])
    assert lengths == [3] * 9 + [1]

def test_orders_that_do_not_sort_are_refused():
    for order in (float('nan'), True):
        sub = Subscriber(); sub.order = order
        with pytest.raises(TypeError, match="expected each subscriber to be an instance with a numeric order"): learner(sub)

# -- the second independent break-it pass (issue 11) ---------------------------------------------------------------

def scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder)); events.Reload()
    return [(e.step, round(e.value, 5)) for e in events.Scalars(tag)] if tag in events.Tags()['scalars'] else []

def test_tensorboard_after_a_kill_and_resume_has_each_point_once(tmp_path):
    import os, signal
    make = lambda folder: [TensorBoardS(folder/'tb', log_every=2)]
    whole = learner(*make(tmp_path/'whole'))
    whole.fit(3)
    code = textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_run_state import learner, TensorBoardS, CheckpointS, Subscriber
        from pathlib import Path
        class Kill(Subscriber):
            order = 500
            def after_batch(self, learn):
                if learn.training and learn.iteration == 31: os.kill(os.getpid(), signal.SIGKILL)
        learner(TensorBoardS(Path({str(tmp_path)!r})/'run'/'tb', log_every=2), CheckpointS(Path({str(tmp_path)!r})/'ck', every_batches=5, every_epochs=None), Kill()).fit(3)
    ''')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    resumed = learner(*make(tmp_path/'run'), CheckpointS(tmp_path/'ck', every_batches=5, every_epochs=None))
    resumed.fit(3, resume=tmp_path/'ck')                        # the checkpoint at 30: points 26-30 were noted, not written
    for mode, tag in (('train', 'batch/loss'), ('train', 'metrics/loss'), ('valid', 'metrics/accuracy')):
        assert scalars(tmp_path/'run'/'tb'/mode, tag) == scalars(tmp_path/'whole'/'tb'/mode, tag), tag

def test_two_fits_in_the_same_second_keep_both_event_files(tmp_path):
    learn = learner(TensorBoardS(tmp_path/'tb'))
    learn.fit(1); learn.fit(1)
    assert len(list((tmp_path/'tb'/'valid').iterdir())) == 2
    assert [step for step, _ in scalars(tmp_path/'tb'/'valid', 'metrics/loss')] == [12, 12]

def test_a_header_cut_past_the_metric_columns_is_written_afresh(tmp_path):
    class Logs(Subscriber):
        def after_loss(self, learn): learn.log('x', 1.0)
    learner(Logs(), CSVLoggerS(tmp_path/'whole.csv')).fit(1)
    whole = (tmp_path/'whole.csv').read_text()
    header = whole.splitlines()[0]
    for cut in (header[:-3], header[:len('epoch,iteration,lr,train_loss,train_accuracy,valid_loss,valid_accuracy,')], header):
        (tmp_path/'cut.csv').write_text(cut)      # what a kill during the first write leaves
        learner(Logs(), CSVLoggerS(tmp_path/'cut.csv')).fit(1)
        assert (tmp_path/'cut.csv').read_text() == whole, cut

def test_fit_one_cycle_resumed_with_another_length_is_refused_before_training(tmp_path):
    class Stop(Subscriber):
        def after_batch(self, learn):
            if learn.iteration == 10: raise CancelFitException()
    fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=3)), 3, 0.4, subs=[Stop()])
    fresh = learner(CheckpointS(tmp_path, every_batches=3))
    before = [p.detach().clone() for p in fresh.model.parameters()]
    from nntrain.core import CheckpointError
    with pytest.raises(CheckpointError, match=r"the checkpoint's OneCycleLR has another schedule: total_steps=36 in the checkpoint, 60 now"):
        fit_one_cycle(fresh, 5, 0.4, resume=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.model.parameters()))

def test_checkpoints_that_would_never_be_written_are_refused(tmp_path):
    with pytest.raises(ValueError) as info: CheckpointS(tmp_path, every_batches=None, every_epochs=None)
    assert str(info.value) == "CheckpointS expected every_batches, every_epochs or monitor; with none of them it never writes a checkpoint"
    CheckpointS(tmp_path, every_batches=None, every_epochs=None, monitor='loss')   # best.pt alone is a choice

def test_log_refuses_bool_tensors_like_bools():
    class Logs(Subscriber):
        def after_loss(self, learn): learn.log('flag', torch.tensor(True))
    with pytest.raises(ValueError, match=r"log expected 'flag' to be a single real number, got a bool tensor of shape \(\)"): learner(Logs()).fit(1)

def test_fit_one_cycle_resumed_with_another_max_lr_is_refused(tmp_path):
    class Stop(Subscriber):
        def after_batch(self, learn):
            if learn.iteration == 10: raise CancelFitException()
    fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=3)), 3, 0.4, subs=[Stop()])
    from nntrain.core import CheckpointError
    with pytest.raises(CheckpointError, match=r"the checkpoint's OneCycleLR has another schedule: max_lr=0.4 in the checkpoint, 0.1 now"):
        fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=3)), 3, 0.1, resume=tmp_path)
    resumed = learner(CheckpointS(tmp_path, every_batches=3))
    fit_one_cycle(resumed, 3, 0.4, resume=tmp_path)        # the same arguments resume
    assert resumed.iteration == 36

def test_tensorboard_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno, os
    from tensorboardX.event_file_writer import EventsWriter
    real = EventsWriter.write_event
    def full(self, event):
        if event.HasField('summary'): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, event)
    monkeypatch.setattr(EventsWriter, 'write_event', full)
    with pytest.raises(OSError) as info: learner(TensorBoardS(tmp_path/'tb')).fit(1)
    message = str(info.value)
    assert message.startswith(f"[Errno {errno.ENOSPC}] TensorBoardS cannot write {tmp_path/'tb'/'train'}/events.out.tfevents.")
    assert message.endswith(": disk full (No space left on device)")

# -- the third independent break-it pass (issue 11) ----------------------------------------------------------------

@pytest.mark.parametrize('event', ['before_batch', 'after_predict', 'after_loss', 'after_backward', 'after_batch'])
@pytest.mark.parametrize('make', [lambda: __import__('nntrain.acceleration', fromlist=['GradAccumS']).GradAccumS(3),
                                  lambda: __import__('nntrain.acceleration', fromlist=['MixedPrecisionS']).MixedPrecisionS()])
def test_evaluate_inside_a_batch_leaves_accumulation_and_autocast_alone(event, make):
    import nntrain.trial  # noqa: F401
    def run(call):
        class Probe(Subscriber):
            in_evaluation, order = False, 50
        if call: setattr(Probe, event, lambda self, learn: learn.evaluate(learn.dls.valid))
        learn = learner(make(), Probe())
        learn.fit(1)
        return learn.model.weight.detach().clone(), torch.is_autocast_enabled('cpu')
    (w0, a0), (w1, a1) = run(False), run(True)
    assert torch.equal(w0, w1) and (a0, a1) == (False, False)

def test_csv_logged_columns_are_checked_against_the_file(tmp_path):
    class Logs(Subscriber):
        def __init__(self, name): self.name = name
        def after_loss(self, learn): learn.log(self.name, 1.0)
    learner(Logs('x'), CSVLoggerS(tmp_path/'log.csv', logged=['x'])).fit(1)
    before = (tmp_path/'log.csv').read_bytes()
    with pytest.raises(ValueError, match=r"has no column 'train_y' for the logged value 'y'; expected the columns the file has"):
        learner(Logs('y'), CSVLoggerS(tmp_path/'log.csv', logged=['y'])).fit(1)
    assert (tmp_path/'log.csv').read_bytes() == before
    for bad in (None, 3, ['a\nb'], b'x'):
        with pytest.raises(TypeError, match="CSVLoggerS expected logged to be names"): CSVLoggerS(tmp_path/'x.csv', logged=bad)
    with pytest.raises(ValueError, match=r"CSVLoggerS\(logged=\['loss'\]\): 'loss' is a name the metrics log uses itself"):
        learner(CSVLoggerS(tmp_path/'z.csv', logged=['loss'])).fit(1)

def test_log_names_must_be_printable():
    class Logs(Subscriber):
        def after_loss(self, learn): learn.log('a\nb', 1.0)
    with pytest.raises(TypeError, match="log expected name to be a non-empty str of printable characters"): learner(Logs()).fit(1)

def test_a_schedule_of_other_phases_is_refused_and_a_dropped_scheduler_state_warned(tmp_path):
    from nntrain.core import CheckpointError
    class Stop(Subscriber):
        def after_batch(self, learn):
            if learn.iteration == 10: raise CancelFitException()
    fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=3)), 3, 0.4, subs=[Stop()])
    with pytest.raises(CheckpointError, match="the checkpoint's OneCycleLR has another schedule: _schedule_phases="):
        fit_one_cycle(learner(CheckpointS(tmp_path, every_batches=3)), 3, 0.4, resume=tmp_path, pct_start=0.5)
    with pytest.warns(UserWarning, match="holds the state of a subscriber SchedulerS, which this learner does not have"):
        learner(CheckpointS(tmp_path, every_batches=3)).fit(3, resume=tmp_path)

def test_every_says_what_it_decorates():
    with pytest.raises(TypeError, match=r"@every decorates a subscriber's event method, got .*on\(event, every=3\)"):
        every(3)(on('after_batch')(lambda learn: None))
    with pytest.raises(ValueError, match=r"@every\(3\) decorates an event method .*h, which is not one .*on\(event, every=3\)"):
        def h(learn): pass
        every(3)(h)
    with pytest.raises(ValueError, match=r"got .*helper, which is not one"):
        class S(Subscriber):
            @every(2)
            def helper(self, learn): pass
