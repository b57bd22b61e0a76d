"""Every pipeline of chapter 14 through the session YAML: the settings checked all at once, each pipeline trained end
to end on real data, a run with worker processes killed from outside and finished, datasets given as paths."""
import contextlib, io, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
from datasets import ClassLabel, DatasetDict
import torch

from nntrain.checkpoints import checkpoints, load_checkpoint
from nntrain.dataloaders import load_mnist
from nntrain.experiments import ConfigError, check_config, check_session, load_session
from nntrain.sessions import open_experiment_dataset, run_session, training_plan

# Runs compared bit for bit use one thread: two threads may sum in another order.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
LIMIT = 150   # seconds any one test may take


@pytest.fixture(autouse=True)
def time_limit():
    "Fail a test that runs longer than LIMIT seconds (SIGALRM interrupts it) instead of hanging the suite."
    def expired(signum, frame): raise TimeoutError(f'the test ran longer than {LIMIT} s')
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "The bundled MNIST saved with save_to_disk (`mnist/`), its training split alone (`train/`) and as a Parquet file."
    tmp = tmp_path_factory.mktemp('data')
    dd = load_mnist()
    with contextlib.redirect_stderr(io.StringIO()):   # the progress bars of datasets
        dd.save_to_disk(str(tmp/'mnist'))
        dd['train'].save_to_disk(str(tmp/'train'))
        dd['train'].to_parquet(str(tmp/'train.parquet'))
        dd['train'].select_columns(['image']).to_parquet(str(tmp/'images.parquet'))
    (tmp/'notes.txt').write_text('not a dataset')
    (tmp/'empty').mkdir()
    return tmp


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    "The Arrow files that reading a Parquet file writes go to this test's folder, not the user's cache."
    import datasets
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', tmp_path/'hf-cache')


def _quiet_session(cfg, session, results):
    with contextlib.redirect_stdout(io.StringIO()): return run_session(cfg, session, results)


def _message(name, problems):
    return f"{name} has {len(problems)} problem(s):\n  " + '\n  '.join(problems)


def _error(session, name='s') -> str:
    with pytest.raises(ConfigError) as info: check_session(session, name)
    return str(info.value)


# --- the settings, checked before anything runs

def test_unknown_names_and_too_many_workers_in_one_error():
    assert _error({'dataset': 'mnsit', 'pipeline': 'strem', 'workers': 100, 'lr': -1, 'num_iterations': 5}) == _message('s', [
        "dataset: unknown dataset 'mnsit'; did you mean 'mnist'? (registered: mnist); expected a registered name, "
        "hub:<name> for a hub dataset, or a path",
        "lr: expected a finite number > 0, got -1",
        "pipeline: unknown pipeline 'strem'; did you mean 'stream'? (pipelines: memory, map, stream, reservoir)",
        "workers: expected at most 64 worker processes, got 100"])


def test_wrong_types_and_negative_workers():
    assert _error({'pipeline': 3, 'workers': 'two', 'pipeline_args': [1], 'num_iterations': 5}) == _message('s', [
        "pipeline: expected str, got 3", "workers: expected int, got 'two'", "pipeline_args: expected dict, got [1]"])
    assert _error({'pipeline': 'map', 'workers': -1, 'num_iterations': 5}) == _message('s', [
        "workers: expected an int >= 0 (0: no worker processes), got -1"])
    assert _error({'pipeline': 'map', 'workers': True, 'num_iterations': 5}) == _message('s', ["workers: expected int, got True"])


def test_memory_with_workers_and_arguments_it_does_not_take():
    assert _error({'workers': 2, 'pipeline_args': {'size': 10}, 'bs': 0, 'num_iterations': 5}) == _message('s', [
        "bs: expected >= 1, got 0",
        "workers: 2 worker processes, but the memory pipeline runs in this process; choose map, stream or reservoir (or workers: 0)",
        "pipeline_args: the memory pipeline takes no argument 'size' (arguments: none)"])


def test_reservoir_without_workers_and_sizes_that_do_not_fit():
    assert _error({'pipeline': 'reservoir', 'pipeline_args': {'size': 100, 'min_fill': 200}, 'num_epochs': 1}) == _message('s', [
        "workers: the reservoir pipeline fills its reservoir in worker processes while training goes on; expected workers >= 1, got 0",
        "pipeline_args: the reservoir pipeline expects bs <= min_fill <= size (a batch is drawn from at least min_fill samples; "
        "min_fill defaults to size), got bs=128, min_fill=200, size=100"])
    assert _error({'pipeline': 'reservoir', 'workers': 1, 'bs': 64, 'pipeline_args': {'size': 32}, 'num_epochs': 1}) == _message('s', [
        "pipeline_args: the reservoir pipeline expects bs <= min_fill <= size (a batch is drawn from at least min_fill samples; "
        "min_fill defaults to size), got bs=64, min_fill=32, size=32"])
    assert _error({'pipeline': 'reservoir', 'workers': 1, 'num_epochs': 1,
                   'pipeline_args': {'sise': 10, 'max_replaced': -1, 'batches_per_pass': None, 'min_fill': 'all'}}) == _message('s', [
        "pipeline_args: the reservoir pipeline takes no argument 'sise'; did you mean 'size'? "
        "(arguments: size, min_fill, max_replaced, batches_per_pass)",
        "pipeline_args.max_replaced: expected an int in [0, 2,147,483,647] or null (the loader's default), got -1",
        "pipeline_args.min_fill: expected an int in [1, 2,147,483,647] or null (the loader's default), got 'all'"])
    [(_, config)] = check_session({'pipeline': 'reservoir', 'workers': 2, 'bs': 32,
                                   'pipeline_args': {'size': 64, 'min_fill': 32, 'max_replaced': 0, 'batches_per_pass': None},
                                   'num_epochs': 1})
    assert (config['pipeline'], config['workers'], config['pipeline_args']['size']) == ('reservoir', 2, 64)


def test_stream_by_epochs_and_bad_buffer():
    assert _error({'pipeline': 'stream', 'pipeline_args': {'buffer_size': 0}, 'num_epochs': 1}) == _message('s', [
        "num_epochs: a stream has no length, so it trains by iterations; give num_iterations instead",
        "pipeline_args.buffer_size: expected an int in [1, 2,147,483,647], got 0"])
    assert _error({'pipeline': 'stream', 'pipeline_args': {'bufer_size': 10, 'size': 2}, 'num_iterations': 5}) == _message('s', [
        "pipeline_args: the stream pipeline takes no argument 'bufer_size'; did you mean 'buffer_size'? (arguments: buffer_size)",
        "pipeline_args: the stream pipeline takes no argument 'size' (arguments: buffer_size)"])
    with pytest.raises(ValueError) as info: training_plan({'num_epochs': 1, 'num_iterations': None}, None)
    assert str(info.value) == ("training_plan: num_epochs needs the batches per epoch, but the training loader has no length "
                               "(a stream); give num_iterations instead")


def test_a_grid_of_pipelines_names_the_experiments_with_problems():
    assert _error({'pipeline_': ['memory', 'map', 'reservoir', 'stream'], 'workers': 0, 'num_epochs': 1}) == _message('s', [
        "[pipeline-reservoir] workers: the reservoir pipeline fills its reservoir in worker processes while training goes on; "
        "expected workers >= 1, got 0",
        "[pipeline-stream] num_epochs: a stream has no length, so it trains by iterations; give num_iterations instead"])


def test_dataset_paths_checked_on_this_machine(data, monkeypatch):
    monkeypatch.chdir(data)
    readable = "expected a folder written by save_to_disk, a .parquet or .csv file, or a folder of class folders of images"
    def problems(name, on_this_machine=True): return check_config({'dataset': name, 'num_iterations': 5}, on_this_machine)
    for fine in ('./mnist', str(data/'mnist'), './train', './train.parquet'):
        assert problems(fine) == [], fine
    assert problems('./missing') == [f"dataset: './missing' is missing; {readable}"]
    assert problems('./notes.txt') == [f"dataset: './notes.txt' is a .txt file; {readable}"]
    assert problems('./empty') == [f"dataset: './empty' is a folder with neither a saved dataset nor class folders; {readable}"]
    assert problems('./images.parquet') == [
        "dataset: './images.parquet' has columns ['image'], without 'label'; expected an 'image' and a 'label' column"]
    assert problems('train.parquet') == [
        "dataset: unknown dataset 'train.parquet' (registered: mnist); expected a registered name, hub:<name> for a hub dataset, "
        "or a path (a path has a '/' or starts with '.' or '~': write './train.parquet')"]
    assert problems('./missing', on_this_machine=False) == []   # checked where it runs
    # the classes a saved dataset declares are checked against the loss weights, as for a registered one
    assert check_config({'dataset': './mnist', 'loss_weights': [1, 2], 'num_iterations': 5}) == [
        "loss_weights: expected 10 weights (one per class), got 2"]


def test_paths_listed_with_the_other_problems_from_yaml(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    (tmp_path/'s.yaml').write_text('bad:\n  dataset: ./missing.parquet\n  pipeline: mapp\n  num_iterations: 5\n  lr: 0\n')
    with pytest.raises(ConfigError) as info: load_session(tmp_path/'s.yaml', 'bad')
    assert str(info.value) == _message(f"{tmp_path/'s.yaml'}:bad", [
        "dataset: './missing.parquet' is missing; expected a folder written by save_to_disk, a .parquet or .csv file, "
        "or a folder of class folders of images",
        "lr: expected a finite number > 0, got 0",
        "pipeline: unknown pipeline 'mapp'; did you mean 'map'? (pipelines: memory, map, stream, reservoir)"])


def test_hub_datasets_fail_clearly_offline(monkeypatch, capsys):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert _error({'dataset': 'hub:ylecun/mnist', 'pipeline': 'map', 'workers': 1, 'num_iterations': 5}) == _message('s', [
        "dataset: 'hub:ylecun/mnist' is on the Hugging Face hub, but HF_HUB_OFFLINE=1 is set, so it cannot be downloaded; "
        "unset it, or give a path to a copy on disk"])
    assert _error({'dataset': 'hub:', 'num_iterations': 5}) == _message('s', [
        "dataset: expected hub:<name> with the name of a dataset on the Hugging Face hub (such as hub:ylecun/mnist), got 'hub:'"])
    assert check_config({'dataset': 'hub:ylecun/mnist', 'num_iterations': 5}, on_this_machine=False) == []
    with pytest.raises(ConnectionError) as info: open_experiment_dataset('hub:ylecun/mnist')   # built anyway: one line, then the error
    assert str(info.value) == "open_dataset: the hub dataset 'ylecun/mnist' could not be loaded (see the line above)"
    assert capsys.readouterr().out == ("load_hub_dataset('ylecun/mnist'): HF_HUB_OFFLINE=1 is set, so the hub was not tried; "
                                       "returning None (load_mnist() gives the bundled digits, offline)\n")


# --- every pipeline, end to end

SESSIONS = textwrap.dedent('''
    memory:
      dataset: {folder}
      model_args: {{hidden: 16}}
      bs: 128
      num_iterations: 16
      valid_every: 8
      checkpoint_every: 8
    map:
      dataset: {folder}
      pipeline: map
      workers: 2
      model_args: {{hidden: 16}}
      bs: 128
      num_iterations: 16
      valid_every: 8
      checkpoint_every: 8
    stream:
      dataset: {folder}
      pipeline: stream
      workers: 1
      pipeline_args: {{buffer_size: 256}}
      model_args: {{hidden: 16}}
      bs: 128
      num_iterations: 16
      valid_every: 8
    reservoir:
      dataset: {folder}
      pipeline: reservoir
      workers: 2
      pipeline_args: {{size: 256, min_fill: 128}}
      model_args: {{hidden: 16}}
      bs: 128
      num_epochs: 8
''')


def _children() -> list[int]:
    "The processes this one started that are still running (worker processes left behind)."
    found = subprocess.run(['ps', '--ppid', str(os.getpid()), '-o', 'pid=,stat=,comm='], capture_output=True, text=True, timeout=10).stdout
    return [int(pid) for pid, state, command in map(str.split, found.splitlines()) if not state.startswith('Z') and command != 'ps']


@pytest.mark.parametrize('pipeline', ['memory', 'map', 'stream', 'reservoir'])
def test_each_pipeline_trains_a_session(data, tmp_path, pipeline):
    (tmp_path/'s.yaml').write_text(SESSIONS.format(folder=data/'mnist'))
    [row] = _quiet_session(tmp_path/'s.yaml', pipeline, tmp_path/'results')
    folder = tmp_path/'results'/pipeline/'default'
    result = json.loads((folder/'result.json').read_text())
    assert row['status'] == 'trained' and result['iterations'] == 16, (row, result)   # reservoir: 8 passes of 256 / 128 batches
    assert result['accuracy'] > 0.3, result   # it learned something from the digits
    assert json.loads((folder/'reports'/'classification_report.json').read_text())['weighted avg']['support'] == 2000
    stored = (folder/'config.yaml').read_text()
    assert f'pipeline: {pipeline}\n' in stored, stored
    assert len(checkpoints(folder/'checkpoints')) == 2
    if pipeline == 'reservoir': assert _children() == []   # its workers were closed with the experiment
    assert _quiet_session(tmp_path/'s.yaml', pipeline, tmp_path/'results')[0]['status'] == 'skipped'


def test_map_makes_the_batches_of_memory(data, tmp_path):
    "Without transforms, a map pipeline serves the rows in the order memory does (both draw it from a generator seeded alike)."
    (tmp_path/'s.yaml').write_text(SESSIONS.format(folder=data/'mnist'))
    for session in ('memory', 'map'): _quiet_session(tmp_path/'s.yaml', session, tmp_path/'results')
    memory, mapped = (tmp_path/'results'/'memory'/'default', tmp_path/'results'/'map'/'default')
    assert json.loads((memory/'result.json').read_text()) == json.loads((mapped/'result.json').read_text())
    assert (memory/'metrics.csv').read_bytes() == (mapped/'metrics.csv').read_bytes()


def test_parquet_file_and_single_split_get_a_held_out_validation(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    dd = open_experiment_dataset('./train.parquet')
    assert {k: v.num_rows for k, v in dd.items()} == {'train': 6400, 'validation': 1600}
    again = open_experiment_dataset('./train')   # the same rows saved with save_to_disk: the same split
    assert again['validation']['label'] == dd['validation']['label']
    (tmp_path/'s.yaml').write_text(textwrap.dedent('''
        parquet:
          dataset: ./train.parquet
          pipeline_: [memory, map]
          model_args: {hidden: 16}
          bs: 256
          num_iterations: 6
    '''))
    rows = _quiet_session(tmp_path/'s.yaml', 'parquet', tmp_path/'results')
    assert [r['status'] for r in rows] == ['trained', 'trained'], rows
    for experiment in ('pipeline-memory', 'pipeline-map'):
        report = json.loads((tmp_path/'results'/'parquet'/experiment/'reports'/'classification_report.json').read_text())
        assert report['weighted avg']['support'] == 1600
    assert not any(data.rglob('*.arrow.tmp')) and (tmp_path/'hf-cache').is_dir()   # the Arrow copy went to the test's cache


def test_old_results_without_the_pipeline_keys_are_not_changed(data, tmp_path):
    "A run stored before the pipeline settings existed ran as memory with no workers: it is the same config."
    import yaml
    (tmp_path/'s.yaml').write_text(SESSIONS.format(folder=data/'mnist'))
    _quiet_session(tmp_path/'s.yaml', 'memory', tmp_path/'results')
    stored = tmp_path/'results'/'memory'/'default'/'config.yaml'
    old = {k: v for k, v in yaml.safe_load(stored.read_text()).items() if k not in ('pipeline', 'workers', 'pipeline_args')}
    stored.write_text(yaml.safe_dump(old, sort_keys=False))
    assert _quiet_session(tmp_path/'s.yaml', 'memory', tmp_path/'results')[0]['status'] == 'skipped'
    stored.write_text(yaml.safe_dump({**old, 'workers': 3}, sort_keys=False))
    with pytest.raises(ConfigError) as info: _quiet_session(tmp_path/'s.yaml', 'memory', tmp_path/'results')
    assert '\n  default: workers: 3 -> 0\n' in str(info.value)


# --- killed from outside while worker processes make its batches

KILLED = textwrap.dedent('''
    killed:
      dataset: {folder}
      pipeline: map
      workers: 2
      model_args: {{hidden: 32}}
      lr: 0.01
      bs: 64
      num_iterations: 80
      valid_every: 40
      checkpoint_every: 20
      scheduler: one_cycle
''')

RUN = 'import sys; from nntrain.sessions import run_session; run_session(sys.argv[1], sys.argv[2], sys.argv[3])'


def _run(cfg, results, **kwargs):
    return subprocess.Popen([sys.executable, '-c', RUN, str(cfg), 'killed', str(results)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def _end_group(process):
    "Kill what is left of the process group of `process` (its workers, once it is gone)."
    with contextlib.suppress(ProcessLookupError): os.killpg(process.pid, signal.SIGKILL)


def _fingerprint(folder: Path) -> dict:
    newest = checkpoints(folder/'checkpoints')[-1]
    return {'result': json.loads((folder/'result.json').read_text()), 'metrics.csv': (folder/'metrics.csv').read_text(),
            'checkpoint': newest.name, 'weights': load_checkpoint(newest)['model']}


def test_map_with_workers_killed_from_outside_finishes_identically(data, tmp_path):
    (tmp_path/'s.yaml').write_text(KILLED.format(folder=data/'mnist'))
    reference = _run(tmp_path/'s.yaml', tmp_path/'reference')
    try: assert reference.wait(timeout=120) == 0, reference.stderr.read()
    finally: _end_group(reference)
    expected = _fingerprint(tmp_path/'reference'/'killed'/'default')

    folder = tmp_path/'killed'/'killed'/'default'
    child = _run(tmp_path/'s.yaml', tmp_path/'killed')
    try:
        deadline = time.monotonic() + 120
        while not checkpoints(folder/'checkpoints') and child.poll() is None and time.monotonic() < deadline: time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)   # from outside, while its two workers make batches
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally: _end_group(child)
    left = [p.name for p in checkpoints(folder/'checkpoints')]
    assert left and left[-1] != expected['checkpoint'], left   # killed mid-run: the last checkpoint is not written yet
    assert not (folder/'result.json').exists()

    rerun = _run(tmp_path/'s.yaml', tmp_path/'killed')
    try: assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    finally: _end_group(rerun)
    found = _fingerprint(folder)
    for key in ('result', 'metrics.csv', 'checkpoint'): assert found[key] == expected[key], key
    assert found['weights'].keys() == expected['weights'].keys()
    for name in expected['weights']: assert torch.equal(found['weights'][name], expected['weights'][name]), name


def test_a_model_that_does_not_fit_the_data_is_refused_before_training(data, tmp_path):
    "B1, B72 of the second break-it pass: 3 classes with mlp's 10 outputs failed after the whole fit; RGB images failed at the first batch."
    three = load_mnist()
    three = DatasetDict({k: v.filter(lambda row: row['label'] < 3).cast_column('label', ClassLabel(names=['0', '1', '2'])) for k, v in three.items()})
    with contextlib.redirect_stderr(io.StringIO()): three.save_to_disk(str(tmp_path/'three'))
    (tmp_path/'s.yaml').write_text(f"s:\n  dataset: {tmp_path/'three'}\n  bs: 64\n  num_iterations: 4\n  pipeline: map\n")
    with pytest.raises(ConfigError, match=r"model: mlp gives 10 outputs per sample, but dataset '.*three' has 3 classes; expected one output "
                                          r"per class \(for mlp: model_args: \{n_out: 3\}\)"):
        _quiet_session(tmp_path/'s.yaml', 's', tmp_path/'results')
    assert not list((tmp_path/'results').rglob('checkpoint-*.pt'))   # nothing was trained
    (tmp_path/'s.yaml').write_text(f"s:\n  dataset: {tmp_path/'three'}\n  bs: 64\n  num_iterations: 4\n  pipeline: map\n"
                                   "  model_args: {n_out: 3}\n")
    assert _quiet_session(tmp_path/'s.yaml', 's', tmp_path/'results2')[0]['status'] == 'trained'
    rgb = DatasetDict({k: v.map(lambda row: {'image': row['image'].convert('RGB')}) for k, v in load_mnist().items()})
    with contextlib.redirect_stderr(io.StringIO()): rgb.save_to_disk(str(tmp_path/'rgb'))
    (tmp_path/'s.yaml').write_text(f"s:\n  dataset: {tmp_path/'rgb'}\n  bs: 64\n  num_iterations: 4\n")
    with pytest.raises(ConfigError, match=r"model: mlp cannot take a batch of the samples of dataset '.*rgb', of shape \[2, 2352\] "
                                          r"\(flatten: true\): RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        _quiet_session(tmp_path/'s.yaml', 's', tmp_path/'results3')
