"""Train the digit judge of the example chapters and write it to nntrain/data/judge/.

    python tools/build_judge.py [--epochs 6]

The judge is the acceleration chapter's `resnet()` trained on the bundled digits' training split (8,000)
with `fit_one_cycle`; its accuracy on the test split (2,000) is written beside its weights. A classifier
trained on digits alone calls uniform noise a digit with confidence near 1, which would make any generator
look perfect, so each batch also carries images that are not digits (noise, blurred noise, digits with their
pixels shuffled, blends of two different digits, flat grey images) whose target is the uniform distribution over the ten
classes ("outlier exposure", Hendrycks et al., 2019): the judge learns to be unsure of them. A quarter of the real digits are
blurred a little, so that softness alone (a VAE's samples) does not read as noise. The example
chapters (GAN, VAE, DDPM) call it on generated digits: the share it classifies with confidence > 0.9 is their
quality figure (nntrain.tools.confident_share).
"""
import argparse, hashlib, json, sys
from pathlib import Path

from functools import partial

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nntrain.acceleration import fit_one_cycle, resnet
from nntrain.activations import set_seed
from nntrain.dataloaders import DataLoaders, hf_ds_collate_fn, load_mnist
from nntrain.learner import DeviceS, Learner, Subscriber

OUT = ROOT/'nntrain'/'data'/'judge'


def not_digits(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    "As many images that are not digits as `x` has rows (x: [N, 1, 28, 28] digits in [0, 1]), five kinds in equal parts."
    n = len(x)
    noise = torch.rand(n, 1, 28, 28, generator=g)
    blurred = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 28, 28, generator=g), 5, 1, 2)
    blurred = (blurred - blurred.amin((2, 3), keepdim=True)) / (blurred.amax((2, 3), keepdim=True) - blurred.amin((2, 3), keepdim=True))
    shuffled = x.reshape(n, -1)[:, torch.randperm(784, generator=g)].reshape(n, 1, 28, 28)
    blend = 0.5 * (x + x.roll(1, 0))
    flat = (torch.rand(n, 1, 1, 1, generator=g) + 0.05 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1)
    kinds = torch.randint(0, 5, (n,), generator=g)[:, None, None, None]
    out = blend
    for k, images in enumerate((noise, blurred, shuffled, flat)): out = torch.where(kinds == k, images, out)
    return out


class OutlierExposureS(Subscriber):
    "Training batches get half as many non-digits again, with uniform targets; the targets become probabilities."
    def __init__(self): self.g = torch.Generator().manual_seed(1)
    def before_batch(self, learn):
        if not learn.training: return
        x, y = learn.batch[:2]
        soft = torch.rand(len(x), generator=self.g) < 0.25   # a blurred digit is still a digit: blur alone must not read as noise
        x = torch.where(soft[:, None, None, None], torch.nn.functional.avg_pool2d(x, 3, 1, 1), x)
        same = y != y.roll(1, 0)   # a blend of two of the same digit is still that digit: left out
        junk = not_digits(x, self.g)[same][: len(x) // 2]
        targets = torch.cat([torch.nn.functional.one_hot(y, 10).float(), torch.full((len(junk), 10), 0.1)])
        learn.batch = (torch.cat([x, junk]), targets)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=6)
    a = p.parse_args()
    set_seed(0)
    dls = DataLoaders.from_hf_dd(load_mnist(), 128, collate_fn=partial(hf_ds_collate_fn, flatten=False), seed=0)
    learn = Learner(resnet(), dls, torch.nn.functional.cross_entropy, torch.optim.AdamW, 1e-2,
                    subs=[OutlierExposureS(), DeviceS('cpu')])
    fit_one_cycle(learn, a.epochs)
    learn.model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in dls.valid:
            correct += (learn.model(x).argmax(1) == y).sum().item(); n += len(y)
    OUT.mkdir(parents=True, exist_ok=True)
    weights = OUT/'resnet.pt'
    torch.save(learn.model.state_dict(), weights)
    info = {'model': 'nntrain.acceleration.resnet()', 'trained_on': 'bundled digits, train split (8,000)', 'epochs': a.epochs,
            'test_accuracy': round(correct / n, 4), 'test_samples': n,
            'sha256': hashlib.sha256(weights.read_bytes()).hexdigest()}
    (OUT/'judge.json').write_text(json.dumps(info, indent=1) + '\n')
    print(info)


if __name__ == '__main__': main()
