import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('MPLBACKEND', 'Agg')


def run_python(code, cwd, env=None, timeout=600):
    "Run `code` in a fresh Python process; return the CompletedProcess (text mode)."
    import subprocess
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


import contextlib


@contextlib.contextmanager
def raises(exc, message: str):
    "Expect `exc` whose message is exactly `message` (notes added under the traceback aside)."
    import pytest
    with pytest.raises(exc) as info: yield
    assert str(info.value) == message
