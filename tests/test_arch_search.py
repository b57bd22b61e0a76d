"""Searching architectures: `search: model: {mlp: {...}, cnn: {...}}` draws an architecture, then only its own shape.
The space is checked before the first trial; pruning, the report, importances, resume and workers work with
parameters that only some trials have."""
import contextlib, csv, io, json, subprocess, sys, textwrap, warnings

import optuna
import pytest
import yaml

from nntrain.experiments import ConfigError, load_session
from nntrain.search import (_check_space, _direction, _same_search, importances, importances_by_choice, load_search,
                            run_search, search_report)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHAPES = {'mlp': ['model_args.hidden'], 'cnn': ['model_args.channels'], 'resnet': ['model_args.channels', 'model_args.blocks_per_stage']}

ARCHITECTURES = textwrap.dedent('''
    shapes:
      flatten: false
      bs: 256
      num_iterations: {iterations}
      valid_every: {every}
      search:
        lr: {{float: [3.0e-3, 3.0e-2], log: true}}
        model:
          mlp: {{model_args.hidden: {{int: [8, 32]}}}}
          cnn: {{model_args.channels: {{choice: [[1, 4, 4, 8, 8], [1, 4, 8, 8, 8]]}}}}
          resnet: {{model_args.channels: {{choice: [[4, 8], [4, 4]]}}, model_args.blocks_per_stage: {{int: [1, 2]}}}}
''')


def quiet(f, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()): return f(*args, **kwargs)


def write(tmp_path, iterations=10, every=5, name='s.yaml'):
    (tmp_path/name).write_text(ARCHITECTURES.format(iterations=iterations, every=every))
    return tmp_path/name


def own_parameters(params: dict) -> list:
    "The parameters a trial of the architecture it drew should have: lr, model and that architecture's shape."
    return sorted(['lr', 'model', *[f"model={params['model']}/{entry}" for entry in SHAPES[params['model']]]])


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
    "A random search of 6 trials over three architectures, and its report."
    tmp_path = tmp_path_factory.mktemp('arch')
    cfg = write(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        study = quiet(run_search, cfg, 'shapes', 6, tmp_path/'r', sampler='random', seed=3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out): summary = search_report(study, cfg, 'shapes', tmp_path/'r')
    return tmp_path, cfg, study, summary, out.getvalue(), caught


def test_each_trial_holds_its_architecture_and_only_that_architectures_shape(searched):
    _, _, study, _, _, _ = searched
    assert len({t.params['model'] for t in study.trials}) >= 2, [t.params for t in study.trials]
    for t in study.trials: assert sorted(t.params) == own_parameters(t.params), t.params


def test_lists_are_offered_to_optuna_as_text_without_its_warning(searched):
    _, _, study, _, _, caught = searched
    assert not [w for w in caught if 'categorical distribution' in str(w.message)], [str(w.message) for w in caught]
    cnn = [t for t in study.trials if t.params['model'] == 'cnn']
    for t in cnn: assert json.loads(t.params['model=cnn/model_args.channels']) in ([1, 4, 4, 8, 8], [1, 4, 8, 8, 8])


def test_the_report_has_every_trial_the_best_config_and_importances_by_architecture(searched):
    tmp_path, _, study, summary, printed, _ = searched
    folder = tmp_path/'r'/'shapes'
    rows = list(csv.DictReader((folder/'trials.csv').open()))
    assert len(rows) == 6
    for row, t in zip(rows, study.trials):   # an architecture's columns are empty in the other architectures' trials
        filled = sorted(k for k in ('lr', 'model', *[c for c in row if '/' in c]) if row[k] != '')
        assert filled == own_parameters(t.params), (row, t.params)
    best = yaml.safe_load((folder/'best.yaml').read_text())['shapes_best']
    assert best['model'] == study.best_params['model'] and best['lr'] == study.best_params['lr']
    for entry in SHAPES[best['model']]:
        stored = study.best_params[f"model={best['model']}/{entry}"]
        assert best['model_args'][entry.split('.')[1]] == (json.loads(stored) if isinstance(stored, str) else stored)
    assert set(summary['importances']) == {'lr', 'model'}   # the parameters every completed trial has
    assert json.loads((folder/'importance.json').read_text()) == summary['importances']
    by_choice = json.loads((folder/'importance_by_choice.json').read_text())
    assert set(by_choice) == {'model=mlp', 'model=cnn', 'model=resnet'} and by_choice == summary['importances_by_choice']
    for value, shares in by_choice.items():
        chose = [t for t in study.trials if t.state.name == 'COMPLETE' and f"model={t.params['model']}" == value]
        if len(chose) < 2: assert shares == {}, (value, shares)
        else: assert 'lr' in shares and 'model' not in shares and abs(sum(shares.values()) - 1) < 1e-6, (value, shares)
    assert (folder/'importance.png').read_bytes()[:4] == b'\x89PNG'
    assert 'importance with model=mlp' in printed and printed.startswith(f'best trial {study.best_trial.number}')


def test_the_best_config_runs_as_a_session(searched):
    tmp_path, _, _, _, _, _ = searched
    [(_, config)] = load_session(tmp_path/'r'/'shapes'/'best.yaml', 'shapes_best')
    assert config['model'] in SHAPES and not config['flatten']


def test_the_importances_leave_out_failed_and_pruned_trials():
    study = optuna.create_study(direction='maximize')
    for i, (model, value) in enumerate([('a', 0.5), ('a', 0.7), ('b', 0.9), ('b', None)]):
        params = {'model': model, f'model={model}/x': i, 'lr': 0.1 * (i + 1)}
        dists = {'model': optuna.distributions.CategoricalDistribution(['a', 'b']), f'model={model}/x': optuna.distributions.IntDistribution(0, 9),
                 'lr': optuna.distributions.FloatDistribution(0.01, 1)}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                                  state=optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.PRUNED))
    assert set(importances(study)) == {'model', 'lr'}
    found = importances_by_choice(study, {'model': {'a': {'x': {'int': [0, 9]}}, 'b': {'x': {'int': [0, 9]}}}})
    assert set(found['model=a']) == {'model=a/x', 'lr'} and found['model=b'] == {}   # b has one completed trial


def test_a_bad_space_is_refused_before_anything_runs_with_every_problem_named(tmp_path):
    (tmp_path/'s.yaml').write_text(textwrap.dedent('''
        bad:
          num_iterations: 10
          search:
            lr: {float: [1.0e-3, 1.0e-2]}
            model:
              mlp: {lr: 0.1, model_args.hiden: {int: [8, 4]}}
              cnn: {model_args.channels: {choice: [[1, 8, 16, 32, 32]]}}
              resnet: {model_args.block_per_stage: {int: [1, 2]}}
              transformer: {model_args.heads: {int: [2, 8]}}
            optimizer:
              adam: {model: cnn}
            bs: {small: {lr: 0.1}}
    '''))
    with pytest.raises(ConfigError) as e: run_search(tmp_path/'s.yaml', 'bad', 2, tmp_path/'r')
    message = str(e.value)
    for expected in ("search.model.mlp.lr: search.lr sets it for every trial already; expected it in one place",
                     "search.model.mlp.model_args.hiden: expected low < high, got [8, 4]",
                     "search.model.cnn: model: cnn(channels=[1, 8, 16, 32, 32]) cannot take a batch of mnist samples of shape [2, 784]",
                     "set flatten: false, for the session or under search.model.cnn",
                     "search.model.resnet: model_args: resnet takes no argument 'block_per_stage'; did you mean 'blocks_per_stage'?",
                     "search.model.transformer: model: unknown model 'transformer' (registered: cnn, mlp, resnet)",
                     "search.optimizer.adam.model: search.model sets it for every trial already",
                     "search.bs: maps values to their own ranges, which a setting whose values are names has"):
        assert expected in message, (expected, message)
    assert not (tmp_path/'r').exists()


def test_a_misspelt_range_kind_is_still_read_as_a_range():
    assert _check_space({'optimizer': {'pick': ['adam']}}) == ["search.optimizer: expected exactly one of float, int, choice, got {'pick': ['adam']}"]
    assert _check_space({'model': {'mlp': None, 'cnn': {}}}) == []
    assert _check_space({'model': {'mlp': {'model_args.hidden': {'int': [8, 64]}, 'flatten': True}}}) == []


def test_the_shape_of_a_chosen_architecture_is_checked_at_both_ends(tmp_path):
    (tmp_path/'s.yaml').write_text('s:\n  num_iterations: 4\n  search:\n    model:\n      mlp: {model_args.n_in: {int: [784, 785]}}\n      cnn:\n')
    with pytest.raises(ConfigError) as e: load_search(tmp_path/'s.yaml', 's')
    assert 'search.model.mlp.model_args.n_in=785: model: mlp(n_in=785) cannot take a batch of mnist samples' in str(e.value), str(e.value)
    assert 'search.model.cnn: model: cnn() cannot take a batch' in str(e.value), str(e.value)
    (tmp_path/'s.yaml').write_text('s:\n  num_iterations: 4\n  search:\n    model:\n      mlp: {model_args.hidden: {int: [0, 8]}}\n')
    with pytest.raises(ConfigError, match=r'search.model.mlp: model_args: mlp\(hidden=0\) failed: ValueError: mlp expected hidden to be an int >= 1'):
        load_search(tmp_path/'s.yaml', 's')


def test_pruning_still_stops_the_hopeless_architecture(tmp_path):
    (tmp_path/'s.yaml').write_text(textwrap.dedent('''
        prune:
          bs: 256
          num_iterations: 20
          valid_every: 5
          search:
            model:
              mlp: {lr: 1.0e-2, model_args.hidden: {choice: [32]}}
              cnn: {lr: 1.0e-7, flatten: false, model_args.channels: {choice: [[1, 4, 4, 8, 8]]}}
    '''))
    study = quiet(run_search, tmp_path/'s.yaml', 'prune', 6, tmp_path/'r', sampler='random', seed=0,
                  pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    states = {(t.params['model'], t.state.name) for t in study.trials}
    assert ('cnn', 'PRUNED') in states and ('mlp', 'PRUNED') not in states, [(t.params, t.state.name, t.intermediate_values) for t in study.trials]
    for t in study.trials:
        if t.state.name == 'PRUNED': assert max(t.intermediate_values) < 20   # stopped before its last validation


def test_a_search_whose_trials_were_all_pruned_reports_that_it_has_no_best(tmp_path):
    cfg = write(tmp_path, iterations=4, every=2)
    study = quiet(run_search, cfg, 'shapes', 2, tmp_path/'r', sampler='random', pruner=optuna.pruners.ThresholdPruner(lower=0.999))
    assert {t.state.name for t in study.trials} == {'PRUNED'}
    out = io.StringIO()
    with contextlib.redirect_stdout(out): summary = search_report(study, cfg, 'shapes', tmp_path/'r')
    assert out.getvalue().startswith('no trial completed (2 trial(s): pruned); no best config'), out.getvalue()
    assert summary['best_trial'] is None and not (tmp_path/'r'/'shapes'/'best.yaml').exists()
    assert (tmp_path/'r'/'shapes'/'trials.csv').is_file()


def test_a_search_resumes_with_the_same_trials_and_refuses_a_changed_space(tmp_path):
    cfg = write(tmp_path, iterations=4, every=4)
    first = quiet(run_search, cfg, 'shapes', 2, tmp_path/'r', sampler='random', seed=5)
    kept = [(t.number, t.params) for t in first.trials]
    more = quiet(run_search, cfg, 'shapes', 4, tmp_path/'r', sampler='random', seed=5)
    assert [(t.number, t.params) for t in more.trials][:2] == kept and len(more.trials) == 4
    cfg.write_text(cfg.read_text().replace('[8, 32]', '[8, 64]'))
    with pytest.raises(ConfigError, match=r"holds the trials of a search with other settings \(search.model: "):
        quiet(run_search, cfg, 'shapes', 5, tmp_path/'r', sampler='random', seed=5)


def test_a_study_stored_before_the_loss_and_metrics_settings_carries_on():
    study = optuna.create_study()
    base = {'lr': 0.01, 'metrics': ['accuracy'], 'loss': None}
    _same_search(study, base, {'lr': {'float': [0.1, 1.0]}}, 'accuracy', 'db')
    stored = {k: v for k, v in study.user_attrs['settings'].items() if k not in ('metrics', 'loss')}
    study.set_user_attr('settings', stored)   # as an older nntrain stored it
    _same_search(study, base, {'lr': {'float': [0.1, 1.0]}}, 'accuracy', 'db')   # no refusal
    with pytest.raises(ConfigError, match=r"metrics: \['accuracy'\] -> \['accuracy', 'f1'\]"):
        _same_search(study, {**base, 'metrics': ['accuracy', 'f1']}, {'lr': {'float': [0.1, 1.0]}}, 'accuracy', 'db')


def test_the_objective_may_be_any_metric_the_session_reports(tmp_path):
    (tmp_path/'s.yaml').write_text('s:\n  num_iterations: 4\n  bs: 512\n  metrics: [accuracy, f1]\n  objective: f1\n'
                                   '  search:\n    model:\n      mlp: {model_args.hidden: {int: [8, 16]}}\n')
    study = quiet(run_search, tmp_path/'s.yaml', 's', 1, tmp_path/'r', sampler='random')
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE and 0 <= study.trials[0].value <= 1
    (tmp_path/'s.yaml').write_text('s:\n  num_iterations: 4\n  objective: auroc\n  search:\n    lr: {float: [0.001, 0.01]}\n')
    with pytest.raises(ConfigError, match=r"objective: expected one of loss, accuracy \(what every trial reports\), got 'auroc'; add it to the "
                                          r"session's metrics to report it \(metrics: \['accuracy', 'auroc'\]\)"):
        load_search(tmp_path/'s.yaml', 's')
    assert (_direction('mse'), _direction('valid_loss'), _direction('f1')) == ('minimize', 'minimize', 'maximize')


def test_two_workers_share_a_search_over_architectures(tmp_path):
    cfg = write(tmp_path, iterations=4, every=4)
    command = [sys.executable, '-m', 'nntrain', 'search', '--cfg', str(cfg), '--session', 'shapes', '--trials', '4', '--sampler', 'random',
               '--workers', '2', '--storage', f"journal:{tmp_path/'study.log'}", '--results', str(tmp_path/'r')]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'best trial' in done.stdout and 'importance with model=' in done.stdout, done.stdout
    study = optuna.load_study(study_name='shapes', storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path/'study.log'))))
    finished = [t for t in study.trials if t.state.name in ('COMPLETE', 'PRUNED')]
    assert len(finished) == 4 and len({t.user_attrs['process'] for t in study.trials}) == 2
    for t in finished: assert sorted(t.params) == own_parameters(t.params)


# ---- break-it fixes: failing trials, options that must be booleans, duplicate choices, trials run to their end

PICKY = textwrap.dedent('''
    from torch import nn
    def picky(hidden=16):
        if 16 < hidden < 24: raise ValueError(f"picky: hidden={hidden} not supported")
        return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
''')


def test_a_trial_whose_model_raises_is_failed_with_its_reason_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path); monkeypatch.setattr(sys, 'path', list(sys.path)); monkeypatch.delitem(sys.modules, 'picky_parts', raising=False)
    (tmp_path/'picky_parts.py').write_text(PICKY)   # the ends of the range build; the check before the first trial tries only those
    (tmp_path/'p.yaml').write_text('p:\n  num_iterations: 1\n  bs: 64\n  search:\n    model_args.hidden: {int: [16, 24]}\n'
                                   '    model: {choice: [picky_parts:picky]}\n')
    study = quiet(run_search, 'p.yaml', 'p', 4, 'r', sampler='random', seed=0)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and len(study.trials) == 4, [(t.state, t.params) for t in study.trials]   # counted as finished, not retried
    err = capsys.readouterr().err
    for t in failed:
        hidden = t.params['model_args.hidden']
        assert t.user_attrs['error'] == f"ValueError: picky: hidden={hidden} not supported"
        assert (f"nntrain: trial {t.number} failed with {t.params}: ValueError: picky: hidden={hidden} not supported; it counts as "
                "finished and is not run again") in err, err
    quiet(search_report, study, 'p.yaml', 'p', 'r')
    rows = list(csv.DictReader((tmp_path/'r'/'p'/'trials.csv').open()))
    assert [r['error'] for r in rows if r['state'] == 'FAIL'] == [t.user_attrs['error'] for t in failed]
    again = quiet(run_search, 'p.yaml', 'p', 4, 'r', sampler='random', seed=0)   # the study is done: nothing runs again
    assert len(again.trials) == 4


def test_the_failed_trial_is_said_in_one_line_without_a_traceback(tmp_path):
    (tmp_path/'picky_parts.py').write_text(PICKY)
    (tmp_path/'p.yaml').write_text('p:\n  num_iterations: 1\n  bs: 64\n  search:\n    model_args.hidden: {int: [16, 24]}\n'
                                   '    model: {choice: [picky_parts:picky]}\n')
    done = subprocess.run([sys.executable, '-m', 'nntrain', 'search', '--cfg', 'p.yaml', '--session', 'p', '--trials', '3',
                           '--sampler', 'random', '--results', 'r'], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and 'Traceback' not in done.stderr, done.stderr
    failed = [line for line in done.stderr.splitlines() if ' failed' in line]
    assert failed and all(line.startswith('nntrain: trial ') and line.endswith('; it counts as finished and is not run again')
                          and 'ValueError: picky: hidden=' in line for line in failed), done.stderr


@pytest.mark.parametrize('log', ["'false'", "'yes'", '1', 'null'])
def test_log_must_be_a_boolean(log):
    space = yaml.safe_load(f"lr: {{float: [0.001, 0.1], log: {log}}}")
    assert _check_space(space) == [f"search.lr: log expects true or false, got {space['lr']['log']!r}"]


def test_a_choice_listed_twice_is_refused():
    assert _check_space({'optimizer': {'choice': ['adam', 'sgd', 'adam']}, 'model_args.channels': {'choice': [[1, 4], [1, 4]]}}) == [
        'search.optimizer: choice lists "adam" more than once; expected each value once',
        'search.model_args.channels: choice lists [1, 4] more than once; expected each value once']


class _PrunesAlways:
    def __init__(self): self.reported = []
    def report(self, value, step): self.reported.append((value, step))
    def should_prune(self): return True


@pytest.mark.parametrize('iteration, pruned', [(5, True), (10, False)])
def test_a_trial_that_ran_all_its_iterations_is_not_pruned(iteration, pruned):
    from types import SimpleNamespace
    from nntrain.search import ReportToTrialS
    trial = _PrunesAlways()
    learn = SimpleNamespace(log_entry={'mode': 'eval', 'accuracy': 0.5}, iteration=iteration, n_iterations=10)
    sub = ReportToTrialS(trial, 'accuracy')
    if pruned:
        with pytest.raises(optuna.TrialPruned, match=r'^accuracy 0\.5000 after 5 iterations$'): sub.after_log(learn)
    else: sub.after_log(learn)
    assert trial.reported == [(0.5, iteration)]


def test_a_search_of_a_session_without_search_says_to_use_fit(tmp_path):
    (tmp_path/'s.yaml').write_text('s:\n  num_iterations: 2\n')
    with pytest.raises(ConfigError) as info: load_search(tmp_path/'s.yaml', 's')
    assert str(info.value) == (f"{tmp_path/'s.yaml'}:s has no search setting (the ranges to search); expected one, such as search: "
                               "{lr: {float: [1.0e-4, 1.0e-2], log: true}}, or run the session's experiments with nntrain fit")


def test_importances_of_trials_of_equal_value_warn_nothing():
    study = optuna.create_study()
    for x in range(4):
        study.add_trial(optuna.trial.create_trial(params={'x': float(x)}, distributions={'x': optuna.distributions.FloatDistribution(0, 5)}, value=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert list(importances(study)) == ['x']


def test_no_more_workers_start_than_the_study_needs_trials(tmp_path, capsys):
    from nntrain.search import run_search_workers
    cfg = write(tmp_path, iterations=2, every=2)
    study = quiet(run_search_workers, cfg, 'shapes', 1, workers=1000, results=tmp_path/'r', sampler='random')
    assert len(study.trials) == 1
    assert capsys.readouterr().err.splitlines()[0] == "nntrain: 1000 workers asked for, but the study needs 1 more trial(s); starting 1"
