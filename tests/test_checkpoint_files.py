"Checkpoint files, atomic writes and the CSV log under damage, hostile folders and interrupted runs (chapters 05 and 07)."
import copy, csv, errno, io, os, pickle, signal, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torcheval.metrics import MulticlassAccuracy

from nntrain.dataloaders import DataLoaders, load_mnist
from nntrain.learner import Learner, MetricsS, Subscriber, CancelFitException
from nntrain.checkpoints import (FORMAT, _write_checkpoint, CheckpointError, CheckpointS, EarlyStoppingS, checkpoints, latest_checkpoint,
                                 load_checkpoint, remove_temporaries, save_checkpoint, write_atomically)
from nntrain.logging import CSVLoggerS

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- helpers

def tiny_learner(seed=0, subs=()):
    "A linear model on a few random batches: enough to have a full learner state."
    data = torch.Generator().manual_seed(0)   # the same batches whatever the seed of the model
    make = lambda: (torch.randn(8, 6, generator=data), torch.randint(0, 3, (8,), generator=data))
    torch.manual_seed(seed)
    dls = DataLoaders([make() for _ in range(4)], [make() for _ in range(2)])
    return Learner(nn.Sequential(nn.Linear(6, 3)), dls, subs=list(subs))

@pytest.fixture(scope='module')
def mnist():
    return load_mnist()

def mnist_learner(dd, *subs, seed=0):
    torch.manual_seed(seed)
    metrics = MetricsS(accuracy=MulticlassAccuracy()); metrics.output = lambda log: None
    model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    return Learner(model, DataLoaders.from_hf_dd(dd, 512, seed=seed), F.cross_entropy, torch.optim.Adam, 3e-3, [metrics, *subs])

def weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])

def good_state(tmp_path):
    "A checkpoint written during a fit (with a position), as a dict."
    learn = tiny_learner()
    learn.fit(1, subs=[CheckpointS(tmp_path/'ck', every_epochs=1)])
    return load_checkpoint(checkpoints(tmp_path/'ck')[-1])

def error_of(f) -> str:
    with pytest.raises(CheckpointError) as info: f()
    return str(info.value)

@pytest.fixture
def small_mount(tmp_path):
    "A 64 KiB tmpfs at tmp_path/'small' (skips when it cannot be mounted)."
    folder = tmp_path/'small'
    folder.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(folder)], capture_output=True, timeout=30).returncode:
        pytest.skip('cannot mount a tmpfs here')
    try: yield folder
    finally: subprocess.run(['umount', '-l', str(folder)], capture_output=True, timeout=30)

# ---------------------------------------------------------------- 1. write_atomically

def test_temporary_file_never_follows_a_planted_link(tmp_path):
    target = tmp_path/'target.txt'
    target.write_text('untouched')
    path = tmp_path/'out.bin'
    guesses = [f'.{path.name}.{os.getpid()}.tmp', f'.{path.name}.tmp', f'.{path.name}.{os.getpid() + 1}.tmp',
               f'.{path.name}.000000000000.tmp']
    for name in guesses: (tmp_path/name).symlink_to(target)
    write_atomically(path, lambda f: f.write(b'new data'))
    assert target.read_text() == 'untouched'
    assert path.read_bytes() == b'new data' and not path.is_symlink()
    for name in guesses: assert (tmp_path/name).is_symlink() and os.readlink(tmp_path/name) == str(target)

def test_link_at_the_final_name_is_replaced_not_followed(tmp_path):
    target = tmp_path/'precious.pt'
    target.write_bytes(b'precious')
    (tmp_path/'model.pt').symlink_to(target)
    write_atomically(tmp_path/'model.pt', lambda f: f.write(b'checkpoint'))
    assert not (tmp_path/'model.pt').is_symlink()
    assert (tmp_path/'model.pt').read_bytes() == b'checkpoint' and target.read_bytes() == b'precious'

def test_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022); os.umask(umask)
    path = write_atomically(tmp_path/'report.txt', lambda f: f.write(b'x'))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as info: write_atomically(tmp_path/'nope'/'x.pt', lambda f: f.write(b'x'))
    assert str(info.value) == f"[Errno 2] cannot write {tmp_path/'nope'/'x.pt'}: the folder {tmp_path/'nope'} does not exist"

def test_destination_that_is_a_folder(tmp_path):
    (tmp_path/'x.pt').mkdir()
    with pytest.raises(IsADirectoryError, match='it is a folder'): write_atomically(tmp_path/'x.pt', lambda f: f.write(b'x'))

def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path/'a.bin'
    path.write_bytes(b'old')
    def fails(f):
        f.write(b'half'); raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): write_atomically(path, fails)
    assert path.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == ['a.bin']

def test_disk_full_names_the_file(small_mount):
    path = small_mount/'big.pt'
    with pytest.raises(OSError) as info: write_atomically(path, lambda f: f.write(os.urandom(256 * 1024)))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"[Errno {errno.ENOSPC}] cannot write {path}: disk full (No space left on device)"
    assert '.tmp' not in str(info.value)
    assert list(small_mount.iterdir()) == []   # the temporary file is gone

def test_disk_full_during_save_checkpoint(small_mount):
    learn = Learner(nn.Linear(200, 200), DataLoaders([], []))
    with pytest.raises(OSError, match='disk full'): learn.save(small_mount/'model.pt')
    assert list(small_mount.iterdir()) == []

def test_read_only_folder(small_mount):
    (small_mount/'old.pt').write_bytes(b'old')
    if subprocess.run(['mount', '-o', 'remount,ro', str(small_mount)], capture_output=True, timeout=30).returncode:
        pytest.skip('cannot remount read-only')
    path = small_mount/'old.pt'
    with pytest.raises(OSError) as info: write_atomically(path, lambda f: f.write(b'new'))
    assert info.value.errno == errno.EROFS
    assert str(info.value) == f"[Errno {errno.EROFS}] cannot write {path}: the folder {small_mount} is not writable (Read-only file system)"
    assert path.read_bytes() == b'old'

@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into any folder; the read-only mount test covers this')
def test_folder_without_write_permission(tmp_path):
    folder = tmp_path/'locked'; folder.mkdir(); folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=f"cannot write {folder/'x.pt'}: the folder {folder} is not writable"):
            write_atomically(folder/'x.pt', lambda f: f.write(b'x'))
    finally: folder.chmod(0o700)

def test_errors_of_other_files_are_left_alone(tmp_path):
    def reads_missing(f): open(tmp_path/'input.txt', 'rb')
    with pytest.raises(FileNotFoundError) as info: write_atomically(tmp_path/'out.txt', reads_missing)
    assert info.value.filename == str(tmp_path/'input.txt')

def test_remove_temporaries_only_ours(tmp_path):
    target = tmp_path/'target.bin'; target.write_bytes(b'keep')
    ours = ['.checkpoint-e0000-b00000020.pt.0123456789ab.tmp', '.metrics.json.4242.tmp', '.a b.c.ffffffffffff.tmp']
    for name in ours: (tmp_path/name).write_bytes(b'partial')
    others = ['notes.tmp', 'x.123.tmp', '.hidden', '.x.tmp', '.x.ghijklmnopqr.tmp', 'checkpoint-e0000-b00000020.pt', '.x.123.tmp.bak']
    for name in others: (tmp_path/name).write_bytes(b'other')
    (tmp_path/'.link.0123456789ab.tmp').symlink_to(target)
    (tmp_path/'.folder.0123456789ab.tmp').mkdir()
    (tmp_path/'sub').mkdir(); (tmp_path/'sub'/'.inner.0123456789ab.tmp').write_bytes(b'partial')
    assert remove_temporaries(tmp_path) == sorted(tmp_path/name for name in ours)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*others, 'target.bin', '.link.0123456789ab.tmp', '.folder.0123456789ab.tmp', 'sub'])
    assert target.read_bytes() == b'keep'
    assert remove_temporaries(tmp_path, recursive=True) == [tmp_path/'sub'/'.inner.0123456789ab.tmp']
    assert remove_temporaries(tmp_path/'missing') == []
    with pytest.raises(NotADirectoryError, match='expected a folder'): remove_temporaries(target)

def test_remove_temporaries_after_a_killed_write(tmp_path):
    code = ("import os, signal, sys; from nntrain.checkpoints import write_atomically\n"
            "def dies(f): f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "write_atomically(sys.argv[1], dies)\n")
    result = subprocess.run([sys.executable, '-c', code, str(tmp_path/'report.json')], capture_output=True, timeout=120, cwd=ROOT)
    assert result.returncode == -signal.SIGKILL
    (leftover,) = list(tmp_path.iterdir())
    assert leftover.name.startswith('.report.json.') and leftover.name.endswith('.tmp')
    assert remove_temporaries(tmp_path) == [leftover] and list(tmp_path.iterdir()) == []

# ---------------------------------------------------------------- 2. checksums and formats

def test_file_format(tmp_path):
    path = tiny_learner().save(tmp_path/'a.pt')
    data = path.read_bytes()
    lines = data.split(b'\n', 2)
    assert lines[0] == FORMAT.encode() == b'nntrain-checkpoint-2'
    assert lines[1].startswith(b'sha256 ') and len(lines[1]) == 7 + 64
    import hashlib
    assert hashlib.sha256(lines[2]).hexdigest().encode() == lines[1][7:]
    assert lines[2][:4] == b'PK\x03\x04'

@pytest.mark.parametrize('where', [0.05, 0.3, 0.5, 0.7, 0.95, -1])
def test_a_bit_flip_anywhere_is_a_checksum_mismatch(tmp_path, where):
    path = tiny_learner().save(tmp_path/'a.pt')
    data = bytearray(path.read_bytes())
    at = 93 + int((len(data) - 93) * where) if where >= 0 else len(data) - 1
    data[at] ^= 0x01
    path.write_bytes(data)
    assert 'a.pt is damaged: checksum mismatch' in error_of(lambda: load_checkpoint(path))

def test_a_bit_flip_in_a_weight_tensor(tmp_path):
    learn = tiny_learner()
    with torch.no_grad(): learn.model[0].weight.fill_(1.2345)
    path = learn.save(tmp_path/'a.pt')
    data = bytearray(path.read_bytes())
    at = bytes(data).index(torch.tensor([1.2345]).numpy().tobytes() * 4)
    data[at + 2] ^= 0x40
    path.write_bytes(data)
    message = error_of(lambda: load_checkpoint(path))
    assert message.startswith(f'{path} is damaged: checksum mismatch (the sha256 of its ')

def test_format_1_files_still_load(tmp_path):
    learn = tiny_learner()
    learn.fit(1)
    state = {**learn.state_dict(), 'format': 'nntrain-checkpoint-1'}
    torch.save(state, tmp_path/'old.pt')
    loaded = load_checkpoint(tmp_path/'old.pt')
    assert loaded['format'] == 'nntrain-checkpoint-1'
    fresh = tiny_learner(seed=5).load(tmp_path/'old.pt')
    assert torch.equal(weights(fresh), weights(learn))

def test_format_2_dict_without_its_header(tmp_path):
    torch.save(tiny_learner().state_dict(), tmp_path/'bare.pt')
    assert "saved without its checksummed header" in error_of(lambda: load_checkpoint(tmp_path/'bare.pt'))

# ---------------------------------------------------------------- 3. every bad file is a CheckpointError

def test_zero_length(tmp_path):
    (tmp_path/'empty.pt').write_bytes(b'')
    assert error_of(lambda: load_checkpoint(tmp_path/'empty.pt')) == f"{tmp_path/'empty.pt'} is empty (0 bytes): its writing was cut short, or it was emptied"

@pytest.mark.parametrize('keep', [1, 10, 21, 50, 92, 93, 94, 200, 0.5, -1])
def test_truncated(tmp_path, keep):
    path = tiny_learner().save(tmp_path/'a.pt')
    data = path.read_bytes()
    n = keep if isinstance(keep, int) and keep > 0 else int(len(data) * keep) if keep > 0 else len(data) + keep
    path.write_bytes(data[:n])
    message = error_of(lambda: load_checkpoint(path))
    expected = 'is truncated' if n < 93 else 'is damaged: checksum mismatch'
    assert message.startswith(f'{path} {expected}'), message

def test_random_bytes(tmp_path):
    (tmp_path/'r.pt').write_bytes(bytes(range(256)) * 4)
    message = error_of(lambda: load_checkpoint(tmp_path/'r.pt'))
    assert message.startswith(f"{tmp_path/'r.pt'} is not an nntrain checkpoint: it starts neither with the header 'nntrain-checkpoint-2' nor as a torch.save archive")
    assert 'pickled' not in message

def test_damaged_format_1_archive(tmp_path):
    torch.save({**tiny_learner().state_dict(), 'format': 'nntrain-checkpoint-1'}, tmp_path/'old.pt')
    data = (tmp_path/'old.pt').read_bytes()
    (tmp_path/'old.pt').write_bytes(data[:len(data) // 2])
    assert 'old.pt is truncated or corrupt and cannot be read' in error_of(lambda: load_checkpoint(tmp_path/'old.pt'))

@pytest.mark.parametrize('value, expected', [
    (nn.Linear(2, 2).state_dict(), "it holds a dict with the keys ['weight', 'bias'] and no 'format' (a bare model state_dict?)"),
    (torch.ones(3), "it holds a Tensor, not a dict with 'format': 'nntrain-checkpoint-2'"),
    ([1, 2], "it holds a list, not a dict with 'format': 'nntrain-checkpoint-2'"),
    ({'format': 'other-3'}, "its format is 'other-3', expected one of ['nntrain-checkpoint-1', 'nntrain-checkpoint-2']"),
])
def test_foreign_torch_files(tmp_path, value, expected):
    torch.save(value, tmp_path/'f.pt')
    assert error_of(lambda: load_checkpoint(tmp_path/'f.pt')) == f"{tmp_path/'f.pt'} is not an nntrain checkpoint: {expected}"
    _write_checkpoint(value, tmp_path/'g.pt')   # the same inside a correct header (save_checkpoint refuses to write it)
    assert error_of(lambda: load_checkpoint(tmp_path/'g.pt')) == f"{tmp_path/'g.pt'} is not an nntrain checkpoint: {expected}"

def test_directory_and_missing(tmp_path):
    (tmp_path/'d.pt').mkdir()
    assert error_of(lambda: load_checkpoint(tmp_path/'d.pt')) == f"{tmp_path/'d.pt'} is a folder, not a checkpoint file"
    assert error_of(lambda: load_checkpoint(tmp_path/'m.pt')) == f"{tmp_path/'m.pt'}: no such checkpoint file"
    assert 'is a folder' in error_of(lambda: tiny_learner().load(tmp_path/'d.pt'))

class CreatesMarker:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.mkdir, (self.marker,))

def test_code_executing_pickles_are_refused(tmp_path):
    marker = tmp_path/'pwned'
    evil = {'format': 'nntrain-checkpoint-1', 'model': {}, 'x': CreatesMarker(str(marker))}
    torch.save(evil, tmp_path/'evil-1.pt')
    _write_checkpoint(evil, tmp_path/'evil-2.pt')   # a correct checksum does not make it safe
    (tmp_path/'evil.pkl').write_bytes(pickle.dumps(evil))
    for name in ('evil-1.pt', 'evil-2.pt'):
        message = error_of(lambda: load_checkpoint(tmp_path/name))
        assert message.startswith(f'{tmp_path/name} holds pickled Python objects, which loading would execute; refused'), message
        assert 'GLOBAL posix.mkdir' in message
    assert 'is not an nntrain checkpoint' in error_of(lambda: load_checkpoint(tmp_path/'evil.pkl'))
    assert not marker.exists()

def edited(state, edit):
    state = copy.deepcopy(state)
    edit(state)
    return state

def _pop(key): return lambda s: s.pop(key)
def _set(key, value): return lambda s: s.__setitem__(key, value)
def _position(key, value): return lambda s: s['position'].__setitem__(key, value)
def _position_pop(key): return lambda s: s['position'].pop(key)

HAND_EDITS = [
    (_pop('model'), "it lacks the keys ['model']"),
    (_pop('rng'), "it lacks the keys ['rng']"),
    (_set('model', [1, 2]), "'model' should be a dict of tensors by name, got a list"),
    (lambda s: s['model'].__setitem__('0.weight', [[1.0]]), "'model' should be a dict of tensors by name, but its entry '0.weight' is a list"),
    (_set('opt', 'adam'), "'opt' should be None or an optimizer's state dict (a dict with 'state' and a list of 'param_groups'), got a str"),
    (_set('opt', {'state': {}, 'param_groups': 3}), "'opt' should be None or an optimizer's state dict"),
    (_set('subs', ['MetricsS']), "'subs' should be a dict of subscriber states by name, got a list"),
    (_set('rng', None), "'rng' should be a dict with 'python', 'numpy' and 'torch' (as rng_state() makes), got None"),
    (lambda s: s['rng'].pop('numpy'), "'rng' should be a dict with 'python', 'numpy' and 'torch' (as rng_state() makes), got a dict with the keys ['python', 'torch']"),
    (lambda s: s['rng'].__setitem__('torch', torch.zeros(3, dtype=torch.uint8)), "'rng' is not a random state rng_state() made (RuntimeError"),
    (lambda s: s['rng'].__setitem__('python', (3, (1, 2), None)), "'rng' is not a random state rng_state() made ("),
    (_set('position', 7), "'position' should be a dict, got a int"),
    (_position('epoch', -1), "'position' should have 'epoch' an int >= 0, got -1"),
    (_position('next_iter', 2.5), "'position' should have 'next_iter' an int >= 0, got 2.5"),
    (_position('next_iter', True), "'position' should have 'next_iter' an int >= 0, got True"),
    (_position_pop('epoch_start'), "'position' lacks ['epoch_start']"),
    (_position_pop('epoch'), "'position' lacks ['epoch']"),
    (lambda s: s['position']['epoch_start'].__setitem__('rng', {}), "'position'['epoch_start']['rng'] should be a dict with 'python', 'numpy' and 'torch'"),
    (lambda s: s['position']['epoch_start'].__setitem__('loader', 'x'), "'position'['epoch_start']['loader'] should be None or a generator state tensor, got a str"),
]

@pytest.mark.parametrize('edit, expected', HAND_EDITS)
def test_hand_edited_states(tmp_path, edit, expected):
    state = edited(good_state(tmp_path), edit)
    save_checkpoint(state, tmp_path/'edited.pt')
    message = error_of(lambda: load_checkpoint(tmp_path/'edited.pt'))
    assert message.startswith(f"{tmp_path/'edited.pt'} is not a valid nntrain checkpoint: {expected}"), message
    learn = tiny_learner()   # given directly, the same problem, never a TypeError or KeyError
    message = error_of(lambda: learn.load_state_dict(state))
    assert message.startswith(f"expected a learner state dict of format 'nntrain-checkpoint-2': {expected}"), message
    if 'position' in state and isinstance(state['position'], dict):   # and resuming from it says so before training
        message = error_of(lambda: tiny_learner().fit(2, resume=tmp_path/'edited.pt'))
        assert expected in message

def test_a_malformed_rng_leaves_the_generators_as_they_were(tmp_path):
    state = edited(good_state(tmp_path), lambda s: s['rng'].__setitem__('torch', torch.zeros(3, dtype=torch.uint8)))
    learn = tiny_learner()
    torch.manual_seed(3); expected = torch.rand(3)
    torch.manual_seed(3)
    with pytest.raises(CheckpointError): learn.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected)

def test_weights_that_do_not_fit(tmp_path):
    path = tiny_learner().save(tmp_path/'a.pt')
    wider = Learner(nn.Sequential(nn.Linear(6, 4)), tiny_learner().dls)
    message = error_of(lambda: wider.load(path))
    assert message == (f"{path}: the checkpoint's weights do not fit this Sequential: size mismatch for 0.weight: copying a param with "
                       "shape torch.Size([3, 6]) from checkpoint, the shape in current model is torch.Size([4, 6]).")
    other = Learner(nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 3)), tiny_learner().dls)
    assert error_of(lambda: other.load(path)).endswith('Missing key(s) in state_dict: "2.weight", "2.bias".')

def test_subscriber_state_that_does_not_fit(tmp_path):
    metrics = MetricsS(); metrics.output = lambda log: None
    learn = tiny_learner(subs=[metrics])
    state = learn.state_dict()
    state['subs']['MetricsS'] = {'count': 3}
    save_checkpoint(state, tmp_path/'a.pt')
    message = error_of(lambda: learn.load(tmp_path/'a.pt'))
    assert message.startswith(f"{tmp_path/'a.pt'}: the checkpoint's state of subscriber MetricsS does not fit it (KeyError: ")

def test_optimizer_state_that_does_not_fit(tmp_path):
    learn = tiny_learner()
    learn.fit(1)
    state = learn.state_dict()
    state['opt']['param_groups'][0]['params'] = [0]   # one parameter where the model has two
    message = error_of(lambda: learn.load_state_dict(state))
    assert message.startswith("the checkpoint's optimizer state does not fit this SGD (ValueError: ")

def test_resume_position_beyond_the_loader(tmp_path):
    state = edited(good_state(tmp_path), lambda s: s['position'].update(next_iter=9, pass_done=False))
    save_checkpoint(state, tmp_path/'a.pt')
    message = error_of(lambda: tiny_learner().fit(2, resume=tmp_path/'a.pt'))
    assert message.startswith('the checkpoint is at batch 9 of its epoch, but the training loader has only 4 batches')

# ---------------------------------------------------------------- 4. a damaged newest checkpoint

def damaged_folder(tmp_path):
    folder = tmp_path/'ck'
    tiny_learner().fit(2, subs=[CheckpointS(folder, every_batches=2, every_epochs=None, keep=3)])
    found = checkpoints(folder)
    assert len(found) == 3
    data = bytearray(found[-1].read_bytes()); data[-100] ^= 1; found[-1].write_bytes(data)
    return folder, found

def test_latest_checkpoint(tmp_path):
    folder, found = damaged_folder(tmp_path)
    message = error_of(lambda: latest_checkpoint(folder))
    assert message.startswith(f"the newest checkpoint is damaged: {found[-1]} is damaged: checksum mismatch")
    assert message.endswith(f"The newest valid one is {found[-2]}: to resume from it, pass resume_fallback=True to fit "
                            f"(or fallback=True to latest_checkpoint), or resume={str(found[-2])!r}")
    with pytest.warns(UserWarning, match='the newest checkpoint is damaged') as caught:
        assert latest_checkpoint(folder, fallback=True) == found[-2]
    assert str(found[-1]) in str(caught[0].message) and f'resuming from the newest valid one, {found[-2]}' in str(caught[0].message)
    assert 'checksum mismatch' in error_of(lambda: tiny_learner().fit(2, resume=folder))
    with pytest.warns(UserWarning, match='damaged'): tiny_learner().fit(2, resume=folder, resume_fallback=True)
    with pytest.raises(ValueError, match='expected fallback to be True or False'): latest_checkpoint(folder, fallback='yes')
    with pytest.raises(ValueError, match='expected resume_fallback to be True or False'): tiny_learner().fit(2, resume=folder, resume_fallback=1)

def test_latest_checkpoint_two_damaged_and_all_damaged(tmp_path):
    folder, found = damaged_folder(tmp_path)
    found[-2].write_bytes(b'')
    assert '(and 1 more after the valid one)' in error_of(lambda: latest_checkpoint(folder))
    with pytest.warns(UserWarning): assert latest_checkpoint(folder, fallback=True) == found[0]
    found[0].write_bytes(found[0].read_bytes()[:100])
    assert error_of(lambda: latest_checkpoint(folder, fallback=True)).startswith(f"{folder}: all 3 checkpoints are damaged, the newest: ")

def test_latest_checkpoint_empty_and_missing_folder(tmp_path):
    assert error_of(lambda: latest_checkpoint(tmp_path)) == f"{tmp_path}: no checkpoint-*.pt file to resume from (a run that stopped before its first checkpoint starts afresh with resume=None)"
    assert error_of(lambda: latest_checkpoint(tmp_path/'no')) == f"{tmp_path/'no'}: no such folder of checkpoints"
    tiny_learner().fit(1, subs=[CheckpointS(tmp_path)])
    assert latest_checkpoint(tmp_path) == checkpoints(tmp_path)[-1]

def test_resume_after_fallback_matches_an_uninterrupted_run(tmp_path):
    straight = tiny_learner()
    straight.fit(3)
    folder, found = damaged_folder(tmp_path)
    learn = tiny_learner(seed=9)
    with pytest.warns(UserWarning): learn.fit(3, resume=folder, resume_fallback=True)
    assert torch.equal(weights(learn), weights(straight))

# ---------------------------------------------------------------- 5. resume with an evaluation pass at the end

class StopAtValidation(Subscriber):
    "Fail in the validation pass of `epoch`, after the training pass's checkpoint was written."
    def __init__(self, epoch): self.epoch = epoch
    def after_batch(self, learn):
        if not learn.training and learn.epoch == self.epoch: raise RuntimeError('killed')

def test_resume_at_epoch_1_with_a_report(tmp_path, mnist):
    from nntrain.reports import ReportS
    straight = mnist_learner(mnist, CheckpointS(tmp_path/'ck-straight'), ReportS(tmp_path/'report-straight'))
    straight.fit(2)
    folder = tmp_path/'ck'
    with pytest.raises(RuntimeError, match='killed'):
        mnist_learner(mnist, CheckpointS(folder), ReportS(tmp_path/'report')).fit(2, subs=[StopAtValidation(1)])
    assert [p.name for p in checkpoints(folder)] == ['checkpoint-e0000-b00000016.pt', 'checkpoint-e0001-b00000032.pt']
    assert not (tmp_path/'report').exists()
    resumed = mnist_learner(mnist, CheckpointS(folder), ReportS(tmp_path/'report'), seed=4)
    resumed.fit(2, resume=folder)
    assert torch.equal(weights(resumed), weights(straight))
    assert resumed.metrics.history == straight.metrics.history
    names = sorted(p.name for p in (tmp_path/'report').iterdir())
    assert 'classification_report.json' in names and names == sorted(p.name for p in (tmp_path/'report-straight').iterdir())
    assert (tmp_path/'report'/'classification_report.json').read_text() == (tmp_path/'report-straight'/'classification_report.json').read_text()

def test_position_survives_an_evaluation_pass_inside_a_fit(tmp_path):
    import nntrain.trial  # noqa: F401 (adds Learner.evaluate)
    seen = []
    class EvaluatesMidway(Subscriber):
        order = 50
        def after_batch(self, learn):
            if learn.training and learn.iter == 1:
                before = copy.deepcopy(learn.position)
                learn.evaluate()
                seen.append((before, copy.deepcopy(learn.position)))
    learn = tiny_learner()
    learn.fit(3, subs=[EvaluatesMidway(), CheckpointS(tmp_path/'ck')])
    folder = tmp_path/'ck'
    resumed = tiny_learner(seed=2)
    resumed.fit(4, subs=[EvaluatesMidway()], resume=folder)
    for before, after in seen:
        assert after['epoch'] == before['epoch'] and after['next_iter'] == before['next_iter'] == 2
        assert torch.equal(after['epoch_start']['rng']['torch'], before['epoch_start']['rng']['torch'])
    assert [b['epoch'] for b, _ in seen] == [0, 1, 2, 3]

def test_resume_epoch_beyond_the_fit(tmp_path):
    tiny_learner().fit(2, subs=[CheckpointS(tmp_path/'ck')])
    newest = checkpoints(tmp_path/'ck')[-1]
    with pytest.raises(ValueError) as info: tiny_learner().fit(1, resume=tmp_path/'ck')
    assert str(info.value) == f"{newest} is at epoch 1 (counting from 0), but this fit has only 1 epochs; expected more than 1"

def test_resume_negative_epoch(tmp_path):
    state = edited(good_state(tmp_path), _position('epoch', -2))
    save_checkpoint(state, tmp_path/'neg.pt')
    message = error_of(lambda: tiny_learner().fit(2, resume=tmp_path/'neg.pt'))
    assert message == f"{tmp_path/'neg.pt'} is not a valid nntrain checkpoint: 'position' should have 'epoch' an int >= 0, got -2"

# ---------------------------------------------------------------- 6. CSVLoggerS across kills

def read_rows(path):
    with open(path, newline='') as f: return list(csv.reader(f))

def test_csv_identical_after_a_kill_between_a_row_and_the_next_checkpoint(tmp_path, mnist):
    mnist_learner(mnist, CSVLoggerS(tmp_path/'straight.csv')).fit(3)
    class Stop(Subscriber):
        def before_batch(self, learn):
            if learn.training and learn.epoch == 1 and learn.iter == 3: raise CancelFitException()
    folder = tmp_path/'ck'
    mnist_learner(mnist, CSVLoggerS(tmp_path/'run.csv'), CheckpointS(folder)).fit(3, subs=[Stop()])
    assert len(read_rows(tmp_path/'run.csv')) == 2   # header and the row of epoch 0, written after the newest checkpoint
    mnist_learner(mnist, CSVLoggerS(tmp_path/'run.csv'), CheckpointS(folder), seed=3).fit(3, resume=folder)
    assert (tmp_path/'run.csv').read_bytes() == (tmp_path/'straight.csv').read_bytes()

def test_csv_identical_after_a_sigkill(tmp_path):
    code = '''
import os, signal, sys, torch
from pathlib import Path
from torch import nn
from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, MetricsS, Subscriber
from nntrain.checkpoints import CheckpointS
from nntrain.logging import CSVLoggerS
folder, mode = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
make = lambda: (torch.randn(16, 10), torch.randint(0, 3, (16,)))
dls = DataLoaders([make() for _ in range(5)], [make() for _ in range(2)])
metrics = MetricsS(); metrics.output = lambda log: None
class Kill(Subscriber):
    def after_batch(self, learn):
        if learn.training and learn.epoch == 2 and learn.iter == 2: os.kill(os.getpid(), signal.SIGKILL)
torch.manual_seed(1)
learn = Learner(nn.Linear(10, 3), dls, subs=[metrics, CSVLoggerS(folder/(mode + '.csv' if mode == 'straight' else 'run.csv')), CheckpointS(folder/('ck-straight' if mode == 'straight' else 'ck'))])
learn.fit(4, subs=[Kill()] if mode == 'kill' else [], resume=folder/'ck' if mode == 'resume' else None)
'''
    run = lambda mode: subprocess.run([sys.executable, '-c', code, str(tmp_path), mode], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run('straight').returncode == 0
    killed = run('kill')
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with open(tmp_path/'run.csv', 'ab') as f: f.write(b'2,12,0.1,1.0')      # as if the kill came in the middle of a row
    resumed = run('resume')
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path/'run.csv').read_bytes() == (tmp_path/'straight.csv').read_bytes()

def test_csv_half_written_header_and_row(tmp_path, mnist):
    mnist_learner(mnist, CSVLoggerS(tmp_path/'one.csv')).fit(1)
    header, row = (tmp_path/'one.csv').read_bytes().splitlines(keepends=True)
    for cut in (1, 5, len(header) - 2, len(header) - 1):
        path = tmp_path/f'header-{cut}.csv'
        path.write_bytes(header[:cut])
        mnist_learner(mnist, CSVLoggerS(path)).fit(1)
        assert path.read_bytes() == header + row
    path = tmp_path/'row.csv'
    path.write_bytes(header + row + row[:7])
    mnist_learner(mnist, CSVLoggerS(path)).fit(1)
    assert path.read_bytes() == header + row + row
    path = tmp_path/'row-cr.csv'
    path.write_bytes(header + row + row[:-1])   # all but the final newline
    mnist_learner(mnist, CSVLoggerS(path)).fit(1)
    assert path.read_bytes() == header + row + row

def test_csv_foreign_single_line_is_refused(tmp_path, mnist):
    path = tmp_path/'notes.csv'
    path.write_bytes(b'my,own,notes')
    with pytest.raises(ValueError, match=r"already has the header \['my', 'own', 'notes'\]"): mnist_learner(mnist, CSVLoggerS(path)).fit(1)
    assert path.read_bytes() == b'my,own,notes'

def test_csv_resumed_into_another_file_is_left_alone(tmp_path):
    metrics = MetricsS(); metrics.output = lambda log: None
    learn = tiny_learner(subs=[metrics, CSVLoggerS(tmp_path/'a.csv'), CheckpointS(tmp_path/'ck')])
    learn.fit(2)
    other_log = (tmp_path/'a.csv').read_bytes().replace(b'0,4', b'9,4') + b'9,9,9,9,9\r\n'
    (tmp_path/'b.csv').write_bytes(other_log)
    metrics = MetricsS(); metrics.output = lambda log: None
    other = tiny_learner(subs=[metrics, CSVLoggerS(tmp_path/'b.csv')])
    with pytest.warns(UserWarning, match='does not begin with the'): other.fit(3, resume=tmp_path/'ck')
    assert (tmp_path/'b.csv').read_bytes().startswith(other_log)   # nothing of it cut
    assert len(read_rows(tmp_path/'b.csv')) == len(read_rows(tmp_path/'a.csv')) + 1 + 2

# ---------------------------------------------------------------- 7. monitors that MetricsS does not report

@pytest.mark.parametrize('make', [lambda folder: EarlyStoppingS('acc'), lambda folder: CheckpointS(folder, monitor='acc')])
def test_monitor_must_be_reported(tmp_path, mnist, make):
    sub = make(tmp_path/'ck')
    learn = mnist_learner(mnist)
    with pytest.raises(ValueError) as info: learn.fit(1, subs=[sub])
    assert str(info.value) == (f"{type(sub).__name__}(monitor='acc'): the MetricsS of this fit reports ['loss', 'accuracy']; expected one of them "
                               "(a value given to learn.log cannot be monitored: its name is known only once it is logged)")
    assert not hasattr(learn, 'iter')   # refused before any batch ran


@pytest.mark.parametrize('damage', ['header only', 'emptied', 'a row edited'])
def test_csv_changed_by_hand_after_a_checkpoint_is_put_back(tmp_path, mnist, damage):
    "The checkpoint holds the log's text: whatever happened to the file since, a resumed run ends with the uninterrupted file."
    mnist_learner(mnist, CSVLoggerS(tmp_path/'straight.csv')).fit(3)
    class Stop(Subscriber):
        def before_batch(self, learn):
            if learn.training and learn.epoch == 2 and learn.iter == 3: raise CancelFitException()
    folder, log = tmp_path/'ck', tmp_path/'run.csv'
    mnist_learner(mnist, CSVLoggerS(log), CheckpointS(folder)).fit(3, subs=[Stop()])
    text = log.read_text()
    log.write_text({'header only': text.splitlines(keepends=True)[0], 'emptied': '', 'a row edited': text.replace('\n0,', '\n7,', 1)}[damage])
    with pytest.warns(UserWarning, match=r'changed after the checkpoint was written; putting back the 1 row\(s\)'):
        mnist_learner(mnist, CSVLoggerS(log), CheckpointS(folder), seed=3).fit(3, resume=folder)
    assert log.read_bytes() == (tmp_path/'straight.csv').read_bytes()


def test_a_link_swapped_in_at_the_temporary_name_during_the_write_is_caught(tmp_path):
    "Another process that writes in the folder replaces our temporary file by a link while we write: refused, nothing lost outside."
    victim = tmp_path/'victim'; victim.write_text('keep')
    folder = tmp_path/'run'; folder.mkdir()
    (folder/'result.json').write_text('old')
    def write(f):
        f.write(b'new result')
        for tmp in folder.glob('.result.json.*.tmp'):
            tmp.unlink(); tmp.symlink_to(victim)
    with pytest.raises(OSError, match=r'cannot write .*result.json: its temporary file was replaced while it was written'):
        write_atomically(folder/'result.json', write)
    assert victim.read_text() == 'keep'
    assert [p for p in folder.iterdir() if p.is_symlink()] == []   # neither at the temporary name nor at the final one


def test_ctrl_c_during_a_checkpoint_write_is_a_keyboard_interrupt_and_leaves_no_file(tmp_path, monkeypatch):
    "A Ctrl-C that lands inside torch.save: torch's archive writer turns it into a RuntimeError of its own, which must not hide it."
    import nntrain.core as core
    real, calls = core._HashingWriter.write, []
    def write(self, data):
        calls.append(len(data))
        if len(calls) == 3: raise KeyboardInterrupt   # what the SIGINT handler raises, mid-record
        return real(self, data)
    monkeypatch.setattr(core._HashingWriter, 'write', write)
    with pytest.raises(KeyboardInterrupt): core.save_checkpoint({'w': torch.randn(1000)}, tmp_path/'c.pt')
    assert list(tmp_path.iterdir()) == []   # neither the checkpoint nor its temporary


def test_ctrl_c_during_a_checkpoint_write_leaves_no_file_and_does_not_abort(tmp_path):
    "A KeyboardInterrupt inside torch.save: torch's archive writer finishes later, on a file already thrown away; no C++ abort, no file."
    import subprocess, sys, textwrap
    code = textwrap.dedent('''
        import gc, sys, torch
        from nntrain.core import _write_checkpoint
        class CtrlC:
            def __reduce__(self): raise KeyboardInterrupt
        try: _write_checkpoint({'a': torch.zeros(1000), 'b': CtrlC()}, sys.argv[1])
        except KeyboardInterrupt: print('interrupted', flush=True)
        gc.collect()
    ''')
    r = subprocess.run([sys.executable, '-c', code, str(tmp_path/'ck.pt')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == 'interrupted\n', (r.returncode, r.stderr[-2000:])
    assert 'terminate called' not in r.stderr and 'closed file' not in r.stderr, r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []
    # where the writer outlives the file (seen once: Ctrl-C reaching a search worker mid-save), its last records go nowhere
    # instead of raising a ValueError into C++, which aborts the process ('terminate called ... write to closed file')
    from nntrain.core import _HashingWriter
    with open(tmp_path/'late', 'wb') as f: writer = _HashingWriter(f)
    assert writer.write(b'end of archive') == 14
