"""Issue 14's "Done when" list, checked through nntrain.pipelines' public API on real data read from disk.

Same batches for any number of worker processes; a run killed from outside resumes bitwise; the reservoir never waits
after min_fill; rank shards partition an epoch; a failing transform names the sample and the transform; paths beside
the happy one. Every test runs under a deadline (SIGALRM) and every subprocess under a timeout: nothing can hang."""
import gc, json, os, random, re, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import get_worker_info

from nntrain.learner import Subscriber
from nntrain.pipelines import (MapLoader, PipelineError, ReservoirLoader, StreamLoader, from_csv, from_image_folder, from_parquet,
                               open_dataset)

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 150   # no test here takes a tenth of it


# ---------------------------------------------------------------- guards
@pytest.fixture(autouse=True)
def deadline():
    "Every test ends within DEADLINE_S: a hang becomes a TimeoutError, not a stuck suite."
    def on_alarm(*_): raise TimeoutError(f'the test did not finish within {DEADLINE_S} s (a hang)')
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(DEADLINE_S)
    try: yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state(pid: int) -> str | None:
    "The state letter of process `pid` (R, S, Z, ...); None when it does not exist."
    try: text = Path(f'/proc/{pid}/stat').read_text()
    except OSError: return None
    return text.rsplit(')', 1)[1].split()[0]


def live_children(pid: int) -> list[int]:
    "The processes whose parent is `pid` and that are not zombies."
    found = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit(): continue
        try: fields = (entry/'stat').read_text().rsplit(')', 1)[1].split()
        except OSError: continue
        if int(fields[1]) == pid and fields[0] != 'Z': found.append(int(entry.name))
    return found


def wait_gone(pids, seconds: float = 20) -> list[int]:
    "Wait until every one of `pids` has ended (gone or a zombie); return those still alive after `seconds`."
    end = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if _state(p) not in (None, 'Z')]
        if not alive or time.monotonic() > end: return alive
        time.sleep(0.1)


def no_workers_left(seconds: float = 20):
    "After the loaders of a test are dropped, none of their worker processes is left."
    gc.collect()
    assert wait_gone(live_children(os.getpid()), seconds) == []


# ---------------------------------------------------------------- data, on disk
@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory):
    "The bundled MNIST (train: 320 rows, valid: 64) written with save_to_disk: read memory-mapped from disk."
    from datasets import DatasetDict
    from nntrain.dataloaders import load_mnist
    dd = load_mnist()
    folder = tmp_path_factory.mktemp('mnist')/'saved'
    DatasetDict({'train': dd['train'].select(range(320)), 'valid': dd['test'].select(range(64))}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope='module')
def mnist(mnist_dir):
    dd = open_dataset(mnist_dir)
    assert dd['train'].cache_files and all(Path(f['filename']).is_relative_to(mnist_dir) for f in dd['train'].cache_files)
    return dd


def image_dataset(folder: Path, n: int, size: int = 4):
    "`n` random RGB images with `label` (ClassLabel, 10 classes) and `idx` = the row index, saved to `folder` and opened from disk."
    import PIL.Image
    from datasets import ClassLabel, Dataset, Features, Image, Value
    rng = np.random.default_rng(n)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({'image': Image(), 'label': ClassLabel(num_classes=10), 'idx': Value('int64')})
    Dataset.from_dict({'image': images, 'label': [i % 10 for i in range(n)], 'idx': list(range(n))}, features=features).save_to_disk(str(folder))
    return open_dataset(folder)


@pytest.fixture(scope='module')
def images101(tmp_path_factory): return image_dataset(tmp_path_factory.mktemp('images')/'101', 101)


@pytest.fixture(scope='module')
def images40(tmp_path_factory): return image_dataset(tmp_path_factory.mktemp('images')/'40', 40)


# ---------------------------------------------------------------- transforms (module level: workers get them by fork)
def to_tensor(row):
    row['image'] = torch.from_numpy(np.array(row['image'])).float()[None] / 255
    return row


def augment(row):
    "Random per sample, from all three generators a transform may use: torch, Python's random and numpy."
    x = row['image'] + 0.1 * torch.randn_like(row['image'])
    if random.random() < 0.5: x = x.flip(-1)
    row['image'] = x * float(np.random.uniform(0.8, 1.2))
    return row


def fail_on_7(row):
    if row['idx'] == 7: raise ValueError(f"bad sample {row['idx']}")
    return row


def slow(row):
    time.sleep(0.02)
    return row


def returns_none(row): return None


def returns_text(row): return 'not a sample'


def die_in_worker(row):
    if get_worker_info() is not None and row['idx'] == 5: os._exit(3)
    return row


def make(kind: str, data, batch_size: int, transforms=(), **kwargs):
    "A MapLoader or a StreamLoader of `data`, shuffled."
    if kind == 'map': return MapLoader(data, batch_size, transforms, shuffle=True, **kwargs)
    return StreamLoader(data, batch_size, transforms, **{'buffer_size': 50, **kwargs})


def assert_same_batches(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y) and all(torch.equal(u, v) and u.dtype == v.dtype for u, v in zip(x, y))


# ================================================================ 1. the same batches for any number of workers
@pytest.mark.parametrize('kind', ['map', 'stream'])
def test_same_batches_for_0_1_2_workers(mnist, kind):
    "Bitwise the same batches, two epochs, for 0, 1 and 2 workers; the epochs differ from each other."
    runs = {}
    for workers in (0, 1, 2):   # 1 worker: forked anew each epoch (persistent_workers=False); 2: kept between epochs
        dl = make(kind, mnist['train'], 32, [to_tensor, augment], columns=['image', 'label'], seed=5, num_workers=workers,
                  persistent_workers=workers != 1)
        runs[workers] = [list(dl), list(dl)]
        del dl
    first, second = runs[0]
    assert len(first) == len(second) == 10 and first[0][0].shape == (32, 1, 28, 28) and first[0][0].dtype == torch.float32
    for workers in (1, 2):
        assert_same_batches(runs[workers][0], first)
        assert_same_batches(runs[workers][1], second)
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.cat([b[1] for b in second]))   # another order
    assert not torch.equal(first[0][0], second[0][0])
    no_workers_left()


@pytest.mark.parametrize('kind', ['map', 'stream'])
def test_samples_made_here_leave_the_random_state_alone(mnist, kind):
    "With 0 workers the transforms run in this process, seeded per sample; torch's, random's and numpy's state are put back."
    dl = make(kind, mnist['train'], 32, [to_tensor, augment], columns=['image', 'label'], seed=1, num_workers=0)
    torch.manual_seed(11); random.seed(11); np.random.seed(11)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()
    batches = list(dl)
    assert len(batches) == 10
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    after = np.random.get_state()
    assert after[0] == before[2][0] and np.array_equal(after[1], before[2][1]) and after[2:] == before[2][2:]
    # and what is drawn here next is what would have been drawn without the loader
    drawn = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(11); random.seed(11); np.random.seed(11)
    assert torch.equal(drawn[0], torch.rand(3)) and drawn[1] == random.random() and drawn[2] == np.random.rand()


def test_the_augmentation_differs_per_sample_and_per_epoch(images40):
    "The per-sample seeds are not one seed: the noise differs between samples, and between epochs for the same row."
    def noise_of(row):
        row['image'] = torch.randn(2) + random.random() + float(np.random.rand())
        return row
    dl = MapLoader(images40, 40, [noise_of], columns=['image', 'idx'], shuffle=True, seed=2)
    (a, ia), (b, ib) = next(iter(dl)), next(iter(dl))
    assert len(torch.unique(a, dim=0)) == 40 and not torch.equal(ia, ib)
    a, b = a[ia.argsort()], b[ib.argsort()]   # by row
    assert not (a == b).all(dim=1).any()


# ================================================================ 2. killed from outside, resumed bitwise
TRAIN = r'''
import json, os, random, sys, time
from pathlib import Path
import numpy as np, torch
from torch import nn
from nntrain.checkpoints import CheckpointS
from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, Subscriber
from nntrain.pipelines import MapLoader, StreamLoader, open_dataset

kind, data, folder, out, labels, resume, pause = sys.argv[1:]

def to_tensor(row):
    row['image'] = torch.from_numpy(np.array(row['image'])).float()[None] / 255
    return row

def augment(row):
    x = row['image'] + 0.1 * torch.randn_like(row['image'])
    if random.random() < 0.5: x = x.flip(-1)
    row['image'] = x * float(np.random.uniform(0.8, 1.2))
    return row

class Record(Subscriber):
    "Each training step's labels, one JSON line per step, before CheckpointS writes the step's checkpoint (a resumed run records again the steps it redoes)."
    order = -100
    def after_batch(self, learn):
        if learn.training:
            with open(labels, 'a') as f: f.write(json.dumps([learn.iteration, learn.batch[1].tolist()]) + '\n')
            time.sleep(float(pause))   # room for the parent to kill this process mid-epoch

def workers():
    me = os.getpid()
    return [int(p.name) for p in Path('/proc').iterdir() if p.name.isdigit() and (p/'stat').exists()
            and int((p/'stat').read_text().rsplit(')', 1)[1].split()[1]) == me]

torch.manual_seed(0); random.seed(0); np.random.seed(0)
dd = open_dataset(data)
args = dict(columns=['image', 'label'], seed=1, num_workers=2)
train = (MapLoader(dd['train'], 32, [to_tensor, augment], shuffle=True, **args) if kind == 'map'
         else StreamLoader(dd['train'], 32, [to_tensor, augment], buffer_size=64, **args))
valid = MapLoader(dd['valid'], 64, [to_tensor], columns=['image', 'label'])
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
learn = Learner(model, DataLoaders(train, valid), lr=0.05)
learn.fit(2, subs=[CheckpointS(folder, every_batches=3), Record()], resume=folder if resume == '1' else None)
torch.save(learn.model.state_dict(), out)
Path(out + '.workers').write_text(json.dumps(workers()))
'''


def train_args(tmp_path: Path, kind: str, data, name: str, resume: bool = False, pause: float = 0.):
    return [sys.executable, str(tmp_path/'train.py'), kind, str(data), str(tmp_path/f'{name}-ckpt'), str(tmp_path/f'{name}.pt'),
            str(tmp_path/f'{name}.labels'), '1' if resume else '0', str(pause)]


ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_DATASETS_OFFLINE': '1'}


def steps(path: Path) -> dict:
    "The labels of each training step (the last record of a step that was done twice)."
    return {step: labels for step, labels in map(json.loads, path.read_text().splitlines())}


def checkpoint_iterations(folder: Path) -> list[int]:
    return [int(m[1]) for p in folder.glob('checkpoint-*.pt') if (m := re.search(r'-b(\d+)\.pt$', p.name))]


def assert_finished(proc: subprocess.CompletedProcess | subprocess.Popen, out: str = ''):
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.parametrize('kind,kill_after', [('map', 6), ('stream', 15)])
def test_sigkill_with_2_workers_then_resume_is_bitwise(tmp_path, mnist_dir, kind, kill_after):
    """A fit with 2 workers, dropout and a random augmentation, killed with SIGKILL past the middle of an epoch (10 batches
    each), resumed in a new process: the final weights and every step's batch equal an unbroken run's; no worker is left."""
    (tmp_path/'train.py').write_text(TRAIN)
    unbroken = subprocess.Popen(train_args(tmp_path, kind, mnist_dir, 'unbroken'), env=ENV, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    broken = subprocess.Popen(train_args(tmp_path, kind, mnist_dir, 'broken', pause=0.2), env=ENV, cwd=tmp_path,
                              stdout=open(tmp_path/'broken.out', 'w'), stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 90
        while not any(i >= kill_after for i in checkpoint_iterations(tmp_path/'broken-ckpt')):
            assert broken.poll() is None, f"the run ended before it could be killed: {(tmp_path/'broken.out').read_text()[-3000:]}"
            assert time.monotonic() < end, 'no checkpoint past the middle of the epoch within 90 s'
            time.sleep(0.01)
        workers = live_children(broken.pid)
        assert len(workers) >= 2   # the training loader's 2 workers (the validation loader has none)
        os.kill(broken.pid, signal.SIGKILL)
        assert broken.wait(timeout=30) == -signal.SIGKILL
        killed_at = max(steps(tmp_path/'broken.labels'))   # the last step recorded
        assert kill_after <= killed_at <= kill_after + 3, killed_at   # mid-epoch (the epochs end at 10 and 20)
        assert wait_gone(workers, 20) == [], 'worker processes outlived the killed run'
        out, _ = unbroken.communicate(timeout=150)
        assert_finished(unbroken, out)
    finally:
        for proc in (broken, unbroken):
            if proc.poll() is None: proc.kill(); proc.wait()
    resumed = subprocess.run(train_args(tmp_path, kind, mnist_dir, 'broken', resume=True), env=ENV, cwd=tmp_path,
                             capture_output=True, text=True, timeout=150)
    assert_finished(resumed, resumed.stdout + resumed.stderr)
    a, b = torch.load(tmp_path/'unbroken.pt'), torch.load(tmp_path/'broken.pt')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert steps(tmp_path/'broken.labels') == steps(tmp_path/'unbroken.labels')
    assert sorted(steps(tmp_path/'unbroken.labels')) == list(range(1, 21))
    for name in ('unbroken', 'broken'):   # the finished runs' workers ended with them
        assert wait_gone(json.loads((tmp_path/f'{name}.pt.workers').read_text()), 20) == []


@pytest.mark.parametrize('kind', ['map', 'stream'])
def test_skip_and_abandoned_epochs_follow_an_unbroken_run(mnist, kind):
    """`iter(loader).skip(k)` then next() gives batch k of the same epoch unbroken (2 workers); an epoch abandoned midway
    (a Learner's cancelled pass) leaves the next epochs as they would have been."""
    kwargs = dict(columns=['image', 'label'], seed=9, num_workers=2)
    whole = make(kind, mnist['train'], 32, [to_tensor, augment], **kwargs)
    reference = [list(whole) for _ in range(4)]
    dl = make(kind, mnist['train'], 32, [to_tensor, augment], **kwargs)
    epoch = iter(dl)                                   # epoch 0: two batches, then abandoned
    assert_same_batches([next(epoch), next(epoch)], reference[0][:2])
    epoch = iter(dl)                                   # epoch 1: skip 3, then batch 3 and the rest
    assert epoch.skip(3) == 3
    assert_same_batches([next(epoch)], [reference[1][3]])
    assert_same_batches(list(epoch), reference[1][4:])
    epoch = iter(dl)                                   # epoch 2: skip 9, batch 9, abandoned (nothing left anyway)
    assert epoch.skip(9) == 9
    assert_same_batches([next(epoch)], [reference[2][9]])
    epoch = iter(dl)                                   # epoch 3: skip 0, a batch, abandoned; epoch 4 is not in reference
    assert epoch.skip(0) == 0
    assert_same_batches([next(epoch)], [reference[3][0]])
    assert_same_batches(list(whole), list(dl))         # epoch 4 of both
    epoch = iter(dl)
    assert epoch.skip(25) == 10                        # only 10 batches: skip says how many there were
    assert list(epoch) == []
    epoch = iter(dl)
    next(epoch)
    with pytest.raises(RuntimeError, match=r"^skip\(\) moves an epoch on before its first batch; this one has started$"):
        epoch.skip(1)
    del dl, whole, epoch
    no_workers_left()


# ================================================================ 3. the reservoir
def test_reservoir_never_waits_after_min_fill(images40):
    "A slow transform (20 ms a sample), 2 workers: after the first batch every next() returns at once; the cap is honoured."
    dl = ReservoirLoader(images40, 4, [slow], columns=['idx'], size=32, min_fill=8, max_replaced=2, batches_per_pass=25, seed=0,
                         num_workers=2, chunk=2)
    try:
        epoch = iter(dl)
        start = time.perf_counter()
        next(epoch)
        assert time.perf_counter() - start >= 8 * 0.02 / 2 * 0.9   # it did wait for min_fill samples
        times = []
        for _ in range(24):
            start = time.perf_counter()
            batch = next(epoch)
            times.append(time.perf_counter() - start)
            assert batch[0].shape == (4,) and len(set(batch[0].tolist())) == 4   # distinct samples
        assert max(times) < 0.01 and sorted(times)[12] < 0.003, times   # a wait for one sample would take 20 ms
        stats = dl.history[0]
        assert stats['batches'] == 25 and stats['added'] >= 8 and stats['replaced'] <= 2
    finally: dl.close()
    del dl, epoch
    no_workers_left()


def test_reservoir_replaces_at_most_max_replaced_per_pass(images40):
    "A fast producer replaces samples in every pass after the first, never more than max_replaced."
    dl = ReservoirLoader(images40, 4, columns=['idx'], size=16, min_fill=16, max_replaced=3, batches_per_pass=4, seed=0, num_workers=2)
    try:
        for _ in range(4):
            for _ in dl: time.sleep(0.02)   # a training step: the workers make more samples meanwhile
        assert [h['pass'] for h in dl.history] == [0, 1, 2, 3] and all(h['batches'] == 4 for h in dl.history)
        assert all(h['replaced'] <= 3 for h in dl.history), dl.history
        assert all(h['replaced'] > 0 for h in dl.history[1:]), dl.history
        assert dl.history[0]['added'] == 16 and len(dl.samples) == 16
        assert dl.resume_state()['passes'] == 4
    finally: dl.close()


def test_reservoir_resume_continues_the_source_and_refills(tmp_path):
    """resume_state/load_resume_state: entered, passes and the generator come back; the samples that enter next are the
    source's samples right after the saved position (label = row index); the reservoir's content is refilled, not restored."""
    from datasets import Dataset
    ds = Dataset.from_dict({'label': list(range(50))})
    # the source's order over two source epochs: a reservoir that keeps everything it is given, in order
    everything = ReservoirLoader(ds, 1, size=100, min_fill=100, max_replaced=0, seed=4, num_workers=1)
    try:
        next(iter(everything))
        order = [s['label'] for s in everything.samples]
    finally: everything.close()
    assert sorted(order[:50]) == sorted(order[50:]) == list(range(50)) and order[:50] != order[50:]

    dl = ReservoirLoader(ds, 4, size=16, min_fill=16, max_replaced=4, batches_per_pass=3, seed=4, num_workers=2)
    try:
        for _ in range(2):
            for _ in dl: time.sleep(0.01)
        assert dl.entered >= 16
        state = dl.resume_state()
    finally: dl.close()
    assert set(state) == {'kind', 'base_seed', 'entered', 'passes', 'generator'} and state['passes'] == 2
    entered = state['entered']
    assert 16 <= entered <= 16 + 2 * 4   # the first fill, then at most max_replaced a pass

    resumed = ReservoirLoader(ds, 4, size=16, min_fill=16, max_replaced=0, batches_per_pass=3, seed=77, num_workers=2)
    try:
        resumed.load_resume_state(state)
        assert (resumed.base_seed, resumed.entered, resumed.passes) == (state['base_seed'], entered, 2)
        assert torch.equal(resumed.resume_state()['generator'], state['generator'])   # the draws' generator
        assert resumed.samples == []   # refilled, not restored
        epoch = iter(resumed)
        next(epoch)
        assert [s['label'] for s in resumed.samples] == order[entered:entered + 16]
        assert resumed.entered == entered + 16
        for _ in epoch: pass
        assert resumed.passes == 3 and resumed.history[-1]['pass'] == 2
    finally: resumed.close()

    same = ReservoirLoader(ds, 4, size=16, min_fill=16, max_replaced=4, batches_per_pass=3, seed=4, num_workers=2)
    try:
        same.load_resume_state(state)
        next(iter(same))
        assert set(s['label'] for s in same.samples) <= set(order[entered:same.entered])
        assert entered + 16 <= same.entered <= entered + 20
    finally: same.close()


class Stop(Subscriber):
    "Raise in after_batch at training iteration `at` (after CheckpointS has written its checkpoint of that batch)."
    order = 1000
    def __init__(self, at): self.at = at
    def after_batch(self, learn):
        if learn.training and learn.iteration == self.at: raise RuntimeError(f'interrupted at {self.at}')


class Count(Subscriber):
    order = 1000
    def __init__(self): self.steps = []
    def after_batch(self, learn):
        if learn.training: self.steps.append((learn.epoch, learn.iter, learn.iteration, tuple(learn.batch[0].shape)))


def test_learner_fit_with_a_reservoir_interrupted_and_resumed(tmp_path, images40):
    "Interrupted at step 7 (checkpoint at 6), resumed: 15 - 6 = 9 steps trained; each checkpoint carries position['data']."
    from torch import nn
    from nntrain.checkpoints import CheckpointS
    from nntrain.core import checkpoints, load_checkpoint
    from nntrain.dataloaders import DataLoaders
    from nntrain.learner import Learner

    def learner():
        torch.manual_seed(0)
        train = ReservoirLoader(images40, 8, columns=['image', 'label'], size=32, min_fill=16, batches_per_pass=5, seed=0, num_workers=2)
        valid = MapLoader(images40, 20, columns=['image', 'label'])
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10))
        return Learner(model, DataLoaders(train, valid), lr=0.05), train

    folder = tmp_path/'ckpt'
    learn, train = learner()
    try:
        with pytest.raises(RuntimeError, match='^interrupted at 7'):
            learn.fit(3, subs=[CheckpointS(folder, every_batches=2, keep=10), Stop(7)])
        base_seed = train.base_seed
    finally: train.close()
    saved = checkpoints(folder)
    assert [int(re.search(r'-b(\d+)', p.name)[1]) for p in saved] == [2, 4, 5, 6]   # every 2 steps, and the end of epoch 0
    state = load_checkpoint(saved[-1])
    data = state['position']['data']
    assert set(data) == {'kind', 'base_seed', 'entered', 'passes', 'generator'} and data['kind'] == 'ReservoirLoader'
    assert data['passes'] == 1 and data['base_seed'] == base_seed and data['entered'] >= 16
    assert state['position']['epoch'] == 1 and state['position']['iteration'] == 6

    learn, train = learner()
    count = Count()
    try:
        learn.fit(3, subs=[CheckpointS(folder, every_batches=2, keep=10), count], resume=folder)
        assert [s[:3] for s in count.steps] == [(1, i, 6 + i) for i in range(1, 5)] + [(2, i, 10 + i + 1) for i in range(5)]
        assert all(s[3] == (8, 3, 4, 4) for s in count.steps)
        assert train.passes == 3 and train.base_seed == base_seed
        assert train.resume_state()['entered'] >= data['entered'] + 16
        assert load_checkpoint(checkpoints(folder)[-1])['position']['data']['passes'] == 3
    finally: train.close()
    del learn, train
    no_workers_left()


# ================================================================ 4. rank shards partition the epoch
def shard_batches(kind: str, data, world_size: int, rank: int, num_workers: int = 0) -> list:
    kwargs = dict(columns=['image', 'idx'], seed=3, rank=rank, world_size=world_size, num_workers=num_workers, persistent_workers=False)
    dl = MapLoader(data, 10, shuffle=True, **kwargs) if kind == 'map' else StreamLoader(data, 10, buffer_size=20, **kwargs)
    if kind == 'map': assert len(dl) == 11
    return list(dl)


@pytest.mark.parametrize('kind', ['map', 'stream'])
@pytest.mark.parametrize('world_size,num_workers', [(1, 0), (2, 0), (3, 0), (3, 2)])
def test_rank_shards_partition_the_epoch(images101, kind, world_size, num_workers):
    "101 rows, batch_size 10: every rank has 11 batches; batch j of all ranks together is global batch j; a 0-row batch keeps its shapes."
    whole = shard_batches(kind, images101, 1, 0)
    ranks = [shard_batches(kind, images101, world_size, r, num_workers) for r in range(world_size)]
    assert [len(batches) for batches in ranks] == [11] * world_size
    seen = [int(i) for batches in ranks for _, idx in batches for i in idx]
    assert sorted(seen) == list(range(101))                     # none twice, none missing
    for j in range(11):
        together = sorted(int(i) for batches in ranks for i in batches[j][1])
        assert together == sorted(whole[j][1].tolist())
    for r, batches in enumerate(ranks):
        for image, idx in batches:
            assert image.dtype == torch.float32 and idx.dtype == torch.int64 and image.shape[1:] == (3, 4, 4)
            assert image.shape[0] == idx.shape[0]
        expected_last = 1 if r == 0 else 0
        assert batches[-1][0].shape == (expected_last, 3, 4, 4) and batches[-1][1].shape == (expected_last,)
        assert all(b[0].shape[0] == len(range(r, 10, world_size)) for b in batches[:-1])


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_reservoir_rank_shards_partition_a_source_epoch(images101, world_size):
    "Over one source epoch, the samples entering each rank's reservoir are disjoint and together every row once."
    entered = []
    for rank in range(world_size):
        probe = ReservoirLoader(images101, 1, columns=['idx'], size=1, seed=6, num_workers=1, rank=rank, world_size=world_size)
        per_epoch = probe.rows_per_epoch
        expected = sum(len(range(s, min(s + 8 * world_size, 101))[rank::world_size]) for s in range(0, 101, 8 * world_size))
        assert per_epoch == expected
        dl = ReservoirLoader(images101, 1, columns=['idx'], size=per_epoch, min_fill=per_epoch, max_replaced=0, seed=6, num_workers=1,
                             rank=rank, world_size=world_size)
        try:
            next(iter(dl))
            entered.append([s['idx'] for s in dl.samples])
        finally: dl.close()
        assert len(entered[-1]) == per_epoch == dl.entered
    assert sorted(i for rows in entered for i in rows) == list(range(101))


# ================================================================ 5. a failing transform names the sample and the transform
@pytest.mark.parametrize('kind,where', [('map', 'row of the dataset'), ('stream', 'position in the stream')])
@pytest.mark.parametrize('num_workers', [0, 2])
def test_failing_transform_names_sample_and_transform(images40, kind, where, num_workers):
    dl = (MapLoader(images40, 4, [to_tensor, fail_on_7], num_workers=num_workers, persistent_workers=False) if kind == 'map'
          else StreamLoader(images40, 4, [to_tensor, fail_on_7], shuffle=False, num_workers=num_workers, persistent_workers=False))
    with pytest.raises(PipelineError) as info: list(dl)
    message = f"transform fail_on_7 failed on sample 7 ({where}): ValueError: bad sample 7"
    if num_workers == 0: assert str(info.value) == message
    else: assert re.fullmatch(re.escape(message) + r' \(in worker process [01]\)', str(info.value)), str(info.value)


def test_failing_transform_in_the_reservoir_surfaces_in_the_consumer(images40):
    dl = ReservoirLoader(images40, 4, [fail_on_7], size=40, seed=0, num_workers=2)
    try:
        with pytest.raises(PipelineError) as info: next(iter(dl))
        assert re.fullmatch(r"transform fail_on_7 failed on sample 7 \(row of the dataset\): ValueError: bad sample 7 "
                            r"\(in worker process [01]\)", str(info.value)), str(info.value)
    finally: dl.close()
    del dl, info   # the error's traceback holds the source's DataLoader iterator
    no_workers_left()


# ================================================================ 6. paths beside the happy one
class CountingRows(list):
    "A list of rows that counts the rows read: a refused argument reads none."
    reads = 0
    def __getitem__(self, i):
        CountingRows.reads += 1
        return super().__getitem__(i)
    def __iter__(self):
        CountingRows.reads += 1
        return super().__iter__()


ROWS = CountingRows({'x': float(i), 'idx': i} for i in range(6))

BAD_ARGUMENTS = [
    (dict(batch_size=0), ValueError, "{who} expected batch_size to be an int >= 1 (not a bool), got 0"),
    (dict(batch_size=True), ValueError, "{who} expected batch_size to be an int >= 1 (not a bool), got True"),
    (dict(batch_size=2.0), ValueError, "{who} expected batch_size to be an int >= 1 (not a bool), got 2.0"),
    (dict(transforms=5), TypeError, "{who} expected transforms to be a function of a sample or a list of them, got 5"),
    (dict(transforms=[to_tensor, 'x']), TypeError, "{who} expected transforms to be a function of a sample or a list of them, got a list"),
    (dict(columns=[1]), TypeError, "{who} expected columns to be a column name or a list of them (or None: all), got a list"),
    (dict(columns=[]), TypeError, "{who} expected columns to be a column name or a list of them (or None: all), got a list"),
    (dict(collate_fn=int), TypeError, "{who} expected collate_fn to be a function of a list of samples, got the class int"),
    (dict(flatten='no'), ValueError, "{who} expected flatten to be True or False, got 'no'"),
    (dict(seed=-1), ValueError, "{who} expected seed to be an int >= 0 (not a bool) or None, got -1"),
    (dict(seed='1'), ValueError, "{who} expected seed to be an int >= 0 (not a bool) or None, got '1'"),
    (dict(num_workers=-1), ValueError, "{who} expected num_workers to be an int >= 0 (not a bool), got -1"),
    (dict(timeout=-1), ValueError, "{who} expected timeout to be a number of seconds >= 0 (0: wait as long as it takes), got -1"),
    (dict(timeout=True), ValueError, "{who} expected timeout to be a number of seconds >= 0 (0: wait as long as it takes), got True"),
    (dict(rank=2, world_size=2), ValueError, "{who} expected rank in [0, world_size) = [0, 2), got rank=2"),
    (dict(rank=-1, world_size=2), ValueError, "{who} expected rank to be an int >= 0 (not a bool), got -1"),
    (dict(world_size=0), ValueError, "{who} expected world_size to be an int >= 1 (not a bool), got 0"),
]


@pytest.mark.parametrize('who,bad,error,message', [(who, *case) for who in ('MapLoader', 'StreamLoader', 'ReservoirLoader') for case in BAD_ARGUMENTS
                                                    if not (who == 'ReservoirLoader' and 'num_workers' in case[0])])   # its own test below
def test_wrong_arguments_are_refused_before_any_work(who, bad, error, message):
    cls = {'MapLoader': MapLoader, 'StreamLoader': StreamLoader, 'ReservoirLoader': ReservoirLoader}[who]
    kwargs = {'batch_size': 2, **bad}
    CountingRows.reads, before = 0, set(live_children(os.getpid()))
    with pytest.raises(error) as info: cls(ROWS, kwargs.pop('batch_size'), **kwargs)
    assert str(info.value) == message.format(who=who)
    assert CountingRows.reads == 0 and set(live_children(os.getpid())) <= before   # no row read, no worker started


@pytest.mark.parametrize('kwargs,error,message', [
    (dict(shuffle='yes'), ValueError, "MapLoader expected shuffle to be True or False, got 'yes'"),
    (dict(drop_last=1), ValueError, "MapLoader expected drop_last to be True or False, got 1"),
    (dict(prefetch_factor=0, num_workers=2), ValueError, "MapLoader expected prefetch_factor to be an int >= 1 (not a bool), got 0"),
    (dict(drop_last=True, batch_size=7), ValueError,
     "MapLoader: drop_last=True with 6 rows and batch_size=7 leaves no batch; expected at least 7 rows"),
])
def test_map_loader_refuses(kwargs, error, message):
    kwargs = {'batch_size': 2, **kwargs}
    CountingRows.reads = 0
    with pytest.raises(error) as info: MapLoader(ROWS, kwargs.pop('batch_size'), **kwargs)
    assert str(info.value) == message and CountingRows.reads == 0


def test_map_loader_refuses_what_is_not_read_by_index(mnist, images40):
    from datasets import Dataset
    with pytest.raises(TypeError) as info: MapLoader(mnist, 4)
    assert str(info.value) == ("MapLoader expected a dataset read by index (with len and [i]: a Hugging Face Dataset, a list), "
                               "got a DatasetDict (pick a split: dd['train'])")
    with pytest.raises(TypeError) as info: MapLoader(images40.to_iterable_dataset(), 4)
    assert str(info.value) == ("MapLoader expected a dataset read by index (with len and [i]: a Hugging Face Dataset, a list), "
                               "got a IterableDataset (a stream: use StreamLoader)")
    with pytest.raises(TypeError) as info: MapLoader('abc', 4)   # a path, say: a str is not a stream, so no hint to StreamLoader
    assert str(info.value).startswith("MapLoader expected a dataset read by index (with len and [i]: a Hugging Face Dataset, a list), got 'abc'")
    assert 'StreamLoader' not in str(info.value), str(info.value)
    with pytest.raises(ValueError) as info: MapLoader(Dataset.from_dict({'x': []}), 4)
    assert str(info.value) == "MapLoader expected a dataset with at least one row, got an empty Dataset"


def test_stream_loader_refuses_an_iterator(images40):
    "An iterator is read only once: refused before any work, named as what it is."
    expected = ("StreamLoader expected a stream that can be read again for every epoch (a Hugging Face IterableDataset or Dataset, "
                "a list, an object with __iter__), got a {}, an iterator, which is read only once")
    rows = iter([{'x': 1.0}] * 4)
    with pytest.raises(TypeError) as info: StreamLoader(rows, 2)
    assert str(info.value) == expected.format('list_iterator')
    assert len(list(rows)) == 4   # nothing was read from it
    with pytest.raises(TypeError) as info: StreamLoader(({'x': float(i)} for i in range(4)), 2)
    assert str(info.value) == expected.format('generator')
    with pytest.raises(TypeError) as info: StreamLoader(5, 2)
    assert str(info.value) == ("StreamLoader expected a stream that can be read again for every epoch (a Hugging Face IterableDataset "
                               "or Dataset, a list, an object with __iter__), got 5")
    with pytest.raises(ValueError) as info: StreamLoader(images40, 2, buffer_size=0)
    assert str(info.value) == "StreamLoader expected buffer_size to be an int >= 1 (not a bool), got 0"
    with pytest.raises(TypeError, match=r"object of type 'StreamLoader' has no len\(\)"): len(StreamLoader(images40, 2))


def test_stream_loader_reads_a_list_and_an_iterable_dataset_again_each_epoch(images40):
    rows = [{'x': float(i), 'idx': i} for i in range(10)]
    dl = StreamLoader(rows, 4, shuffle=False)
    assert [b[1].tolist() for b in dl] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] == [b[1].tolist() for b in dl]
    dl = StreamLoader(images40.to_iterable_dataset(), 8, columns=['idx'], seed=1, buffer_size=10)
    a, b = [x for (x,) in dl], [x for (x,) in dl]
    assert sorted(torch.cat(a).tolist()) == sorted(torch.cat(b).tolist()) == list(range(40)) and not torch.equal(torch.cat(a), torch.cat(b))
    drop = StreamLoader(rows, 4, shuffle=False, drop_last=True)
    assert [b[1].tolist() for b in drop] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(StreamLoader(rows[:3], 4, shuffle=False, drop_last=True)) == []   # a stream's length is known only once it is read


def test_reservoir_refuses():
    rows = [{'x': float(i)} for i in range(6)]
    with pytest.raises(ValueError) as info: ReservoirLoader(rows, 2, num_workers=0)
    assert str(info.value) == "ReservoirLoader expected num_workers >= 1 (worker processes fill the reservoir while training goes on), got 0"
    with pytest.raises(ValueError) as info: ReservoirLoader(rows, 4, size=10, min_fill=20)
    assert str(info.value) == ("ReservoirLoader expected batch_size <= min_fill <= size (a batch is drawn from at least min_fill samples), "
                               "got batch_size=4, min_fill=20, size=10")
    with pytest.raises(ValueError) as info: ReservoirLoader(rows, 4, size=10, min_fill=2)
    assert str(info.value) == ("ReservoirLoader expected batch_size <= min_fill <= size (a batch is drawn from at least min_fill samples), "
                               "got batch_size=4, min_fill=2, size=10")
    with pytest.raises(ValueError) as info: ReservoirLoader(rows, 2, max_replaced=-1)
    assert str(info.value) == "ReservoirLoader expected max_replaced to be an int >= 0 (not a bool) or None, got -1"
    with pytest.raises(ValueError) as info: ReservoirLoader(rows[:2], 1, size=4, rank=2, world_size=3)
    assert str(info.value) == "ReservoirLoader: rank 2 of 3 gets no rows of a dataset of 2; expected at least one row per rank"


def test_len_of_every_pipeline(images101):
    assert len(MapLoader(images101, 10)) == 11 == len(list(MapLoader(images101, 10)))
    assert len(MapLoader(images101, 10, drop_last=True)) == 10 == len(list(MapLoader(images101, 10, drop_last=True)))
    assert len(MapLoader(images101, 200)) == 1
    assert len(MapLoader(images101, 10, rank=2, world_size=3)) == 11
    dl = ReservoirLoader(images101, 10, columns=['idx'], size=25, num_workers=1)
    try:
        assert len(dl) == 3 == len(list(dl))
        assert len(ReservoirLoader(images101, 10, columns=['idx'], size=25, batches_per_pass=7, num_workers=1)) == 7
    finally: dl.close()


# ---------------------------------------------------------------- open_dataset and the readers
def test_open_dataset_refuses_what_it_cannot_read(tmp_path):
    tail = "; expected a folder written by save_to_disk, a .parquet or .csv file, a folder of class folders of images, or 'hub:<name>'"
    missing = tmp_path/'missing'
    with pytest.raises(ValueError) as info: open_dataset(missing)
    assert str(info.value) == f"open_dataset: {str(missing)!r} is missing{tail}"
    (tmp_path/'notes.txt').write_text('hello')
    with pytest.raises(ValueError) as info: open_dataset(tmp_path/'notes.txt')
    assert str(info.value) == f"open_dataset: {str(tmp_path/'notes.txt')!r} is a .txt file{tail}"
    (tmp_path/'empty').mkdir()
    with pytest.raises(ValueError) as info: open_dataset(tmp_path/'empty')
    assert str(info.value) == f"open_dataset: {str(tmp_path/'empty')!r} is a folder with neither a saved dataset nor class folders{tail}"
    for bad, shown in [(5, '5'), ('', "''"), (None, 'None'), (['a.csv'], 'a list')]:
        with pytest.raises(TypeError) as info: open_dataset(bad)
        assert str(info.value) == f"open_dataset expected a Hugging Face dataset, 'hub:<name>' or a path, got {shown}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'notes.txt']   # nothing was written


def test_open_dataset_names_a_file_without_a_suffix_plainly(tmp_path):
    "A plain file without a suffix is named as a file (not 'a file file')."
    (tmp_path/'data').write_bytes(b'\x00\x01')
    with pytest.raises(ValueError) as info: open_dataset(tmp_path/'data')
    message = str(info.value)
    assert message.startswith(f"open_dataset: {str(tmp_path/'data')!r} is a ") and message.endswith("or 'hub:<name>'")
    assert 'file file' not in message, message


def test_open_dataset_reads_parquet_csv_and_image_folders_into_cache_dir(tmp_path):
    import pandas as pd
    import PIL.Image
    cache = tmp_path/'cache'
    frame = pd.DataFrame({'x': [0.5, 1.5, 2.5], 'label': [0, 1, 0]})
    frame.to_parquet(tmp_path/'data.parquet')
    frame.to_csv(tmp_path/'data.csv', index=False)
    for path in (tmp_path/'data.parquet', tmp_path/'data.csv'):
        dd = open_dataset(path, cache_dir=cache)
        assert list(dd) == ['train'] and dd['train'].to_dict() == {'x': [0.5, 1.5, 2.5], 'label': [0, 1, 0]}
        assert all(Path(f['filename']).is_relative_to(cache) for f in dd['train'].cache_files) and dd['train'].cache_files
        assert [b[0].tolist() for b in MapLoader(dd['train'], 2, columns=['x'])] == [[0.5, 1.5], [2.5]]
    for cls in ('cat', 'dog'):
        (tmp_path/'images'/cls).mkdir(parents=True)
        for i in range(2): PIL.Image.new('RGB', (5, 4), (i * 100, 0, 0)).save(tmp_path/'images'/cls/f'{i}.png')
    dd = open_dataset(tmp_path/'images', cache_dir=cache)
    train = dd['train']
    assert len(train) == 4 and train.features['label'].names == ['cat', 'dog'] and sorted(train['label']) == [0, 0, 1, 1]
    images, labels = next(iter(MapLoader(train, 4)))
    assert images.shape == (4, 3, 4, 5) and images.dtype == torch.float32 and sorted(labels.tolist()) == [0, 0, 1, 1]
    assert all(Path(f['filename']).is_relative_to(cache) for f in train.cache_files)
    # the datasets builders wrote only inside tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'data.csv', 'data.parquet', 'images']


def test_readers_refuse_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info: from_parquet(tmp_path/'none.parquet')
    assert str(info.value) == f"from_parquet: no file {str(tmp_path/'none.parquet')!r} (split 'train'); expected an existing file"
    with pytest.raises(TypeError) as info: from_csv(5)
    assert str(info.value) == "from_csv expected a file, a list of files, or a dict of split name to files, got 5"
    with pytest.raises(TypeError) as info: from_csv({})
    assert str(info.value) == "from_csv expected a file, a list of files, or a dict of split name to files, got a dict"
    (tmp_path/'a.csv').write_text('x\n1\n')
    with pytest.raises(TypeError) as info: from_csv(tmp_path/'a.csv', cache_dir=5)
    assert str(info.value) == "from_csv expected cache_dir to be a folder (a str or a Path, made if missing) or None for the datasets cache, got 5"
    with pytest.raises(FileNotFoundError) as info: from_image_folder(tmp_path/'a.csv')
    assert str(info.value) == f"from_image_folder expected a folder of class folders of images, got {str(tmp_path/'a.csv')!r}, which is not a folder"
    with pytest.raises(FileNotFoundError) as info: from_image_folder(tmp_path/'nowhere')
    assert str(info.value) == f"from_image_folder expected a folder of class folders of images, got {str(tmp_path/'nowhere')!r}, which is missing"


# ---------------------------------------------------------------- transforms that return the wrong thing, workers that die
@pytest.mark.parametrize('kind', ['map', 'stream'])
@pytest.mark.parametrize('num_workers', [0, 2])
def test_transform_returning_none_is_named(images40, kind, num_workers):
    "A transform that returns None (it forgot `return row`) gives a PipelineError naming the transform and the sample."
    dl = (MapLoader(images40, 4, [returns_none], num_workers=num_workers, persistent_workers=False) if kind == 'map'
          else StreamLoader(images40, 4, [returns_none], shuffle=False, num_workers=num_workers, persistent_workers=False))
    with pytest.raises(PipelineError) as info: next(iter(dl))
    where = 'row of the dataset' if kind == 'map' else 'position in the stream'
    message = f"transform returns_none returned None for sample 0 ({where}); expected the sample (return it)"
    assert re.fullmatch(re.escape(message) + ('' if num_workers == 0 else r' \(in worker process 0\)'), str(info.value)), str(info.value)


def exits(row):
    if row['idx'] == 3: sys.exit(2)
    return row


@pytest.mark.parametrize('kind', ['map', 'stream'])
@pytest.mark.parametrize('num_workers', [0, 2])
def test_sys_exit_in_a_transform_is_a_pipeline_error(images40, kind, num_workers):
    "sys.exit() inside a transform does not end the worker (or this process) silently: a PipelineError names it."
    dl = (MapLoader(images40, 4, [exits], num_workers=num_workers, persistent_workers=False) if kind == 'map'
          else StreamLoader(images40, 4, [exits], shuffle=False, num_workers=num_workers, persistent_workers=False))
    with pytest.raises(PipelineError) as info: next(iter(dl))
    where = 'row of the dataset' if kind == 'map' else 'position in the stream'
    message = f"transform exits failed on sample 3 ({where}): SystemExit: 2"
    assert re.fullmatch(re.escape(message) + ('' if num_workers == 0 else r' \(in worker process 0\)'), str(info.value)), str(info.value)


@pytest.mark.parametrize('kind', ['map', 'stream'])
def test_a_sample_that_cannot_be_collated_gives_the_same_error_with_workers(images40, kind):
    "A transform returning a str: the collate error says what is wrong, the same with 2 workers as with none (not a worker traceback)."
    def loader(workers):
        return (MapLoader(images40, 4, [returns_text], num_workers=workers, persistent_workers=False) if kind == 'map'
                else StreamLoader(images40, 4, [returns_text], shuffle=False, num_workers=workers, persistent_workers=False))
    with pytest.raises(ValueError) as here: next(iter(loader(0)))
    assert str(here.value) == "hf_ds_collate_fn cannot make one tensor of column 0: too many dimensions 'str'; pass a collate_fn of your own that batches it"
    with pytest.raises(ValueError) as there: next(iter(loader(2)))
    assert str(there.value).startswith(str(here.value)), str(there.value)


@pytest.mark.parametrize('kind', ['map', 'stream', 'reservoir'])
def test_a_worker_that_dies_raises_not_hangs(images40, kind):
    "A transform that ends its worker process (os._exit): the consumer gets an error within seconds, with timeout=0."
    start = time.monotonic()
    dl = (MapLoader(images40, 4, [die_in_worker], num_workers=2, persistent_workers=False) if kind == 'map'
          else StreamLoader(images40, 4, [die_in_worker], shuffle=False, num_workers=2, persistent_workers=False) if kind == 'stream'
          else ReservoirLoader(images40, 4, [die_in_worker], size=40, num_workers=2))
    try:
        with pytest.raises(RuntimeError, match=r'^(DataLoader worker \(pid|a worker process of the ReservoirLoader died: pid )'): list(dl)
    finally:
        if kind == 'reservoir': dl.close()
    assert time.monotonic() - start < 30
    del dl
    no_workers_left()


@pytest.mark.parametrize('kind', ['map', 'stream'])
def test_a_dropped_loader_stops_its_workers_at_once(images40, kind):
    "A loader with 2 workers that nobody holds any more: collecting it stops its workers in well under a second, not 2 x 5 s."
    before = set(live_children(os.getpid()))
    dl = make(kind, images40, 8, columns=['idx'], seed=0, num_workers=2)
    assert len(list(dl)) == 5
    workers = [p for p in live_children(os.getpid()) if p not in before]
    assert len(workers) == 2
    start = time.monotonic()
    del dl
    gc.collect()
    assert wait_gone(workers, 5) == [] and time.monotonic() - start < 2, time.monotonic() - start


def test_a_plain_list_of_dicts_with_workers_and_a_learner(tmp_path):
    "Not a Hugging Face dataset: a list of dicts of tensors, a worker, trained by a Learner for 2 epochs."
    from torch import nn
    from nntrain.dataloaders import DataLoaders
    from nntrain.learner import Learner
    rows = [{'x': torch.full((3,), float(i)), 'y': i % 2} for i in range(20)]
    dl = MapLoader(rows, 6, shuffle=True, seed=0, num_workers=1)
    assert len(dl) == 4 and [b[0].shape for b in dl] == [(6, 3)] * 3 + [(2, 3)]
    learn = Learner(nn.Linear(3, 2), DataLoaders(dl, MapLoader(rows, 10)), lr=0.01)
    count = Count()
    learn.fit(2, subs=[count])
    assert [s[2] for s in count.steps] == list(range(1, 9))


@pytest.mark.parametrize('cls', [MapLoader, StreamLoader])
def test_options_out_of_range_are_refused(cls):
    rows = [{'x': float(i)} for i in range(6)]
    who = cls.__name__
    for kwargs, message in [(dict(persistent_workers=1), f"{who} expected persistent_workers to be True or False, got 1"),
                            (dict(seed=2**63), f"{who} expected seed to be an int in [0, 2**63), got {2**63}"),
                            (dict(timeout=2**31), f"{who} expected timeout to be a number of seconds >= 0 (0: wait as long as it takes), got {2**31}"),
                            (dict(timeout=float('nan')), f"{who} expected timeout to be a number of seconds >= 0 (0: wait as long as it takes), got nan")]:
        with pytest.raises(ValueError) as info: cls(rows, 2, **kwargs)
        assert str(info.value) == message


def test_an_empty_stream(images40):
    with pytest.raises(ValueError) as info: StreamLoader(images40.select([]), 2)
    assert str(info.value) == "StreamLoader expected a stream with at least one row, got an empty Dataset"
    assert list(StreamLoader([], 2)) == []   # a plain iterable's length is known only once it is read


@pytest.mark.parametrize('cls', [MapLoader, StreamLoader])
def test_a_timeout_ends_a_wait_for_a_slow_worker(cls):
    "timeout=0.5 with a transform that takes 1.5 s: an error after about half a second, not a wait."
    rows = [{'x': torch.tensor(float(i))} for i in range(8)]
    def sleepy(row): time.sleep(1.5); return row
    start = time.monotonic()
    try: next(iter(cls(rows, 4, [sleepy], num_workers=1, timeout=0.5, persistent_workers=False)))
    except RuntimeError as e: waited, message = time.monotonic() - start, str(e)
    else: raise AssertionError('no error')
    assert message == 'DataLoader timed out after 0.5 seconds' and waited < 2.5, (message, waited)


def test_a_resume_with_another_batch_size_is_refused(tmp_path, images40):
    "The checkpoint records the loader's layout: resuming with another batch size would land on other samples, so it is refused."
    from torch import nn
    from nntrain.checkpoints import CheckpointS
    from nntrain.core import CheckpointError
    from nntrain.dataloaders import DataLoaders
    from nntrain.learner import Learner
    def learner(batch_size):
        train = MapLoader(images40, batch_size, columns=['image', 'label'], shuffle=True, seed=0)
        return Learner(nn.Sequential(nn.Flatten(), nn.Linear(48, 10)), DataLoaders(train, MapLoader(images40, 20, columns=['image', 'label'])))
    with pytest.raises(RuntimeError, match='^interrupted at 3'):
        learner(8).fit(2, subs=[CheckpointS(tmp_path, every_batches=2), Stop(3)])
    with pytest.raises(CheckpointError) as info: learner(10).fit(2, subs=[CheckpointS(tmp_path, every_batches=2)], resume=tmp_path)
    assert str(info.value) == ("the checkpoint was written with another MapLoader (batch_size=8 there, 10 here): its position, a count of "
                               "batches, would land on other samples; expected the loader of the run that wrote it")
    count = Count()
    learner(8).fit(2, subs=[CheckpointS(tmp_path, every_batches=2), count], resume=tmp_path)
    assert [s[2] for s in count.steps] == list(range(3, 11))
