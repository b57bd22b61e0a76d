"""The package as pip builds and installs it: the wheel carries the data and the console script works."""
import subprocess, sys, zipfile
from conftest import ROOT, run_python


def test_wheel_installs_with_data_and_command(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel, = tmp_path.glob('nntrain-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ('train.parquet', 'test.parquet', 'SHA256SUMS', 'README.md'): assert f'nntrain/data/mnist/{name}' in names
    assert not any(n.startswith(('nbs/', 'tests/', 'tools/')) for n in names)
    target = tmp_path/'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import nntrain, nntrain.dataloaders as d; dd = d.load_mnist(); "
            "print(nntrain.__file__, len(dd['train']), len(dd['test']))")
    result = run_python(code, cwd=tmp_path, env={'PYTHONPATH': str(target)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(target)) and result.stdout.split()[1:] == ['8000', '2000']
    entry = (target/next(p.name for p in target.glob('nntrain-*.dist-info'))/'entry_points.txt').read_text()
    assert 'nntrain = nntrain.cli:main' in entry


def test_console_script_rejects_bad_values_in_one_line(tmp_path):
    for argv, message in [(['fit', '--epochs', '0'], '--epochs: expected an integer > 0, got 0'),
                          (['fit', '--lr', '-3'], '--lr: expected a number > 0, got -3'),
                          (['fit', '--device', 'quantum'], "unknown device 'quantum'")]:
        result = subprocess.run(['nntrain', *argv], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2, result
        assert result.stderr.startswith('nntrain: error: ') and message in result.stderr and result.stderr.count('\n') == 1, result.stderr
        assert 'Traceback' not in result.stderr


def test_console_script_trains(tmp_path):
    result = subprocess.run(['nntrain', 'fit', '--epochs', '1', '--bs', '256', '--device', 'cpu'],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith('final validation accuracy: ') and 0.8 < float(last.split()[-1]) <= 1, last
    assert 'epoch' in result.stdout and 'eval' in result.stdout
