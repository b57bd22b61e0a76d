from __future__ import annotations

import copy
import datetime
import functools
import logging
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

from nntrain.core import _check_int, _check_shard, _describe, gather_objects, main_process, rng_state
from nntrain.dataloaders import TensorLoader
from nntrain.learner import DeviceS, Subscriber
from nntrain.pipelines import MapLoader, ReservoirLoader, StreamLoader
def launched() -> bool:
    "Whether this process was started by `torchrun` (or `launch`, or another launcher that sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`)."
    return all(name in os.environ for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'))

def _local_device(backend: str) -> torch.device:
    "This process's device: its own GPU (`LOCAL_RANK`) with NCCL, else the CPU."
    if backend != 'nccl': return torch.device('cpu')
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    torch.cuda.set_device(device)
    return device

def join_process_group(backend: str | None = None, timeout: float = 120) -> tuple[int, int]:
    "Join the job's process group (NCCL on GPUs, gloo on CPUs) once, from the launcher's environment; return (rank, world size)."
    if not dist.is_initialized():
        if not launched():
            raise RuntimeError("join_process_group found no launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); "
                               "expected a process started by torchrun, `nntrain fit --nproc N` or nntrain.distributed.launch")
        backend = backend or ('nccl' if torch.cuda.is_available() and dist.is_nccl_available() else 'gloo')
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()
class _EmptyShare:
    "The index a rank is given when its share of a batch is empty: one row of the batch, to be collated and then cut to no rows."
    def __init__(self, index: int): self.index = index

class _NoRows:
    "A sample read for an empty share: collated like the others, then cut to zero rows."
    def __init__(self, sample): self.sample = sample

class _Shares(torch.utils.data.Dataset):
    "A map-style dataset read through a sharded batch sampler: an `_EmptyShare` index gives its row marked."
    def __init__(self, dataset): self.dataset = dataset
    def __len__(self): return len(self.dataset)
    def __getitem__(self, index):
        return _NoRows(self.dataset[index.index]) if isinstance(index, _EmptyShare) else self.dataset[index]

def _cut(batch):
    "`batch` with every tensor cut to its first zero rows (shapes and types kept)."
    if isinstance(batch, torch.Tensor): return batch[:0]
    if isinstance(batch, dict): return {k: _cut(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)): return type(batch)(_cut(v) for v in batch) if not hasattr(batch, '_fields') else type(batch)(*map(_cut, batch))
    return batch

class _CollateShares:
    "The DataLoader's own collate function, with an empty share collated from its marked row and cut to no rows."
    def __init__(self, collate_fn): self.collate_fn = collate_fn
    def __call__(self, samples: list):
        if samples and isinstance(samples[0], _NoRows): return _cut(self.collate_fn([s.sample for s in samples]))
        return self.collate_fn(samples)

class ShardedBatchSampler(torch.utils.data.Sampler):
    "Rank `rank`'s rows (every `world_size`-th, from `rank`) of each batch of `batch_size` of `n` rows, in an order drawn from `generator` when `shuffle`."
    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, rank: int, world_size: int, generator: torch.Generator | None = None):
        self.n, self.batch_size = _check_int(n, 'n', 'ShardedBatchSampler'), _check_int(batch_size, 'batch_size', 'ShardedBatchSampler')
        self.rank, self.world_size = _check_shard(rank, world_size, 'ShardedBatchSampler')
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator

    def __len__(self): return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else range(self.n)
        for start in range(0, len(self) * self.batch_size if self.drop_last else self.n, self.batch_size):
            share = list(order[start + self.rank:start + self.batch_size:self.world_size])
            yield share if share else [_EmptyShare(order[start])]

def _shard_dataloader(dl: DataLoader, rank: int, world_size: int, generator: torch.Generator, role: str) -> DataLoader:
    "A PyTorch DataLoader rebuilt to read rank `rank`'s share of each of its batches, its order drawn from `generator` (the same on every rank)."
    expected = (f"DistributedS shards a DataLoader over a map-style dataset with batch_size and shuffle=True or False; the {role} "
                "DataLoader has")
    if isinstance(dl.dataset, IterableDataset):
        raise TypeError(f"{expected} an IterableDataset, which cannot be shared out by index; expected a map-style dataset, or a "
                        "StreamLoader (chapter 14), which shares out a stream")
    if dl.batch_size is None or type(dl.sampler) not in (RandomSampler, SequentialSampler) or (
            isinstance(dl.sampler, RandomSampler) and (dl.sampler.replacement or dl.sampler._num_samples is not None)):
        what = 'its own batch_sampler' if dl.batch_size is None else f'the sampler {_describe(dl.sampler)}'
        raise TypeError(f"{expected} {what}; expected shuffle=True or False (its order is drawn the same on every rank), or a "
                        "loader already sharded for this rank")
    batches = ShardedBatchSampler(len(dl.dataset), dl.batch_size, isinstance(dl.sampler, RandomSampler), dl.drop_last, rank, world_size, generator)
    return DataLoader(_Shares(dl.dataset), batch_sampler=batches, num_workers=dl.num_workers, collate_fn=_CollateShares(dl.collate_fn),
                      pin_memory=dl.pin_memory, timeout=dl.timeout, worker_init_fn=dl.worker_init_fn, generator=generator,
                      multiprocessing_context=dl.multiprocessing_context, prefetch_factor=dl.prefetch_factor,
                      persistent_workers=dl.persistent_workers)

def shard_loader(loader, rank: int, world_size: int, generator: torch.Generator | None = None, role: str = 'training'):
    "`loader` for rank `rank` of `world_size`: every rank gets the same number of batches, rows `rank::world_size` of each; None stays None."
    rank, world_size = _check_shard(rank, world_size, 'shard_loader')
    if loader is None or world_size == 1: return loader
    if isinstance(loader, (TensorLoader, MapLoader, StreamLoader, ReservoirLoader)) and loader.world_size > 1 or isinstance(loader, ReservoirLoader):
        if (loader.rank, loader.world_size) == (rank, world_size): return loader   # sharded by the user already
        if isinstance(loader, ReservoirLoader) and loader.world_size == 1:
            raise TypeError(f"the {role} ReservoirLoader was made for one process; its source is made with it, so DistributedS cannot "
                            f"share it out: expected ReservoirLoader(..., rank={rank}, world_size={world_size}) (rank=int(os.environ['RANK']))")
        raise ValueError(f"the {role} loader is sharded for rank {loader.rank} of {loader.world_size}, but this process is rank {rank} "
                         f"of {world_size}; expected a loader for one process (DistributedS shares it out) or one for this rank")
    if isinstance(loader, (TensorLoader, MapLoader, StreamLoader)): return loader.shard(rank, world_size)
    if isinstance(loader, DataLoader): return _shard_dataloader(loader, rank, world_size, generator or torch.Generator(), role)
    raise TypeError(f"DistributedS shares out TensorLoader, MapLoader, StreamLoader, ReservoirLoader and PyTorch DataLoader batches, "
                    f"but the {role} loader is {_describe(loader)}; expected one of them (a list of batches would be the same on every rank)")
class _DDP(DistributedDataParallel):
    "DDP whose state dict is the wrapped model's, so a checkpoint of a distributed fit loads into the bare model, at any world size."
    def state_dict(self, *args, **kwargs): return self.module.state_dict(*args, **kwargs)
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

def _layout(loader) -> tuple[int, int, bool] | None:
    "(rows, batch size, drop_last) of a sharded loader whose global batches are known, for weighting uneven shares; else None."
    if isinstance(loader, (TensorLoader, MapLoader)): return loader.n, loader.batch_size, loader.drop_last
    sampler = getattr(loader, 'batch_sampler', None)
    if isinstance(sampler, ShardedBatchSampler): return sampler.n, sampler.batch_size, sampler.drop_last
    return None

class DistributedS(Subscriber):
    "Under torchrun (or `launch`): join the process group, wrap the model in DDP on this rank's device, share out the loaders' batches and make the metrics the job's; alone, nothing."
    order, in_evaluation, in_lr_find = -50, False, False

    def __init__(self, backend: str | None = None, timeout: float = 120, **ddp_kwargs):
        if backend not in (None, 'gloo', 'nccl'): raise ValueError(f"DistributedS expected backend None, 'gloo' or 'nccl', got {_describe(backend)}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 86_400:
            raise ValueError(f"DistributedS expected timeout to be the seconds a rank waits for the others, a number in (0, 86400), got {_describe(timeout)}")
        self.backend, self.timeout, self.ddp_kwargs = backend, timeout, ddp_kwargs
        self.active = launched() or dist.is_initialized()
        # joined now, not at the fit: the learner's table of subscribers must know this process's rank when it is built
        if self.active: self.rank, self.world_size = join_process_group(backend, timeout)
        self.generators, self.learn, self.ddp, self.rows, self.loss = {}, None, None, None, None

    def before_fit(self, learn):
        if not self.active or self.world_size == 1: return
        self.device = _local_device(dist.get_backend())
        self.module, self.dls, self.learn = learn.model, learn.dls, learn
        learn.rank, learn.world_size = self.rank, self.world_size
        for sub in learn.subs:
            if isinstance(sub, DeviceS): sub.device, sub.non_blocking = self.device, self.device.type == 'cuda'
        self.module.to(self.device)
        self.train, self.valid = (self._shard(dl, role) for dl, role in ((learn.dls.train, 'training'), (learn.dls.valid, 'validation')))
        learn.dls = copy.copy(learn.dls)
        learn.dls.train, learn.dls.valid = self.train, self.valid
        self.rows = _layout(self.train)
        self._agree_on_orders()
        self._resume_own_random_state(learn)
        self.ddp = _DDP(self.module, device_ids=[self.device.index] if self.device.type == 'cuda' else None, **self.ddp_kwargs)
        self.loss = None

    def _shard(self, dl, role: str):
        "This rank's share of `dl`; a loader that would shuffle with PyTorch's global generator gets its own (the ranks' global ones differ)."
        own = isinstance(dl, DataLoader) and dl.generator is None or isinstance(dl, TensorLoader) and dl.shuffle and dl.generator is None
        if own and id(dl) not in self.generators:   # kept from fit to fit, as the global generator would go on
            self.generators[id(dl)] = torch.Generator().manual_seed(gather_objects(torch.initial_seed())[0] % 2**63)
        generator = self.generators.get(id(dl)) if own else getattr(dl, 'generator', None)
        sharded = shard_loader(dl, self.rank, self.world_size, generator, role)
        if isinstance(sharded, TensorLoader) and own: sharded.generator = generator
        return sharded

    def _agree_on_orders(self):
        "Give every rank rank 0's loader generators: the ranks must draw the same order to take disjoint shares of it."
        for dl in (self.train, self.valid):
            generator = getattr(dl, 'generator', None)
            if isinstance(generator, torch.Generator): generator.set_state(gather_objects(generator.get_state())[0])

    def _resume_own_random_state(self, learn):
        "When the fit resumes a checkpoint of a job of this world size, each rank goes on with its own random state, not rank 0's."
        resume = learn._resume   # (path, state) of the checkpoint the fit resumes, or None
        saved = resume[1]['subs'].get(type(self).__name__) if resume is not None else None
        if not saved or saved.get('world_size') != self.world_size: return   # another world size: every rank goes on from rank 0's
        state = resume[1]
        state['rng'] = saved['rng'][self.rank]
        if saved['epoch_rng'][self.rank] is not None: state['position']['epoch_start']['rng'] = saved['epoch_rng'][self.rank]

    def before_epoch(self, learn):
        if self.ddp is not None: learn.model = self.ddp if learn.training else self.module   # validation exchanges nothing

    def after_loss(self, learn):
        "Weigh this rank's mean loss by its share of the batch, so that DDP's average of gradients is the whole batch's mean."
        if not learn.training or self.rows is None: return
        n_rows, batch_size, drop_last = self.rows
        rows = batch_size if drop_last else min(batch_size, n_rows - learn.iter * batch_size)   # the whole batch's
        if rows % self.world_size == 0: return   # equal shares: DDP's average is the batch's mean already
        share = max(0, -(-(rows - self.rank) // self.world_size))
        self.loss, learn.loss = learn.loss, learn.loss * (self.world_size * share / rows)

    def after_batch(self, learn):
        if self.loss is not None: learn.loss, self.loss = self.loss, None   # the metrics see the loss of this rank's rows

    def cleanup_fit(self, learn):
        if not self.active or self.world_size == 1 or self.learn is None: return
        learn.model, learn.dls, self.learn, self.ddp, self.rows = self.module, self.dls, None, None, None
        for name in ('rank', 'world_size'): learn.__dict__.pop(name, None)

    def state_dict(self) -> dict:
        "Every rank's random state, now and at the start of the training pass (one collective during a distributed fit: every rank calls it)."
        position = getattr(self.learn, 'position', None)
        mine = (rng_state(), position['epoch_start']['rng'] if position else None)
        shares = gather_objects(mine) if self.learn is not None else [mine]
        return {'world_size': len(shares), 'rng': [s[0] for s in shares], 'epoch_rng': [s[1] for s in shares]}

    def load_state_dict(self, state: dict):
        "Nothing to load here: `before_fit` gave this rank its own random state from the checkpoint being resumed."
class LaunchError(RuntimeError):
    "A process of a job started by `launch` failed: the message is the first failure's, with its rank."

class _Entry:
    "What every process runs: `fn(*args, **kwargs)`; an exception it raises is also written to `folder`/RANK, for the launching process to report."
    def __init__(self, fn, kwargs: dict, folder: str):
        self.fn, self.kwargs, self.folder = fn, kwargs, folder
        self.__name__ = self.__qualname__ = getattr(fn, '__name__', 'fn')   # the launcher names its entry point

    def __call__(self, *args):
        try: return self.fn(*args, **self.kwargs)
        except BaseException as e:
            with open(os.path.join(self.folder, os.environ.get('RANK', '0')), 'w') as f: f.write(f'{time.time()}\n{type(e).__name__}: {e}')
            raise

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def launch(fn, *args, nproc: int = 2, max_restarts: int = 0, start_method: str | None = None, **kwargs) -> list:
    "Run `fn(*args, **kwargs)` in `nproc` processes of one job on this machine, started by torch's elastic launcher; return their results in rank order."
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    if not callable(fn): raise TypeError(f"launch expected fn to be a function to run in every process, got {_describe(fn)}")
    nproc, max_restarts = _check_int(nproc, 'nproc', 'launch'), _check_int(max_restarts, 'max_restarts', 'launch', minimum=0)
    # a function of a notebook or script (`__main__`) cannot be found by a fresh interpreter: its processes are forked
    start_method = start_method or ('fork' if getattr(fn, '__module__', None) == '__main__' else 'spawn')
    if start_method not in ('fork', 'spawn', 'forkserver'):
        raise ValueError(f"launch expected start_method 'fork', 'spawn' or 'forkserver' (or None: fork for a function of __main__), got {_describe(start_method)}")
    if start_method == 'fork' and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("launch would fork processes from one that has used CUDA already, and a forked process cannot use it; "
                           "expected launch to be called before anything touches the GPU (restart the kernel), or fn defined in a module "
                           "with start_method='spawn'")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex, rdzv_backend='c10d',
                          rdzv_endpoint=f'127.0.0.1:{_free_port()}', max_restarts=max_restarts, monitor_interval=0.1, start_method=start_method)
    quiet = logging.getLogger('torch.distributed.elastic')
    level, quiet.level = quiet.level, logging.CRITICAL   # the launcher logs every failure at length; the error below says it once
    with tempfile.TemporaryDirectory(prefix='nntrain-launch-') as errors:
        try: results = elastic_launch(config, _Entry(fn, kwargs, errors))(*args)
        except ChildFailedError as e: raise LaunchError(_failures(e, Path(errors), nproc)) from None
        finally: quiet.setLevel(level)
    return [results[rank] for rank in range(nproc)]

_PEER_GONE = ('Connection closed by peer', 'Connection reset by peer', 'remote worker crashing', 'NCCL communicator was aborted')

def _failure_message(failure) -> str:
    "The exception a failed process raised, as its error file recorded it (the last line of its traceback), or how it ended."
    message = failure.message
    if isinstance(message, dict): message = message.get('message', '')
    lines = str(message or '').strip().splitlines()
    if not lines or lines[0].startswith('To enable traceback'):
        return f'ended by signal {failure.signal_name()}' if failure.exitcode < 0 else f'exit code {failure.exitcode}, no error recorded'
    return lines[-1] if lines[0].startswith('Traceback') else lines[0]

def _failures(error, errors: Path, nproc: int) -> str:
    "Which ranks failed and why, the cause first: a rank that failed because another had gone comes after it."
    messages = {rank: _failure_message(failure) for rank, failure in error.failures.items()}
    times = {}
    for path in errors.iterdir():   # what each failed process wrote itself: the launcher records only the first it sees
        when, _, message = path.read_text().partition('\n')
        messages[int(path.name)], times[int(path.name)] = message.splitlines()[0] if message else message, float(when)
    order = sorted(messages, key=lambda rank: (any(s in messages[rank] for s in _PEER_GONE), times.get(rank, math.inf), rank))
    return f"{len(messages)} of {nproc} processes failed: " + '; '.join(f"rank {rank}: {messages[rank]}" for rank in order)
