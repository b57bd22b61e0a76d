"""Sessions, searches and the command line: paths kept inside the results folder, results that belong to their config,
options checked before any training, Ctrl-C, export of any checkpoint."""
import contextlib, io, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import yaml

from nntrain.cli import main
from nntrain.experiments import ConfigError
from nntrain.sessions import _cell, config_changes, confined, run_session

SMALL = 'model: mlp\n  model_args: {hidden: 8}\n  bs: 512\n  num_iterations: 4\n'


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def quiet(f, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()): return f(*args, **kwargs)


@pytest.mark.parametrize('name', ['../../x', '..', '.', '/abs/path', 'a/b', '.hidden', 'back\\slash', 'tab\there', ''])
def test_session_names_that_leave_the_results_folder_are_refused(tmp_path, name):
    (tmp_path/'s.yaml').write_text(yaml.safe_dump({name: {'num_iterations': 4, 'bs': 512}}))
    with pytest.raises(ConfigError, match='expected a plain folder name'): run_session(tmp_path/'s.yaml', name, tmp_path/'results')
    status, _, err = run_main('search', '--cfg', tmp_path/'s.yaml', '--session', name, '--trials', 1, '--results', tmp_path/'r2')
    assert status == 2 and err.startswith('nntrain: error: ') and 'Traceback' not in err
    assert not (tmp_path/'x').exists() and not Path('/abs/path').exists()
    assert list(tmp_path.iterdir()) == [tmp_path/'s.yaml'] or not any((tmp_path/'results').rglob('*.json'))


def test_unicode_and_spaces_are_plain_names(tmp_path):
    assert confined(tmp_path, 'zahlen ü', 'lr-0.1') == tmp_path/'zahlen ü'/'lr-0.1'


def test_a_planted_link_out_of_the_results_folder_is_refused(tmp_path):
    (tmp_path/'s.yaml').write_text(f'digits:\n  {SMALL}')
    outside = tmp_path/'outside'; outside.mkdir()
    (tmp_path/'results').mkdir()
    (tmp_path/'results'/'digits').symlink_to(outside)
    with pytest.raises(ConfigError, match='leads outside the results folder'): quiet(run_session, tmp_path/'s.yaml', 'digits', tmp_path/'results')
    assert list(outside.iterdir()) == []


def test_a_results_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path/'s.yaml').write_text(f'digits:\n  {SMALL}')
    (tmp_path/'results').write_text('not a folder')
    with pytest.raises(ConfigError, match="expected the results folder .* to be a folder, got a file"):
        run_session(tmp_path/'s.yaml', 'digits', tmp_path/'results')


def test_a_changed_config_is_not_reported_as_current(tmp_path):
    cfg = tmp_path/'s.yaml'
    cfg.write_text(f'digits:\n  {SMALL}')
    first = quiet(run_session, cfg, 'digits', tmp_path/'r')
    assert [r['status'] for r in first] == ['trained']
    cfg.write_text(f'digits:\n  {SMALL}  lr: 0.01\n')
    with pytest.raises(ConfigError) as e: quiet(run_session, cfg, 'digits', tmp_path/'r')
    message = str(e.value)
    assert 'default: lr: 0.003 -> 0.01' in message and '--rerun-changed' in message, message
    status, _, err = run_main('fit', '--cfg', cfg, '--session', 'digits', '--results', tmp_path/'r')
    assert status == 2 and 'lr: 0.003 -> 0.01' in err
    again = quiet(run_session, cfg, 'digits', tmp_path/'r', rerun_changed=True)
    assert [r['status'] for r in again] == ['trained']
    assert (tmp_path/'r'/'digits'/'default.replaced-1'/'result.json').is_file()   # the old run is kept, not deleted
    assert yaml.safe_load((tmp_path/'r'/'digits'/'default'/'config.yaml').read_text())['lr'] == 0.01
    assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r')] == ['skipped']


def test_config_changes_lists_each_key(tmp_path):
    (tmp_path/'config.yaml').write_text(yaml.safe_dump({'lr': 0.1, 'bs': 64, 'gone': 1}))
    assert config_changes({'lr': 0.1, 'bs': 32, 'new': True}, tmp_path) == ["bs: 64 -> 32", "new: '(unset)' -> True", "gone: 1 -> '(unset)'"]
    assert config_changes({'lr': 0.1}, tmp_path/'none') == []
    (tmp_path/'config.yaml').write_bytes(b'\xff\xfe')
    assert config_changes({'lr': 0.1}, tmp_path) == []   # unfinished: the resume writes it again
    (tmp_path/'result.json').write_text('{}')
    assert config_changes({'lr': 0.1}, tmp_path) == ['config.yaml cannot be read (UnicodeDecodeError)']


def test_summary_cells_show_small_values():
    assert [_cell(v) for v in (1e-5, 0.93152, 3e-3, 12, 'adam', 123.456)] == ['1e-05', '0.9315', '0.003', '12', 'adam', '123.5']


def test_a_result_json_that_is_not_a_result_is_trained_again(tmp_path):
    cfg = tmp_path/'s.yaml'
    cfg.write_text(f'digits:\n  {SMALL}')
    quiet(run_session, cfg, 'digits', tmp_path/'r')
    (tmp_path/'r'/'digits'/'default'/'result.json').write_text('{"half')
    assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r')] == ['resumed']


def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path):
    cfg = tmp_path/'s.yaml'
    cfg.write_text('digits:\n  model: mlp\n  model_args: {hidden: 8}\n  bs: 512\n  num_iterations: 8\n  checkpoint_every: 2\n')
    reference = quiet(run_session, cfg, 'digits', tmp_path/'ref')[0]
    folder = tmp_path/'r'/'digits'/'default'
    quiet(run_session, cfg, 'digits', tmp_path/'r')
    (folder/'result.json').unlink()
    from nntrain.checkpoints import checkpoints
    newest = checkpoints(folder/'checkpoints')[-1]
    data = bytearray(newest.read_bytes()); data[len(data) // 2] ^= 0xFF; newest.write_bytes(bytes(data))
    out = io.StringIO()
    with contextlib.redirect_stdout(out): again = run_session(cfg, 'digits', tmp_path/'r')[0]
    assert again['status'] == 'resumed' and again['accuracy'] == reference['accuracy'] and again['loss'] == reference['loss']
    assert f'kept it as {newest.name}.damaged' in out.getvalue()
    assert (folder/'checkpoints'/f'{newest.name}.damaged').is_file()


# ---- the command line


def test_save_to_a_missing_folder_is_refused_before_training(tmp_path):
    start = time.perf_counter()
    status, out, err = run_main('fit', '--epochs', 1, '--save', tmp_path/'nonexistent'/'d'/'x.pt')
    assert (status, err) == (2, f"nntrain: error: --save {tmp_path}/nonexistent/d/x.pt: the folder '{tmp_path}/nonexistent/d' does not exist; expected an existing folder\n")
    assert out == '' and time.perf_counter() - start < 5
    status, _, err = run_main('fit', '--save', tmp_path)
    assert status == 2 and 'is a folder; expected the path of a file to write' in err


def test_export_to_a_missing_folder_is_refused_before_exporting(tmp_path):
    status, out, err = run_main('export', '--checkpoint', tmp_path/'x.pt', '--out', tmp_path/'nodir'/'x.onnx')
    assert status == 2 and "the folder" in err and 'does not exist' in err and out == ''


@pytest.mark.parametrize('option', [['--epochs', '5'], ['--lr', '0.1'], ['--bs', '64'], ['--seed', '1'], ['--device', 'cpu'],
                                    ['--save', 'x.pt']])
def test_options_a_session_would_ignore_are_refused(tmp_path, option):
    (tmp_path/'s.yaml').write_text(f'digits:\n  {SMALL}')
    status, _, err = run_main('fit', '--cfg', tmp_path/'s.yaml', '--session', 'digits', *option, '--results', tmp_path/'r')
    assert status == 2 and f'{option[0]}: not used with --cfg' in err, err
    assert not (tmp_path/'r').exists()


def test_results_without_cfg_is_refused():
    status, _, err = run_main('fit', '--results', 'elsewhere')
    assert (status, err) == (2, 'nntrain: error: --results: only used with --cfg and --session\n')


def test_export_reads_a_session_checkpoint(tmp_path):
    (tmp_path/'s.yaml').write_text(f'digits:\n  {SMALL}  checkpoint_every: 2\n')
    assert run_main('fit', '--cfg', tmp_path/'s.yaml', '--session', 'digits', '--results', tmp_path/'r')[0] == 0
    folder = tmp_path/'r'/'digits'/'default'
    from nntrain.checkpoints import checkpoints
    for source in (folder, checkpoints(folder/'checkpoints')[-1]):
        status, out, err = run_main('export', '--checkpoint', source, '--out', tmp_path/'m.onnx')
        assert status == 0, err
    import torch
    from nntrain.export import onnx_predict
    from nntrain.cli import model_of_checkpoint
    from nntrain.checkpoints import load_checkpoint
    model, _ = model_of_checkpoint(checkpoints(folder/'checkpoints')[-1])
    model.load_state_dict(load_checkpoint(checkpoints(folder/'checkpoints')[-1])['model'])
    x = torch.rand(3, 784)
    with torch.no_grad(): assert torch.allclose(torch.from_numpy(onnx_predict(tmp_path/'m.onnx', x)), model(x), atol=1e-5)


def test_export_of_a_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    import torch
    from torch import nn
    from nntrain.checkpoints import save_checkpoint, FORMAT
    from nntrain.learner import Learner
    from nntrain.dataloaders import DataLoaders
    learn = Learner(nn.Sequential(nn.Linear(784, 5)), DataLoaders([], []))
    learn.save(tmp_path/'other.pt')
    status, _, err = run_main('export', '--checkpoint', tmp_path/'other.pt', '--out', tmp_path/'x.onnx')
    assert status == 2 and 'does not hold the weights' in err and err.rstrip().endswith(')') and 'for Sequential:)' not in err, err


CTRL_C = 'import sys; from nntrain.cli import main; sys.exit(main(sys.argv[1:]))'


def _interruptible():
    "In the child: Ctrl-C as a terminal sends it, even when this test runs in a background job (which starts with SIGINT ignored)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_a_session_prints_one_line_and_how_to_resume(tmp_path):
    (tmp_path/'s.yaml').write_text('digits:\n  model: mlp\n  bs: 64\n  num_epochs: 20\n  checkpoint_every: 1\n')
    child = subprocess.Popen([sys.executable, '-c', CTRL_C, 'fit', '--cfg', str(tmp_path/'s.yaml'), '--session', 'digits',
                              '--results', str(tmp_path/'r')], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_interruptible)
    deadline = time.monotonic() + 120
    from nntrain.checkpoints import checkpoints
    while not checkpoints(tmp_path/'r'/'digits'/'default'/'checkpoints'):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith(f"nntrain: interrupted; {tmp_path}/r/digits keeps 0 finished experiment(s) and 1 with checkpoints"), lines
    assert lines[0].endswith(f"carry on with: nntrain fit --cfg {tmp_path}/s.yaml --session digits --results {tmp_path}/r"), lines
    assert list((tmp_path/'r').rglob('*.tmp')) == []


def test_search_objective_is_checked_before_the_first_trial(tmp_path):
    (tmp_path/'s.yaml').write_text('find:\n  num_iterations: 4\n  objective: f1\n  search:\n    lr: {float: [0.001, 0.1]}\n')
    status, _, err = run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'find', '--trials', 1, '--results', tmp_path/'r')
    assert status == 2 and "objective: expected one of loss, accuracy (what every trial reports), got 'f1'" in err, err
    assert not (tmp_path/'r').exists()


def test_every_search_choice_is_checked_before_the_first_trial(tmp_path):
    (tmp_path/'s.yaml').write_text('find:\n  num_iterations: 4\n  search:\n    optimizer: {choice: [adam, sgd, nadam]}\n'
                                   '    scheduler: {choice: [null, one_cycle, cosin]}\n')
    status, _, err = run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'find', '--trials', 1, '--results', tmp_path/'r')
    assert status == 2 and "search.optimizer='nadam'" in err and "unknown optimizer 'nadam'" in err, err
    assert "search.scheduler='cosin': scheduler: unknown scheduler 'cosin'; did you mean 'cosine'?" in err, err
    assert not (tmp_path/'r').exists()


def test_results_is_ignored_by_git():
    from conftest import ROOT
    assert 'results/' in (ROOT/'.gitignore').read_text().split()


@pytest.mark.parametrize('where', ['.locks', 'default/checkpoints', 'default/console.log', 'default/metrics.csv',
                                   'default/reports', 'default/tensorboard'])
def test_a_link_planted_inside_the_results_folder_is_refused_and_nothing_is_written_outside(tmp_path, where):
    (tmp_path/'s.yaml').write_text(f'one:\n  {SMALL}  checkpoint_every: 2\n')
    outside = tmp_path/'outside'; outside.mkdir()
    target = outside/'target'
    if where.endswith(('.log', '.csv')): target.write_text('ORIGINAL')
    else: target.mkdir()
    link = tmp_path/'r'/'one'/where
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    status, _, err = run_main('fit', '--cfg', tmp_path/'s.yaml', '--session', 'one', '--results', tmp_path/'r')
    assert status == 2 and f'{link} is a symbolic link; expected only real files and folders' in err, err
    assert (target.read_text() == 'ORIGINAL') if target.is_file() else list(target.iterdir()) == []


def test_save_with_a_trailing_slash_names_a_folder(tmp_path):
    status, out, err = run_main('fit', '--save', f'{tmp_path}/nodir/')
    assert status == 2 and 'is a folder' in err and out == '', err


def test_export_of_a_session_checkpoint_without_its_config_says_what_it_assumed(tmp_path):
    (tmp_path/'s.yaml').write_text(f'digits:\n  {SMALL}  checkpoint_every: 2\n')
    assert run_main('fit', '--cfg', tmp_path/'s.yaml', '--session', 'digits', '--results', tmp_path/'r')[0] == 0
    from nntrain.checkpoints import checkpoints
    import shutil
    shutil.copy(checkpoints(tmp_path/'r'/'digits'/'default'/'checkpoints')[-1], tmp_path/'lone.pt')
    status, _, err = run_main('export', '--checkpoint', tmp_path/'lone.pt', '--out', tmp_path/'x.onnx')
    assert status == 2 and "no config.yaml beside it or above it, so it was taken for nntrain fit's model" in err, err


def test_a_search_with_many_problems_lists_them_all_in_one_run(tmp_path):
    (tmp_path/'s.yaml').write_text(textwrap.dedent('''
        srch:
          bs: 512
          num_iterations: 6
          objective: acuracy
          search:
            lr: {float: [1.0e-4, -1]}
            model_args.hiden: {int: [1, 8]}
            optimizer: {choice: [adam, sgdd]}
            bs: {choice: []}
            seed: {float: [1, 2], int: [1,2]}
            device: {choice: [cpu, cuda]}
            weight_decay: {float: [0, .inf]}
    '''))
    status, _, err = run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'srch', '--trials', 1, '--results', tmp_path/'r')
    assert status == 2, err
    for expected in ('search.lr: expected low < high', 'search.bs: choice expects a non-empty list', 'search.seed: expected exactly one of',
                     "objective: expected one of loss, accuracy", "model_args: mlp takes no argument 'hiden'",
                     "search.optimizer='sgdd'", "search.weight_decay=inf"):
        assert expected in err, (expected, err)
    if not __import__('torch').cuda.is_available(): assert "search.device='cuda'" in err, err
    assert not (tmp_path/'r').exists()


def test_a_search_whose_settings_changed_is_refused(tmp_path):
    search = 'find:\n  bs: 512\n  num_iterations: {n}\n  search:\n    lr: {{float: [0.001, 0.1]}}\n'
    (tmp_path/'s.yaml').write_text(search.format(n=4))
    assert run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'find', '--trials', 1, '--sampler', 'random', '--results', tmp_path/'r')[0] == 0
    (tmp_path/'s.yaml').write_text(search.format(n=6))
    status, _, err = run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'find', '--trials', 2, '--sampler', 'random', '--results', tmp_path/'r')
    assert status == 2 and 'holds the trials of a search with other settings (num_iterations: 4 -> 6)' in err, err
    import optuna
    assert len(optuna.load_study(study_name='find', storage=f"sqlite:///{tmp_path/'r'/'find'/'search.db'}").trials) == 1
    (tmp_path/'s.yaml').write_text(search.format(n=4))   # back to the settings of its trials: it carries on
    assert run_main('search', '--cfg', tmp_path/'s.yaml', '--session', 'find', '--trials', 2, '--sampler', 'random', '--results', tmp_path/'r')[0] == 0


def test_a_finished_experiment_without_its_config_is_not_reported_as_current(tmp_path):
    cfg = tmp_path/'s.yaml'
    cfg.write_text(f'digits:\n  {SMALL}')
    quiet(run_session, cfg, 'digits', tmp_path/'r')
    (tmp_path/'r'/'digits'/'default'/'config.yaml').unlink()
    with pytest.raises(ConfigError, match='default: config.yaml is missing, so the finished result cannot be matched to a config'):
        quiet(run_session, cfg, 'digits', tmp_path/'r')
    assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r', rerun_changed=True)] == ['trained']


def test_resuming_rewrites_a_missing_config_and_a_broken_environment(tmp_path):
    cfg = tmp_path/'s.yaml'
    cfg.write_text(f'digits:\n  {SMALL}  checkpoint_every: 2\n')
    quiet(run_session, cfg, 'digits', tmp_path/'r')
    folder = tmp_path/'r'/'digits'/'default'
    for name in ('result.json', 'config.yaml'): (folder/name).unlink()
    (folder/'environment.json').write_text('{garbage')
    assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r')] == ['resumed']
    assert yaml.safe_load((folder/'config.yaml').read_text())['num_iterations'] == 4
    assert json.loads((folder/'environment.json').read_text())['seed'] == 0


def _interrupted(tmp_path, name):
    "A finished experiment made resumable again (its result removed), and the bytes of its uninterrupted metrics.csv."
    cfg = tmp_path/'s.yaml'
    cfg.write_text(f'digits:\n  {SMALL}  checkpoint_every: 2\n  valid_every: 2\n')
    quiet(run_session, cfg, 'digits', tmp_path/name)
    folder = tmp_path/name/'digits'/'default'
    (folder/'result.json').unlink()
    return cfg, folder, (folder/'metrics.csv').read_bytes()


@pytest.mark.parametrize('damage', ['a folder', 'random bytes', 'emptied'])
def test_a_metrics_csv_damaged_beyond_reading_is_put_back_on_resume(tmp_path, damage):
    cfg, folder, expected = _interrupted(tmp_path, 'r')
    log = folder/'metrics.csv'
    log.unlink()
    if damage == 'a folder': log.mkdir()
    else: log.write_bytes(os.urandom(300) if damage == 'random bytes' else b'')
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r')] == ['resumed']
    assert log.read_bytes() == expected
    assert (folder/'metrics.csv.damaged-1').exists()   # kept, not deleted


def test_a_pipe_inside_the_results_folder_is_refused_not_read(tmp_path):
    cfg, folder, _ = _interrupted(tmp_path, 'r')
    (folder/'metrics.csv').unlink()
    os.mkfifo(folder/'metrics.csv')
    with pytest.raises(ConfigError, match='is not a regular file or folder'): quiet(run_session, cfg, 'digits', tmp_path/'r')


def test_a_moved_results_folder_resumes_with_its_own_log(tmp_path):
    import shutil
    cfg, folder, expected = _interrupted(tmp_path, 'r')
    shutil.copytree(tmp_path/'r', tmp_path/'moved', symlinks=True)
    moved = tmp_path/'moved'/'digits'/'default'/'metrics.csv'
    moved.unlink()
    with pytest.warns(UserWarning, match='changed after the checkpoint was written'):
        assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'moved')] == ['resumed']
    assert moved.read_bytes() == expected


def test_an_interrupted_experiment_with_an_emptied_config_gets_it_written_again(tmp_path):
    cfg, folder, _ = _interrupted(tmp_path, 'r')
    (folder/'config.yaml').write_text('')
    assert [r['status'] for r in quiet(run_session, cfg, 'digits', tmp_path/'r')] == ['resumed']
    assert yaml.safe_load((folder/'config.yaml').read_text())['num_iterations'] == 4
