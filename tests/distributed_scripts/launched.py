"""Functions that tests/test_distributed.py runs through `nntrain.distributed.launch`.

`python launched.py CASE` runs one case and prints its outcome as one JSON line. Run as a script, the functions below
belong to `__main__`, so `launch` forks; imported as the module `launched`, they are spawned."""
import json, os, sys

import torch


def add_ranks(x, y=1):
    "Every rank's `rank + x`, added up by one all_reduce; with the rank, world size and the keyword argument passed through."
    import torch.distributed as dist
    from nntrain.distributed import join_process_group
    rank, world_size = join_process_group()
    total = torch.tensor([rank + x])
    dist.all_reduce(total)
    return rank, world_size, total.item(), y


def fit_failing_on_rank_1(epochs=3):
    "A small fit with DistributedS in which a subscriber raises on rank 1 only, at its third training batch."
    from torch import nn
    from nntrain.dataloaders import DataLoaders, TensorLoader
    from nntrain.distributed import DistributedS
    from nntrain.learner import Learner, MetricsS, Subscriber

    class FailS(Subscriber):
        def after_batch(self, learn):
            if learn.training and learn.iteration == 3 and int(os.environ['RANK']) == 1: raise ValueError('rank one gives up at batch 3')

    torch.manual_seed(0)
    x, y = torch.randn(512, 8), torch.randint(0, 3, (512,))
    dls = DataLoaders(TensorLoader({'x': x, 'y': y}, 32, shuffle=True, seed=0), TensorLoader({'x': x, 'y': y}, 100))
    learn = Learner(nn.Linear(8, 3), dls, lr=0.1, subs=[MetricsS(), FailS(), DistributedS()])
    learn.fit(epochs)
    return 'finished'


if __name__ == '__main__':
    from nntrain.distributed import LaunchError, launch
    case = sys.argv[1]
    if case == 'results':      # forked (a function of __main__), and spawned (the same function imported from a module)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import launched
        print(json.dumps({'fork': launch(add_ranks, 10, nproc=2, y=5), 'spawn': launch(launched.add_ranks, 20, nproc=3, y='z'),
                          'start_method_of_main': add_ranks.__module__}))
    elif case == 'failure':
        try: launch(fit_failing_on_rank_1, nproc=2, epochs=3)
        except LaunchError as e: print(json.dumps({'error': type(e).__name__, 'message': str(e)}))
        else: print(json.dumps({'error': None}))
