#!/usr/bin/env python3
"""Memory of nntrain's pipelines on a dataset larger than memory should allow: run by hand, not in CI.

Generates a dataset of raw uint8 images (an `Array3D` feature) larger than 4 GiB with `save_to_disk`, then, each
in a fresh process, opens it with `open_dataset` (memory-mapped) and reads every row once through a `MapLoader`,
sampling the resident memory of the process and of its workers. Prints one line per loader and the dataset size.

    python tools/bench_memory.py                    # a temporary folder, removed afterwards
    python tools/bench_memory.py --folder /data/x --keep

Resident memory has two parts on Linux: anonymous memory (what the process allocated: Python objects, tensors,
batches in flight) and file-backed pages (the pages of the memory-mapped Arrow files it has read, which stay
mapped while the file is open and which the kernel drops when memory is needed). Both are printed, with the peak
resident set (VmHWM, what `ru_maxrss` reports) of the main process and the largest of any worker's.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

SHAPE = (3, 224, 224)                  # channels first: Arrow stores the innermost 224 values of each list contiguously
ROW_BYTES = math.prod(SHAPE)
GIB = 2**30


def generate(target: Path, rows: int):
    "Write `rows` random uint8 images of `SHAPE` and labels to `target` with `save_to_disk` (run in a child process)."
    import numpy as np
    from datasets import Array3D, Dataset, Features, Value
    from datasets.utils.logging import disable_progress_bar
    disable_progress_bar()
    base = np.random.default_rng(0).integers(0, 256, (64, *SHAPE), dtype=np.uint8)   # 64 random images, repeated
    def rows_of():
        for i in range(rows): yield {'image': base[i % 64], 'label': i % 10}
    cache = target.parent/'.generator-cache'
    features = Features(image=Array3D(SHAPE, 'uint8'), label=Value('int64'))
    ds = Dataset.from_generator(rows_of, features=features, cache_dir=str(cache))
    ds.save_to_disk(str(target), max_shard_size='500MB')
    del ds
    shutil.rmtree(cache, ignore_errors=True)


def _status(pid: int) -> dict:
    "VmRSS, RssAnon, RssFile and VmHWM of process `pid`, in bytes (empty when it has ended)."
    out = {}
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key in ('VmRSS', 'RssAnon', 'RssFile', 'VmHWM'): out[key] = int(value.split()[0]) * 1024
    except OSError: pass
    return out


def _children(pid: int) -> list[int]:
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f: return [int(c) for c in f.read().split()]
    except OSError: return []


class Watch:
    "Samples, every `every` seconds, the resident memory of this process and of each of its children; keeps the peaks."
    def __init__(self, every: float = 0.02):
        self.every, self.stop = every, threading.Event()
        self.peaks = {'main_anon': 0, 'main_file': 0, 'worker_rss': 0, 'worker_anon': 0, 'worker_file': 0, 'all_anon': 0}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        me, p = os.getpid(), self.peaks
        while not self.stop.is_set():
            main, workers = _status(me), [_status(c) for c in _children(me)]
            p['main_anon'] = max(p['main_anon'], main.get('RssAnon', 0))
            p['main_file'] = max(p['main_file'], main.get('RssFile', 0))
            for w in workers:
                p['worker_rss'] = max(p['worker_rss'], w.get('VmRSS', 0))
                p['worker_anon'] = max(p['worker_anon'], w.get('RssAnon', 0))
                p['worker_file'] = max(p['worker_file'], w.get('RssFile', 0))
            p['all_anon'] = max(p['all_anon'], main.get('RssAnon', 0) + sum(w.get('RssAnon', 0) for w in workers))
            self.stop.wait(self.every)

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *exc): self.stop.set(); self.thread.join()


def iterate(path: str, workers: int, batch_size: int, out):
    "Read every row of the saved dataset at `path` once through a shuffled `MapLoader`; put the figures on `out` (run in a fresh process)."
    from nntrain.pipelines import MapLoader, open_dataset
    # memory-mapped; the numpy format with dtype uint8 keeps the pixels as stored (datasets' numpy and torch formats make every
    # integer int64 by default, 8 times the bytes; the labels, 0 to 9, become uint8 as well)
    ds = open_dataset(path).with_format('numpy', dtype='uint8')
    loader = MapLoader(ds, batch_size, columns=['image', 'label'], shuffle=True, seed=0, num_workers=workers, pin_memory=False)
    rows = nbytes = checksum = 0
    with Watch() as watch:
        start = time.perf_counter()
        for images, labels in loader:
            rows += len(labels)
            nbytes += images.numel() * images.element_size()
            checksum += int(images[:, 0, 0, 0].sum())
        seconds = time.perf_counter() - start
    main = _status(os.getpid())
    out.put({'workers': workers, 'rows': rows, 'bytes': nbytes, 'seconds': seconds, 'main_hwm': main['VmHWM'], 'checksum': checksum,
             **watch.peaks})


def measure(path: Path, workers: int, batch_size: int) -> dict:
    "`iterate` in a fresh process (spawned: its peak memory is this loader's alone)."
    ctx = mp.get_context('spawn')
    out = ctx.Queue()
    child = ctx.Process(target=iterate, args=(str(path), workers, batch_size, out))
    child.start()
    result = out.get()
    child.join()
    return result


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--folder', type=Path, default=None, help='where the dataset is written (default: a new temporary folder)')
    parser.add_argument('--gib', type=float, default=4.25, help='size of the dataset on disk in GiB, more than 4 (default: 4.25)')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='MapLoader num_workers to measure (default: 0 2)')
    parser.add_argument('--batch-size', type=int, default=32, help='batch size (default: 32)')
    parser.add_argument('--keep', action='store_true', help='keep the dataset (in --folder) for the next run; default: removed at the end')
    args = parser.parse_args(argv)
    if not args.gib > 4: parser.error(f'--gib: expected more than 4 (the target is a dataset larger than 4 GiB), got {args.gib}')
    if args.batch_size < 1 or any(w < 0 for w in args.workers): parser.error('--batch-size: expected >= 1; --workers: expected >= 0')

    made_folder = args.folder is None
    folder = Path(tempfile.mkdtemp(prefix='nntrain-memory-')) if made_folder else args.folder.expanduser().resolve()
    target, rows = folder/'dataset', math.ceil(args.gib * GIB / ROW_BYTES)
    reuse = (target/'state.json').is_file()
    try:
        if not reuse:
            probe = folder if folder.exists() else folder.parent
            free = shutil.disk_usage(probe).free   # what `df` reports as available
            need = 2 * rows * ROW_BYTES + GIB        # the generator's cache and the saved copy exist together for a moment
            print(f"free space in {probe}: {free / GIB:.1f} GiB (df); needed: {need / GIB:.1f} GiB")
            if free < need:
                print(f"bench_memory: not enough free disk space in {probe}: {free / GIB:.1f} GiB free, {need / GIB:.1f} GiB needed "
                      f"(the generator's cache and the saved dataset, {args.gib} GiB each); give --folder on a larger disk", file=sys.stderr)
                return 2
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            ctx = mp.get_context('spawn')
            child = ctx.Process(target=generate, args=(target, rows))
            child.start(); child.join()
            if child.exitcode != 0: print(f"bench_memory: generating the dataset failed (exit {child.exitcode})", file=sys.stderr); return 1
            print(f"generated {rows:,} rows in {time.perf_counter() - start:.0f} s")
        size = folder_size(target)
        print(f"dataset: {target}, {rows:,} rows of uint8 {SHAPE} and a label, {size / GIB:.2f} GiB on disk"
              f"{' (reused)' if reuse else ''}; RAM {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB")
        results = [measure(target, w, args.batch_size) for w in args.workers]
        header = (f"{'loader':<22}{'rows':>8}{'GiB read':>10}{'s':>7}{'MB/s':>7}{'main peak RSS':>15}{'main anon':>11}"
                  f"{'main file':>11}{'worker peak RSS':>17}{'all anon':>10}")
        print('\n' + header + '\n' + '-' * len(header))
        for r in results:
            worker = f"{r['worker_rss'] / GIB:>17.2f}" if r['workers'] else f"{'-':>17}"
            print(f"{'MapLoader, ' + str(r['workers']) + ' workers':<22}{r['rows']:>8,}{r['bytes'] / GIB:>10.2f}{r['seconds']:>7.1f}"
                  f"{r['bytes'] / r['seconds'] / 1e6:>7.0f}{r['main_hwm'] / GIB:>15.2f}{r['main_anon'] / GIB:>11.2f}"
                  f"{r['main_file'] / GIB:>11.2f}{worker}{r['all_anon'] / GIB:>10.2f}")
        print("(GiB; peak RSS = VmHWM of the main process, the largest VmRSS of a worker; anon = allocated memory, "
              "file = pages of the memory-mapped Arrow files; all anon = main + workers together)")
        bad = [r for r in results if r['rows'] != rows]
        if bad: print(f"bench_memory: a loader read {bad[0]['rows']} rows of {rows}", file=sys.stderr); return 1
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder if made_folder else target, ignore_errors=True)
            shutil.rmtree(folder/'.generator-cache', ignore_errors=True)
        else: print(f"kept {target}")


if __name__ == '__main__':
    sys.exit(main())
