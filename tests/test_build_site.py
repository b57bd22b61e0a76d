"""tools/build_site.py on small planted notebooks: failures named, folders it must not replace, kills, page names.

Each test builds in a copy of the project's build tools (tools/, docs/, settings.ini) with an `nbs/` of its own,
so nothing is written into the repository.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import shutil

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not shutil.which('jupyter') and not Path(sys.executable).with_name('jupyter').exists(),
                                reason='the site build needs Jupyter (pip install -e ".[dev]")')


def notebook(*cells):
    "A notebook from strings: code cells, or markdown ones when they start with 'MD:'."
    def cell(i, src):
        if src.startswith('MD:'): return {'cell_type': 'markdown', 'id': f'c{i}', 'metadata': {}, 'source': src[3:]}
        return {'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'source': src, 'outputs': [], 'execution_count': None}
    return {'cells': [cell(i, s) for i, s in enumerate(cells)], 'metadata': {'kernelspec': {'name': 'python3',
            'display_name': 'Python 3', 'language': 'python'}}, 'nbformat': 4, 'nbformat_minor': 5}


@pytest.fixture
def project(tmp_path):
    "A copy of the build tools with a tiny book: an index page and one chapter."
    for d in ('tools', 'docs'): shutil.copytree(ROOT/d, tmp_path/d, ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT/'settings.ini', tmp_path)
    (tmp_path/'nbs').mkdir()
    plant(tmp_path, 'index', notebook('MD:# tiny\n\n> a tiny book', 'print("hello")'))
    plant(tmp_path, '01_one', notebook('MD:# One\n\n> the first chapter', 'x = 6 * 7\nx'))
    return tmp_path


def plant(project, name, nb): (project/'nbs'/f'{name}.ipynb').write_text(json.dumps(nb))


def build(project, *args, timeout=300):
    return subprocess.run([sys.executable, 'tools/build_site.py', 'build', *args], cwd=project, capture_output=True,
                          text=True, timeout=timeout)


def test_a_failing_cell_is_named_and_the_old_site_kept(project):
    r = build(project, '--out', 'site')
    assert r.returncode == 0, r.stdout + r.stderr
    old = (project/'site'/'one.html').read_bytes()
    assert b'42' in old
    plant(project, '02_bad', notebook('MD:# Bad\n\n> fails', 'y = 1', 'raise ValueError("planted failure")'))
    r = build(project, '--out', 'site')
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert '02_bad.ipynb: cell 2 (id c2) raised ValueError: planted failure' in out, out
    assert '\x1b[' not in out                                         # no terminal colours in the message
    assert (project/'site'/'one.html').read_bytes() == old            # the previous site is untouched
    assert not list(project.glob('.site-building-*'))                 # and nothing is left beside it


def test_a_cell_that_hangs_is_stopped_by_the_cell_timeout(project):
    plant(project, '02_hang', notebook('MD:# Hang\n\n> sleeps', 'import time; time.sleep(120)'))
    t0 = time.monotonic()
    r = build(project, '--out', 'site', '--cell-timeout', '3', '--only', '02')
    assert r.returncode != 0 and time.monotonic() - t0 < 90
    assert '02_hang.ipynb: cell 1 (id c1) did not finish within 3 s (--cell-timeout)' in r.stdout + r.stderr


def test_a_cell_that_kills_its_kernel_is_named(project):
    plant(project, '02_die', notebook('MD:# Die\n\n> exits', 'x = 1', 'import os; os._exit(3)'))
    r = build(project, '--out', 'site', '--only', '02')
    assert r.returncode != 0
    assert '02_die.ipynb: cell 2 (id c2) lost its kernel' in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize('kind', ['site-lookalike', 'file', 'link', 'repository'])
def test_folders_it_did_not_build_are_refused_before_any_work(project, tmp_path_factory, kind):
    target = tmp_path_factory.mktemp('other')/'pages'
    if kind == 'site-lookalike':   # a gh-pages checkout: .nojekyll, index.html, _static/ and a .git it must not lose
        for d in ('_static', '.git'): (target/d).mkdir(parents=True)
        for f in ('.nojekyll', 'index.html', 'PRECIOUS.txt', '.git/HEAD'): (target/f).write_text('mine')
    elif kind == 'file': target.write_text('mine')
    elif kind == 'link': target.symlink_to(project/'nbs')
    else: target = project
    before = sorted(str(p) for p in target.rglob('*')) if target.is_dir() and not target.is_symlink() else None
    t0 = time.monotonic()
    r = build(project, '--out', str(target))
    assert r.returncode != 0 and time.monotonic() - t0 < 20
    expected = {'site-lookalike': 'it is not a site built by this script (it has no .nntrain-site file)',
                'file': 'it is a file or a link', 'link': 'it is a file or a link',
                'repository': 'it holds the repository'}[kind]
    assert expected in r.stdout + r.stderr, r.stdout + r.stderr
    if before is not None: assert sorted(str(p) for p in target.rglob('*')) == before


def test_a_build_killed_from_outside_leaves_no_workers_and_the_next_cleans_up(project):
    assert build(project, '--out', 'site').returncode == 0
    old = (project/'site'/'index.html').read_bytes()
    plant(project, '02_slow', notebook('MD:# Slow\n\n> sleeps', 'import time; time.sleep(60)'))
    p = subprocess.Popen([sys.executable, 'tools/build_site.py', 'build', '--out', 'site', '--jobs', '1', '--only', '02'],
                         cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60                                  # wait until the notebook's kernel is running
    while time.monotonic() < deadline and 'ipykernel' not in _children(p.pid): time.sleep(0.5)
    assert 'ipykernel' in _children(p.pid), 'the kernel never started'
    p.send_signal(signal.SIGKILL); p.wait(timeout=30)
    time.sleep(3)
    left = subprocess.run(['pgrep', '-f', str(project)], capture_output=True, text=True).stdout.split()
    assert not left, f'processes of the killed build still run: {left}'
    assert list(project.glob('.site-building-*'))                    # its scratch folder is there...
    assert (project/'site'/'index.html').read_bytes() == old          # ...and the site untouched
    (project/'nbs'/'02_slow.ipynb').unlink()
    assert build(project, '--out', 'site').returncode == 0
    assert not list(project.glob('.site-building-*'))                # the next build cleared it


def test_a_site_moved_aside_by_a_killed_build_is_put_back(project):
    assert build(project, '--out', 'site').returncode == 0
    scratch = project/'.site-building-999999999'                      # a build that died between its two renames
    scratch.mkdir(); (project/'site').rename(scratch/'old')
    r = build(project, '--out', 'site', '--only', 'zz')               # refused (no such notebook), after the repair
    assert 'put back the site a killed build had moved aside' in r.stdout
    assert (project/'site'/'one.html').exists() and not scratch.exists()


def _children(pid):
    return subprocess.run(['ps', '-o', 'args=', '--ppid', str(pid)], capture_output=True, text=True).stdout + ''.join(
        subprocess.run(['ps', '-o', 'args=', '--ppid', c], capture_output=True, text=True).stdout
        for c in subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout.split())


def test_chapters_named_like_the_sites_own_pages_keep_their_notebooks_names(project):
    plant(project, '02_search', notebook('MD:# Searching\n\n> a chapter called search', 'print("chapter two")'))
    plant(project, '03_api', notebook('MD:# Api\n\n> a chapter called api', 'print("chapter three")'))
    r = build(project, '--out', 'site')
    assert r.returncode == 0, r.stdout + r.stderr
    site = project/'site'
    assert 'chapter two' in (site/'02_search.html').read_text() and 'chapter three' in (site/'03_api.html').read_text()
    assert 'API reference' in (site/'api.html').read_text() and 'chapter two' not in (site/'search.html').read_text()


def test_check_clean_names_chapters_with_outputs_and_broken_notebooks(project):
    nb = notebook('MD:# Two\n\n> with outputs', '1 + 1')
    nb['cells'][1].update(execution_count=1, outputs=[{'output_type': 'execute_result', 'execution_count': 1,
                                                       'data': {'text/plain': '2'}, 'metadata': {}}])
    plant(project, '02_outputs', nb)
    (project/'nbs'/'03_broken.ipynb').write_text('{')
    (project/'nbs'/'04_list.ipynb').write_text('[1, 2]')
    (project/'nbs'/'05_dir.ipynb').mkdir()
    (project/'nbs'/'sub').mkdir(); (project/'nbs'/'sub'/'06_nested.ipynb').write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, 'tools/build_site.py', 'check-clean'], cwd=project, capture_output=True, text=True)
    assert r.returncode == 1
    assert 'nbs/02_outputs.ipynb: 1 code cell(s) with outputs or an execution count' in r.stderr
    assert 'nbs/03_broken.ipynb: not a notebook (JSONDecodeError' in r.stderr
    assert 'nbs/04_list.ipynb: not a notebook (TypeError' in r.stderr and 'nbs/05_dir.ipynb: not a notebook' in r.stderr
    assert 'nbs/sub/06_nested.ipynb: 1 code cell(s)' in r.stderr      # notebooks in subfolders are checked too
    assert 'index.ipynb' not in r.stderr                              # index keeps its outputs: the README shows them


def test_check_clean_names_cells_that_import_and_do_other_work(project):
    # nbdev's page processing runs every importing cell again on its own: the rest of such a cell fails there
    plant(project, '02_mixed', notebook('MD:# Mixed\n\n> imports inside a test', 'x = 1',
                                        'def f():\n    import math\n    return math.pi\ny = f()',
                                        '#| export\nimport math\nz = math.e', 'import math\nimport os',
                                        '#| eval: false\nimport math\nmath.pi'))
    r = subprocess.run([sys.executable, 'tools/build_site.py', 'check-clean'], cwd=project, capture_output=True, text=True)
    assert r.returncode == 1 and 'a cell that imports holds only imports' in r.stderr
    assert 'nbs/02_mixed.ipynb: code cell 2 (id ' in r.stderr             # an import nested in a function counts too
    for fine in (1, 3, 4, 5): assert f'code cell {fine} ' not in r.stderr   # no import; exported; imports only; not run


@pytest.mark.parametrize('names,message', [
    (['54_index'], '54_index.ipynb'),                         # a chapter may not take the home page...
    (['50_tiny', '58_tiny'], '50_tiny.ipynb and 58_tiny.ipynb would both be the page tiny.html'),
    (['59_One'], '01_one.ipynb and 59_One.ipynb would both be the page One.html'),   # ...nor another's, case aside
    (['search'], "the site's own search.html and search.ipynb would both be the page search.html"),   # unnumbered
    (['Api'], "the site's own api.html and Api.ipynb would both be the page Api.html"),
    (['Index'], 'index.ipynb and Index.ipynb would both be the page Index.html'),
])
def test_two_notebooks_on_one_page_are_refused_before_anything_runs(project, names, message):
    for n in names: plant(project, n, notebook(f'MD:# {n}\n\n> planted', 'print(1)'))
    t0 = time.monotonic()
    r = build(project, '--out', 'site')
    out = r.stdout + r.stderr
    if names == ['54_index']:                                  # it keeps its notebook's name instead
        assert r.returncode == 0, out
        assert 'tiny' in (project/'site'/'index.html').read_text() and (project/'site'/'54_index.html').exists()
        return
    assert r.returncode != 0 and message in out and time.monotonic() - t0 < 20, out


def test_a_process_a_notebook_leaves_behind_does_not_hang_the_build(project):
    plant(project, '02_daemon', notebook('MD:# Daemon\n\n> forks', 'import os, time\nif os.fork() == 0:\n'
                                         '    os.setsid(); open("daemon.pid", "w").write(str(os.getpid()))\n'
                                         '    time.sleep(300); os._exit(0)', 'print("parent goes on")'))
    t0 = time.monotonic()
    r = build(project, '--out', 'site', '--only', '02', timeout=200)
    assert r.returncode == 0 and time.monotonic() - t0 < 150, r.stdout + r.stderr
    os.kill(int((project/'nbs'/'daemon.pid').read_text()), signal.SIGKILL)   # the build cannot police a setsid daemon


@pytest.mark.parametrize('value', ['0', '-1'])
def test_cell_timeout_must_be_positive(project, value):
    r = build(project, '--out', 'site', '--cell-timeout', value)
    assert r.returncode != 0 and f'--cell-timeout expected a number of seconds >= 1, got {value}' in r.stdout + r.stderr
