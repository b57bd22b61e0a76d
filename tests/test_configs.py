"""Session configs are checked completely before anything trains: the YAML reader, the grid, every value, the ids."""
import json, math, textwrap, time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import ROOT, run_python
from nntrain.dataloaders import DataLoaders
from nntrain.experiments import (MODELS, OPTIMIZERS, ConfigError, IterationLoader, check_config, check_session, device_problem,
                                 expand_grid, fit_iterations, load_session, read_yaml)
from nntrain.learner import Learner


def error_of(f, *args, **kwargs) -> str:
    "The message of the ConfigError `f(*args, **kwargs)` raises."
    with pytest.raises(ConfigError) as info: f(*args, **kwargs)
    return str(info.value)

def problems(session: dict, **kwargs) -> list[str]:
    "The problem lines of the ConfigError `check_session(session)` raises."
    return error_of(check_session, session, **kwargs).split('\n')[1:]

def one_problem(session: dict) -> str:
    found = problems(session)
    assert len(found) == 1, found
    return found[0].strip()

def write(tmp_path, text, name='sessions.yaml'):
    path = tmp_path/name
    if isinstance(text, bytes): path.write_bytes(text)
    else: path.write_text(text, encoding='utf-8')
    return path


# 1. YAML 1.2 floats

@pytest.mark.parametrize('text, value', [('1e-3', 0.001), ('1E5', 100000.0), ('-2e+4', -20000.0), ('.inf', math.inf),
                                         ('-.inf', -math.inf), ('+1e3', 1000.0), ('1.5', 1.5), ('1.', 1.0), ('.5', 0.5),
                                         ('3', 3), ('1_000', 1000), ('1e', '1e'), ('"1e-3"', '1e-3'), ('.', '.'), ('e5', 'e5')])
def test_floats_follow_yaml_1_2(tmp_path, text, value):
    got = read_yaml(write(tmp_path, f'x: {text}'))['x']
    assert got == value and type(got) is type(value)

def test_nan_is_a_float(tmp_path):
    assert math.isnan(read_yaml(write(tmp_path, 'x: .nan'))['x'])

def test_lr_written_with_an_exponent_is_a_learning_rate(tmp_path):
    path = write(tmp_path, 'quick:\n  lr: 1e-3\n  weight_decay: 1E-5\n  num_epochs: 1\n')
    [(_, config)] = load_session(path, 'quick')
    assert (config['lr'], config['weight_decay']) == (0.001, 1e-5)

def test_search_style_ranges_still_read(tmp_path):
    assert read_yaml(write(tmp_path, 's: {lr: {float: [1.0e-4, 3e-2], log: true}}')) == {'s': {'lr': {'float': [1e-4, 0.03], 'log': True}}}

def test_merge_keys_still_work(tmp_path):
    path = write(tmp_path, 'base: &base {model: mlp, num_epochs: 1}\nquick:\n  <<: *base\n  lr: 0.01\n')
    assert read_yaml(path)['quick'] == {'model': 'mlp', 'num_epochs': 1, 'lr': 0.01}


# 2. keys, encodings, empty files, nesting

@pytest.mark.parametrize('text, message', [
    ('1: x', "line 1: the key 1 is a number; expected text (keys are names; write '1' in quotes to mean the text)"),
    ('null: x', "line 1: the key null is null; expected text (keys are names; write 'null' in quotes to mean the text)"),
    ('~: x', "line 1: the key ~ is null; expected text (keys are names; write '~' in quotes to mean the text)"),
    ('true: x', "line 1: the key true is a boolean; expected text (keys are names; write 'true' in quotes to mean the text)"),
    ('1.5: x', "line 1: the key 1.5 is a number; expected text (keys are names; write '1.5' in quotes to mean the text)"),
    ('? [a, b]\n: x', "line 1: the key is a list; expected text (keys are names)"),
    ('? {a: b}\n: x', "line 1: the key is a mapping; expected text (keys are names)"),
    ('quick:\n  model_args: {1: 2}', "line 2: the key 1 is a number; expected text (keys are names; write '1' in quotes to mean the text)"),
    ('quick:\n  lr: 0.1\n  lr: 0.2', "line 3: the key 'lr' is given twice in one mapping (first on line 2); expected each once"),
])
def test_keys_must_be_text_and_given_once(tmp_path, text, message):
    path = write(tmp_path, text)
    assert error_of(read_yaml, path) == f"{path} has 1 problem(s):\n  {message}"
    assert error_of(load_session, path, 'quick') == f"{path} has 1 problem(s):\n  {message}"

def test_every_key_problem_at_once(tmp_path):
    path = write(tmp_path, 'quick:\n  1: a\n  lr: 0.1\n  null: b\n  lr: 0.2\n')
    assert error_of(read_yaml, path).split('\n') == [
        f"{path} has 3 problem(s):",
        "  line 2: the key 1 is a number; expected text (keys are names; write '1' in quotes to mean the text)",
        "  line 4: the key null is null; expected text (keys are names; write 'null' in quotes to mean the text)",
        "  line 5: the key 'lr' is given twice in one mapping (first on line 3); expected each once"]

def test_quoted_number_keys_are_text(tmp_path):
    assert read_yaml(write(tmp_path, "'1': x")) == {'1': 'x'}

@pytest.mark.parametrize('content, message', [
    (b'\x89PNG\r\n\x1a\n\x00\x00', "is not UTF-8 text (byte 0x89 at offset 0); expected a YAML file"),
    ('quick:\n  model: café\n'.encode('latin-1'), "is not UTF-8 text (byte 0xe9 at offset 19); expected a YAML file"),
    (b'quick: \x00\x01\x02', "is a binary file (it holds NUL bytes); expected a YAML file"),
    (b'', "is empty; expected a YAML mapping of settings"),
    (b'  \n\n', "is empty; expected a YAML mapping of settings"),
    (b'# only a comment\n', "is empty; expected a YAML mapping of settings"),
])
def test_unreadable_or_empty_files(tmp_path, content, message):
    path = write(tmp_path, content)
    assert error_of(load_session, path, 'quick') == f"{path} {message}"

def test_utf8_with_a_byte_order_mark_reads(tmp_path):
    assert read_yaml(write(tmp_path, '\ufeffquick: {model: mlp}')) == {'quick': {'model': 'mlp'}}

def test_a_folder_is_not_a_config(tmp_path):
    assert error_of(read_yaml, tmp_path) == f"{tmp_path}: cannot be read (Is a directory); expected a YAML file"

def test_a_file_that_is_not_sessions(tmp_path):
    path = write(tmp_path, '- a\n- b\n')
    assert error_of(load_session, path, 'quick') == f"{path}: expected a mapping of session names to settings, got list"

DEEP = '''
import sys, time
from nntrain.experiments import ConfigError, load_session
start = time.perf_counter()
try: load_session(sys.argv[1] if len(sys.argv) > 1 else 'deep.yaml', 'quick'); print('accepted')
except ConfigError as e: print(e)
print(f'{time.perf_counter() - start:.2f}')
'''

@pytest.mark.parametrize('text', ['quick: ' + '[' * 20_000 + ']' * 20_000, 'quick: ' + '{a: ' * 20_000 + '1' + '}' * 20_000,
                                  'quick:\n' + ''.join(' ' * i + '- \n' for i in range(1, 300))], ids=['lists', 'mappings', 'block lists'])
def test_absurd_nesting_is_refused(tmp_path, text):
    write(tmp_path, text, 'deep.yaml')
    done = run_python(DEEP, tmp_path, timeout=120)
    message, seconds = done.stdout.strip().split('\n')
    assert done.returncode == 0, done.stderr
    assert message in ("deep.yaml: line 1: nested more than 50 levels deep; a config needs a few",
                       "deep.yaml: line 51: nested more than 50 levels deep; a config needs a few")
    assert float(seconds) < 10

def test_depth_limit(tmp_path):
    assert read_yaml(write(tmp_path, 'a: ' + '[' * 49 + ']' * 49))   # 50 levels with the mapping
    path = write(tmp_path, 'a: ' + '[' * 50 + ']' * 50)
    assert error_of(read_yaml, path) == f"{path}: line 1: nested more than 50 levels deep; a config needs a few"
    assert read_yaml(path, max_depth=60)


# 3. alias bombs

BOMB = '''
import resource, sys, time, tracemalloc
from nntrain.experiments import ConfigError, load_session
tracemalloc.start()
start = time.perf_counter()
try: load_session('bomb.yaml', 'quick'); print('accepted')
except ConfigError as e: print(e)
print(f'{time.perf_counter() - start:.2f} {tracemalloc.get_traced_memory()[1]}')
'''

def billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f'{chr(98 + i)}: &{chr(98 + i)} [' + ','.join([f'*{chr(97 + i)}'] * 9) + ']' for i in range(8)]
    return '\n'.join(lines) + '\nquick: *i\n'

def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    write(tmp_path, billion_laughs(), 'bomb.yaml')
    done = run_python(BOMB, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    message, numbers = done.stdout.strip().split('\n')
    assert message == ("bomb.yaml: line 6: expands to more than 100,000 values (aliases repeat what their anchor holds); "
                       "expected a config of a reasonable size")
    seconds, peak = numbers.split()
    assert float(seconds) < 2 and int(peak) < 20 * 2**20

def test_aliases_of_a_reasonable_size_are_fine(tmp_path):
    path = write(tmp_path, 'w: &w [1.0, 2.0]\nquick: {loss_weights: *w, num_epochs: 1}\nother: {loss_weights: *w}\n')
    assert read_yaml(path)['quick']['loss_weights'] == [1.0, 2.0]

def test_node_limit_counts_expanded_aliases(tmp_path):
    path = write(tmp_path, 'a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [*a, *a, *a, *a]\n')
    assert len(read_yaml(path, max_nodes=54)['b']) == 4   # 1 + 2 keys + 10 + 1 + 4 x 10
    assert error_of(read_yaml, path, max_nodes=53).startswith(f"{path}: line 2: expands to more than 53 values")

def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    path = write(tmp_path, 'quick: &a {loss_weights: [*a]}\n')
    assert error_of(read_yaml, path) == f"{path}: line 1: the alias *a is inside the collection it names, which makes it endless"

def test_a_long_flat_list_is_refused_by_size(tmp_path):
    path = write(tmp_path, 'quick: {lr_: [' + ', '.join(['0.1'] * 100_001) + ']}\n')
    assert error_of(read_yaml, path).startswith(f"{path}: line 1: expands to more than 100,000 values")


# 4. grid size

GRID = '''
import time
from nntrain.experiments import ConfigError, check_session
start = time.perf_counter()
session = {'lr_': list(range(1, 101)), 'bs_': list(range(1, 101)), 'seed_': list(range(100)), 'log_every_': list(range(1, %d)), 'num_epochs': 1}
try: check_session(session); print('accepted')
except ConfigError as e: print(e)
print(f'{time.perf_counter() - start:.2f}')
'''

@pytest.mark.parametrize('last, count', [(2, '1,000,000'), (11, '10,000,000')])
def test_a_huge_grid_is_refused_before_it_is_expanded(tmp_path, last, count):
    done = run_python(GRID % last, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    message, seconds = done.stdout.strip().split('\n')
    assert message == (f"session: the grid has {count} experiments (100 lr_ x 100 bs_ x 100 seed_ x {last - 1} log_every_), "
                       "more than max_experiments=10,000; expected a smaller grid (or a larger max_experiments)")
    assert float(seconds) < 2

def test_max_experiments_is_settable(tmp_path):
    session = {'lr_': [0.1, 0.2, 0.3], 'bs_': [1, 2], 'num_epochs': 1}
    assert error_of(check_session, session, max_experiments=5) == (
        "session: the grid has 6 experiments (3 lr_ x 2 bs_), more than max_experiments=5; expected a smaller grid (or a larger max_experiments)")
    assert len(check_session(session, max_experiments=6)) == 6
    path = write(tmp_path, 'quick: {lr_: [0.1, 0.2, 0.3], bs_: [1, 2], num_epochs: 1}')
    assert error_of(load_session, path, 'quick', max_experiments=5).startswith(f"{path}:quick: the grid has 6 experiments")
    assert len(load_session(path, 'quick', max_experiments=6)) == 6

@pytest.mark.parametrize('bad', [0, -1, 1.5, True, None])
def test_max_experiments_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"check_session expected max_experiments to be an int >= 1 \(not a bool\), got"): check_session({'num_epochs': 1}, max_experiments=bad)


# 5. values

@pytest.mark.parametrize('settings, message', [
    ({'model_args': {'hiden': 64}}, "model_args: mlp takes no argument 'hiden'; did you mean 'hidden'? (arguments: hidden, n_in, n_out)"),
    ({'model_args': {'hidden': 'big'}}, "model_args.hidden: mlp expects int, got 'big'"),
    ({'model_args': {'hidden': 1.5}}, "model_args.hidden: mlp expects int, got 1.5"),
    ({'model_args': {'hidden': True}}, "model_args.hidden: mlp expects int, got True"),
    ({'model_args': {'hidden': -3}}, "model_args: mlp(hidden=-3) failed: ValueError: mlp expected hidden to be an int >= 1 (not a bool), got -3"),
    ({'model_args': {'n_in': 100}}, "model: mlp(n_in=100) cannot take a batch of mnist samples of shape [2, 784] (flatten: true): "
                                    "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x784 and 100x128)"),
    ({'model_args': {'n_out': 5}}, "model: mlp(n_out=5) outputs 5 classes per sample, but dataset mnist has 10; expected at least 10"),
    ({'model': 'resnet'}, "model: resnet() cannot take a batch of mnist samples of shape [2, 784] (flatten: true; it takes images: set flatten: false): "
                          "RuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [2, 784]"),
    ({'model': 'resnet', 'flatten': False, 'model_args': {'channels': 3}}, "model_args.channels: resnet expects a value like its default (16, 32, 64, 128), got 3"),
    ({'model': 'resnet', 'flatten': False, 'model_args': {'channels': []}}, "model_args: resnet(channels=[]) failed: IndexError: list index out of range"),
    ({'model': 'resnet', 'flatten': False, 'model_args': {'act': 'gelu'}}, "model_args: resnet(act='gelu') failed: TypeError: 'str' object is not callable"),
    ({'model': 'cnn', 'flatten': False, 'model_args': {'channels': [1]}},
     "model_args: cnn(channels=[1]) failed: ValueError: cnn_layers expected at least two channel counts (input and one block), got (1,)"),
])
def test_model_args_are_checked_against_the_model(settings, message):
    assert one_problem({**settings, 'num_epochs': 1}) == message

@pytest.mark.parametrize('settings', [{'model_args': {'hidden': 16}}, {'model': 'resnet', 'flatten': False, 'model_args': {'channels': [8, 16]}},
                                      {'model': 'cnn', 'flatten': False}, {'model_args': {'n_out': 12}, 'loss_weights': [1] * 12}])
def test_good_models_pass(settings):
    assert check_session({**settings, 'num_epochs': 1})[0][1]['num_epochs'] == 1

def test_user_models_are_checked_too():
    @MODELS.register('needs_width')
    def needs_width(width, depth: int = 1): return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.Linear(width, 10))
    @MODELS.register('anything')
    def anything(**kwargs): return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    @MODELS.register('not_on_meta')
    def not_on_meta(width: int = 8):   # `.item()` has no value on the meta device: checked on the CPU instead
        return nn.Sequential(nn.Flatten(), nn.Linear(784, int(torch.tensor(width).item())), nn.Linear(width, 10))
    try:
        assert one_problem({'model': 'needs_width', 'num_epochs': 1}) == "model_args: needs_width needs 'width' (no default)"
        assert one_problem({'model': 'needs_width', 'model_args': {'width': 4, 'depth': '2'}, 'num_epochs': 1}) == \
            "model_args.depth: needs_width expects int, got '2'"
        assert check_session({'model': 'anything', 'model_args': {'whatever': 1}, 'num_epochs': 1})
        assert check_session({'model': 'not_on_meta', 'num_epochs': 1})
    finally:
        for name in ('needs_width', 'anything', 'not_on_meta'): del MODELS[name]

def test_an_optimizer_must_take_weight_decay():
    OPTIMIZERS.register('plain', lambda params, lr: torch.optim.SGD(params, lr))
    try: assert one_problem({'optimizer': 'plain', 'num_epochs': 1}) == \
        "optimizer: plain takes no weight_decay argument, which every experiment passes; expected a factory that takes it"
    finally: del OPTIMIZERS['plain']

@pytest.mark.parametrize('weights, message', [
    ([1.0, 2.0, 1.0], "loss_weights: expected 10 weights (one per class), got 3"),
    ([], "loss_weights: expected 10 weights (one per class), got 0"),
    ([1] * 9 + [-1], "loss_weights: expected finite numbers >= 0, got -1"),
    ([1] * 9 + [math.nan], "loss_weights: expected finite numbers >= 0, got nan"),
    ([1] * 9 + [math.inf], "loss_weights: expected finite numbers >= 0, got inf"),
    ([1] * 9 + [True], "loss_weights: expected finite numbers >= 0, got True"),
    ([1] * 9 + ['2'], "loss_weights: expected finite numbers >= 0, got '2'"),
    ([0] * 10, "loss_weights: all weights are 0, so nothing would be learned; expected at least one > 0"),
])
def test_loss_weights(weights, message):
    assert one_problem({'loss_weights': weights, 'num_epochs': 1}) == message

def test_loss_weights_follow_the_model_outputs():
    assert one_problem({'model_args': {'n_out': 12}, 'loss_weights': [1] * 10, 'num_epochs': 1}) == \
        "loss_weights: expected 12 weights (one per class), got 10"
    assert [p.strip()[:35] for p in problems({'model': 'resnet', 'loss_weights': [1] * 3, 'num_epochs': 1})] == [   # the dataset's 10
        "model: resnet() cannot take a batch", "loss_weights: expected 10 weights ("]

@pytest.mark.parametrize('settings, message', [
    ({'seed': -1}, "seed: expected an int in [0, 4294967295], got -1"),
    ({'seed': 2**32}, "seed: expected an int in [0, 4294967295], got 4294967296"),
    ({'lr': math.inf}, "lr: expected a finite number > 0, got inf"),
    ({'lr': math.nan}, "lr: expected a finite number > 0, got nan"),
    ({'lr': 0}, "lr: expected a finite number > 0, got 0"),
    ({'weight_decay': -0.1}, "weight_decay: expected a finite number >= 0, got -0.1"),
    ({'weight_decay': math.inf}, "weight_decay: expected a finite number >= 0, got inf"),
    ({'weight_decay': math.nan}, "weight_decay: expected a finite number >= 0, got nan"),
    ({'bs': 10**12}, "bs: expected at most 2,147,483,647, got 1,000,000,000,000"),
    ({'log_every': 2**40}, "log_every: expected at most 2,147,483,647, got 1,099,511,627,776"),
    ({'valid_every': 0}, "valid_every: expected >= 1, got 0"),
    ({'device': 'gpu'}, "device: 'gpu' is not a device torch knows; expected cpu, cuda, cuda:N, mps, or null for the best available"),
    ({'device': ''}, "device: '' is not a device torch knows; expected cpu, cuda, cuda:N, mps, or null for the best available"),
    ({'device': 'meta'}, "device: 'meta' holds no data (it is for shapes only); expected cpu, cuda or mps"),
])
def test_values_in_range(settings, message):
    assert one_problem({'num_epochs': 1, **settings}) == message

def test_ranges_read_from_yaml(tmp_path):
    path = write(tmp_path, 'quick: {lr: .inf, weight_decay: -1e-4, seed: 5e9, num_epochs: 1}')
    assert error_of(load_session, path, 'quick').split('\n')[1:] == [
        "  seed: expected int, got 5000000000.0", "  lr: expected a finite number > 0, got inf",
        "  weight_decay: expected a finite number >= 0, got -0.0001"]

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_without_cuda():
    assert device_problem('cuda') == "'cuda' is not available on this machine (torch.cuda.is_available() is False)"
    assert one_problem({'device': 'cuda:5', 'num_epochs': 1}) == \
        "device: 'cuda:5' is not available on this machine (torch.cuda.is_available() is False)"
    assert check_config({'device': 'cuda', 'num_epochs': 1}, on_this_machine=False) == []   # a config from another machine

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_index_beyond_the_devices():
    count = torch.cuda.device_count()
    assert device_problem('cuda') is None and device_problem('cuda:0') is None
    assert device_problem(f'cuda:{count}').startswith(f"'cuda:{count}' is not on this machine, which has {count} cuda device(s)")

def test_mps_without_mps():
    if torch.backends.mps.is_available(): pytest.skip('this machine has MPS')
    assert device_problem('mps') == "'mps' is not available on this machine (torch.backends.mps.is_available() is False)"

@pytest.mark.parametrize('name, problem', [('cpu', None), ('cpu:0', None), (None, None), (torch.device('cpu'), None),
                                           (3, "expected a device name such as 'cpu' or 'cuda', got 3"),
                                           ('cuda:-1', "'cuda:-1' is not a device torch knows; expected cpu, cuda, cuda:N, mps, or null for the best available")])
def test_device_problem(name, problem):
    assert device_problem(name) == problem

def test_a_checked_session_of_models_is_fast():
    start = time.perf_counter()
    check_session({'lr_': [1e-3 * i for i in range(1, 501)], 'model_args_': [{'hidden': h} for h in (8, 16)], 'num_epochs': 1})
    assert time.perf_counter() - start < 5


# 6. experiment ids

SAFE_ID = r'[A-Za-z0-9.+=,_-]+'

def ids_of(session: dict) -> list[str]: return [i for i, _ in expand_grid(session)]

def test_values_that_differ_only_in_dropped_characters_get_different_ids():
    import re
    ids = ids_of({'device_': ['cpu', 'cpu!', 'cpu?', '!cpu', 'cpu ', 'cpu_']})
    assert len(set(ids)) == 6 and ids[0] == 'device-cpu' and all(i.startswith('device-cpu-') for i in ids[1:])
    assert all(re.fullmatch(SAFE_ID, i) for i in ids)
    assert one_problem({'device_': ['cpu', 'cpu!'], 'num_epochs': 1}) == \
        f"[{ids[1]}] device: 'cpu!' is not a device torch knows; expected cpu, cuda, cuda:N, mps, or null for the best available"

@pytest.mark.parametrize('values', [['a/b', 'a_b', 'a b', 'a\\b'], ['..', '.', '...', '/', '../x', '/etc'], ['é', 'e', 'ü', '日本', '🙂'],
                                    [' ', '', '_', '__'], [True, 'True', 1, '1', 1.0], [None, 'None'], [[1, 2], '1_2', [1, [2]]],
                                    [{'a': 'x,b=1'}, {'a': 'x', 'b': 1}], [{'a': '/'}, {'a': '_'}]])
def test_ids_are_unique_safe_folder_names(tmp_path, values):
    import re
    ids = ids_of({'model_': values})
    assert len(set(ids)) == len(values)
    for i in ids:
        assert re.fullmatch(SAFE_ID, i) and i not in ('.', '..') and i.startswith('model-') and len(i) <= 150
        (tmp_path/i).mkdir()   # a folder of its own, inside tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)

def test_ids_are_the_same_in_another_process(tmp_path):
    session = {'device_': ['cpu', 'cpu!', 'a/b', 'é', True, 'True'], 'model_args_': [{'hidden': 16}, {'c': [1, 2]}]}
    code = f'from nntrain.experiments import expand_grid; import json; print(json.dumps([i for i, _ in expand_grid({session!r})]))'
    runs = [run_python(code, tmp_path, env={'PYTHONHASHSEED': seed}, timeout=120) for seed in ('1', '2')]
    assert runs[0].returncode == 0, runs[0].stderr
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout) == ids_of(session)

def test_plain_ids_do_not_change():
    assert ids_of({'model_args_': [{'hidden': 64}], 'lr_': [0.001, 0.003], 'scheduler_': ['one_cycle']}) == [
        'model_args-hidden=64_lr-0.001_scheduler-one_cycle', 'model_args-hidden=64_lr-0.003_scheduler-one_cycle']

def test_long_ids_are_cut():
    ids = ids_of({'model_': ['x' * 300, 'x' * 299 + 'y']})
    assert len(set(ids)) == 2 and all(len(i) == 150 for i in ids)

def test_a_value_listed_twice():
    assert one_problem({'lr_': [0.1, 0.2, 0.1], 'num_epochs': 1}) == \
        "lr_: lists 0.1 more than once; expected each value once (each is one experiment)"
    assert ids_of({'lr_': [0.1, 0.1]}) == ['lr-0.1-e1b913b9', 'lr-0.1-e1b913b9-2']   # expand_grid alone: numbered

def test_a_key_both_fixed_and_a_grid():
    assert one_problem({'lr': 0.1, 'lr_': [0.2, 0.3], 'num_epochs': 1}) == \
        "lr and lr_ are both given; expected one (a fixed value or the values to try)"

def test_non_text_keys_given_as_python():
    assert problems({1: 2, 'num_epochs': 1}) == ["  key 1: expected text (keys are names)"]


# 7. fit_iterations

def tiny_learner(train):
    torch.manual_seed(0)
    batch = [torch.randn(4, 3), torch.randint(0, 2, (4,))]
    return Learner(nn.Linear(3, 2), DataLoaders(train, [batch]), F.cross_entropy, torch.optim.SGD, 0.1)

def weights(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()]).clone()

@pytest.mark.parametrize('train, error, message', [
    ([], ValueError, "expected a training loader with at least one batch, got an empty list"),
    ((b for b in [[torch.randn(4, 3), torch.randint(0, 2, (4,))]]), TypeError,
     "expected a training loader that can be iterated again for every epoch of the data (a DataLoader, a list of batches), "
     "got a generator, which runs only once"),
    (iter([[torch.randn(4, 3), torch.randint(0, 2, (4,))]]), TypeError,
     "expected a training loader that can be iterated again for every epoch of the data (a DataLoader, a list of batches), "
     "got a list_iterator, which runs only once"),
])
def test_fit_iterations_needs_a_loader_it_can_restart(train, error, message):
    learn = tiny_learner(train)
    before = weights(learn)
    with pytest.raises(error) as info: fit_iterations(learn, 10)
    assert str(info.value) == message
    assert torch.equal(weights(learn), before) and learn.dls.train is train   # nothing trained, the loader is back

def test_an_unsized_loader_without_batches():
    class Nothing:
        def __iter__(self): return iter(())
    learn = tiny_learner(Nothing())
    with pytest.raises(ValueError) as info: fit_iterations(learn, 10)
    assert str(info.value) == "the training loader gave no batches in epoch 1 of the data; expected at least one"

@pytest.mark.parametrize('valid_every', [0, -1, True, 2.5, '5'])
def test_valid_every_must_be_a_positive_int(valid_every):
    learn = tiny_learner([[torch.randn(4, 3), torch.randint(0, 2, (4,))]])
    before = weights(learn)
    with pytest.raises(ValueError) as info: fit_iterations(learn, 10, valid_every=valid_every)
    assert str(info.value) == f"fit_iterations expected valid_every to be an int >= 1 (not a bool) or None, got {valid_every!r}"
    assert torch.equal(weights(learn), before)

@pytest.mark.parametrize('num_iterations', [True, 0, 2.0])
def test_num_iterations_must_be_a_positive_int(num_iterations):
    with pytest.raises(ValueError) as info: fit_iterations(tiny_learner([]), num_iterations)
    assert str(info.value) == f"fit_iterations expected num_iterations to be an int >= 1 (not a bool), got {num_iterations!r}"

def test_every_must_not_be_a_bool():
    with pytest.raises(ValueError) as info: IterationLoader([1], True)
    assert str(info.value) == "IterationLoader expected every to be an int >= 1 (not a bool), got True"


# 8. every problem of every experiment at once

def test_every_problem_of_every_experiment_in_one_error(tmp_path):
    path = write(tmp_path, textwrap.dedent('''
        wrong:
          model_args_: [{hidden: 16}, {hidden: -2}, {hiden: 3}]
          lr_: [1e-3, .nan]
          loss_weights: [1, 2]
          optimizer: adma
          seed: -4
          num_epochs: 1
    '''))
    assert error_of(load_session, path, 'wrong').split('\n') == [
        f"{path}:wrong has 10 problem(s):",   # shared by every experiment: listed once, without an id
        "  optimizer: unknown optimizer 'adma'; did you mean 'adam'? (registered: adam, adamw, momentum, rmsprop, sgd)",
        "  seed: expected an int in [0, 4294967295], got -4",
        "  loss_weights: expected 10 weights (one per class), got 2",
        "  [model_args-hidden=16_lr-nan] lr: expected a finite number > 0, got nan",
        "  [model_args-hidden=-2_lr-0.001] model_args: mlp(hidden=-2) failed: ValueError: mlp expected hidden to be an int >= 1 (not a bool), got -2",
        "  [model_args-hidden=-2_lr-nan] lr: expected a finite number > 0, got nan",
        "  [model_args-hidden=-2_lr-nan] model_args: mlp(hidden=-2) failed: ValueError: mlp expected hidden to be an int >= 1 (not a bool), got -2",
        "  [model_args-hiden=3_lr-0.001] model_args: mlp takes no argument 'hiden'; did you mean 'hidden'? (arguments: hidden, n_in, n_out)",
        "  [model_args-hiden=3_lr-nan] lr: expected a finite number > 0, got nan",
        "  [model_args-hiden=3_lr-nan] model_args: mlp takes no argument 'hiden'; did you mean 'hidden'? (arguments: hidden, n_in, n_out)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sessions.yaml']   # nothing written

def test_the_example_sessions_still_pass():
    assert len(load_session(ROOT/'examples'/'sessions.yaml', 'digits')) == 4
    assert len(load_session(ROOT/'examples'/'sessions.yaml', 'digits_resnet')) == 1


def test_grid_shape_problems_do_not_hide_the_other_problems(tmp_path):
    (tmp_path/'g.yaml').write_text('ids:\n  model_args: {hidden: 8}\n  bs: 512\n  num_iterations: 2\n  lr_: [1e-3, 1.0e-3]\n'
                                   '  optimizer: nope\n  bs_: [1, 2]\n  seed: -1\n')
    with pytest.raises(ConfigError) as e: load_session(tmp_path/'g.yaml', 'ids')
    message = str(e.value)
    for expected in ('has 4 problem(s)', 'lr_: lists 0.001 more than once', 'bs and bs_ are both given',
                     "optimizer: unknown optimizer 'nope'", 'seed: expected an int in [0, 4294967295], got -1'):
        assert expected in message, (expected, message)


def test_an_mlp_without_hidden_units_is_refused(tmp_path):
    (tmp_path/'z.yaml').write_text('z:\n  model_args: {hidden: 0}\n  num_iterations: 2\n')
    with pytest.raises(ConfigError, match=r"model_args: mlp\(hidden=0\) failed: ValueError: mlp expected hidden to be an int >= 1"):
        load_session(tmp_path/'z.yaml', 'z')


def test_a_search_session_run_as_a_grid_points_to_nntrain_search(tmp_path):
    (tmp_path/'s.yaml').write_text('find:\n  num_iterations: 4\n  objective: accuracy\n  search:\n    lr: {float: [0.001, 0.1]}\n')
    with pytest.raises(ConfigError, match="unknown key 'search'; `search` and `objective` belong to a search session: run it with nntrain search"):
        load_session(tmp_path/'s.yaml', 'find')
