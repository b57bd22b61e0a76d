"""User code written only against SPEC §2-§3, run unmodified as a plain script in a fresh process."""
import textwrap
from conftest import run_python

SPEC_SCRIPT = textwrap.dedent('''
    import math, torch, torch.nn.functional as F
    from torch import nn
    from torcheval.metrics import MulticlassAccuracy
    from nntrain.dataloaders import *
    from nntrain.learner import *

    torch.manual_seed(0)
    dd = load_mnist()
    dls = DataLoaders.from_hf_dd(dd, 64, collate_fn=hf_ds_collate_fn)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (64, 784) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert next(iter(dls.valid))[0].shape == (128, 784)
    assert hf_ds_collate_fn([dd['train'][0]], flatten=False)[0].shape == (1, 1, 28, 28)
    assert isinstance(DataLoaders(dls.train, dls.valid).train, type(dls.train))

    class CountBatches(Subscriber):
        order = 5
        def before_fit(self, learn): self.n = 0
        def after_batch(self, learn): self.n += 1

    class StopAfter(Subscriber):
        def after_epoch(self, learn):
            if not learn.model.training: raise CancelFitException()

    class SkipOdd(Subscriber):
        def before_batch(self, learn):
            if learn.iter % 2: raise CancelBatchException()

    class ShortEpoch(Subscriber):
        def before_batch(self, learn):
            if learn.iter == 4: raise CancelEpochException()

    class TimedLearner(Learner):
        @PublishEvents('forward')
        def predict(self): self.preds = self.model(self.batch[0])

    class Seen(Subscriber):
        def __init__(self): self.events = []
        def before_forward(self, learn): self.events.append('before_forward')
        def after_forward(self, learn): self.events.append('after_forward')
        def after_predict(self, learn): self.events.append('after_predict')

    model = nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
    metrics = MetricsS(accuracy=MulticlassAccuracy())
    learn = Learner(model, dls, F.cross_entropy, torch.optim.SGD, 0.1, [metrics, DeviceS('cpu'), ProgressS()])
    learn.fit(1, lr=1e-4, subs=[lrf := LRFindS()])
    assert len(lrf.lrs) > 3 and len(learn.subs) == 3
    lrf.plot()
    counter = CountBatches()
    learn.fit(2, subs=[counter, StopAfter()])
    assert counter.n == len(dls.train) + len(dls.valid), counter.n
    assert learn.metrics is metrics and learn.n_epochs == 2 and learn.epoch == 0
    learn.fit(1, valid=False, subs=[counter, SkipOdd(), ShortEpoch()])
    assert counter.n == 2, counter.n   # batches 0 and 2 complete; 1 and 3 skipped; the pass ends at 4
    learn.fit(1, train=False)
    assert isinstance(learn.opt, torch.optim.SGD) and learn.loss.ndim == 0 and learn.preds.shape[1] == 10

    seen = Seen()
    TimedLearner(nn.Linear(784, 10), dls, F.cross_entropy, torch.optim.SGD, 0.1, [seen]).fit(1, valid=False, subs=[ShortEpoch()])
    assert seen.events == ['before_forward', 'after_forward', 'after_predict'] * 4, seen.events

    mom = MomentumLearner(nn.Linear(784, 10), dls, F.cross_entropy, torch.optim.SGD, 0.01, [metrics], mom=0.9)
    mom.fit(1)
    assert metrics.history[-1]['mode'] == 'eval' and metrics.history[-1]['accuracy'] > 0.5
    print('spec script ok')
''')


def test_spec_script_runs_unmodified(tmp_path):
    result = run_python(SPEC_SCRIPT, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'spec script ok' in result.stdout
    # the fits with ProgressS show a table instead of MetricsS's printed dicts; the MomentumLearner, which shares that
    # MetricsS without a ProgressS, prints its two logs (nothing was rebound for good by the earlier fits)
    printed = [line for line in result.stdout.splitlines() if line.startswith("{'epoch'")]
    assert [line.split(',')[:2] for line in printed] == [["{'epoch': 0", " 'mode': 'train'"], ["{'epoch': 0", " 'mode': 'eval'"]], printed
    assert 'accuracy' in result.stdout
