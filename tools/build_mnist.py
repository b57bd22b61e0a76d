"""Build nntrain's bundled MNIST data from the original IDX files.

    python tools/build_mnist.py [SOURCE_DIR]

SOURCE_DIR (default ../shared/data/mnist) holds `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`
and their SHA256SUMS. The files are checked against those sums, decoded, split into train (8,000) and
test (2,000: every fifth image, so both halves of the original test set are represented), and written as
Parquet files with the `datasets` schema of the hub's MNIST/Fashion-MNIST (`image`: Image, `label`:
ClassLabel) to nntrain/data/mnist/, along with the sums of the written files.
"""
import gzip, hashlib, io, sys
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

FILES = {'images': 't10k-images-idx3-ubyte.gz', 'labels': 't10k-labels-idx1-ubyte.gz'}
OUT = Path(__file__).resolve().parents[1]/'nntrain'/'data'/'mnist'


def sha256(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_sources(src):
    "Paths of the two source files, after checking each against `src/SHA256SUMS`."
    sums = dict(line.split()[::-1] for line in (src/'SHA256SUMS').read_text().splitlines() if line.strip())
    for name in FILES.values():
        got = sha256(src/name)
        if sums.get(name) != got: sys.exit(f'{src/name}: sha256 {got} does not match SHA256SUMS ({sums.get(name)})')
    return {k: src/v for k, v in FILES.items()}


def read_idx(path, offset):
    return np.frombuffer(gzip.decompress(Path(path).read_bytes()), dtype=np.uint8, offset=offset)


def main(src='../shared/data/mnist'):
    paths = verified_sources(Path(src))
    images = read_idx(paths['images'], 16).reshape(-1, 28, 28)
    labels = read_idx(paths['labels'], 8)
    assert len(images) == len(labels) == 10_000, (images.shape, labels.shape)
    is_test = np.arange(len(images)) % 5 == 4
    features = Features(image=Image(), label=ClassLabel(names=[str(i) for i in range(10)]))
    OUT.mkdir(parents=True, exist_ok=True)
    sums = []
    for split, mask in [('train', ~is_test), ('test', is_test)]:
        ds = Dataset.from_dict({'image': list(images[mask]), 'label': labels[mask].tolist()}, features=features)
        tmp = OUT/f'{split}.parquet.tmp'
        ds.to_parquet(str(tmp))
        tmp.replace(OUT/f'{split}.parquet')
        sums.append(f'{sha256(OUT/f"{split}.parquet")}  {split}.parquet')
    source_sums = [f'{sha256(p)}  {p.name}' for p in paths.values()]
    (OUT/'SHA256SUMS').write_text('\n'.join(sums) + '\n')
    (OUT/'SOURCE_SHA256SUMS').write_text('\n'.join(source_sums) + '\n')
    print(*sums, sep='\n')


if __name__ == '__main__': main(*sys.argv[1:])
