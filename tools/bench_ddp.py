#!/usr/bin/env python3
"""Data-parallel training step time: nntrain's `DistributedS` against a hand-written DDP loop and Lightning's DDP strategy.

Every run is a job of 2 processes on this machine (gloo on 127.0.0.1) started by torch's launcher
(`python -m torch.distributed.run`), one thread each. All runners train the same model from the same seed on the
bundled MNIST held in memory as float tensors, with the same global batch (each rank takes rows `rank::2` of it),
plain SGD, for several epochs. Rank 0 times its training passes, in wall-clock and CPU seconds (all its threads,
gloo's included: what another tenant of a busy machine cannot inflate); the first pass is left out (warm-up), and
the step time of a run is its median pass over its steps. Rounds alternate the runners (each round starts one
later), and the table gives each runner's median over the rounds and its ratio to the hand-written loops.

    python tools/bench_ddp.py                            # all runners, 7 rounds of 6 epochs
    python tools/bench_ddp.py --quick                    # 1 round of 2 epochs: does it run
    python tools/bench_ddp.py --runners hand nntrain --repeats 9 --json ddp.json

Runners:
  hand          DistributedDataParallel, rows rank::2 of each shuffled global batch, SGD; the training loss and
                accuracy summed on the device and all-reduced at the end of each pass (what `MetricsS` reports)
  hand-bare     the same loop without the loss and accuracy
  nntrain       Learner + MetricsS(accuracy=MulticlassAccuracy()) + DistributedS, over a TensorLoader of the global batch
  nntrain-bare  Learner + DistributedS
  lightning     Lightning's Trainer(strategy='ddp', accelerator='cpu', devices=2) on the hand loop's batches, no logging
                (skipped with a note when `lightning` is not importable)
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = ('hand', 'hand-bare', 'nntrain', 'nntrain-bare', 'lightning')
NEEDS = {'lightning': 'lightning'}   # runner: the module it needs
LR, SEED, ORDER_SEED = 0.1, 0, 1


# ---- in each process of a job --------------------------------------------------------------------------------------

def mnist_tensors(rows: int | None):
    "The bundled MNIST training images as float rows in [0, 1] (flattened) and their labels, the first `rows` of them."
    import torch
    from nntrain.dataloaders import dataset_to_tensors, load_mnist
    columns = dataset_to_tensors(load_mnist()['train'])
    return torch.div(columns['image'], 255).flatten(1)[:rows].contiguous(), columns['label'][:rows].contiguous()


def make_model(hidden: int):
    "784-hidden-10 perceptron (784-10 linear when `hidden` is 0), the same weights on every rank."
    import torch
    from torch import nn
    torch.manual_seed(SEED)
    return nn.Linear(784, 10) if hidden == 0 else nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class PassClock:
    "The wall-clock and CPU seconds (all of this process's threads) of each training pass: `start()` before it, `stop()` after it."
    def __init__(self): self.wall, self.cpu = [], []
    def start(self): self.started = time.perf_counter(), time.process_time()
    def stop(self):
        wall, cpu = self.started
        self.wall.append(time.perf_counter() - wall); self.cpu.append(time.process_time() - cpu)


class RankBatches:
    "This rank's share (rows `rank::world_size`) of each global batch of `batch_size`, in an order drawn from a generator seeded alike on every rank."
    def __init__(self, x, y, batch_size: int, rank: int, world_size: int):
        import torch
        self.x, self.y, self.batch_size, self.rank, self.world_size = x, y, batch_size, rank, world_size
        self.generator = torch.Generator().manual_seed(ORDER_SEED)

    def __len__(self): return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        import torch
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(self.y), self.batch_size):
            index = order[start + self.rank:start + self.batch_size:self.world_size]
            yield self.x.index_select(0, index), self.y.index_select(0, index)


def run_hand(x, y, args, rank: int, world_size: int, metrics: bool, clock: PassClock):
    "The hand-written DDP loop, its training passes timed by `clock`."
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    model = DistributedDataParallel(make_model(args.hidden))
    opt = torch.optim.SGD(model.parameters(), LR)
    batches = RankBatches(x, y, args.bs, rank, world_size)
    model.train()
    for _ in range(args.epochs):
        clock.start()
        if metrics: loss_sum, correct, count = torch.zeros(()), torch.zeros((), dtype=torch.int64), 0
        for xb, yb in batches:
            preds = model(xb)
            loss = F.cross_entropy(preds, yb)
            loss.backward(); opt.step(); opt.zero_grad()
            if metrics:
                loss_sum += loss.detach() * len(yb)
                correct += (preds.argmax(1) == yb).sum()
                count += len(yb)
        if metrics:   # the job's loss and accuracy, the same on every rank
            totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(count, dtype=torch.float64)])
            dist.all_reduce(totals)
            loss_mean, accuracy = (totals[:2] / totals[2]).tolist()
        clock.stop()


def run_nntrain(x, y, args, rank: int, world_size: int, metrics: bool, clock: PassClock):
    "A Learner with DistributedS (and MetricsS with accuracy), written as a user would, its training passes timed by `clock`."
    import torch.nn.functional as F
    from nntrain.dataloaders import DataLoaders, TensorLoader
    from nntrain.distributed import DistributedS
    from nntrain.learner import Learner, MetricsS, Subscriber

    class PassStart(Subscriber):
        order = -10_000   # before every other subscriber's before_epoch
        def before_epoch(self, learn):
            if learn.training: clock.start()

    class PassEnd(Subscriber):
        order = 10_000    # after every other subscriber's after_epoch (MetricsS's reduction across ranks included)
        def after_epoch(self, learn):
            if learn.training: clock.stop()

    subs = [DistributedS(), PassStart(), PassEnd()]
    if metrics:
        from torcheval.metrics import MulticlassAccuracy
        reporter = MetricsS(accuracy=MulticlassAccuracy())
        reporter.output = lambda log: None   # no line per pass
        subs.insert(0, reporter)
    dls = DataLoaders(TensorLoader({'x': x, 'y': y}, args.bs, shuffle=True, seed=ORDER_SEED), None)
    Learner(make_model(args.hidden), dls, F.cross_entropy, lr=LR, subs=subs).fit(args.epochs, valid=False)


def run_lightning(x, y, args, rank: int, world_size: int, metrics: bool, clock: PassClock):
    "Lightning's Trainer with strategy='ddp' on `RankBatches` (so its sampler does not change the data), its training passes timed by `clock`."
    import lightning as L
    import torch
    import torch.nn.functional as F
    model = make_model(args.hidden)

    class Module(L.LightningModule):
        def __init__(self): super().__init__(); self.model = model
        def training_step(self, batch, batch_idx): return F.cross_entropy(self.model(batch[0]), batch[1])
        def configure_optimizers(self): return torch.optim.SGD(self.parameters(), LR)

    class PassTimer(L.Callback):
        def on_train_epoch_start(self, trainer, module): clock.start()
        def on_train_epoch_end(self, trainer, module): clock.stop()

    trainer = L.Trainer(max_epochs=args.epochs, accelerator='cpu', devices=world_size, strategy='ddp', logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[PassTimer()])
    trainer.fit(Module(), train_dataloaders=RankBatches(x, y, args.bs, rank, world_size))


def worker(args):
    "One rank of a job: train with `args.worker`, and on rank 0 write the seconds of each training pass to `args.out`."
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    x, y = mnist_tensors(args.rows)
    run = {'hand': run_hand, 'hand-bare': run_hand, 'nntrain': run_nntrain, 'nntrain-bare': run_nntrain, 'lightning': run_lightning}[args.worker]
    if args.worker != 'lightning' and not dist.is_initialized(): dist.init_process_group('gloo')   # Lightning joins itself
    gc.collect()
    gc.disable()   # as timeit does, for every runner alike
    clock = PassClock()
    try: run(x, y, args, rank, world_size, not args.worker.endswith('-bare'), clock)
    finally: gc.enable()
    if rank == 0:
        Path(args.out).write_text(json.dumps({'wall': clock.wall, 'cpu': clock.cpu, 'steps_per_epoch': -(-len(y) // args.bs)}))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---- the launching process -----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch_run(runner: str, args, folder: Path, index: int) -> tuple[float, float]:
    "One job of 2 processes training with `runner`: rank 0's wall-clock and CPU seconds per training step, the median of its passes but the first."
    out = folder/f'{runner}-{index}.json'
    command = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc-per-node', str(args.nproc),
               '--master-addr', '127.0.0.1', '--master-port', str(_free_port()), __file__, '--worker', runner,
               '--epochs', str(args.epochs), '--bs', str(args.bs), '--hidden', str(args.hidden), '--out', str(out)]
    if args.rows is not None: command += ['--rows', str(args.rows)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])),
           'HF_DATASETS_DISABLE_PROGRESS_BARS': '1', 'PYTHONWARNINGS': 'ignore'}
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=folder)
    if result.returncode != 0 or not out.is_file():
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if 'Error' in line), lines[-1] if lines else f'exit code {result.returncode}')
        raise RuntimeError(f'{runner} failed (exit code {result.returncode}): {error.strip()[:200]}')
    data = json.loads(out.read_text())
    return tuple(statistics.median(data[kind][1:]) / data['steps_per_epoch'] for kind in ('wall', 'cpu'))


def run_benchmark(args, log) -> dict:
    "Alternate `args.repeats` rounds of the runners; each runner's medians and runs, or why it was skipped."
    table = {r: {'runs': [], 'cpu_runs': [], 'skipped': None} for r in args.runners}
    for r in args.runners:
        if r in NEEDS and importlib.util.find_spec(NEEDS[r]) is None:
            table[r]['skipped'] = f'{NEEDS[r]} is not importable (pip install {NEEDS[r]})'
            log(f'note: {r} skipped: {table[r]["skipped"]}')
    active = [r for r in args.runners if table[r]['skipped'] is None]
    with tempfile.TemporaryDirectory(prefix='nntrain-bench-ddp-') as tmp:
        for round_ in range(args.repeats):
            shift = round_ % len(active) if active else 0
            for r in active[shift:] + active[:shift]:
                if table[r]['skipped']: continue
                try: wall, cpu = launch_run(r, args, Path(tmp), round_)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    table[r]['skipped'] = str(e).splitlines()[0][:200]
                    log(f'note: {r} skipped: {table[r]["skipped"]}')
                    continue
                table[r]['runs'].append(wall); table[r]['cpu_runs'].append(cpu)
                log(f'round {round_ + 1}/{args.repeats}: {r} {wall * 1e3:.3f} ms/step, {cpu * 1e3:.3f} CPU ms/step')
    for row in table.values():
        if row['runs'] and not row['skipped']:
            row['ms_per_step'], row['cpu_ms_per_step'] = (statistics.median(row[k]) * 1e3 for k in ('runs', 'cpu_runs'))
        else: row['skipped'] = row['skipped'] or 'no run'
    for reference in ('hand', 'hand-bare'):
        base = table.get(reference, {}).get('ms_per_step')
        for row in table.values():
            row[f'x_{reference}'] = row['ms_per_step'] / base if base and 'ms_per_step' in row else None
    if 'cpu_ms_per_step' in table.get('hand', {}):
        for row in table.values():
            row['cpu_x_hand'] = row['cpu_ms_per_step'] / table['hand']['cpu_ms_per_step'] if 'cpu_ms_per_step' in row else None
    return table


def format_table(table: dict, args) -> str:
    "The figures as text: a heading with the settings, one line per runner, and the target's ratio."
    steps = -(-(args.rows or 8000) // args.bs)
    model = '784-10 linear' if args.hidden == 0 else f'784-{args.hidden}-10 MLP'
    lines = [f'DDP, {args.nproc} processes (gloo, 127.0.0.1, 1 thread each), {model}, bundled MNIST ({args.rows or "all"} rows), '
             f'global batch {args.bs} ({args.bs // args.nproc} per rank), SGD lr {LR}',
             f'{args.epochs} epochs of {steps} steps; ms/step: rank 0\'s median pass but the first, then the median of '
             f'{args.repeats} alternated rounds (CPU: all of rank 0\'s threads)', '',
             f"{'runner':<14}{'ms/step':>9}{'x hand':>9}{'x hand-bare':>13}{'CPU ms/step':>13}{'CPU x hand':>12}"]
    for r, row in table.items():
        if row['skipped'] and 'ms_per_step' not in row: lines.append(f'{r:<14}  skipped: {row["skipped"]}'); continue
        cells = ''.join(f'{row[k]:>{w}.3f}' if row.get(k) is not None else f"{'n/a':>{w}}"
                        for k, w in (('x_hand', 9), ('x_hand-bare', 13), ('cpu_ms_per_step', 13), ('cpu_x_hand', 12)))
        lines.append(f'{r:<14}{row["ms_per_step"]:>9.3f}{cells}')
    pairs = [('nntrain', 'hand'), ('nntrain-bare', 'hand-bare'), ('lightning', 'hand-bare')]
    summary = [f'{a} / {b} = {table[a][f"x_{b}"]:.3f}' for a, b in pairs if a in table and b in table and table[a].get(f'x_{b}')]
    if summary: lines += ['', '; '.join(summary) + ' (target: nntrain / hand <= 1.05)']
    return '\n'.join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runners', nargs='+', choices=RUNNERS, default=list(RUNNERS), help='which runners (default: all)')
    p.add_argument('--repeats', type=int, default=7, help='alternated rounds (default 7)')
    p.add_argument('--epochs', type=int, default=6, help='epochs per run, the first left out (default 6)')
    p.add_argument('--bs', type=int, default=64, help='global batch size, shared by the ranks (default 64)')
    p.add_argument('--hidden', type=int, default=128, help='hidden units of the MLP; 0: a 784-10 linear model (default 128)')
    p.add_argument('--rows', type=int, default=None, help='training rows of the bundled MNIST to use (default: all 8000)')
    p.add_argument('--quick', action='store_true', help='1 round of 2 epochs')
    p.add_argument('--json', type=Path, default=None, help='also write the figures to this file')
    p.add_argument('--timeout', type=float, default=300, help='seconds one job may take (default 300)')
    p.add_argument('--worker', choices=RUNNERS, help=argparse.SUPPRESS)   # set by the launcher for each process
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.nproc = 2
    if args.quick: args.repeats, args.epochs = 1, 2
    for name, minimum, why in (('repeats', 1, ''), ('epochs', 2, ' (the first is left out)'), ('bs', args.nproc, ' (one row per rank)'),
                               ('hidden', 0, ' (0: a linear model)')):
        if getattr(args, name) < minimum: p.error(f'expected --{name} >= {minimum}{why}, got {getattr(args, name)}')
    if args.rows is not None and args.rows < args.bs: p.error(f'expected --rows >= --bs ({args.bs}), got {args.rows}')
    args.runners = list(dict.fromkeys(args.runners))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker: worker(args); return 0
    log = lambda text: print(text, file=sys.stderr, flush=True)
    table = run_benchmark(args, log)
    print(format_table(table, args))
    if args.json:
        import torch
        settings = {k: getattr(args, k) for k in ('runners', 'repeats', 'epochs', 'bs', 'hidden', 'rows', 'nproc', 'quick')}
        machine = {'torch': torch.__version__, 'cpu_count': os.cpu_count(), 'threads_per_process': 1, 'backend': 'gloo'}
        args.json.write_text(json.dumps({'machine': machine, 'settings': settings, 'lr': LR, 'rows': table}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
