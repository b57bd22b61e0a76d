"""One fit for tests/test_distributed.py: `python worker.py CONFIG.json`, alone or as one rank of a torchrun job.

The config (a JSON dict) says which data, loader, model and subscribers; each rank writes what it saw and ended with
to OUT/rank{RANK}.pt, and its pid to OUT/pid{RANK}.{RESTART} as soon as it starts (the SIGKILL test reads it)."""
import faulthandler, json, os, signal, sys, time
from pathlib import Path

import torch
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from nntrain.checkpoints import CheckpointS, EarlyStoppingS, TerminateOnNaNS
from nntrain.dataloaders import DataLoaders, TensorLoader
from nntrain.distributed import DistributedS
from nntrain.learner import Learner, MetricsS, Subscriber

faulthandler.register(signal.SIGUSR1)   # `kill -USR1 PID` prints where a hung rank is
faulthandler.enable()   # and a crash in C++ (SIGABRT, SIGSEGV) where it happened
cfg = json.loads(Path(sys.argv[1]).read_text())
rank, restart = int(os.environ.get('RANK', 0)), int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))
out = Path(cfg['out'])
out.mkdir(parents=True, exist_ok=True)
(out/f'pid{rank}.{restart}').write_text(str(os.getpid()))

data = torch.load(cfg['data'])   # {'train': {'image', 'label', 'index'}, 'valid': {...}}: uint8 images, int64 labels and row numbers
train = {k: v[:cfg.get('n_train')] for k, v in data['train'].items()}
valid = {k: v[:cfg.get('n_valid')] for k, v in data['valid'].items()}
bs, valid_bs = cfg.get('bs', 64), cfg.get('valid_bs', 333)

def as_float(columns):
    return columns['image'].flatten(1).float() / 255, columns['label'], columns['index']

loader = cfg.get('loader', 'tensor')
if loader == 'tensor':
    dls = DataLoaders(TensorLoader(train, bs, shuffle=True, seed=1), TensorLoader(valid, valid_bs))
elif loader == 'dataloader':   # a plain PyTorch DataLoader over a map-style dataset, shuffled by PyTorch
    from torch.utils.data import DataLoader, TensorDataset
    dls = DataLoaders(DataLoader(TensorDataset(*as_float(train)), batch_size=bs, shuffle=True),
                      DataLoader(TensorDataset(*as_float(valid)), batch_size=valid_bs))
elif loader == 'maploader':    # chapter 14's MapLoader, with a per-sample random augmentation
    from nntrain.pipelines import MapLoader
    def rows(columns): return [{'image': x, 'label': int(y), 'index': int(i)} for x, y, i in zip(*as_float(columns))]
    def noise(row):
        row['image'] = row['image'] + 0.05 * torch.randn(row['image'].shape)
        return row
    columns = ['image', 'label', 'index']
    dls = DataLoaders(MapLoader(rows(train), bs, [noise], columns=columns, shuffle=True, seed=1),
                      MapLoader(rows(valid), valid_bs, columns=columns))
elif loader == 'list':         # batches made beforehand: the same on every rank, so DistributedS refuses them
    x, y, i = as_float(train)
    batches = [(x[s:s + bs], y[s:s + bs], i[s:s + bs]) for s in range(0, len(y), bs)]
    dls = DataLoaders(batches, batches[:1])
else: raise ValueError(f'unknown loader {loader!r}')

torch.manual_seed(0)   # the same initial weights everywhere (DDP would broadcast rank 0's anyway)
# a smooth activation: at ReLU's kink a rounding difference of 1e-7 between world sizes (gradients added up in another
# order) can flip one row's gradient and move a weight by 5e-5, which would hide what the tests compare
layers = [nn.Linear(784, 32)] + ([nn.BatchNorm1d(32)] if cfg.get('batchnorm') else []) + [nn.Tanh()] + ([nn.Dropout(0.3)] if cfg.get('dropout') else []) + [nn.Linear(32, 10)]
model = nn.Sequential(*layers)
torch.manual_seed(1000 + rank)   # every rank draws its own dropout masks: its own random state matters for a resume

class SeenS(Subscriber):
    "What this rank's model saw: rows and row numbers per pass, training batches, and the loss of each training batch."
    order = 30
    def __init__(self): self.passes, self.losses = [], []
    def before_epoch(self, learn): self.passes.append({'epoch': learn.epoch, 'training': learn.training, 'rows': 0, 'index': []})
    def after_batch(self, learn):
        rows = len(learn.batch[1])
        self.passes[-1]['rows'] += rows
        self.passes[-1]['index'] += learn.batch[2].tolist()
        if learn.training: self.losses.append(learn.loss.item())
        if cfg.get('slow') and learn.training: time.sleep(cfg['slow'])   # room for the test to kill a process mid-fit

class RaiseOnRankS(Subscriber):
    "Raise on one rank only, at one training iteration."
    def after_batch(self, learn):
        if rank == cfg['raise_on_rank'] and learn.training and learn.iteration == cfg.get('raise_at', 3):
            raise ValueError(f'rank {rank} fails at iteration {learn.iteration}')

class NaNOnRankS(Subscriber):
    "Make the loss NaN on one rank only, at one training iteration (before TerminateOnNaNS looks at it)."
    order = -20
    def after_loss(self, learn):
        if rank == cfg['nan_on_rank'] and learn.training and learn.iteration == cfg.get('nan_at', 5): learn.loss = learn.loss * float('nan')

metrics, seen = MetricsS(accuracy=MulticlassAccuracy()), SeenS()
subs = [metrics, seen]
if cfg.get('rejoin_delay') and restart and rank == 1: time.sleep(cfg['rejoin_delay'])   # a restarted rank slow to rejoin
strategy = cfg.get('strategy', 'ddp')   # 'fsdp': the model sharded by FSDP2, one unit per Linear
if cfg.get('distributed', True): subs.append(DistributedS(timeout=cfg.get('pg_timeout', 120), strategy=strategy))
names = cfg.get('subs', [])
folder = out/'checkpoints' if cfg.get('folder') is None else Path(cfg['folder'])
if 'checkpoint' in names: subs.append(CheckpointS(folder, every_batches=cfg.get('every_batches'), every_epochs=1, keep=cfg.get('keep', 2)))
if 'loggers' in names:
    from nntrain.learner import ProgressS
    from nntrain.logging import ConsoleLogS, CSVLoggerS, TensorBoardS
    subs += [CSVLoggerS(out/'log.csv'), TensorBoardS(out/'tb', log_every=10), ConsoleLogS(out/'console.txt'), ProgressS(plain=True)]
early = EarlyStoppingS(patience=1, min_delta=10., restore_best=False) if 'early' in names else None
terminate = TerminateOnNaNS() if 'terminate' in names else None
subs += [s for s in (early, terminate) if s is not None]
if 'raise' in names: subs.append(RaiseOnRankS())
if 'nan' in names: subs.append(NaNOnRankS())
if 'gradaccum' in names:
    from nntrain.acceleration import GradAccumS
    subs.append(GradAccumS(2))
if 'mixed_clip' in names:
    from nntrain.acceleration import GradClipS, MixedPrecisionS
    subs += [MixedPrecisionS(), GradClipS(0.5)]

if 'report' in names:
    from nntrain.reports import ReportS
    subs.append(ReportS(out/'report'))

# 'adam': an optimizer with state (moments and a step count) that a checkpoint must carry across strategies and world sizes
optim = {'optim_class': torch.optim.Adam} if cfg.get('adam') else {}
learn = Learner(model, dls, lr=cfg.get('lr', 0.1), subs=subs, **optim)
resume = folder if cfg.get('resume') and folder.is_dir() and any(folder.glob('checkpoint-*.pt')) else None
learn.fit(cfg.get('epochs', 1), resume=resume)
if cfg.get('refit'): learn.fit(1)   # a second fit of the same learner (with FSDP2: of a model sharded already)

# a sharded model's whole weights come from the learner's state (a collective: rank 0 gets them, the others nothing)
weights = learn.state_dict()['model'] if strategy == 'fsdp' and cfg.get('distributed', True) else model.state_dict()
torch.save({'history': metrics.history, 'weights': {k: v.clone() for k, v in weights.items()}, 'passes': seen.passes,
            'losses': seen.losses, 'resumed_from': None if resume is None else str(resume), 'restart': restart,
            'early_stopped_epoch': None if early is None else early.stopped_epoch,
            'nan_stopped_at': None if terminate is None else terminate.stopped_at,
            'iteration': learn.iteration, 'world_size': int(os.environ.get('WORLD_SIZE', 1))}, out/f'rank{rank}.pt')
