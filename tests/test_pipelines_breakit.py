"""Faults found by the independent break-it passes over chapter 14 (pipelines), each kept as a test."""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from torch import nn

from nntrain.checkpoints import CheckpointS
from nntrain.core import CheckpointError
from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, Subscriber
from nntrain.pipelines import (MapLoader, PipelineError, ReservoirLoader, StreamLoader, collate_samples, from_csv,
                               from_image_folder, from_parquet, open_dataset, sample_seed)


@pytest.fixture(autouse=True)
def alarm():
    "Fail a test that runs past 120 s instead of hanging CI."
    def expired(*_): raise TimeoutError('test ran past 120 s')
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def numbers(n=40):
    return Dataset.from_dict({'x': [float(i) for i in range(n)], 'y': list(range(n))})


def slow(row):
    time.sleep(0.005)
    return row


def children() -> set[int]:
    out = subprocess.run(['pgrep', '-P', str(os.getpid())], capture_output=True, text=True, timeout=10).stdout.split()
    return {int(p) for p in out} - {os.getpid()}


def test_dead_reservoir_workers_stop_training():
    "A: workers of the reservoir killed from outside used to leave it training on its old samples, silently."
    r = ReservoirLoader(numbers(400), 4, [slow], size=32, min_fill=16, batches_per_pass=50, num_workers=2, seed=0)
    next(iter(r))
    for worker in r.source.runner.dl._iterator._workers: os.kill(worker.pid, signal.SIGKILL)   # its workers, none of another test's
    # torch notices first when its own wait sees the death; else the reservoir's check does
    with pytest.raises(RuntimeError, match=r"a worker process of the ReservoirLoader died: pid \d+ \(exit code -9\)|"
                                           r"DataLoader worker \(pid \d+\) is killed by signal: Killed"):
        time.sleep(0.5)   # torch's SIGCHLD handler may raise here already
        for _ in range(3):
            for _ in r: time.sleep(0.002)
    r.close()


def test_unused_reservoirs_free_their_workers():
    "B: a reservoir nobody uses any more used to keep its thread and worker processes for good."
    threads = threading.active_count()
    for _ in range(4):
        r = ReservoirLoader(numbers(), 4, size=16, min_fill=8, batches_per_pass=5, num_workers=2, seed=0)
        Learner(nn.Linear(1, 40), DataLoaders(r, None), lr=0.1, inputs=lambda b: b[0][:, None]).fit(1, valid=False)
        del r
        gc.collect()
    time.sleep(0.5)
    assert threading.active_count() <= threads
    assert children() == set()


def test_abandoned_epochs_free_quickly():
    "C: an abandoned epoch of a loader with workers used to cost 5 s a worker when the loader was collected."
    ds = numbers(400)
    for make in (lambda: MapLoader(ds, 4, num_workers=2), lambda: StreamLoader(ds, 4, num_workers=2)):
        for _ in range(2):
            start = time.perf_counter()
            loader = make()
            next(iter(loader))
            del loader
            gc.collect()
            assert time.perf_counter() - start < 3


def test_close_stops_workers():
    loader = MapLoader(numbers(), 4, num_workers=2)
    list(loader)
    assert len(children()) == 2
    loader.close()
    time.sleep(0.3)
    assert children() == set()
    assert len(list(loader)) == 10   # the next epoch starts new workers


class Crash(Exception): pass


class CrashAt(Subscriber):
    def __init__(self, step): self.step = step
    def after_batch(self, learn):
        if learn.training and learn.iteration == self.step: raise Crash()


def test_resume_with_another_batch_size_is_refused(tmp_path):
    "D: a resume with another batch size used to skip rows silently (the position is a count of batches)."
    ds = numbers(200)
    def learner(bs):
        torch.manual_seed(0)
        return Learner(nn.Linear(1, 200), DataLoaders(MapLoader(ds, bs, shuffle=True, seed=1), None), lr=0.1, inputs=lambda b: b[0][:, None])
    with pytest.raises(Crash): learner(8).fit(2, valid=False, subs=[CheckpointS(tmp_path, every_batches=5), CrashAt(37)])
    with pytest.raises(CheckpointError, match=r"another MapLoader \(batch_size=8 there, 16 here\): its position, a count of batches"):
        learner(16).fit(2, valid=False, subs=[CheckpointS(tmp_path, every_batches=5)], resume=tmp_path)
    stream = Learner(nn.Linear(1, 200), DataLoaders(StreamLoader(ds, 8), None), lr=0.1, inputs=lambda b: b[0][:, None])
    with pytest.raises(CheckpointError, match=r"a training loader of another kind \(MapLoader\); this one is a StreamLoader"):
        stream.fit(2, valid=False, subs=[CheckpointS(tmp_path, every_batches=5)], resume=tmp_path)


def png_folder(root, classes):
    for c in classes:
        (root/c).mkdir(parents=True)
        for i in range(3):
            from PIL import Image as PILImage
            PILImage.fromarray(np.full((4, 4, 3), i * 40, dtype=np.uint8)).save(root/c/f'{i}.png')
    return root


def test_image_folder_of_one_class_keeps_its_label(tmp_path):
    "E: a folder with one class folder used to lose the label column the docstring promises."
    dd = from_image_folder(png_folder(tmp_path/'one', ['cats']), cache_dir=tmp_path/'cache')
    assert dd['train'].features['label'].names == ['cats']
    assert dd['train']['label'] == [0, 0, 0]


def test_cache_dir_must_be_a_folder(tmp_path):
    "F, R: cache_dir='' used to write into ~/.cache; a file as cache_dir gave FileExistsError from deep inside datasets."
    Dataset.from_dict({'a': [1, 2]}).to_parquet(tmp_path/'a.parquet')
    (tmp_path/'afile').write_text('x')
    for bad, got in (('', "got ''"), (tmp_path/'afile', 'got a file'), (5, 'got 5')):
        with pytest.raises(TypeError, match=r"from_parquet expected cache_dir to be a folder \(a str or a Path, made if missing\) "
                                            r"or None for the datasets cache, " + __import__('re').escape(got)):
            from_parquet(tmp_path/'a.parquet', cache_dir=bad)


def test_arguments_checked_before_any_work():
    "G, H, I, S: persistent_workers, timeout=inf, seed=2**64 and sample_seed's arguments were not checked."
    ds = numbers()
    with pytest.raises(ValueError, match="MapLoader expected persistent_workers to be True or False, got 'no'"):
        MapLoader(ds, 4, persistent_workers='no')
    with pytest.raises(ValueError, match="StreamLoader expected persistent_workers to be True or False, got 2"):
        StreamLoader(ds, 4, persistent_workers=2)
    with pytest.raises(ValueError, match=r"expected timeout to be a number of seconds >= 0 \(0: wait as long as it takes\), got inf"):
        MapLoader(ds, 4, timeout=float('inf'))
    with pytest.raises(ValueError, match=r"MapLoader expected seed to be an int in \[0, 2\*\*63\), got 18446744073709551616"):
        MapLoader(ds, 4, seed=2**64)
    for args, name, got in (((1.5, 0), 'epoch_seed', '1.5'), ((-5, 0), 'epoch_seed', '-5'), ((0, True), 'index', 'True')):
        with pytest.raises(TypeError, match=f"sample_seed expected {name} to be an int >= 0, got {got}"): sample_seed(*args)
    assert sample_seed(np.int64(3), 4) == sample_seed(3, 4)


def test_empty_stream_is_refused():
    "J: an empty Dataset given to StreamLoader failed inside datasets' sharding."
    with pytest.raises(ValueError, match="StreamLoader expected a stream with at least one row, got an empty Dataset"):
        StreamLoader(numbers(0), 4)


def none_for_five(row): return None if row['y'] == 5 else row
def ragged(row): return {'x': torch.zeros(1 + row['y'] % 2), 'y': row['y']}
def mixed(row): return row if row['y'] % 2 else (row['x'], row['y'])
def exits(row):
    if row['y'] == 3: sys.exit(4)
    return row


@pytest.mark.parametrize('workers', [0, 2])
def test_bad_samples_are_named(workers):
    "L, M, O, N: None from a transform, ragged shapes, mixed kinds and sys.exit gave errors naming neither sample nor transform."
    ds = numbers()
    with pytest.raises(PipelineError, match=r"transform none_for_five returned None for sample 5 \(row of the dataset\); expected the sample"):
        list(MapLoader(ds, 8, [none_for_five], num_workers=workers))
    with pytest.raises(ValueError, match=r"collate_samples: column 'x' holds \(1,\) in sample 0 of the batch and \(2,\) in sample 1; expected one shape"):
        list(MapLoader(ds, 8, [ragged], num_workers=workers))
    with pytest.raises(TypeError, match=r"collate_samples: sample 0 of the batch is a tuple, sample 1 a dict; expected every transform"):
        list(MapLoader(ds, 8, [mixed], num_workers=workers))
    with pytest.raises(PipelineError, match=r"transform exits failed on sample 3 \(position in the stream\): SystemExit: 4"):
        list(StreamLoader(ds, 8, [exits], shuffle=False, num_workers=workers))


def test_unreadable_files_are_named(tmp_path):
    "P, Q: unreadable CSV files and folders without images gave datasets' own errors, naming neither the file nor the cause."
    (tmp_path/'noise.csv').write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"from_csv could not read \{'train': \['.*noise.csv'\]\}: "):
        from_csv(tmp_path/'noise.csv', cache_dir=tmp_path/'cache')
    (tmp_path/'empty'/'cats').mkdir(parents=True)
    (tmp_path/'empty'/'cats'/'notes.txt').write_text('no image here')
    with pytest.raises(ValueError, match=r"from_image_folder: '.*empty' is not an image folder: it holds no image in class folders"):
        open_dataset(tmp_path/'empty', cache_dir=tmp_path/'cache')


def test_collate_samples_of_one_kind():
    x, y = collate_samples([{'x': torch.ones(2), 'y': 1}, {'x': torch.zeros(2), 'y': 0}])
    assert x.shape == (2, 2) and y.tolist() == [1, 0]


# --- the second pass (pipelines with sessions)

def locks(row):
    row['lock'] = threading.Lock()
    return row


def test_a_sample_that_cannot_be_sent_is_named_not_waited_for():
    "B103: a sample that cannot be pickled made the loader wait for ever (the worker printed the error and went on)."
    num = Dataset.from_dict({'i': list(range(40))})
    message = r"a batch made in a worker cannot be sent to the training process: TypeError: cannot pickle '_thread.lock' object"
    with pytest.raises(PipelineError, match=message): next(iter(ReservoirLoader(num, 4, [locks], size=8, num_workers=1)))
    with pytest.raises(PipelineError, match=message): next(iter(MapLoader(num, 4, [locks], num_workers=1, collate_fn=lambda rows: rows)))


def test_folders_that_are_not_image_folders_are_refused_at_once(tmp_path):
    "B68, B69, B55: '/' walked the whole file system; the folder above a dataset made its results a class; a folder without images passed."
    from nntrain.experiments import check_config
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"from_image_folder: '/' is not an image folder: its class folder \w+ holds a folder"):
        open_dataset('/')
    assert time.perf_counter() - start < 5
    parent = tmp_path/'parent'
    png_folder(parent/'data', ['a', 'b'])
    png_folder(parent/'results'/'x', ['reports'])
    with pytest.raises(ValueError, match=r"its class folder data holds a folder, [ab]; expected images directly in class folders"):
        open_dataset(parent)
    (tmp_path/'noimg'/'a').mkdir(parents=True)
    (tmp_path/'noimg'/'a'/'x.txt').write_text('x')
    assert check_config({'dataset': str(tmp_path/'noimg'), 'num_iterations': 2}) == [
        f"dataset: {str(tmp_path/'noimg')!r} is not an image folder: it holds no image in class folders; expected <class>/<image> or <split>/<class>/<image>"]
    png_folder(tmp_path/'stray', ['a'])
    (tmp_path/'stray'/'a'/'0.png').rename(tmp_path/'stray'/'loose.png')
    with pytest.raises(ValueError, match="it holds an image, loose.png, outside any class folder"): from_image_folder(tmp_path/'stray')
    assert from_image_folder(png_folder(tmp_path/'split'/'train', ['a', 'b']).parent, cache_dir=tmp_path/'c')['train'].num_rows == 6


def test_odd_arguments_from_the_second_pass():
    "B14, B86, B93, B94, B67: pipeline as a list raised TypeError inside the check; num_workers had no bound; negative skips; /dev/null 'a folder'."
    from nntrain.experiments import check_config
    assert "pipeline: expected str, got ['map']" in check_config({'pipeline': ['map'], 'num_iterations': 2})
    with pytest.raises(ValueError, match="MapLoader expected num_workers <= 256 worker processes, got 1,000,000,000"):
        MapLoader(numbers(), 2, num_workers=10**9)
    with pytest.raises(ValueError, match=r"skip expected n to be an int >= 0 \(not a bool\), got -3"): iter(MapLoader(numbers(), 2)).skip(-3)
    with pytest.raises(ValueError, match=r"skip expected n to be an int >= 0 \(not a bool\), got -3"):
        iter(ReservoirLoader(numbers(), 1, size=2, min_fill=1, num_workers=1)).skip(-3)
    with pytest.raises(ValueError, match="'/dev/null' is neither a file nor a folder"): open_dataset('/dev/null')
