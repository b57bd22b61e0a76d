"What the independent break-it pass of chapter 15 found, each kept as a test (gloo on 127.0.0.1, bounded by timeouts)."
import base64, os, pickle, re, subprocess, sys, time
from pathlib import Path

import pytest

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).parents[1])}
SCRIPTS = Path(__file__).parent/'distributed_scripts'

def launched_error(call: str) -> str:
    "The LaunchError message of `launch(...)` run in a fresh process (launching from the test process would leave it a child: spawn's resource tracker)."
    code = f"import breakit_fns\nfrom nntrain.distributed import LaunchError, launch\ntry: {call}\nexcept LaunchError as e: print('LaunchError:', e)"
    r = subprocess.run([sys.executable, '-c', code], cwd=SCRIPTS, env={**ENV, 'PYTHONPATH': f"{SCRIPTS}{os.pathsep}{ENV['PYTHONPATH']}"},
                       capture_output=True, text=True, timeout=120)
    assert 'LaunchError:' in r.stdout, (r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout.split('LaunchError:', 1)[1].strip()

def test_ranks_with_other_data_are_refused_before_any_exchange():
    started = time.monotonic()
    message = launched_error("launch(breakit_fns.fit, 72, nproc=2)")
    assert re.search(r"rank \d: ValueError: DistributedS: the ranks of this job differ in their loaders: rank 0 has "
                     r"\{'training': \(8, 8\), 'validation': \(4, 16\)\}, rank 1 has \{'training': \(9, 8\)", message), message
    assert time.monotonic() - started < 60   # not the 30 s timeout of an exchange that never pairs up, twice

def test_a_checkpoint_subscriber_on_rank_0_only_is_refused(tmp_path):
    message = launched_error(f"launch(breakit_fns.fit, 64, {str(tmp_path/'checkpoints')!r}, nproc=2)")
    assert ("the ranks of this job differ in their subscribers: rank 0 has ['MetricsS', 'DistributedS', 'CheckpointS'], rank 1 has "
            "['MetricsS', 'DistributedS']; expected every process to build the same fit") in message, message
    assert not (tmp_path/'checkpoints').exists() or not list((tmp_path/'checkpoints').iterdir())

def test_a_result_that_cannot_be_sent_back_is_named():
    message = launched_error("launch(breakit_fns.returns_a_lambda, nproc=2)")
    assert re.search(r"rank \d: TypeError: rank \d's result cannot be sent back to the launching process: function cannot be pickled", message), message

def test_a_killed_rank_is_named_first():
    message = launched_error("launch(breakit_fns.rank1_killed, nproc=2)")
    assert 'processes failed: rank 1: ended without returning or raising: killed (by a signal, or for memory)' in message, message

def test_nproc_with_an_unwritable_save_is_refused_before_launching(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'nntrain', 'fit', '--nproc', '2', '--save', str(tmp_path/'no'/'such'/'m.pt')],
                       env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nntrain: error: --save {tmp_path/'no'/'such'/'m.pt'}: the folder '{tmp_path/'no'/'such'}' does not exist"), lines
    assert 'torch.distributed' not in r.stderr and 'ChildFailedError' not in r.stderr

@pytest.mark.parametrize('storage, message', [
    ('journal:{results}', "the journal file would be made at '{results}', where the results folder '{results}' is; expected a file in a folder"),
    ('sqlite:///:memory:', "storage 'sqlite:///:memory:': an in-memory SQLite database lives and dies with one process, so workers cannot share it"),
])
def test_storages_that_cannot_be_shared_are_refused(tmp_path, storage, message):
    results = tmp_path/'r0'
    (tmp_path/'s.yaml').write_text('grid:\n  num_iterations: 5\n')
    r = subprocess.run([sys.executable, '-m', 'nntrain', 'fit', '--cfg', 's.yaml', '--session', 'grid', '--results', str(results), '--workers', '2',
                        '--storage', storage.format(results=results)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message.format(results=results) in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.yaml']   # nothing written

# The second pass found these two in one process as well.
import torch
from torch import nn
from nntrain.checkpoints import CheckpointS
from nntrain.core import CheckpointError
from nntrain.dataloaders import DataLoaders, TensorLoader
from nntrain.learner import CancelFitException, Learner, Subscriber

class StopAt(Subscriber):
    def __init__(self, iteration): self.iteration = iteration
    def after_batch(self, learn):
        if learn.training and learn.iteration == self.iteration: raise CancelFitException()

def small_learner(batch_size, subs=()):
    torch.manual_seed(0)
    x, y = torch.randn(96, 5), torch.randint(0, 3, (96,))
    dls = DataLoaders(TensorLoader({'x': x, 'y': y}, batch_size, shuffle=True, seed=1), TensorLoader({'x': x, 'y': y}, 32))
    return Learner(nn.Linear(5, 3), dls, lr=0.1, subs=list(subs))

def test_a_mid_epoch_resume_with_another_batch_size_is_refused(tmp_path):
    small_learner(16).fit(1, subs=[CheckpointS(tmp_path, every_batches=2), StopAt(4)])
    learn = small_learner(32)
    with pytest.raises(CheckpointError, match=r"written with another TensorLoader \(batch_size=16 there, 32 here\): its position, a count of batches"):
        learn.fit(1, resume=tmp_path)
    small_learner(16).fit(1, resume=tmp_path)   # the same loader resumes

def test_pruning_a_checkpoint_another_process_removed_first_goes_on(tmp_path, monkeypatch):
    import nntrain.checkpoints as chapter
    listed = chapter.checkpoints
    monkeypatch.setattr(chapter, 'checkpoints', lambda folder: [tmp_path/'checkpoint-e0000-b00000000.pt', *listed(folder)])   # gone already
    small_learner(16).fit(1, subs=[CheckpointS(tmp_path, every_batches=2, keep=1)])
    assert len(listed(tmp_path)) == 1


# --- FSDP2 (the second break-it pass, of strategy='fsdp')

def launched(call: str):
    "The results of `launch(...)` run in a fresh process."
    code = f"import base64, pickle, breakit_fns\nfrom nntrain.distributed import launch\nprint('RESULT', base64.b64encode(pickle.dumps({call})).decode())"
    r = subprocess.run([sys.executable, '-c', code], cwd=SCRIPTS, env={**ENV, 'PYTHONPATH': f"{SCRIPTS}{os.pathsep}{ENV['PYTHONPATH']}"},
                       capture_output=True, text=True, timeout=120)
    assert 'RESULT' in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])
    return pickle.loads(base64.b64decode(r.stdout.split('RESULT', 1)[1].strip()))

def test_fsdp_tied_weights_go_to_the_models_unit_and_save_then_load_at_once_works(tmp_path):
    "Tied weights under the default units train as one process does; save then load on every rank at once finds the file, and plain SGD's empty state loads."
    (rank0, difference), (rank1, _) = launched(f"launch(breakit_fns.fsdp_fit, 'tied', {str(tmp_path)!r}, nproc=2)")
    assert (rank0, rank1) == (0, 1) and difference <= 1e-5
    assert (tmp_path/'saved.pt').exists()

def test_fsdp_units_that_share_a_parameter_are_refused():
    message = launched_error("launch(breakit_fns.fsdp_fit, 'tied', layers=(breakit_fns.nn.Embedding, breakit_fns.nn.Linear), nproc=2)")
    assert ("ValueError: DistributedS(strategy='fsdp'): the units that layers= picks share a parameter (0.weight and 2.weight are one "
            "tensor: tied weights), which FSDP2 cannot shard in two units; expected layers= to leave such modules out (their parameters "
            "then go to the model's own unit), or layers=None, which does") in message, message

def test_fsdp_refuses_a_0d_parameter_before_the_fit():
    message = launched_error("launch(breakit_fns.fsdp_fit, 'scalar', nproc=2)")
    assert ("ValueError: DistributedS(strategy='fsdp'): temperature is a 0-d parameter, which FSDP2 cannot shard; expected parameters of "
            "one dimension or more with elements (a learnable scalar as nn.Parameter(torch.tensor([value]))), or strategy='ddp'") in message, message

def test_fsdp_early_stopping_keeps_whole_best_weights_and_resumes(tmp_path):
    "EarlyStoppingS(restore_best=True) under FSDP2: its best weights go into checkpoints whole, load in one process, and a resumed fit ends as an unbroken one."
    import torch
    from nntrain.checkpoints import checkpoints, load_checkpoint
    (resumed, unbroken), (empty, _) = launched(f"launch(breakit_fns.fsdp_early, {str(tmp_path)!r}, nproc=2)")
    assert empty == {} and resumed.keys() == unbroken.keys() and all(torch.equal(resumed[k], unbroken[k]) for k in unbroken)
    best = load_checkpoint(checkpoints(tmp_path/'a')[-1])['subs']['EarlyStoppingS']['best_weights']
    assert {k: (type(v), v.shape) for k, v in best.items()} == {k: (torch.Tensor, v.shape) for k, v in unbroken.items()}
