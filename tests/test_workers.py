"""Sessions and searches shared by many workers through Optuna's storages: every experiment trained exactly once (also
after a worker is SIGKILLed), exactly the trials asked for on a journal and on PostgreSQL, bad values refused."""
import contextlib, io, json, os, signal, subprocess, sys, textwrap, time, uuid
from pathlib import Path

import optuna
import pytest

from conftest import ROOT
from nntrain.cli import main
from nntrain.search import STORAGE_FORMS, open_storage

CLI = 'import sys; from nntrain.cli import main; sys.exit(main(sys.argv[1:]))'
SESSION = textwrap.dedent('''
    grid:
      model: mlp
      model_args: {hidden: 8}
      bs: 64
      num_iterations: 120
      valid_every: 60
      checkpoint_every: 10
      lr_: [0.001, 0.002, 0.003, 0.004]
''')
EXPERIMENTS = ['lr-0.001', 'lr-0.002', 'lr-0.003', 'lr-0.004']
SEARCH = textwrap.dedent('''
    {name}:
      model: mlp
      bs: 512
      num_iterations: 6
      valid_every: 3
      search:
        lr: {{float: [1.0e-4, 1.0e-1], log: true}}
        model_args.hidden: {{int: [8, 64]}}
''')
# Installed in every process of a test (PYTHONPATH): each training of an experiment appends "pid folder resumed?" to a
# file, so that the test counts the trainings itself instead of trusting what the workers say they did.
COUNTER = textwrap.dedent('''
    import os
    if os.environ.get('NNTRAIN_TEST_FITS'):
        import nntrain.sessions as sessions
        real = sessions.fit_iterations
        def counted(learn, *args, subs=(), resume=None, **kwargs):
            folder = next(s.folder for s in subs if type(s).__name__ == 'CheckpointS').parent
            with open(os.environ['NNTRAIN_TEST_FITS'], 'a') as f: f.write(f"{os.getpid()} {folder.name} {resume is not None}\\n")
            return real(learn, *args, subs=subs, resume=resume, **kwargs)
        sessions.fit_iterations = counted
''')


def run_main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def environment(tmp_path):
    (tmp_path/'hook').mkdir(exist_ok=True)
    (tmp_path/'hook'/'sitecustomize.py').write_text(COUNTER)
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(tmp_path/'hook'), str(ROOT)]), 'OMP_NUM_THREADS': '1',
            'NNTRAIN_TEST_FITS': str(tmp_path/'fits.txt')}


def fits(tmp_path) -> list[tuple[str, str, bool]]:
    path = tmp_path/'fits.txt'
    return [(pid, folder, resumed == 'True') for pid, folder, resumed in (l.split() for l in path.read_text().splitlines())] if path.exists() else []


def session_trials(storage, session='grid'):
    [summary] = [s for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(f'{session}:')]
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def results_of(folder: Path) -> dict:
    return {e: json.loads((folder/e/'result.json').read_text()) for e in EXPERIMENTS}


@pytest.fixture(scope='module')
def two_workers(tmp_path_factory):
    "A session of four experiments run by `nntrain fit --workers 2` on the default storage, and what it left."
    tmp_path = tmp_path_factory.mktemp('two')
    (tmp_path/'s.yaml').write_text(SESSION)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, '-c', CLI, 'fit', '--cfg', tmp_path/'s.yaml', '--session', 'grid', '--workers', '2',
                           '--results', tmp_path/'r'], capture_output=True, text=True, timeout=240, env=environment(tmp_path))
    return tmp_path, done, time.perf_counter() - start


def test_two_workers_train_every_experiment_exactly_once(two_workers):
    tmp_path, done, seconds = two_workers
    assert done.returncode == 0, done.stderr[-3000:]
    trained = fits(tmp_path)
    assert sorted(folder for _, folder, _ in trained) == EXPERIMENTS, trained   # each once, none resumed, none twice
    assert not any(resumed for _, _, resumed in trained)
    assert len({pid for pid, _, _ in trained}) == 2, trained   # both workers trained
    states = [(t.state.name, t.user_attrs.get('experiment')) for t in session_trials(f"sqlite:///{tmp_path/'r'/'grid'/'session.db'}")]
    assert sorted(states) == [('COMPLETE', e) for e in EXPERIMENTS], states
    assert all(r['iterations'] == 120 for r in results_of(tmp_path/'r'/'grid').values())
    summary = (tmp_path/'r'/'grid'/'summary.csv').read_text().splitlines()
    assert [line.split(',')[0] for line in summary] == ['experiment', *EXPERIMENTS], summary
    print(f'two workers, four experiments: {seconds:.1f} s')


def test_running_a_finished_session_again_trains_nothing(two_workers, tmp_path):
    folder, done, _ = two_workers
    assert done.returncode == 0
    before = len(fits(folder))
    again = subprocess.run([sys.executable, '-c', CLI, 'fit', '--cfg', folder/'s.yaml', '--session', 'grid', '--workers', '2',
                            '--results', folder/'r'], capture_output=True, text=True, timeout=120, env=environment(folder))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(fits(folder)) == before
    assert 'lr-0.004' in again.stdout


def test_a_killed_worker_s_experiment_is_finished_by_the_other_resuming(two_workers, tmp_path):
    "SIGKILL one worker half way through an experiment: the other takes its trial over and resumes it from its checkpoints."
    reference = results_of(two_workers[0]/'r'/'grid')
    (tmp_path/'s.yaml').write_text(SESSION.replace('num_iterations: 120', 'num_iterations: 400'))
    journal = tmp_path/'grid.log'
    command = subprocess.Popen([sys.executable, '-c', CLI, 'fit', '--cfg', tmp_path/'s.yaml', '--session', 'grid', '--workers', '2',
                                '--storage', f'journal:{journal}', '--results', tmp_path/'r'],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment(tmp_path))
    deadline, victim = time.monotonic() + 120, None
    from nntrain.checkpoints import checkpoints
    while victim is None:
        assert time.monotonic() < deadline and command.poll() is None, 'no experiment got a checkpoint'
        for pid, folder, _ in fits(tmp_path):
            if checkpoints(tmp_path/'r'/'grid'/folder/'checkpoints') and not (tmp_path/'r'/'grid'/folder/'result.json').exists():
                victim = pid, folder
                break
        time.sleep(0.02)
    os.kill(int(victim[0]), signal.SIGKILL)
    _, err = command.communicate(timeout=240)
    assert command.returncode == 0, err[-3000:]
    assert f'was killed by SIGKILL; the other workers carry on' in err, err
    trained = fits(tmp_path)
    killed = [(pid, resumed) for pid, folder, resumed in trained if folder == victim[1]]
    assert killed[0] == (victim[0], False) and len(killed) == 2 and killed[1][1] and killed[1][0] != victim[0], trained
    others = sorted(folder for _, folder, _ in trained if folder != victim[1])
    assert others == [e for e in EXPERIMENTS if e != victim[1]], trained   # each of the others once
    trials = session_trials(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))))
    complete = sorted(t.user_attrs['experiment'] for t in trials if t.state.name == 'COMPLETE')
    assert complete == EXPERIMENTS, [(t.number, t.state.name, t.user_attrs) for t in trials]
    [failed] = [t for t in trials if t.state.name == 'FAIL' and not t.user_attrs.get('surplus')]   # a surplus trial (a race lost for the last queued one) fails too
    assert failed.user_attrs['experiment'] == victim[1]
    result = json.loads((tmp_path/'r'/'grid'/victim[1]/'result.json').read_text())
    assert result['iterations'] == 400
    lines = (tmp_path/'r'/'grid'/victim[1]/'metrics.csv').read_text().splitlines()
    assert [line.split(',')[1] for line in lines[1:]] == ['60', '120', '180', '240', '300', '360', '400'], lines
    assert reference   # the fixture ran; the killed session trains longer, so its numbers are its own


def _search(tmp_path, storage, name):
    (tmp_path/'f.yaml').write_text(SEARCH.format(name=name))
    return subprocess.run([sys.executable, '-c', CLI, 'search', '--cfg', tmp_path/'f.yaml', '--session', name, '--trials', '5',
                           '--workers', '2', '--sampler', 'random', '--storage', storage, '--results', tmp_path/'r'],
                          capture_output=True, text=True, timeout=240, env=environment(tmp_path))


def _check_exactly(study, trials):
    states = [t.state.name for t in study.trials if not t.user_attrs.get('surplus')]
    assert sum(s in ('COMPLETE', 'PRUNED') for s in states) == trials and 'RUNNING' not in states, states
    assert len({t.user_attrs['process'] for t in study.trials}) == 2   # both workers ran trials
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(drawn)) == len(drawn), drawn


def test_a_search_with_two_workers_on_a_journal_holds_exactly_the_trials_asked_for(tmp_path):
    done = _search(tmp_path, f"journal:{tmp_path/'find.log'}", 'find')
    assert done.returncode == 0, done.stderr[-3000:]
    _check_exactly(optuna.load_study(study_name='find', storage=open_storage(f"journal:{tmp_path/'find.log'}")), 5)
    assert len((tmp_path/'r'/'find'/'trials.csv').read_text().splitlines()) == 6


def postgres_url():
    url = os.environ.get('NNTRAIN_POSTGRES_URL')
    if not url:
        if os.environ.get('NNTRAIN_POSTGRES_TEST') == 'required': pytest.fail('NNTRAIN_POSTGRES_TEST=required but NNTRAIN_POSTGRES_URL is not set')
        pytest.skip('NNTRAIN_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server and sets it)')
    return url


def test_a_search_with_two_workers_on_postgres_holds_exactly_the_trials_asked_for(tmp_path):
    url, name = postgres_url(), f'find_{uuid.uuid4().hex[:8]}'
    done = _search(tmp_path, url, name)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        _check_exactly(optuna.load_study(study_name=name, storage=url), 5)
    finally: optuna.delete_study(study_name=name, storage=url)


@pytest.mark.parametrize('storage, message', [
    ('results/find', f"storage: expected {STORAGE_FORMS}; got 'results/find'"),
    ('journal:', "storage 'journal:': expected the path of a journal file, got no path"),
    ('journal:/no/such/folder/x.log', "storage 'journal:/no/such/folder/x.log': the folder '/no/such/folder' does not exist; "
                                      "expected a journal file in an existing folder"),
    ('nosuch://host/db', f"storage 'nosuch://host/db': SQLAlchemy knows no database 'nosuch'; expected {STORAGE_FORMS}"),
    ('postgresql+psycopg://u:secret@127.0.0.1:1/db', "storage 'postgresql+psycopg://u:***@127.0.0.1:1/db': cannot connect ("),
])
@pytest.mark.parametrize('command', ['fit', 'search'])
def test_a_bad_storage_is_refused_before_any_work(tmp_path, storage, message, command):
    (tmp_path/'s.yaml').write_text(SESSION + SEARCH.format(name='find'))
    session = ['--session', 'grid'] if command == 'fit' else ['--session', 'find', '--trials', '2']
    status, out, err = run_main(command, '--cfg', tmp_path/'s.yaml', *session, '--workers', '2', '--storage', storage,
                                '--results', tmp_path/'r')
    assert status == 2 and err.startswith(f'nntrain: error: {message}') and err.count('\n') == 1, err
    assert 'secret' not in err and not (tmp_path/'r').exists()


@pytest.mark.parametrize('value, shown', [('0', '0'), ('-1', '-1'), ('two', "'two'"), ('1.5', "'1.5'")])
@pytest.mark.parametrize('command', ['fit', 'search'])
def test_workers_must_be_a_positive_integer(tmp_path, value, shown, command):
    (tmp_path/'s.yaml').write_text(SESSION + SEARCH.format(name='find'))
    session = ['--session', 'grid'] if command == 'fit' else ['--session', 'find', '--trials', '2']
    status, _, err = run_main(command, '--cfg', tmp_path/'s.yaml', *session, '--workers', value, '--results', tmp_path/'r')
    assert (status, err) == (2, f'nntrain: error: --workers: expected an integer > 0, got {shown}\n')
    assert not (tmp_path/'r').exists()


@pytest.mark.parametrize('option', [['--workers', '2'], ['--storage', 'x.log']])
def test_workers_and_storage_need_a_session(option):
    status, _, err = run_main('fit', *option)
    assert (status, err) == (2, f"nntrain: error: {option[0]}: only used with --cfg and --session\n")


@pytest.mark.parametrize('inherited', ['default', 'ignored'])
def test_ctrl_c_stops_every_worker_and_the_next_run_resumes(tmp_path, inherited):
    """Ctrl-C as a terminal sends it (to the whole process group): one line, no worker left running, the experiments queued again;
    also where the command was started with SIGINT ignored (a script's background job), which its workers do not inherit."""
    (tmp_path/'s.yaml').write_text(SESSION.replace('num_iterations: 120', 'num_iterations: 3000').replace('valid_every: 60', 'valid_every: 1000'))
    disposition = signal.SIG_IGN if inherited == 'ignored' else signal.SIG_DFL
    command = subprocess.Popen([sys.executable, '-c', CLI, 'fit', '--cfg', tmp_path/'s.yaml', '--session', 'grid', '--workers', '2',
                                '--results', tmp_path/'r'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=environment(tmp_path), start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    deadline = time.monotonic() + 120
    while len({pid for pid, _, _ in fits(tmp_path)}) < 2:
        assert time.monotonic() < deadline and command.poll() is None, fits(tmp_path)
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(command.pid, signal.SIGINT)
    _, err = command.communicate(timeout=90)
    assert command.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith('[I ')]   # Optuna's own progress lines
    assert len(lines) == 1 and lines[0].startswith('nntrain: interrupted;') and 'Traceback' not in err, err
    for pid, _, _ in fits(tmp_path):
        with pytest.raises(ProcessLookupError): os.kill(int(pid), 0)
    trials = session_trials(f"sqlite:///{tmp_path/'r'/'grid'/'session.db'}")
    assert 'RUNNING' not in [t.state.name for t in trials]
    interrupted = sorted(t.user_attrs['experiment'] for t in trials if t.state.name == 'FAIL' and not t.user_attrs.get('surplus'))
    assert len(interrupted) == 2 and sorted(t.user_attrs['experiment'] for t in trials if t.state.name == 'WAITING') == EXPERIMENTS, \
        [(t.number, t.state.name, t.user_attrs) for t in trials]
