"""EmbeddingsS's files under SIGKILL from outside and with two processes writing into one log_dir (chapter 16)."""
import json, random, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest

RUNS = textwrap.dedent('''
    import sys, torch
    from torch import nn
    import torch.nn.functional as F
    from nntrain.dataloaders import DataLoaders
    from nntrain.learner import Learner
    from nntrain.tools import EmbeddingsS
    torch.manual_seed(int(sys.argv[2]))
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    valid = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    print('ready', flush=True)
    for run in range(int(sys.argv[3])):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
        Learner(model, DataLoaders(None, valid), F.cross_entropy, subs=[EmbeddingsS(sys.argv[1], '2', n=48)]).fit(3, train=False)
    print('done', flush=True)
''')


def start(log_dir, seed, runs):
    return subprocess.Popen([sys.executable, '-c', RUNS, str(log_dir), str(seed), str(runs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listed(log_dir):
    "The embeddings TensorBoard's projector plugin finds in `log_dir`, each checked whole: rows, labels and sprite agree."
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug import test as wtest, wrappers
    from PIL import Image
    import io
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    context = base_plugin.TBContext(logdir=str(log_dir), data_provider=MultiplexerDataProvider(multiplexer, str(log_dir)), multiplexer=multiplexer)
    routes = ProjectorPlugin(context).get_plugin_apps()
    def get(route, **args):
        response = wtest.Client(routes[route], wrappers.Response).get(route, query_string=args)
        assert response.status_code == 200, (route, args, response.get_data()[:300])
        return response.get_data()
    names = [e['tensorName'] for e in json.loads(get('/info', run='.'))['embeddings']]
    for name in names:
        rows = len(get('/tensor', run='.', name=name)) // (4 * 32)
        labels = get('/metadata', run='.', name=name).decode().splitlines()
        sprite = Image.open(io.BytesIO(get('/sprite_image', run='.', name=name)))
        assert rows == len(labels) == 48 and sprite.size == (7 * 8, 7 * 8), (name, rows, len(labels), sprite.size)
    return names


def test_killed_at_random_moments_the_projector_reads_only_whole_embeddings(tmp_path):
    log_dir, rng = tmp_path/'tb', random.Random(0)
    for kill in range(6):
        p = start(log_dir, kill, 50)
        assert p.stdout.readline() == 'ready\n'
        first = sorted((log_dir/'embeddings').glob('*')) if (log_dir/'embeddings').exists() else []
        deadline = time.time() + 60   # the first fit of a process takes a few seconds; later ones write every few tenths of a second
        while time.time() < deadline and p.poll() is None and len(list((log_dir/'embeddings').glob('*')) if (log_dir/'embeddings').exists() else []) <= len(first):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
        p.send_signal(signal.SIGKILL); p.wait(timeout=30)
        if (log_dir/'projector_config.pbtxt').exists(): listed(log_dir)
    names = listed(log_dir)
    assert len(names) >= 3, names   # one per run that wrote (a run's three passes have one name: no training, iteration 0)
    p = start(log_dir, 99, 1); out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert not list(log_dir.glob('.projector_config.pbtxt.*.tmp'))
    assert set(names) <= set(listed(log_dir))   # nothing listed before is lost


def test_two_processes_into_one_log_dir_keep_each_others_embeddings(tmp_path):
    log_dir = tmp_path/'tb'
    a, b = start(log_dir, 1, 4), start(log_dir, 2, 4)
    for p in (a, b):
        out, err = p.communicate(timeout=200)
        assert p.returncode == 0, err
    names = listed(log_dir)
    assert len(names) == 2 * 4, names   # a name per run (its 3 validation passes rewrite it), none lost to the other process
    assert len(set(names)) == len(names)
