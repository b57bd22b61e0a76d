import os, sys, torch, json
from torch import nn
from nntrain.dataloaders import DataLoaders, TensorLoader, load_mnist, dataset_to_tensors
from nntrain.learner import Learner, MetricsS, Subscriber, CancelFitException
from nntrain.checkpoints import CheckpointS
from nntrain.distributed import DistributedS
torch.manual_seed(0)
mode, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
dd = load_mnist()
dls = DataLoaders(TensorLoader(dataset_to_tensors(dd['train']), 64, shuffle=True, seed=1), TensorLoader(dataset_to_tensors(dd['test']), 500))
model = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
class Log(Subscriber):
    def after_batch(self, learn):
        if learn.training: learn.log('it', float(learn.iter))
class Stop(Subscriber):
    def after_batch(self, learn):
        if learn.training and learn.iter == 70: raise CancelFitException()
metrics = MetricsS(); metrics.output = lambda log: None
subs = [metrics, Log(), DistributedS(), CheckpointS(folder, every_batches=50)]
if mode == 'stop': subs.append(Stop())
learn = Learner(model, dls, lr=0.1, subs=subs)
learn.fit(1, resume=folder if mode == 'resume' else None)
if int(os.environ.get('RANK', 0)) == 0: json.dump(metrics.history, open(out, 'w'))
