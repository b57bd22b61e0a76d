"""`nntrain bench --pipelines`: the pipelines benchmark runs end to end on a tiny generated dataset and prints its table;
its options are checked before any work. No speed is asserted here: the targets live in the benchmark's printed figures."""
import json, os, re, subprocess, sys

import pytest
from conftest import ROOT

CLI = "import sys; from nntrain.cli import main; sys.exit(main())"
NUMBER = r'(\d+\.\d+)'


def run(args, cwd, timeout=120):
    "Run `nntrain ARGS` in a fresh process that imports this checkout's nntrain; return the CompletedProcess."
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'HF_DATASETS_DISABLE_PROGRESS_BARS': '1'}
    return subprocess.run([sys.executable, '-c', CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_quick_run_prints_every_row_and_writes_the_json(tmp_path):
    result = run(['bench', '--pipelines', '--quick', '--images', '256', '--data', str(tmp_path/'data'), '--json', str(tmp_path/'b.json')], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"256 PNG images in {tmp_path/'data'/'images-256-32px-seed0'}, batch 64, 256 images per run, "
                          "medians of 1 alternated runs\naugmentation: "), out
    assert re.search(r'^augmentation: (\d+\.\d+) ms per sample \(Augment\(rounds=\d+\); reading, decoding, crop and flip alone (\d+\.\d+) ms\)$', out, re.M), out
    assert '\nworkers  hand img/s  nntrain img/s   ratio  hand 1st s  nntrain 1st s\n' in out
    for workers in (0, 1, 2):
        line = re.search(rf'^ +{workers} +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER} +{NUMBER}$', out, re.M)
        assert line, f'no row for {workers} workers in\n{out}'
        hand, ours, ratio = (float(v) for v in line.groups()[:3])
        assert hand > 0 and ours > 0 and ratio == pytest.approx(ours / hand, abs=2e-3)
    assert re.search(r'^waiting for data after the first batch \((1 worker|2 workers), a 10 ms training step, 50 batches\)$', out, re.M), out
    waiting = {name: re.search(rf'^{name} +{NUMBER} +{NUMBER} +{NUMBER}$', out, re.M) for name in ('DataLoader', 'ReservoirLoader')}
    assert all(waiting.values()), out
    assert all(0 <= float(m.group(1)) <= 1 for m in waiting.values())
    assert float(waiting['DataLoader'].group(3)) == 64.0
    data = json.loads((tmp_path/'b.json').read_text())
    assert [(r['name'], r['workers']) for r in data['rows']][:3] == [('throughput', 0), ('throughput', 1), ('throughput', 2)]
    assert data['rows'][3]['name'] == 'waiting' and data['quick'] is True and data['pipelines']['images'] == 256
    assert 'workers 0, round 1: hand ' in result.stderr   # progress goes to stderr, the table to stdout


def test_the_dataset_is_made_once_and_reused(tmp_path):
    code = ("from nntrain.benchmark import make_image_dataset; from datasets import load_from_disk; import os\n"
            f"first = make_image_dataset({str(tmp_path)!r}, 40)\n"
            "made = os.stat(first/'state.json').st_mtime_ns\n"
            f"again = make_image_dataset({str(tmp_path)!r}, 40)\n"
            "ds = load_from_disk(str(again))\n"
            "print(first == again, os.stat(again/'state.json').st_mtime_ns == made, len(ds), ds[0]['image'].size, ds.features['image'].decode)\n"
            f"print(sorted(os.listdir({str(tmp_path)!r})))")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'PYTHONPATH': str(ROOT), 'HF_DATASETS_DISABLE_PROGRESS_BARS': '1'})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True True 40 (32, 32) True\n['images-40-32px-seed0']\n"


@pytest.mark.parametrize('argv, message', [
    (['bench', '--pipelines', '--epochs', '2', '--runners', 'loop'],
     "--epochs, --runners: not used with --pipelines, which times data loaders on the CPU; expected --quick, --repeats, --data, --images or --json with it"),
    (['bench', '--data', 'somewhere'], "--data: only used with --pipelines"),
    (['bench', '--images', '10', '--quick'], "--images: only used with --pipelines"),
    (['bench', '--pipelines', '--images', '0'], "--images: expected an integer > 0, got 0"),
    (['bench', '--pipelines', '--images', '99999999999999'],   # found by the second break-it pass: memory grew without bound
     "--images: expected at most 5,000,000 (about 12 GiB of PNG images), got 99,999,999,999,999"),
    (['bench', '--pipelines', '--data', 'no/such/folder'],
     "--data no/such/folder: the folder 'no/such' does not exist; expected an existing folder or a new one in one"),
    (['bench', '--pipelines', '--data', 'a-file'], "--data a-file: is a file; expected a folder to keep the generated images in"),
    (['bench', '--pipelines', '--json', 'missing/b.json'],
     "--json missing/b.json: the folder 'missing' does not exist; expected an existing folder"),
])
def test_options_are_checked_before_any_work(tmp_path, argv, message):
    (tmp_path/'a-file').write_text('x')
    result = run(argv, tmp_path, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (2, '', f'nntrain: error: {message}\n')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a-file']   # nothing was generated


def test_bad_settings_of_the_benchmark_function_are_refused(tmp_path):
    code = ("from nntrain.benchmark import run_pipelines_benchmark, make_image_dataset\n"
            "for kwargs in ({'workers': []}, {'repeats': 0}, {'n_images': True}):\n"
            "    try: run_pipelines_benchmark(**kwargs)\n"
            "    except ValueError as e: print(e)\n"
            f"try: make_image_dataset({str(tmp_path)!r}, 0)\n"
            "except ValueError as e: print(e)\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "run_pipelines_benchmark expected workers to be a list of ints >= 0, got []",
        "run_pipelines_benchmark expected repeats to be an int >= 1, got 0",
        "run_pipelines_benchmark expected n_images to be an int >= 1, got True",
        "make_image_dataset expected ints n_images >= 1, size >= 8 and seed, got n_images=0, size=32, seed=0"]
