"""FSDP2, the second strategy of DistributedS (chapter 15, issue 15): the model sharded over 2 ranks by `fully_shard`, one
unit per Linear, on CPU with gloo, started by torchrun. The fits are tests/distributed_scripts/worker.py with
strategy='fsdp'; each rank's whole weights come from `learn.state_dict()`, which gathers them to rank 0."""
import pytest
import torch
from torch import nn

from conftest import raises
from nntrain.distributed import DistributedS, _check_shardable, _check_tied, _units
from test_distributed import (KILLED, N_TRAIN, _env, _kill_rank_1_and_restart, _results, assert_close_history, assert_same_weights,
                              jobs, max_difference, mnist, passes)

FSDP = dict(strategy='fsdp')
ADAM = dict(adam=True, lr=0.002)   # moments and step counts: an optimizer state that must cross strategies and world sizes


def test_fsdp_on_two_ranks_matches_one_process(jobs):
    "Two fits of one learner (the second finds the model sharded already) on 2 FSDP2 ranks: one process's counts, metrics and weights."
    alone = jobs.get('refit1', None, refit=True)[0]
    ranks = jobs.get('fsdp2', 2, refit=True, subs=['terminate'], **FSDP)
    assert ranks[0]['history'] == ranks[1]['history']   # the job's numbers on every rank
    assert ranks[1]['weights'] == {}                    # the whole weights are gathered to rank 0 only
    for training, rows in ((True, N_TRAIN), (False, 2000)):
        assert sum(passes(r, training)[0]['rows'] for r in ranks) == passes(alone, training)[0]['rows'] == rows
    assert_close_history(ranks[0]['history'], alone['history'])
    assert max_difference(ranks[0]['weights'], alone['weights']) <= 1e-5
    assert ranks[0]['iteration'] == alone['iteration'] == 125 and [r['nan_stopped_at'] for r in ranks] == [None, None]

def test_fsdp_and_ddp_give_the_same_fit(jobs):
    "The same 2-rank job under DDP and under FSDP2: the same metrics and weights (to rounding: the gradients are added up otherwise)."
    ddp, fsdp = jobs.get('ddp2-refit', 2, refit=True)[0], jobs.get('fsdp2', 2, refit=True, subs=['terminate'], **FSDP)[0]
    assert_close_history(fsdp['history'], ddp['history'], 1e-5)
    assert max_difference(fsdp['weights'], ddp['weights']) <= 1e-6

def test_fsdp_sigkill_restart_resumes_bitwise(jobs):
    """Rank 1 of an FSDP2 job SIGKILLed mid-fit, torchrun --max-restarts 1: the restarted job resumes its checkpoint and ends bitwise as an
    unbroken one, its validation numbers too (with BatchNorm, whose running statistics each rank keeps and gets back)."""
    cfg = {**KILLED, **FSDP, **ADAM, 'batchnorm': True}
    unbroken = jobs.get('fsdp-unbroken', 2, **cfg)
    # --max-restarts 2: once in about ten runs under the whole suite's load, the restarted rank 0 ended by SIGABRT inside gloo
    # during a checkpoint's gather; a second restart must then resume as bitwise as the first
    returncode, stderr = _kill_rank_1_and_restart(jobs, 'fsdp-killed', {**_env(), 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE': '1'}, restarts=2, **cfg)
    assert returncode == 0, stderr[-6000:]
    killed = _results(jobs.root/'fsdp-killed', 2)
    assert [r['restart'] for r in killed] in ([1, 1], [2, 2]) and all(r['resumed_from'] for r in killed)
    assert_same_weights(killed[0]['weights'], unbroken[0]['weights'])
    assert killed[0]['history'] == unbroken[0]['history'] and killed[1]['history'] == unbroken[1]['history']

@pytest.mark.parametrize('before,after,optimizer', [('fsdp', None, 'adam'), ('ddp', 'fsdp', 'sgd')])
def test_a_checkpoint_moves_between_strategies_and_world_sizes(jobs, before, after, optimizer):
    """fit(1), then fit(2, resume=folder) in another job: FSDP2 on 2 ranks with Adam, resumed in one process (no launcher); DDP on
    2 ranks with plain SGD (an optimizer without state), resumed by FSDP2 on 2 ranks. Both within 1e-5 of an unbroken 2-epoch fit in one process."""
    opt = ADAM if optimizer == 'adam' else {}
    reference = jobs.get(f'{optimizer}-two-epochs', None, epochs=2, **opt)[0]
    name = f'move-{before}-{after}'
    folder = str(jobs.root/name/'checkpoints')
    jobs.get(name, 2, epochs=1, subs=['checkpoint'], folder=folder, strategy=before, **opt)
    second = jobs.get(f'{name}-then', None if after is None else 2, epochs=2, subs=['checkpoint'], folder=folder, resume=True,
                      strategy=after or 'ddp', **opt)
    assert all(r['resumed_from'] for r in second) and passes(second[0], True)[-1]['epoch'] == 1
    assert max_difference(second[0]['weights'], reference['weights']) <= 1e-5
    assert_close_history(second[0]['history'], reference['history'])

def test_fsdp_composes_with_accumulation_mixed_precision_and_clipping(jobs):
    """GradAccumS(2) under FSDP2 (gradient exchange switched off on accumulating batches) matches it in one process, with Adam and a
    checkpoint after every batch (the first before Adam's first step: taking the state must not make one); bfloat16 autocast and GradClipS run."""
    cfg = dict(subs=['gradaccum', 'checkpoint'], every_batches=1, **ADAM)
    alone = jobs.get('accumulate1', None, **cfg)[0]
    ranks = jobs.get('fsdp-accumulate', 2, **cfg, **FSDP)
    assert max_difference(ranks[0]['weights'], alone['weights']) <= 1e-5
    assert_close_history(ranks[0]['history'], alone['history'])
    mixed = jobs.get('fsdp-mixed', 2, subs=['mixed_clip'], **FSDP)
    assert mixed[0]['history'] == mixed[1]['history'] and mixed[0]['history'][-1]['accuracy'] > 0.7
    assert all(torch.isfinite(w).all() for w in mixed[0]['weights'].values())

def test_a_subscriber_that_predicts_on_rank_0_alone_is_refused_under_fsdp(jobs):
    "ReportS runs the model on rank 0 alone after the fit, which would leave rank 0 waiting for a sharded model's other half: refused at once."
    proc = jobs.run('fsdp-report', 2, subs=['report'], **FSDP)
    assert proc.returncode != 0
    assert ("ValueError: DistributedS(strategy='fsdp'): ReportS runs the model on rank 0 alone, but a model sharded by FSDP2 runs on "
            "every rank at once, so rank 0 would wait for the others until the timeout") in proc.stderr
    assert not (jobs.root/'fsdp-report'/'report').exists()

def test_bad_options_are_refused_when_the_subscriber_is_made():
    with raises(ValueError, "DistributedS expected strategy 'ddp' (a copy of the model on every rank) or 'fsdp' (FSDP2: the model "
                            "sharded over the ranks), got 'zero'"):
        DistributedS(strategy='zero')
    with raises(ValueError, "DistributedS got layers=the class Linear, which picks FSDP2's units, with strategy='ddp'; "
                            "expected strategy='fsdp' with it, or no layers"):
        DistributedS(layers=nn.Linear)
    with raises(TypeError, "DistributedS expected layers to be the module classes FSDP2 shards as units (nn.Linear, or a tuple of "
                           "classes), a function of a module returning True for a unit, or None (every module with parameters of its "
                           "own), got 'Linear'"):
        DistributedS(strategy='fsdp', layers='Linear')
    with pytest.raises(TypeError, match=r"^DistributedS\(strategy='fsdp'\) passes its other keyword arguments to fully_shard, which "
                                        r"does not take \['find_unused_parameters'\]; expected some of \['mesh', 'reshard_after_forward'"):
        DistributedS(strategy='fsdp', find_unused_parameters=True)
    with raises(TypeError, "DistributedS expected layers to be the module classes FSDP2 shards as units (nn.Linear, or a tuple of "
                           "classes), a function of a module returning True for a unit, or None (every module with parameters of its "
                           "own), got a Linear"):
        DistributedS(strategy='fsdp', layers=nn.Linear(2, 2))   # a module, not its class
    with raises(TypeError, "DistributedS(strategy='fsdp') expected mp_policy to be a MixedPrecisionPolicy (it is given to fully_shard), got 'bf16'"):
        DistributedS(strategy='fsdp', mp_policy='bf16')
    with raises(TypeError, "DistributedS(strategy='fsdp') expected reshard_after_forward to be a bool or an int >= 1 (it is given to "
                           "fully_shard), got 'yes'"):
        DistributedS(strategy='fsdp', reshard_after_forward='yes')
    with raises(TypeError, "DistributedS(strategy='fsdp') expected offload_policy to be an OffloadPolicy (or CPUOffloadPolicy) (it is given "
                           "to fully_shard), got 1"):
        DistributedS(strategy='fsdp', offload_policy=1)
    with raises(TypeError, "DistributedS(strategy='fsdp') expected ignored_params to be a set of parameters (it is given to fully_shard), got a list"):
        DistributedS(strategy='fsdp', ignored_params=[1, 2])
    from torch.distributed.fsdp import MixedPrecisionPolicy
    DistributedS(strategy='fsdp', mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16), reshard_after_forward=False)   # taken
    with pytest.raises(TypeError, match=r"^DistributedS\(strategy='ddp'\) passes its other keyword arguments to DistributedDataParallel, "
                                        r"which does not take \['reshard_after_forward'\]; expected some of \['output_device'"):
        DistributedS(reshard_after_forward=True)

def test_parameters_fsdp_cannot_shard_are_refused():
    with raises(ValueError, "DistributedS(strategy='fsdp'): 1.weight is a parameter with no elements (shape (0, 2)), which FSDP2 cannot "
                            "shard; expected parameters of one dimension or more with elements (a learnable scalar as "
                            "nn.Parameter(torch.tensor([value]))), or strategy='ddp'"):
        _check_shardable(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 0)))

def test_units_are_picked_children_first():
    block = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    model = nn.Sequential(block, nn.ReLU(), nn.Linear(3, 1))
    assert _units(model, None) == [model[2], block[1], block[0]]   # every module with parameters of its own, bottom up
    assert _units(model, (nn.Linear,)) == [model[2], block[0]]
    assert _units(model, lambda m: m is block) == [block]
    embedding, out = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    out.weight = embedding.weight   # tied: neither is a unit, the model's own unit holds the weight
    tied = nn.Sequential(embedding, nn.Linear(5, 3), out)
    assert _units(tied, None) == [tied[1]]
    _check_tied(tied, _units(tied, None))
    with raises(ValueError, "DistributedS(strategy='fsdp'): the units that layers= picks share a parameter (0.weight and 2.weight are one "
                            "tensor: tied weights), which FSDP2 cannot shard in two units; expected layers= to leave such modules out "
                            "(their parameters then go to the model's own unit), or layers=None, which does"):
        _check_tied(tied, _units(tied, (nn.Embedding, nn.Linear)))
