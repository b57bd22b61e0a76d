"""tools/bench_ddp.py: the DDP benchmark runs end to end with its quickest settings (2 processes through torch's
launcher) and prints its table. No speed is asserted here: the target lives in the benchmark's printed figures."""
import json, os, re, subprocess, sys

import pytest
from conftest import ROOT

NUMBER = r'(\d+\.\d+)'


def test_a_quick_run_prints_the_table_and_writes_the_json(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT/'tools'/'bench_ddp.py'), '--quick', '--rows', '512', '--runners', 'hand', 'nntrain',
                             '--json', str(tmp_path/'ddp.json')], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ('DDP, 2 processes (gloo, 127.0.0.1, 1 thread each), 784-128-10 MLP, bundled MNIST (512 rows), '
                        'global batch 64 (32 per rank), SGD lr 0.1'), result.stdout
    assert lines[1] == ("2 epochs of 8 steps; ms/step: rank 0's median pass but the first, then the median of 1 alternated rounds "
                        "(CPU: all of rank 0's threads)")
    assert lines[3] == 'runner          ms/step   x hand  x hand-bare  CPU ms/step  CPU x hand'
    rows = {}
    for line in lines[4:6]:
        match = re.fullmatch(rf'(hand|nntrain) +{NUMBER} +{NUMBER} +n/a +{NUMBER} +{NUMBER}', line)
        assert match, f'not a row of the table: {line!r} in\n{result.stdout}'
        rows[match.group(1)] = [float(v) for v in match.groups()[1:]]
    assert list(rows) == ['hand', 'nntrain']
    assert rows['hand'][1] == 1.0 and rows['hand'][3] == 1.0
    hand_ms, ours_ms = rows['hand'][0], rows['nntrain'][0]
    assert hand_ms > 0 and ours_ms > 0 and rows['nntrain'][1] == pytest.approx(ours_ms / hand_ms, abs=2e-3)
    ratio = re.fullmatch(rf'nntrain / hand = {NUMBER} \(target: nntrain / hand <= 1\.05\)', lines[7])
    assert ratio and float(ratio.group(1)) == pytest.approx(rows['nntrain'][1], abs=2e-3), result.stdout
    assert len(lines) == 8
    assert re.search(r'^round 1/1: hand \d+\.\d+ ms/step, \d+\.\d+ CPU ms/step$', result.stderr, re.M), result.stderr   # progress on stderr
    data = json.loads((tmp_path/'ddp.json').read_text())
    assert data['settings'] == {'runners': ['hand', 'nntrain'], 'repeats': 1, 'epochs': 2, 'bs': 64, 'hidden': 128, 'rows': 512,
                                'nproc': 2, 'quick': True}
    assert set(data['rows']) == {'hand', 'nntrain'} and len(data['rows']['nntrain']['runs']) == 1
    assert data['rows']['nntrain']['ms_per_step'] == pytest.approx(ours_ms, abs=1e-3)


def test_bad_options_are_refused_before_any_job_starts(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT/'tools'/'bench_ddp.py'), '--epochs', '1'], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == 'bench_ddp.py: error: expected --epochs >= 2 (the first is left out), got 1'
