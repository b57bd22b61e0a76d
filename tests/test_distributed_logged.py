"Values given to `learn.log` in a distributed job, resumed mid-pass at the same and at another world size: each counted once."
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent/'distributed_scripts'/'logged_resume.py'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).parents[1])}

def job(nproc, mode, folder, out):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc-per-node={nproc}', str(SCRIPT), mode, str(folder), str(out)]
    r = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(Path(out).read_text())

@pytest.fixture(scope='module')
def unbroken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('unbroken')
    return job(2, 'full', tmp/'checkpoints', tmp/'history.json')

@pytest.mark.parametrize('stopped_on, resumed_on', [(2, 2), (2, 1), (1, 2)])
def test_logged_values_resume_once(tmp_path, unbroken, stopped_on, resumed_on):
    job(stopped_on, 'stop', tmp_path/'checkpoints', tmp_path/'stopped.json')   # stops after batch 70; the checkpoint is at batch 50
    history = job(resumed_on, 'resume', tmp_path/'checkpoints', tmp_path/'resumed.json')
    assert history[0]['it'] == unbroken[0]['it'] == 62.0   # the mean batch index of 125 batches: no rank's sums counted twice
    assert abs(history[0]['loss'] - unbroken[0]['loss']) < 1e-4 and abs(history[1]['loss'] - unbroken[1]['loss']) < 1e-4
    if stopped_on == resumed_on: assert history == unbroken   # each rank went on from its own sums: bit for bit
