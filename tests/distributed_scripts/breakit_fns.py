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
