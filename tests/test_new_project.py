"""`nntrain new NAME`: a project folder whose sessions name its own components (`components:build_model`), trained by
`nntrain fit` from a fresh process; names that are taken or not plain refused; never half a project. And the
references themselves: any importable callable, checked with its YAML line before anything runs."""
import contextlib, io, json, os, shutil, signal, subprocess, sys, textwrap
from pathlib import Path

import pytest
import yaml

from nntrain.cli import PROJECT_FILES, main, new_project

COMMAND = [shutil.which('nntrain')] if shutil.which('nntrain') else [sys.executable, '-m', 'nntrain']


def nntrain(*argv, cwd, timeout=120, env=None):
    return subprocess.run([*COMMAND, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})


def refused(done) -> str:
    "The error of a command refused as nntrain refuses: status 2, `nntrain: error: ...`, no traceback."
    assert done.returncode == 2 and done.stderr.startswith('nntrain: error: ') and 'Traceback' not in done.stderr, (done.returncode, done.stderr)
    return done.stderr


def one_error_line(done) -> str:
    assert refused(done).count('\n') == 1, done.stderr
    return done.stderr


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "`nntrain new proj` in a fresh folder, then its smoke session trained inside it: (folder, the two runs)."
    where = tmp_path_factory.mktemp('new')
    made = nntrain('new', 'proj', cwd=where)
    fit = nntrain('fit', '--cfg', 'sessions.yaml', '--session', 'smoke', cwd=where/'proj', timeout=300)
    return where/'proj', made, fit


def test_new_writes_the_project_and_says_what_to_run(project):
    folder, made, _ = project
    assert made.returncode == 0 and made.stderr == '', made.stderr
    assert made.stdout.startswith(f'wrote proj{os.sep}: components.py, sessions.yaml, README.md, test_components.py'), made.stdout
    assert 'nntrain fit --cfg sessions.yaml --session smoke' in made.stdout and 'python -m pytest test_components.py' in made.stdout
    assert sorted(p.name for p in folder.parent.iterdir()) == ['proj']   # nothing else, no temporary folder left
    readme = (folder/'README.md').read_text()
    assert readme.startswith('# proj\n') and 'nntrain fit --cfg sessions.yaml --session smoke' in readme and 'python -m pytest test_components.py' in readme
    assert '{project}' not in ''.join((folder/name).read_text() for name in PROJECT_FILES)
    assert oct(folder.stat().st_mode & 0o777) != oct(0o700)   # an ordinary folder, not mkdtemp's private one


def test_fit_in_the_project_trains_from_its_components(project):
    folder, _, fit = project
    assert fit.returncode == 0, fit.stderr
    table = fit.stdout.strip().splitlines()[-2:]
    assert table[0].split() == ['experiment', 'iterations', 'loss', 'accuracy', 'f1', 'status'], table
    assert table[1].split()[0:2] == ['default', '20'] and table[1].split()[-1] == 'trained', table
    experiment = folder/'results'/'smoke'/'default'
    result = json.loads((experiment/'result.json').read_text())
    assert set(result) == {'experiment', 'iterations', 'loss', 'accuracy', 'f1'} and 0.3 < result['accuracy'] <= 1, result
    config = yaml.safe_load((experiment/'config.yaml').read_text())
    assert (config['dataset'], config['model'], config['loss'], config['metrics'], config['optimizer']) == (
        'components:build_dataset', 'components:build_model', 'components:build_loss', 'components:build_metrics', 'components:build_optimizer')
    code = json.loads((experiment/'environment.json').read_text())['code']
    assert set(code) == {config[k] for k in ('dataset', 'model', 'loss', 'metrics', 'optimizer')}
    assert {entry['file'] for entry in code.values()} == {str(folder/'components.py')}
    assert (folder/'results'/'smoke'/'summary.md').is_file()


def test_the_projects_own_tests_pass(project):
    folder, _, _ = project
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'test_components.py'], cwd=folder,
                          capture_output=True, text=True, timeout=180, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0 and '5 passed' in done.stdout, done.stdout + done.stderr


def test_a_session_run_from_another_folder_says_where_it_looked(project):
    folder, _, _ = project
    done = nntrain('fit', '--cfg', folder/'sessions.yaml', '--session', 'smoke', '--results', folder.parent/'elsewhere', cwd=folder.parent)
    assert f"line 7: dataset: no module 'components' in the folder nntrain runs in ({folder.parent})" in refused(done), done.stderr
    assert not (folder.parent/'elsewhere').exists()


def test_export_imports_the_projects_model_only_when_asked(project):
    folder, _, _ = project
    experiment = folder/'results'/'smoke'/'default'
    refused = nntrain('export', '--checkpoint', experiment, '--out', folder/'model.onnx', cwd=folder)
    assert 'names the model components:build_model, code that nntrain export would import and run' in one_error_line(refused)
    assert not (folder/'model.onnx').exists()
    done = nntrain('export', '--checkpoint', experiment, '--out', folder/'model.onnx', '--import-code', cwd=folder)
    assert done.returncode == 0 and (folder/'model.onnx').is_file(), done.stderr


@pytest.mark.parametrize('kind', ['folder', 'empty folder', 'file', 'link', 'dangling link'])
def test_a_name_that_is_taken_is_never_overwritten(tmp_path, kind):
    taken = tmp_path/'proj'
    if kind == 'folder': taken.mkdir(); (taken/'mine.txt').write_text('mine')
    elif kind == 'empty folder': taken.mkdir()
    elif kind == 'file': taken.write_text('mine')
    else: (tmp_path/'target').mkdir(); taken.symlink_to(tmp_path/('target' if kind == 'link' else 'gone'))
    before = sorted((p.name, p.is_symlink()) for p in tmp_path.rglob('*'))
    error = one_error_line(nntrain('new', 'proj', cwd=tmp_path))
    what = {'folder': 'a folder', 'empty folder': 'a folder', 'file': 'a file'}.get(kind, 'a link')
    assert f'proj exists already ({what}); expected a new name (nothing was written)' in error, error
    assert sorted((p.name, p.is_symlink()) for p in tmp_path.rglob('*')) == before
    if kind == 'folder': assert (taken/'mine.txt').read_text() == 'mine'


@pytest.mark.parametrize('name, expected', [('../proj', "expected a plain folder name"), ('a/b', "expected a plain folder name"),
                                            ('/tmp/proj', "expected a plain folder name"), ('..', "expected a plain folder name"),
                                            ('.hidden', "does not start with '.' or '-'"), (' x', 'without spaces at either end'),
                                            ('tab\there', 'expected printable characters'), ('x' * 201, 'expected at most 200 bytes')])
def test_names_that_are_not_plain_folder_names_are_refused(tmp_path, name, expected):
    inside = tmp_path/'inside'; inside.mkdir()
    error = one_error_line(nntrain('new', name, cwd=inside))
    assert expected in error, error
    assert list(tmp_path.rglob('*')) == [inside]


def test_two_commands_at_once_make_one_whole_project(tmp_path):
    children = [subprocess.Popen([*COMMAND, 'new', 'proj'], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outcomes = sorted((child.wait(timeout=60), child.stderr.read()) for child in children)
    assert [status for status, _ in outcomes] == [0, 2], outcomes
    assert 'exists already' in outcomes[1][1] or 'was made by another process meanwhile' in outcomes[1][1], outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ['proj']
    assert sorted(p.name for p in (tmp_path/'proj').iterdir()) == sorted(PROJECT_FILES)


def test_an_interrupted_command_leaves_neither_the_project_nor_its_temporary_folder(tmp_path, monkeypatch):
    real = Path.write_text
    def interrupted(self, *args, **kwargs):
        if self.name == 'sessions.yaml': raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, 'write_text', interrupted)
    with pytest.raises(KeyboardInterrupt): new_project('proj', tmp_path)
    assert list(tmp_path.iterdir()) == []


KILLED_MID_WRITE = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import nntrain.cli as cli
    real = Path.write_text
    def slow(self, *args, **kwargs):
        written = real(self, *args, **kwargs)
        print('wrote', self.name, flush=True)
        time.sleep(60)
        return written
    Path.write_text = slow
    cli.new_project('proj', sys.argv[1])
''')


def test_a_command_killed_mid_write_leaves_no_project_and_the_next_one_clears_its_leftover(tmp_path):
    child = subprocess.Popen([sys.executable, '-c', KILLED_MID_WRITE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith('wrote '), 'the child did not start writing'
    child.send_signal(signal.SIGKILL); child.wait(timeout=30)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith('.proj.new-'), leftovers   # hidden, never at the project's name
    done = nntrain('new', 'proj', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['proj'], list(tmp_path.iterdir())


def test_a_leftover_of_a_live_process_is_left_alone(tmp_path):
    live = tmp_path/f'.proj.new-{os.getpid()}-abc'; live.mkdir()
    new_project('proj', tmp_path)
    assert live.is_dir()


# ---- references in a session YAML: any importable callable


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    "Run in `tmp_path`, as a command run there would; the modules it imports there are forgotten afterwards."
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', list(sys.path))
    for name in ('parts', 'broken', 'good'): monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ('parts', 'broken', 'good'): sys.modules.pop(name, None)


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, err.getvalue()


PARTS = textwrap.dedent('''
    import torch
    from torch import nn
    SIZE = 3
    class Net(nn.Module):
        def __init__(self, width: int = 8):
            super().__init__()
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 10))
        def forward(self, x): return self.layers(x)
    def sgd(params, lr, weight_decay=0.0): return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
''')


def test_a_class_of_an_installed_package_trains_from_any_folder(tmp_path):
    package = tmp_path/'site'/'mypkg'; package.mkdir(parents=True)
    (package/'__init__.py').write_text('')
    (package/'models.py').write_text(PARTS)
    work = tmp_path/'work'; work.mkdir()
    (work/'s.yaml').write_text('own:\n  model: mypkg.models:Net\n  model_args: {width: 12}\n  optimizer: mypkg.models:sgd\n'
                               '  metrics: [accuracy, precision]\n  bs: 512\n  num_iterations: 4\n')
    done = nntrain('fit', '--cfg', 's.yaml', '--session', 'own', cwd=work, env={'PYTHONPATH': str(tmp_path/'site')})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2].split() == ['experiment', 'iterations', 'loss', 'accuracy', 'precision', 'status']
    code = json.loads((work/'results'/'own'/'default'/'environment.json').read_text())['code']
    assert code['mypkg.models:Net']['file'] == str(package/'models.py')


@pytest.mark.parametrize('line, expected', [
    ("model: no_such_module:Net", "line 3: model: no module 'no_such_module' in the folder nntrain runs in"),
    ("model: parts:Nett", "line 3: model: module 'parts' ({folder}/parts.py) has no attribute 'Nett'; did you mean 'Net'?"),
    ("model: parts:SIZE", "line 3: model: parts:SIZE is 3, not a callable; expected a function or class that makes the model"),
    ("model: broken:Net", "line 3: model: importing 'broken' failed: ZeroDivisionError: division by zero"),
    ("optimizer: parts:Net", "optimizer: parts:Net takes no weight_decay argument"),
    ("dataset: parts:nothing", "line 3: dataset: module 'parts'"),
    ("loss: parts.SIZE", "line 3: loss: expected null (cross entropy) or module:name of a function that makes the loss, got 'parts.SIZE'"),
    ("metrics: [accuracy, f3]", "line 3: metrics: unknown metric name 'f3'"),
    ("metrics: parts:SIZE", "line 3: metrics: parts:SIZE is 3, not a callable"),
])
def test_a_reference_that_names_no_usable_callable_is_refused_before_anything_runs(in_folder, line, expected):
    (in_folder/'parts.py').write_text(PARTS)
    (in_folder/'broken.py').write_text('x = 1 / 0\n')
    (in_folder/'s.yaml').write_text(f'bad:\n  num_iterations: 4\n  {line}\n')
    status, err = run_main('fit', '--cfg', 's.yaml', '--session', 'bad')
    assert status == 2 and expected.format(folder=in_folder) in err and 'Traceback' not in err, err
    assert not (in_folder/'results').exists()


def test_what_a_reference_returns_is_checked_when_it_is_called(in_folder):
    (in_folder/'parts.py').write_text(PARTS + 'def not_a_model(): return 42\ndef lists(): return [1, 2]\ndef metrics(): return ["accuracy", "mse"]\n')
    (in_folder/'s.yaml').write_text('a:\n  model: parts:not_a_model\n  num_iterations: 4\nb:\n  dataset: parts:lists\n  num_iterations: 4\n'
                                    'c:\n  metrics: parts:metrics\n  num_iterations: 4\n')
    for session, expected in (('a', "model: parts:not_a_model() returned 42; expected a torch nn.Module"),
                              ('b', "dataset: parts:lists() returned a list; expected a DatasetDict"),
                              ('c', "metrics: 'mse' is for regression (real-valued targets), but the dataset has 10 classes")):
        status, err = run_main('fit', '--cfg', 's.yaml', '--session', session)
        assert status == 2 and expected in err and 'Traceback' not in err, err
    assert not (in_folder/'results'/'b'/'default'/'result.json').exists()


# ---- break-it fixes: a leftover claim, a full disk, references that cannot be read, modules that hide installed ones,
# and what optimizer, scheduler and loss references return


def test_a_command_killed_between_its_claim_and_its_rename_leaves_nothing_that_blocks_the_next(tmp_path):
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True, timeout=60)
    leftover = tmp_path/f'.proj.new-{gone.stdout.strip()}-abcd'; leftover.mkdir()
    for file in PROJECT_FILES: (leftover/file).write_text('whole')
    (tmp_path/'proj').mkdir()   # the claim, made just before the rename the kill stopped
    done = nntrain('new', 'proj', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['proj']
    assert sorted(p.name for p in (tmp_path/'proj').iterdir()) == sorted(PROJECT_FILES)


def test_a_full_disk_is_said_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    def full(self, *args, **kwargs): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(Path, 'write_text', full)
    monkeypatch.chdir(tmp_path)
    status, err = run_main('new', 'proj')
    assert (status, err) == (2, "nntrain: error: nntrain new: proj could not be written (No space left on device); nothing was written\n")
    assert list(tmp_path.iterdir()) == []


GOOD = textwrap.dedent('''
    import torch
    from torch import nn
    def model(hidden=16): return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    def ünïcode(**kw): return model()
    def opt_wrong(params, lr, weight_decay=0.0): return "sgd"
    def sched_wrong(opt, **kw): return 3
    def loss_wrong(): return 5
    def loss_wrongshape(): return lambda p, t: p.sum(1)
''')
UNREADABLE = ("is not a reference module:name: {why}; expected such as components:build_model, or a name in MODELS (cnn, mlp, resnet)")


@pytest.mark.parametrize('value, why', [
    ('good: model', 'it has spaces'), ('go od:model', 'it has spaces'),
    ('.good:model', "the module is relative (starts with '.'); nntrain imports modules by their full name"),
    ('..good:model', "the module is relative (starts with '.'); nntrain imports modules by their full name"),
    ('good:', 'the name is empty'), (':model', 'the module is empty'),
    ('good:model:extra', "it has 2 ':', where a reference has one, between the module and the name"),
    ('./good.py:model', "'./good.py' is a path, where the module's name goes (such as good for good.py, imported from the folder nntrain runs in)"),
    ('/abs/good.py:model', "'/abs/good.py' is a path, where the module's name goes (such as good for good.py, imported from the folder nntrain runs in)"),
])
def test_a_reference_that_cannot_be_read_says_why(in_folder, value, why):
    from nntrain.experiments import check_config
    (in_folder/'good.py').write_text(GOOD)
    assert check_config({'model': value, 'num_iterations': 2}) == [f"model: {value!r} " + UNREADABLE.format(why=why)]


def test_a_reference_of_python_names_in_any_script_is_read(in_folder):
    from nntrain.experiments import check_config, is_reference
    (in_folder/'good.py').write_text(GOOD)
    assert is_reference('good:ünïcode') and is_reference('gööd:model')
    assert check_config({'model': 'good:ünïcode', 'num_iterations': 2}) == []


@pytest.mark.parametrize('line, expected', [
    ('optimizer: good:opt_wrong', "line 3: optimizer: good:opt_wrong(params, lr=0.003, weight_decay=0.0) returned 'sgd'; "
                                  "expected a torch optimizer, with step() and zero_grad()"),
    ('scheduler: good:sched_wrong', "line 3: scheduler: good:sched_wrong(optimizer) returned 3; expected a learning-rate scheduler "
                                    "(torch.optim.lr_scheduler), with step()"),
    ('loss: good:loss_wrong', "line 3: loss: good:loss_wrong() returned 5; expected a function loss_fn(preds, targets)"),
])
def test_what_optimizer_scheduler_and_loss_references_make_is_checked_before_anything_is_written(in_folder, line, expected):
    (in_folder/'good.py').write_text(GOOD)
    (in_folder/'s.yaml').write_text(f's:\n  num_iterations: 2\n  {line}\n')
    status, err = run_main('fit', '--cfg', 's.yaml', '--session', 's')
    assert (status, err) == (2, f"nntrain: error: s.yaml:s has 1 problem(s):\n  {expected.removeprefix('line 3: ')}\n"), err
    assert not (in_folder/'results').exists()


def test_a_loss_that_is_not_one_number_is_refused_before_training_and_before_the_config_is_written(in_folder):
    (in_folder/'good.py').write_text(GOOD)
    (in_folder/'s.yaml').write_text('s:\n  num_iterations: 2\n  loss: good:loss_wrongshape\n')
    status, err = run_main('fit', '--cfg', 's.yaml', '--session', 's')
    assert (status, err) == (2, "nntrain: error: loss: the loss_fn that good:loss_wrongshape() made, given the model's outputs of shape "
                                "[2, 10] and targets of shape [2], returned a tensor of shape (2,); expected a single number (a tensor "
                                "of shape ()) to backpropagate: reduce it, e.g. with .mean()\n"), err
    assert list((in_folder/'results'/'s'/'default').iterdir()) == []


CONSOLE_SCRIPT = 'import sys\nfrom nntrain.cli import main\nsys.exit(main())\n'   # as the installed `nntrain`: its folder is not the project's


def test_a_module_of_the_project_that_hides_an_installed_one_is_refused_before_anything_is_written(tmp_path):
    import datasets
    (tmp_path/'bin').mkdir(); (tmp_path/'bin'/'nntrain_command.py').write_text(CONSOLE_SCRIPT)
    work = tmp_path/'work'; work.mkdir()
    (work/'datasets.py').write_text('def digits():\n    from nntrain.dataloaders import load_mnist\n    return load_mnist()\n')
    (work/'s.yaml').write_text('s:\n  dataset: datasets:digits\n  model: mlp\n  num_iterations: 2\n')
    done = subprocess.run([sys.executable, str(tmp_path/'bin'/'nntrain_command.py'), 'fit', '--cfg', 's.yaml', '--session', 's'],
                          cwd=work, capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert refused(done) and (
        f"line 2: dataset: datasets.py in the folder nntrain runs in ({work}) hides the installed module 'datasets' ({datasets.__file__}), "
        "which nntrain and your code import by that name; expected another name for datasets.py (and the references to it)") in done.stderr
    assert not (work/'results').exists()


def test_a_planted_module_that_hides_one_nntrain_imports_cannot_turn_a_typo_into_a_traceback(tmp_path):
    import optuna
    (tmp_path/'good.py').write_text(GOOD)
    (tmp_path/'optuna.py').write_text('x = 1\n')
    (tmp_path/'s.yaml').write_text('s:\n  model: good:nosuch\n  num_iterations: 2\n')
    done = subprocess.run([sys.executable, '-m', 'nntrain', 'fit', '--cfg', 's.yaml', '--session', 's'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr
    assert done.stderr == (f"nntrain: error: s.yaml:s has 1 problem(s):\n  line 2: model: optuna.py in the folder nntrain runs in ({tmp_path}) "
                           f"hides the installed module 'optuna' ({optuna.__file__}), which nntrain and your code import by that name; "
                           "expected another name for optuna.py (and the references to it)\n")
