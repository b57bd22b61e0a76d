"""Sessions and searches killed from outside at every point where a file is written, and run by two processes at once."""
import concurrent.futures, json, os, signal, subprocess, sys, textwrap, threading, time, random
import contextlib, io
from pathlib import Path

import pytest
import torch

from nntrain.checkpoints import checkpoints, load_checkpoint

# Runs are compared bit for bit, so every run here uses one thread: two threads may sum in another order.
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

SESSION = textwrap.dedent('''
    tiny:
      model: mlp
      model_args: {hidden: 16}
      lr: 0.003
      bs: 512
      num_epochs: 2
      checkpoint_every: 1
      scheduler: one_cycle
    trio:
      model: mlp
      model_args: {hidden: 16}
      lr_: [0.001, 0.003, 0.01]
      bs: 512
      num_epochs: 2
      checkpoint_every: 1
''')

# Write points: every fsync of a file (its data is complete, not yet renamed), every rename of an atomic write
# (before and after), and every CSV row (before and after). At its target point a run writes a marker file and
# pauses for ever, so that the test can SIGKILL it from outside at exactly that moment.
HOOKS = textwrap.dedent('''
    import os, stat, sys, time
    from pathlib import Path
    state = {'count': 0, 'target': 0, 'marker': None}
    def point(what):
        state['count'] += 1
        if state['count'] == state['target']:
            Path(state['marker']).write_text(what)
            time.sleep(600)
    real_replace, real_fsync = os.replace, os.fsync
    def replace(src, dst, *args, **kwargs):
        point(f'before renaming to {dst}'); real_replace(src, dst, *args, **kwargs); point(f'after renaming to {dst}')
    def fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode): point('before an fsync')
        real_fsync(fd)
    os.replace, os.fsync = replace, fsync
    import nntrain.logging
    real_write = nntrain.logging.CSVLoggerS._write
    def write(self, *args, **kwargs):
        point('before a CSV row'); real_write(self, *args, **kwargs); point('after a CSV row')
    nntrain.logging.CSVLoggerS._write = write
    from nntrain.sessions import run_session
''')

# One run of a session, stopping at write point argv[1] (0: never).
CHILD = HOOKS + textwrap.dedent('''
    state.update(target=int(sys.argv[1]), marker=sys.argv[2])
    run_session(sys.argv[3], sys.argv[4], sys.argv[5])
    print('POINTS', state['count'], flush=True)
''')

# Many runs, each forked from one process that has imported nntrain and made one run already (a run then starts in milliseconds):
# reads "target marker done cfg session results" lines, forks a run for each, and prints its pid. The run writes
# its count of write points and the statuses of its experiments to `done` when it finishes.
ZYGOTE = HOOKS + textwrap.dedent('''
    import contextlib, io, signal, traceback
    import tempfile
    with tempfile.TemporaryDirectory() as warm, contextlib.redirect_stdout(io.StringIO()):
        run_session(sys.argv[1], 'tiny', warm)   # imports what a run imports when it needs it (the reports' matplotlib...) once, for every fork
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # the kernel reaps the runs
    for line in sys.stdin:
        target, marker, done, cfg, session, results = line.rstrip('\\n').split('\\t')
        pid = os.fork()
        if pid == 0:
            state.update(count=0, target=int(target), marker=marker)
            try:
                with contextlib.redirect_stdout(io.StringIO()): rows = run_session(cfg, session, results)
                Path(done).write_text(f"{state['count']} {' '.join(r['status'] for r in rows)}"); code = 0
            except BaseException: Path(done).write_text('ERROR ' + traceback.format_exc()); code = 1
            os._exit(code)
        print(pid, flush=True)
''')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('crashes')
    (tmp/'sessions.yaml').write_text(SESSION)
    (tmp/'child.py').write_text(CHILD)
    (tmp/'zygote.py').write_text(ZYGOTE)
    return tmp


@pytest.fixture(scope='module')
def zygote(setup):
    process = subprocess.Popen([sys.executable, str(setup/'zygote.py'), str(setup/'sessions.yaml')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    yield process
    process.stdin.close()
    process.wait(timeout=30)


def _alive(pid) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    return True


_ZYGOTE_LOCK = threading.Lock()   # one request to the zygote at a time: its pids come back in the order asked

def _forked_run(zygote, tmp, point, results, session='tiny', timeout=240):
    "Fork a run that stops at write point `point` (0: never) and SIGKILL it there; ('killed', where) or ('finished', (points, statuses))."
    marker, done = results.parent/f'{results.name}.marker', results.parent/f'{results.name}.done'
    marker.unlink(missing_ok=True); done.unlink(missing_ok=True)
    with _ZYGOTE_LOCK:
        zygote.stdin.write('\t'.join(map(str, (point, marker, done, tmp/'sessions.yaml', session, results))) + '\n')
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            os.kill(pid, signal.SIGKILL)   # from outside, while it waits at the write point
            while _alive(pid): time.sleep(0.005)
            return 'killed', marker.read_text()
        if done.exists() and not _alive(pid):
            text = done.read_text()
            assert not text.startswith('ERROR'), text
            count, *statuses = text.split()
            return 'finished', (int(count), statuses)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f'the run neither reached write point {point} nor finished in {timeout} s')


def _rerun(cfg, session, results):
    from nntrain.sessions import run_session
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()): return run_session(cfg, session, results)
    finally: torch.set_num_threads(threads)


def _fingerprint(folder: Path) -> dict:
    "What must be identical between an interrupted and an uninterrupted run of one experiment."
    newest = checkpoints(folder/'checkpoints')[-1]
    return {'result': json.loads((folder/'result.json').read_text()), 'metrics.csv': (folder/'metrics.csv').read_bytes(),
            'weights': load_checkpoint(newest)['model'], 'checkpoint': newest.name,
            'report': json.loads((folder/'reports'/'classification_report.json').read_text()),
            'reports': sorted(p.name for p in (folder/'reports').iterdir())}


def _same(a: dict, b: dict, context: str):
    for key in ('result', 'metrics.csv', 'checkpoint', 'report', 'reports'): assert a[key] == b[key], (context, key, a[key], b[key])
    assert a['weights'].keys() == b['weights'].keys(), context
    for name in a['weights']: assert torch.equal(a['weights'][name], b['weights'][name]), (context, name)


def _leftovers(results: Path) -> list:
    return [p for p in results.rglob('*') if p.name.endswith('.tmp')]


@pytest.fixture(scope='module')
def reference(setup, zygote):
    status, (points, _) = _forked_run(zygote, setup, 0, setup/'reference')
    assert status == 'finished'
    return points, _fingerprint(setup/'reference'/'tiny'/'default'), (setup/'reference'/'tiny'/'summary.csv').read_text()


def test_killed_at_every_write_point_the_rerun_finishes_identically(setup, zygote, reference):
    points, expected, summary = reference
    assert points >= 30, points   # config, environment, checkpoints, CSV rows, every report file, result, summaries
    def kill_then_rerun(point):
        results = setup/f'killed-{point}'
        status, where = _forked_run(zygote, setup, point, results)
        assert status == 'killed', (point, where)
        status, (_, statuses) = _forked_run(zygote, setup, 0, results)   # the rerun, forked too: two points run at once
        assert status == 'finished' and statuses[0] in ('trained', 'resumed', 'skipped'), (point, where, statuses)
        _same(_fingerprint(results/'tiny'/'default'), expected, f'killed at point {point}: {where}')
        assert (results/'tiny'/'summary.csv').read_text() == summary.replace('trained', statuses[0]), (point, where)
        assert _leftovers(results) == [], (point, where, _leftovers(results))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for done in pool.map(kill_then_rerun, range(1, points + 1)): pass   # re-raises the first failure


def test_killed_at_random_moments_the_rerun_finishes_identically(setup, reference):
    _, expected, _ = reference
    rng = random.Random(1)
    for attempt in range(3):
        results = setup/f'random-{attempt}'
        child = subprocess.Popen([sys.executable, str(setup/'child.py'), '0', str(setup/'never'), str(setup/'sessions.yaml'),
                                  'tiny', str(results)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(2.0, 6.0))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        _rerun(setup/'sessions.yaml', 'tiny', results)
        _same(_fingerprint(results/'tiny'/'default'), expected, f'random kill {attempt}')
        assert _leftovers(results) == []


STATUSES = textwrap.dedent('''
    import json, sys
    from nntrain.sessions import run_session
    rows = run_session(sys.argv[1], sys.argv[2], sys.argv[3])
    print('STATUSES', json.dumps({r['experiment']: r['status'] for r in rows}), flush=True)
''')


def test_two_session_processes_train_each_experiment_once(setup):
    (setup/'statuses.py').write_text(STATUSES)
    results = setup/'together'
    args = [sys.executable, str(setup/'statuses.py'), str(setup/'sessions.yaml'), 'trio', str(results)]
    a, b = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), \
           subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = []
    for child in (a, b):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1].split(' ', 1)[1]))
    assert outs[0].keys() == outs[1].keys() and len(outs[0]) == 3
    for experiment in outs[0]:
        statuses = sorted((outs[0][experiment], outs[1][experiment]))
        assert statuses == ['skipped', 'trained'], (experiment, outs)   # trained by one process, found finished by the other
        folder = results/'trio'/experiment
        lines = (folder/'metrics.csv').read_text().splitlines()
        assert len(lines) == 3, lines   # the header and one row per epoch, never doubled
    assert _leftovers(results) == []


def test_a_process_killed_while_holding_an_experiment_is_taken_over(setup):
    results = setup/'takeover'
    marker = setup/'takeover-marker'
    marker.unlink(missing_ok=True)
    # the first process stops for ever at its fifth write point, inside the first experiment, holding its lock
    first = subprocess.Popen([sys.executable, str(setup/'child.py'), '5', str(marker), str(setup/'sessions.yaml'), 'trio',
                              str(results)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    second = subprocess.Popen([sys.executable, str(setup/'statuses.py'), str(setup/'sessions.yaml'), 'trio', str(results)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)                      # the second trains the other experiments and waits for the held one
    first.send_signal(signal.SIGKILL)  # the owner dies: its lock goes with it
    first.wait(timeout=30)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    statuses = json.loads(out.strip().splitlines()[-1].split(' ', 1)[1])
    assert sorted(statuses.values()) in (['resumed', 'trained', 'trained'], ['trained', 'trained', 'trained']), statuses
    for experiment in statuses:
        assert len((results/'trio'/experiment/'metrics.csv').read_text().splitlines()) == 3
    assert _leftovers(results) == []


SEARCH = textwrap.dedent('''
    find:
      model: mlp
      bs: 512
      num_iterations: 6
      valid_every: 3
      search:
        lr: {float: [1.0e-4, 1.0e-1], log: true}
        model_args.hidden: {int: [8, 64]}
''')

SEARCHER = textwrap.dedent('''
    import sys, time, optuna
    from pathlib import Path
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import nntrain.search as search
    cfg, results, trials, stall = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if 'elsewhere' in sys.argv:   # as if on another machine: only the heartbeat can tell that a trial's process died
        import socket; socket.gethostname = lambda: 'elsewhere'
    if stall >= 0:   # stop for ever inside trial number `stall`, after writing a marker
        real = search.ReportToTrialS.after_log
        def after_log(self, learn):
            if self.trial.number == stall and learn.log_entry['mode'] == 'eval':
                Path(sys.argv[5]).write_text('stalled'); time.sleep(600)
            real(self, learn)
        search.ReportToTrialS.after_log = after_log
    search.run_search(cfg, 'find', trials, results, sampler='random', heartbeat=1)
''')


def _study(results):
    import optuna
    return optuna.load_study(study_name='find', storage=f"sqlite:///{results/'find'/'search.db'}")


def test_two_search_processes_draw_different_parameters(setup):
    (setup/'search.yaml').write_text(SEARCH)
    (setup/'searcher.py').write_text(SEARCHER)
    results = setup/'search-together'
    args = [sys.executable, str(setup/'searcher.py'), str(setup/'search.yaml'), str(results), '6', '-1']
    children = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
    trials = _study(results).trials
    finished = [t for t in trials if t.state.name in ('COMPLETE', 'PRUNED')]
    assert 6 <= len(finished) <= 7, [t.state.name for t in trials]   # each process stops once the study holds 6
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn   # no parameter set tried twice


def _kill_during_trial_1(setup, results, marker):
    child = subprocess.Popen([sys.executable, str(setup/'searcher.py'), str(setup/'search.yaml'), str(results), '3', '1', str(marker)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert [t.state.name for t in _study(results).trials][1:] == ['RUNNING'], [t.state.name for t in _study(results).trials]


def _check_failed_and_retried(results):
    trials = _study(results).trials
    states = [t.state.name for t in trials]
    assert states[1] == 'FAIL' and 'RUNNING' not in states and states.count('COMPLETE') + states.count('PRUNED') == 3, states
    retried = [t for t in trials[2:] if t.params == trials[1].params]
    assert retried and retried[0].state.name in ('COMPLETE', 'PRUNED') and retried[0].user_attrs['retry_of'] == 1, \
        [(t.number, t.state.name, t.params) for t in trials]


@pytest.mark.parametrize('where', ['here', 'elsewhere'])
def test_a_killed_trial_is_marked_failed_and_retried(setup, where):
    "On this machine the dead process is seen at once; from another machine, once its heartbeat is two beats late."
    (setup/'search.yaml').write_text(SEARCH)
    (setup/'searcher.py').write_text(SEARCHER)
    results, marker = setup/f'search-killed-{where}', setup/f'search-marker-{where}'
    marker.unlink(missing_ok=True)
    _kill_during_trial_1(setup, results, marker)
    if where == 'elsewhere': time.sleep(3)   # past the grace period of two missed heartbeats
    again = subprocess.run([sys.executable, str(setup/'searcher.py'), str(setup/'search.yaml'), str(results), '3', '-1', where],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    _check_failed_and_retried(results)


def _interruptible():
    "In the child: Ctrl-C as a terminal sends it, even when this test runs in a background job (which starts with SIGINT ignored)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# A model whose third forward pass drops an object whose finalizer is running when Ctrl-C arrives: Python reports the
# KeyboardInterrupt raised there as unraisable and goes on (as it does when the Ctrl-C lands in one of SQLAlchemy's weakref callbacks).
SWALLOWER = textwrap.dedent('''
    import signal
    from torch import nn
    from nntrain.experiments import mlp
    class SwallowsCtrlC:
        def __del__(self): signal.raise_signal(signal.SIGINT)
    class Net(nn.Module):
        def __init__(self, hidden=8):
            super().__init__()
            self.body, self.calls = mlp(hidden), 0
        def forward(self, x):
            self.calls += 1
            if self.calls == 3: SwallowsCtrlC()   # made and dropped at once
            return self.body(x)
''')


@pytest.mark.parametrize('command', ['search', 'fit'])
def test_a_ctrl_c_that_a_finalizer_swallows_still_stops_the_command(setup, tmp_path, command):
    (tmp_path/'swallower.py').write_text(SWALLOWER)
    (tmp_path/'s.yaml').write_text(SEARCH.replace('model: mlp', 'model: swallower:Net').replace('num_iterations: 6', 'num_iterations: 3000')
                                   .replace('valid_every: 3', 'valid_every: 1000').replace('model_args.hidden: {int: [8, 64]}', 'model_args.hidden: {int: [8, 9]}')
                                   + 'plain:\n  model: swallower:Net\n  bs: 512\n  num_iterations: 3000\n  valid_every: 1000\n')
    args = (['search', '--cfg', 's.yaml', '--session', 'find', '--trials', '1', '--sampler', 'random'] if command == 'search'
            else ['fit', '--cfg', 's.yaml', '--session', 'plain'])
    child = subprocess.run([sys.executable, '-c', 'import sys; from nntrain.cli import main; sys.exit(main(sys.argv[1:]))', *args, '--results', 'out'],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=_interruptible, env=ENV)
    assert child.returncode == 130, child.stderr[-3000:]   # without the mark, the lost Ctrl-C let it train all 3000 iterations: 0
    assert 'Exception ignored' in child.stderr and 'KeyboardInterrupt' in child.stderr, child.stderr   # it was swallowed where it landed
    assert child.stderr.rstrip().splitlines()[-1].startswith('nntrain: interrupted'), child.stderr
    if command == 'search':
        trials = _study(tmp_path/'out').trials
        assert [t.state.name for t in trials] == ['FAIL', 'WAITING'], [t.state.name for t in trials]   # tried again by the next run
    else:
        assert not (tmp_path/'out'/'plain'/'result.json').exists()


def test_ctrl_c_in_a_search_prints_one_line_and_the_trial_is_tried_again(setup):
    (setup/'slow.yaml').write_text(SEARCH.replace('num_iterations: 6', 'num_iterations: 3000').replace('valid_every: 3', 'valid_every: 1000'))
    results = setup/'search-interrupted'
    command = [sys.executable, '-c', 'import sys; from nntrain.cli import main; sys.exit(main(sys.argv[1:]))', 'search', '--cfg',
               str(setup/'slow.yaml'), '--session', 'find', '--trials', '1', '--sampler', 'random', '--results', str(results)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=_interruptible)
    deadline = time.monotonic() + 120
    def started():
        try: return bool(_study(results).trials)
        except Exception: return False   # the study is still being created
    while not started():
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    time.sleep(1)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith('[I ')]   # Optuna's own progress lines
    assert len(lines) == 1 and lines[0].startswith('nntrain: interrupted; finished trials are kept in') and 'Traceback' not in err, err
    trials = _study(results).trials
    assert [t.state.name for t in trials] == ['FAIL', 'WAITING'], [t.state.name for t in trials]
    assert trials[1].system_attrs['fixed_params'] == trials[0].params and trials[1].user_attrs['retry_of'] == 0, trials[1]
