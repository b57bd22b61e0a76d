"""A lean package: the command line answers without importing PyTorch or any heavy optional library, importing a
chapter imports only what it needs, and `nntrain --version` says which nntrain is installed."""
import configparser, json, os, subprocess, sys

import pytest
from conftest import ROOT

# Imported by the functions that use them, never by `import nntrain.<module>` (nntrain.search needs optuna at import).
HEAVY = ('datasets', 'pyarrow', 'PIL', 'matplotlib', 'optuna', 'tensorboard', 'tensorboardX', 'onnx', 'onnxruntime', 'torcheval')
MODULES = ('core', 'dataloaders', 'learner', 'activations', 'acceleration', 'checkpoints', 'trial', 'logging', 'reports', 'export',
           'benchmark', 'experiments', 'sessions', 'search', 'cli')
ALLOWED = {'search': {'optuna'}}   # search subclasses optuna's sampler; only `nntrain search` imports it
# Modules whose eager imports are still being made lazy (issue 11); strict, so each must leave this set once it is lean.
CLI = "import sys; from nntrain.cli import main; sys.exit(main())"


def run(args, cwd, timeout=120):
    "Run `python args` in a fresh process that imports this checkout's nntrain; return the CompletedProcess."
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg'}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def loaded_after(code, cwd, names):
    "The modules among `names` that are in `sys.modules` after `code` ran (SystemExit included)."
    probe = (f"import json, sys\ntry:\n    exec({code!r})\nexcept SystemExit: pass\n"
             f"print(json.dumps([n for n in {list(names)!r} if n in sys.modules]))")
    result = run(['-c', probe], cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('argv', [['--help'], ['fit', '--help'], ['bench', '--help'], ['--version'], ['fit', '--epochs', '0']])
def test_the_command_line_answers_without_torch_or_heavy_libraries(tmp_path, argv):
    code = f"from nntrain.cli import main; main({argv!r})"
    # bench --help lists the benchmark's workloads, so it imports the benchmark chapter (and torch), nothing heavier
    names = HEAVY if argv[0] == 'bench' else ('torch', *HEAVY)
    assert loaded_after(code, tmp_path, names) == []


def test_help_lists_the_commands_and_version(tmp_path):
    result = run(['-c', CLI, '--help'], tmp_path)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert result.stdout.startswith('usage: nntrain [-h] [--version] COMMAND ...\n')
    for line in ('    fit ', '    search ', '    export ', '    bench ', "  --version   print nntrain's version and exit"):
        assert line in result.stdout, line


def test_version_prints_the_installed_version(tmp_path):
    cfg = configparser.ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini', encoding='utf-8')
    version = cfg['DEFAULT']['version']
    result = run(['-c', CLI, '--version'], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f'nntrain {version}\n', '')
    package = run(['-c', 'import nntrain; print(nntrain.__version__)'], tmp_path)
    assert package.stdout == f'{version}\n', package.stderr


def test_a_bad_value_is_refused_before_anything_is_imported(tmp_path):
    result = run(['-c', CLI, 'fit', '--epochs', '0'], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, '', 'nntrain: error: --epochs: expected an integer > 0, got 0\n')


def test_bench_choices_are_read_from_the_benchmark_when_parsed(tmp_path):
    result = run(['-c', CLI, 'bench', '--runners', 'keras'], tmp_path)
    assert result.returncode == 2 and result.stdout == '', result
    assert result.stderr == ("nntrain: error: argument --runners: invalid choice: 'keras' (choose from 'loop', 'nntrain', "
                             "'nntrain-bare', 'lightning', 'ignite', 'fastai')\n")


@pytest.mark.parametrize('module', MODULES)
def test_importing_a_module_loads_no_heavy_library(tmp_path, module):
    loaded = set(loaded_after(f'import nntrain.{module}', tmp_path, HEAVY)) - ALLOWED.get(module, set())
    assert loaded == set(), f'import nntrain.{module} imported {sorted(loaded)}'
