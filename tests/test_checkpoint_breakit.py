"""What the second break-it pass of FSDP2 and of the checkpoint folder's lock found in one process: a checkpoint taken while
GradAccumS held gradients of a step not yet taken, and a checkpoint folder removed or replaced during a fit."""
import shutil

import pytest
import torch
from torch import nn

from conftest import raises
from nntrain.acceleration import GradAccumS
from nntrain.checkpoints import CheckpointS, checkpoints, save_checkpoint
from nntrain.dataloaders import DataLoaders, TensorLoader
from nntrain.learner import Learner, Subscriber


class Crash(Subscriber):
    "Raise after training iteration `at`, once the checkpoints of that batch are written (as a kill there would end the run)."
    order = 100
    def __init__(self, at): self.at = at
    def after_batch(self, learn):
        if learn.training and learn.iteration == self.at: raise KeyboardInterrupt

def accumulating_fit(folder, *extra, resume=None):
    torch.manual_seed(0)
    data = {'x': torch.randn(100, 6), 'y': torch.randint(0, 3, (100,))}
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    learn = Learner(model, DataLoaders(TensorLoader(data, 16, shuffle=True, seed=1), None), lr=0.1,
                    subs=[GradAccumS(2), CheckpointS(folder, every_batches=1), *extra])
    learn.fit(3, valid=False, resume=resume)
    return model.state_dict()

@pytest.mark.parametrize('at', [10, 9])   # 7 batches an epoch, a step every 2 and at the epoch's end: 10 is in the middle of an accumulation, 9 a step
def test_a_run_killed_while_gradients_accumulate_resumes_bitwise(tmp_path, at):
    "A checkpoint after every batch with GradAccumS(2): the ones in the middle of an accumulation wait for its step, so a resume goes on from one that has no gradients pending."
    unbroken = accumulating_fit(tmp_path/'unbroken')
    with pytest.raises(KeyboardInterrupt): accumulating_fit(tmp_path/'killed', Crash(at))
    newest = checkpoints(tmp_path/'killed')[-1].name
    assert newest == 'checkpoint-e0001-b00000009.pt'   # the last step's batch, also when killed at batch 10
    resumed = accumulating_fit(tmp_path/'killed', resume=tmp_path/'killed')
    assert all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)

class Replace(Subscriber):
    "Remove the checkpoint folder at training iteration `at`, and make a new one there unless `remove_only`."
    order = 100
    def __init__(self, folder, at, remove_only=False): self.folder, self.at, self.remove_only = folder, at, remove_only
    def after_batch(self, learn):
        if learn.training and learn.iteration == self.at:
            shutil.rmtree(self.folder)
            if not self.remove_only: self.folder.mkdir()

@pytest.mark.parametrize('remove_only', [False, True])
def test_a_folder_removed_or_replaced_during_the_fit_stops_it(tmp_path, remove_only):
    folder = tmp_path/'checkpoints'
    torch.manual_seed(0)
    data = {'x': torch.randn(64, 4), 'y': torch.randint(0, 2, (64,))}
    learn = Learner(nn.Linear(4, 2), DataLoaders(TensorLoader(data, 8), None), subs=[CheckpointS(folder, every_batches=2),
                                                                                    Replace(folder, 3, remove_only)])
    what = 'removed' if remove_only else 'replaced'
    with raises(RuntimeError, f"CheckpointS: the folder {folder} was {what} during the fit (by another process?); stopped rather than mix "
                              "this run's checkpoints with another's; expected the folder to stay while the fit runs"):
        learn.fit(1, valid=False)
    assert not folder.exists() or list(folder.iterdir()) == []   # nothing written into the new folder
    learn.subs = [s for s in learn.subs if not isinstance(s, Replace)]
    learn.fit(1, valid=False)   # the next fit locks the folder it finds
    assert len(checkpoints(folder)) == 2

def test_a_tensor_subclass_is_refused_by_save_checkpoint(tmp_path):
    class Marked(torch.Tensor): pass
    weights = {'w': torch.zeros(2).as_subclass(Marked)}
    with raises(TypeError, "save_checkpoint expected a state of tensors, numbers, str, bool, None and lists, tuples and dicts of them "
                           "(what load_checkpoint can read back), but state['subs']['w'] is a test_a_tensor_subclass_is_refused_by_save_checkpoint.<locals>.Marked, "
                           "a kind of tensor load_checkpoint cannot read back (a DTensor's whole tensor is .full_tensor())"):
        save_checkpoint({'subs': weights}, tmp_path/'c.pt')
    assert list(tmp_path.iterdir()) == []
