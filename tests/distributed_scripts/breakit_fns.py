"Functions run in every process by tests/test_distributed_breakit.py (through `launch`, started with spawn: they must be importable)."
import os, signal
import torch
from torch import nn
from nntrain.checkpoints import CheckpointS
from nntrain.dataloaders import DataLoaders, TensorLoader
from nntrain.distributed import DistributedS, join_process_group
from nntrain.learner import Learner, MetricsS

def fit(rows_of_rank1=64, checkpoint_on_rank0_only=None):
    rank = int(os.environ['RANK'])
    torch.manual_seed(0)
    n = rows_of_rank1 if rank == 1 else 64
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    dls = DataLoaders(TensorLoader({'x': x, 'y': y}, 8, shuffle=True, seed=1), TensorLoader({'x': x, 'y': y}, 16))
    subs = [MetricsS(), DistributedS(timeout=30)]
    if checkpoint_on_rank0_only and rank == 0: subs.append(CheckpointS(checkpoint_on_rank0_only))
    Learner(nn.Linear(5, 3), dls, lr=0.1, subs=subs).fit(1)
    return rank

def returns_a_lambda():
    join_process_group()
    return lambda: 1

def rank1_killed():
    rank, _ = join_process_group()
    if rank == 1: os.kill(os.getpid(), signal.SIGKILL)
    torch.distributed.barrier()
    return rank

class Scaled(nn.Module):
    "A linear layer times a learnable 0-d temperature, which FSDP2 cannot shard."
    def __init__(self):
        super().__init__()
        self.linear, self.temperature = nn.Linear(5, 3), nn.Parameter(torch.tensor(1.0))
    def forward(self, x): return self.linear(x) * self.temperature

def _tied():
    "An embedding and an output layer that share one weight."
    embedding, out = nn.Embedding(7, 4), nn.Linear(4, 7, bias=False)
    out.weight = embedding.weight
    return nn.Sequential(embedding, nn.Tanh(), out)

def fsdp_fit(kind='tied', folder=None, **kwargs):
    "Fit a model of `kind` ('tied', 'scalar') sharded by FSDP2; return (rank, its largest weight difference to the same fit alone, in this process); with `folder`, also save and load at once on every rank."
    rank = int(os.environ['RANK'])
    def make():
        torch.manual_seed(0)
        return _tied() if kind == 'tied' else Scaled()
    def loaders():
        g = torch.Generator().manual_seed(5)
        x = torch.randint(0, 7, (64,), generator=g) if kind == 'tied' else torch.randn(64, 5, generator=g)
        y = torch.randint(0, 7 if kind == 'tied' else 3, (64,), generator=g)
        return DataLoaders(TensorLoader({'x': x, 'y': y}, 8, shuffle=True, seed=1), TensorLoader({'x': x, 'y': y}, 16))
    learn = Learner(make(), loaders(), lr=0.1, subs=[MetricsS(), DistributedS(timeout=30, strategy='fsdp', **kwargs)])
    learn.fit(2)
    whole = learn.state_dict()['model']
    if folder is not None:   # plain SGD: an optimizer without state; the load comes right after the save, on every rank
        learn.save(os.path.join(folder, 'saved.pt'))
        learn.load(os.path.join(folder, 'saved.pt'))
    alone = make()
    Learner(alone, loaders(), lr=0.1).fit(2, valid=False)
    if rank != 0: return rank, None
    return rank, max((whole[k] - v).abs().max().item() for k, v in alone.state_dict().items())

def fsdp_early(folder):
    "EarlyStoppingS(restore_best=True) with checkpoints under FSDP2: fit(2), then fit(3, resume=...) in a new learner, against fit(3) unbroken; rank 0's whole weights of both."
    from nntrain.checkpoints import EarlyStoppingS
    def run(where, epochs, resume=None):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(5)
        x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
        dls = DataLoaders(TensorLoader({'x': x, 'y': y}, 8, shuffle=True, seed=1), TensorLoader({'x': x, 'y': y}, 16))
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        subs = [MetricsS(), EarlyStoppingS(patience=5), CheckpointS(where), DistributedS(timeout=30, strategy='fsdp')]
        learn = Learner(model, dls, lr=0.1, optim_class=torch.optim.Adam, subs=subs)
        learn.fit(epochs, resume=resume)
        return learn.state_dict()['model']
    run(os.path.join(folder, 'a'), 2)
    resumed = run(os.path.join(folder, 'a'), 3, resume=os.path.join(folder, 'a'))
    unbroken = run(os.path.join(folder, 'b'), 3)
    return resumed, unbroken
