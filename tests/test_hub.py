"load_hub_dataset: one line and None, within seconds, whenever the hub cannot be reached; the hub's dataset otherwise."
import os, socket, subprocess, sys, time

import pytest

import nntrain.dataloaders as dl
from nntrain.dataloaders import load_hub_dataset

FALLBACK = 'returning None (load_mnist() gives the bundled digits, offline)'
HUB_VARIABLES = ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'HF_ENDPOINT', 'HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy',
                 'NO_PROXY', 'no_proxy')   # what decides where load_hub_dataset connects; each test sets the ones it needs

# in a fresh process, as a notebook or a script calls it: the seconds the call took, then the result
SCRIPT = '''
import time
from nntrain.dataloaders import load_hub_dataset
start = time.perf_counter()
result = load_hub_dataset('fashion_mnist', timeout=2)
print('SECONDS', time.perf_counter() - start)
print('RESULT', result)
'''


def run_load(tmp_path, **env):
    "Run SCRIPT in `tmp_path` with the variables `env` and no other HUB_VARIABLES; its printed lines and the call's seconds."
    done = subprocess.run([sys.executable, '-c', SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}, **env})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    seconds = float(lines.pop(-2).split()[1])
    return lines, seconds


def closed_port() -> int:
    "A local port nobody listens on."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('name, value', [('HF_HUB_OFFLINE', '1'), ('HF_DATASETS_OFFLINE', '1'), ('HF_HUB_OFFLINE', 'true'),
                                         ('HF_DATASETS_OFFLINE', 'YES')])
def test_offline_setting_is_not_tried(tmp_path, name, value):
    lines, seconds = run_load(tmp_path, **{name: value}, HF_ENDPOINT=f'http://127.0.0.1:{closed_port()}')
    assert lines == [f"load_hub_dataset('fashion_mnist'): {name}={value} is set, so the hub was not tried; {FALLBACK}", 'RESULT None']
    assert seconds < 1, seconds


def test_offline_false_values_do_not_count(tmp_path):
    port = closed_port()
    lines, _ = run_load(tmp_path, HF_HUB_OFFLINE='0', HF_DATASETS_OFFLINE='false', HF_ENDPOINT=f'http://127.0.0.1:{port}')
    assert lines == [f"load_hub_dataset('fashion_mnist'): the hub http://127.0.0.1:{port} cannot be reached: a connection to "
                     f"127.0.0.1:{port} failed (Connection refused); {FALLBACK}", 'RESULT None']


def test_unresolvable_endpoint(tmp_path):
    lines, seconds = run_load(tmp_path, HF_ENDPOINT='https://no-such-host.invalid')   # .invalid never resolves (RFC 2606)
    assert len(lines) == 2 and lines[1] == 'RESULT None', lines
    prefix = ("load_hub_dataset('fashion_mnist'): the hub https://no-such-host.invalid cannot be reached: "
              "its host no-such-host.invalid ")
    assert lines[0].startswith(prefix) and lines[0].endswith(f'; {FALLBACK}'), lines[0]
    why = lines[0][len(prefix):-len(f'; {FALLBACK}')]
    assert why.startswith('does not resolve (') or why == 'did not resolve within 2 s', why
    assert seconds < 3, seconds


def test_closed_local_port(tmp_path):
    port = closed_port()
    lines, seconds = run_load(tmp_path, HF_ENDPOINT=f'http://127.0.0.1:{port}')
    assert lines == [f"load_hub_dataset('fashion_mnist'): the hub http://127.0.0.1:{port} cannot be reached: a connection to "
                     f"127.0.0.1:{port} failed (Connection refused); {FALLBACK}", 'RESULT None']
    assert seconds < 3, seconds


def test_closed_proxy_port(tmp_path):
    port = closed_port()
    lines, _ = run_load(tmp_path, HTTPS_PROXY=f'http://127.0.0.1:{port}')
    assert lines == [f"load_hub_dataset('fashion_mnist'): the proxy 127.0.0.1:{port} for the hub https://huggingface.co cannot be "
                     f"reached: a connection to 127.0.0.1:{port} failed (Connection refused); {FALLBACK}", 'RESULT None']


def test_stalled_resolver_is_cut_short(monkeypatch, capsys):
    def stalls(*args, **kwargs): time.sleep(5); return []
    monkeypatch.setattr(dl.socket, 'getaddrinfo', stalls)
    for name in HUB_VARIABLES: monkeypatch.delenv(name, raising=False)
    start = time.perf_counter()
    assert load_hub_dataset('fashion_mnist', timeout=0.5) is None
    assert time.perf_counter() - start < 1.5
    assert capsys.readouterr().out == (f"load_hub_dataset('fashion_mnist'): the hub https://huggingface.co cannot be reached: "
                                       f"its host huggingface.co did not resolve within 0.5 s; {FALLBACK}\n")


class SilentSocket:
    "A socket whose connect never answers: it waits out its timeout, as a dropped SYN does."
    def __init__(self, *args): self.timeout = None
    def __enter__(self): return self
    def __exit__(self, *exc): return False
    def settimeout(self, seconds): self.timeout = seconds
    def connect(self, address):
        time.sleep(self.timeout)
        raise TimeoutError('timed out')


def test_silent_endpoint_times_out(monkeypatch, capsys):
    monkeypatch.setattr(dl.socket, 'socket', SilentSocket)
    for name in HUB_VARIABLES: monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:9')
    start = time.perf_counter()
    assert load_hub_dataset('fashion_mnist', timeout=0.5) is None
    assert time.perf_counter() - start < 1.5
    assert capsys.readouterr().out == (f"load_hub_dataset('fashion_mnist'): the hub http://127.0.0.1:9 cannot be reached: "
                                       f"a connection to 127.0.0.1:9 did not open within 0.5 s; {FALLBACK}\n")


@pytest.fixture
def listening_endpoint(monkeypatch):
    "HF_ENDPOINT set to a local port that accepts connections (so the hub counts as reachable)."
    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        for name in HUB_VARIABLES: monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{server.getsockname()[1]}')
        yield


def test_reachable_hub_loads_and_passes_kwargs(listening_endpoint, tmp_path, capsys):
    dl.load_mnist()['test'].select(range(5)).to_parquet(tmp_path/'digits.parquet')
    loaded = load_hub_dataset('parquet', data_files={'test': str(tmp_path/'digits.parquet')}, cache_dir=str(tmp_path/'cache'))
    assert {k: v.num_rows for k, v in loaded.items()} == {'test': 5}
    assert capsys.readouterr().out == ''


def test_other_failures_of_load_dataset_raise(listening_endpoint, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hub_dataset('parquet', data_files=str(tmp_path/'missing.parquet'), cache_dir=str(tmp_path/'cache'))


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(name=''), TypeError, "load_hub_dataset expected name to be the name of a dataset on the hub (a non-empty str), got ''"),
    (dict(name=None), TypeError, "load_hub_dataset expected name to be the name of a dataset on the hub (a non-empty str), got None"),
    (dict(name='fashion_mnist', timeout=0), ValueError, 'load_hub_dataset expected timeout to be a finite number of seconds > 0, got 0'),
    (dict(name='fashion_mnist', timeout=True), ValueError, 'load_hub_dataset expected timeout to be a finite number of seconds > 0, got True'),
    (dict(name='fashion_mnist', timeout=float('inf')), ValueError, 'load_hub_dataset expected timeout to be a finite number of seconds > 0, got inf'),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error) as info: load_hub_dataset(**kwargs)
    assert str(info.value) == message


def test_bad_endpoint(monkeypatch):
    for name in HUB_VARIABLES: monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('HF_ENDPOINT', 'huggingface.co')
    with pytest.raises(ValueError) as info: load_hub_dataset('fashion_mnist')
    assert str(info.value) == "load_hub_dataset expected HF_ENDPOINT to be an http(s) URL such as 'https://huggingface.co', got 'huggingface.co'"
