"""The example sessions shipped in examples/ stay valid as the code changes."""
import yaml
from conftest import ROOT
from nntrain.experiments import load_session
from nntrain.search import load_search

EXAMPLES = ROOT/'examples'/'sessions.yaml'


def test_every_example_session_is_valid():
    sessions = yaml.safe_load(EXAMPLES.read_text())
    assert set(sessions) == {'digits', 'digits_resnet', 'digits_search', 'digits_architectures'}
    for name, session in sessions.items():
        if 'search' in session:
            base, space, objective = load_search(EXAMPLES, name)
            expected = {'lr', 'model'} if name == 'digits_architectures' else {'lr', 'model_args.hidden', 'optimizer'}
            assert objective == 'accuracy' and set(space) == expected
        else:
            experiments = load_session(EXAMPLES, name)
            assert len(experiments) == (4 if name == 'digits' else 1)
