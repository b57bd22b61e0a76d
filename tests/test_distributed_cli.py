"`nntrain fit --nproc N`, `python -m nntrain` under torchrun, and the options refused with them."
import os, subprocess, sys
from pathlib import Path

import torch

from nntrain.core import load_checkpoint

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).parents[1])}

def nntrain(*args, cwd, timeout=240):
    return subprocess.run([sys.executable, '-m', 'nntrain', *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)

def torchrun(nproc, *args, cwd, timeout=240):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={nproc}', '-m', 'nntrain', *args]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)

def test_fit_in_two_processes_prints_once_and_saves_once(tmp_path):
    r = nntrain('fit', '--nproc', '2', '--epochs', '1', '--save', 'model.pt', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('final validation accuracy:') == 1, r.stdout
    assert r.stdout.count('epoch') == 1 and r.stdout.count(' eval ') == 1, r.stdout   # one table: rank 0's
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.pt']   # one file, no temporaries beside it
    state = load_checkpoint(tmp_path/'model.pt')
    assert all(not k.startswith('module.') for k in state['model'])   # the bare model's weights, not DDP's

def test_two_and_three_processes_train_the_same_model(tmp_path):
    "An unseeded loader is ordered by a generator of the job's (seeded by rank 0's torch seed): the same global batches at any world size."
    (tmp_path/'two').mkdir(); (tmp_path/'three').mkdir()
    two = torchrun(2, 'fit', '--epochs', '1', '--save', 'm.pt', cwd=tmp_path/'two')
    three = torchrun(3, 'fit', '--epochs', '1', '--save', 'm.pt', cwd=tmp_path/'three')   # 128 rows shared out unevenly
    assert two.returncode == 0 and three.returncode == 0, (two.stderr[-2000:], three.stderr[-2000:])
    a, b = load_checkpoint(tmp_path/'two'/'m.pt')['model'], load_checkpoint(tmp_path/'three'/'m.pt')['model']
    # AdamW divides by the root of tiny second moments (pixels that are almost always 0): the rounding of adding 2 or 3 shares shows there
    for k in a: torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=0)
    assert sum((a[k] - b[k]).abs().gt(1e-5).sum().item() for k in a) < 0.01 * sum(v.numel() for v in a.values())

def test_options_refused_with_nproc(tmp_path):
    (tmp_path/'s.yaml').write_text('s: {}\n')
    r = nntrain('fit', '--nproc', '0', cwd=tmp_path)
    assert r.returncode == 2 and '--nproc' in r.stderr, r.stderr
    r = nntrain('fit', '--cfg', 's.yaml', '--session', 's', '--nproc', '2', cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "nntrain: error: --nproc: a session's experiments are not trained data-parallel; expected --workers N" in r.stderr
    r = torchrun(2, 'fit', '--cfg', 's.yaml', '--session', 's', cwd=tmp_path)
    assert r.returncode != 0
    assert "--cfg under a launcher (torchrun): a session's experiments are not trained data-parallel" in r.stderr + r.stdout
    # torchrun's own parser takes --nproc for its --nproc-per-node; another launcher's environment reaches nntrain's check
    launched = {**ENV, 'RANK': '0', 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': '1'}
    r = subprocess.run([sys.executable, '-m', 'nntrain', 'fit', '--nproc', '3'], cwd=tmp_path, env=launched, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert 'nntrain: error: --nproc 3: this process is one of 2 started by a launcher (torchrun); expected the same number, or no --nproc' in r.stderr
    assert not list(tmp_path.glob('*.pt'))
