"""One run at a time in a checkpoint folder: CheckpointS locks its folder (an advisory lock on the folder itself) for
the length of a fit. A second process's fit in the same folder is refused before it writes anything; a run killed with
SIGKILL lets go of it, also when its forked loader workers outlive it for a few seconds."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from torch import nn

import nntrain.checkpoints as checkpoints_module
from conftest import ROOT
from nntrain.checkpoints import CheckpointS
from nntrain.dataloaders import DataLoaders, TensorLoader
from nntrain.learner import Learner

CHILD = r'''
import sys, time, torch
from pathlib import Path
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from nntrain.checkpoints import CheckpointS
from nntrain.learner import Learner, Subscriber
folder, workers = Path(sys.argv[1]), int(sys.argv[2])
class Slow(Subscriber):
    def after_batch(self, learn):
        (folder.parent/'started').touch()
        time.sleep(0.05)
x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
train = DataLoader(TensorDataset(x, y), batch_size=8, num_workers=workers, persistent_workers=workers > 0)
from nntrain.dataloaders import DataLoaders
Learner(nn.Linear(4, 2), DataLoaders(train, None), subs=[Slow(), CheckpointS(folder, every_batches=4)]).fit(1000, valid=False)
'''

def small_learner(folder, *extra):
    torch.manual_seed(0)
    data = {'x': torch.randn(32, 4), 'y': torch.randint(0, 2, (32,))}
    return Learner(nn.Linear(4, 2), DataLoaders(TensorLoader(data, 8), None), subs=[CheckpointS(folder), *extra])

def start_child(tmp_path: Path, folder: Path, workers: int = 0):
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    child = subprocess.Popen([sys.executable, '-c', CHILD, str(folder), str(workers)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path/'started').exists():
        if child.poll() is not None: pytest.fail(f'the child ended first: {child.stderr.read()[-3000:]}')
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail('the child did not start training within 60 s')
        time.sleep(0.05)
    return child

def test_a_second_run_in_a_folder_in_use_is_refused_then_goes_once_the_first_is_killed(tmp_path, monkeypatch):
    folder = tmp_path/'checkpoints'
    child = start_child(tmp_path, folder)
    try:
        monkeypatch.setattr(checkpoints_module, 'LOCK_WAIT', 0.5)
        learn = small_learner(folder)
        before = learn.model.weight.detach().clone()
        with pytest.raises(RuntimeError) as info: learn.fit(1, valid=False)
        assert str(info.value) == (f"CheckpointS: another process is writing checkpoints to {folder} (it has held the folder's lock for "
                                   "0.5 s); two runs in one folder would prune and resume each other's checkpoints; expected a folder of "
                                   "this run's own, or the other run to end first")
        assert torch.equal(learn.model.weight, before)   # refused before any training
        assert checkpoints_module._HELD == {}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    learn = small_learner(folder)
    learn.fit(1, valid=False)   # the killed run's lock went with it
    assert learn.iteration == 4 and not torch.equal(learn.model.weight, before)
    assert checkpoints_module._HELD == {}

def test_a_killed_run_whose_loader_workers_outlive_it_lets_go(tmp_path):
    "A run with forked DataLoader workers SIGKILLed: the workers keep the lock until they see their parent gone; the next run waits for that."
    folder = tmp_path/'checkpoints'
    child = start_child(tmp_path, folder, workers=1)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    started = time.monotonic()
    small_learner(folder).fit(1, valid=False)
    assert time.monotonic() - started < checkpoints_module.LOCK_WAIT

def test_two_checkpoint_subscribers_of_one_fit_share_the_folder_and_fits_follow_each_other(tmp_path):
    folder = tmp_path/'checkpoints'
    learn = small_learner(folder, CheckpointS(folder, monitor='loss', every_epochs=None))
    with pytest.raises(ValueError, match="needs a MetricsS"): learn.fit(1, valid=False)   # a refusal at before_fit lets go of the lock too
    assert checkpoints_module._HELD == {}
    learn = small_learner(folder, CheckpointS(folder, every_epochs=2))
    learn.fit(2, valid=False)
    learn.fit(1, valid=False)
    assert checkpoints_module._HELD == {} and len(list(folder.glob('checkpoint-*.pt'))) == 2
