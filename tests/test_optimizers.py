"Issue 12, point 4: named optimizers with the step subscribers of chapter 04 (schedules, mixed precision, clipping, accumulation, the recorder)."
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, StepLR

from nntrain.acceleration import GradAccumS, GradClipS, MixedPrecisionS, RecorderS, SchedulerS, fit_one_cycle
from nntrain.checkpoints import CheckpointS, checkpoints
from nntrain.core import CheckpointError
from nntrain.dataloaders import DataLoaders
from nntrain.learner import Learner, MetricsS, Subscriber

NAMES = {'critic': 'critic', 'generator': 'generator'}

def data(n_train=6, n_valid=2, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(bs, 6, generator=g) + 2, torch.zeros(bs, dtype=torch.long))
    return DataLoaders([make() for _ in range(n_train)], [make() for _ in range(n_valid)])

class GAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 6))
        self.critic = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

class GANLearner(Learner):
    "The critic's phase scores real rows against generated ones; the generator's asks the critic to call its rows real."
    def predict(self):
        real = self.batch[0]
        fake = self.model.generator(torch.randn(len(real), 2))
        self.preds = self.model.critic(torch.cat([real, fake.detach()]) if self.opt_name == 'critic' else fake)

    def get_loss(self):
        n = len(self.batch[0])
        if self.opt_name == 'critic':
            self.loss = F.binary_cross_entropy_with_logits(self.preds, torch.cat([torch.ones(n, 1), torch.zeros(n, 1)]))
            self.log('d_loss', self.loss.detach())
        else:
            self.loss = F.binary_cross_entropy_with_logits(self.preds, torch.ones_like(self.preds))
            self.log('g_loss', self.loss.detach())

def quiet_metrics():
    metrics = MetricsS(); metrics.output = lambda log: None
    return metrics

def gan(*subs, optimizers=NAMES, lr=1e-2, dls=None, optim_class=torch.optim.Adam):
    torch.manual_seed(0)
    return GANLearner(GAN(), dls or data(), None, optim_class, lr, [quiet_metrics(), *subs], optimizers=optimizers)

def schedules():
    return SchedulerS({'critic': partial(OneCycleLR, max_lr=1e-2), 'generator': CosineAnnealingLR})

def weights(learn): return {k: v.clone() for k, v in learn.model.state_dict().items()}

def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k

# -- a GAN step: schedules per optimizer and an exact resume ----------------------------------------------------------

def test_gan_with_a_schedule_on_each_optimizer_resumes_bitwise_from_a_mid_epoch_checkpoint(tmp_path):
    unbroken = gan(schedules(), CheckpointS(tmp_path, every_batches=4, every_epochs=None, keep=100))
    unbroken.fit(3)
    files = checkpoints(tmp_path)
    assert [f.name for f in files][:2] == ['checkpoint-e0000-b00000004.pt', 'checkpoint-e0001-b00000008.pt']
    assert list(unbroken.state_dict()['opt']) == ['critic', 'generator']
    sched = unbroken.subs[1]
    assert sched.steps == {'critic': 18, 'generator': 18}
    assert list(sched.state_dict()['schedulers']) == ['critic', 'generator']
    mid = tmp_path/'checkpoint-e0001-b00000008.pt'   # after the 2nd batch of the second epoch
    resumed = gan(schedules(), CheckpointS(tmp_path/'resumed', every_batches=4, every_epochs=None, keep=100))
    resumed.fit(3, resume=mid)
    assert_same_weights(weights(resumed), weights(unbroken))
    assert resumed.subs[1].steps == {'critic': 18, 'generator': 18}
    for name in NAMES:
        assert resumed.subs[1].schedulers[name].state_dict() == sched.schedulers[name].state_dict()
        assert resumed.opts[name].state_dict()['state'][0]['step'] == unbroken.opts[name].state_dict()['state'][0]['step'] == 18
    assert resumed.subs[0].history == unbroken.subs[0].history
    assert [k for k in unbroken.subs[0].history[-1]] == ['epoch', 'mode', 'loss', 'd_loss', 'g_loss']

def test_fit_then_resume_in_a_longer_fit_equals_one_unbroken_fit_with_per_epoch_schedules(tmp_path):
    per_epoch = lambda: SchedulerS(partial(StepLR, step_size=1, gamma=0.5), per='epoch')
    unbroken = gan(per_epoch(), recorder := RecorderS())
    unbroken.fit(4)
    first = gan(per_epoch(), CheckpointS(tmp_path/'first', every_epochs=1))
    first.fit(2)
    second = gan(per_epoch(), CheckpointS(tmp_path/'second', every_epochs=1))
    second.fit(4, resume=tmp_path/'first')
    assert_same_weights(weights(second), weights(unbroken))
    assert unbroken.subs[1].steps == {'critic': 4, 'generator': 4} == second.subs[1].steps
    for name in NAMES:   # each epoch halves each optimizer's rate; the recorder saw it per optimizer
        assert recorder.lrs_by_optimizer[name] == [1e-2 * 0.5 ** (i // 6) for i in range(24)]
        assert second.opts[name].param_groups[0]['lr'] == 1e-2 * 0.5 ** 4
    assert recorder.lrs is recorder.lrs_by_optimizer['critic']

def test_fit_one_cycle_puts_a_cycle_on_each_optimizer_up_to_its_own_rate():
    learn = gan(recorder := RecorderS(), optimizers={'critic': ('critic', torch.optim.Adam, 4e-3), 'generator': 'generator'})
    fit_one_cycle(learn, 2)
    assert {name: opt.param_groups[0]['max_lr'] for name, opt in learn.opts.items()} == {'critic': 4e-3, 'generator': 1e-2}
    assert max(recorder.lrs_by_optimizer['critic']) == pytest.approx(4e-3, rel=2e-2)
    assert {name: len(lrs) for name, lrs in recorder.lrs_by_optimizer.items()} == {'critic': 12, 'generator': 12}
    fit_one_cycle(learn, 1, max_lr={'generator': 2e-2})
    assert {name: opt.param_groups[0]['max_lr'] for name, opt in learn.opts.items()} == {'critic': 4e-3, 'generator': 2e-2}
    fit_one_cycle(learn, 1, max_lr=3e-2)
    assert {name: opt.param_groups[0]['max_lr'] for name, opt in learn.opts.items()} == {'critic': 3e-2, 'generator': 3e-2}
    with pytest.raises(ValueError) as e: fit_one_cycle(learn, 1, max_lr={'gen': 2e-2})
    assert str(e.value) == ("fit_one_cycle was given max_lr for the optimizers ['gen'], but this learner has no ['gen']; "
                            "its optimizers are ['critic', 'generator']")

def test_a_schedule_for_some_optimizers_only():
    learn = gan(sched := SchedulerS({'generator': partial(StepLR, step_size=1, gamma=0.5)}), recorder := RecorderS())
    learn.fit(1, valid=False)
    assert list(sched.schedulers) == ['generator'] and sched.steps == 6
    assert sched.scheduler is sched.schedulers['generator']
    assert recorder.lrs_by_optimizer['critic'] == [1e-2] * 6
    assert recorder.lrs_by_optimizer['generator'] == [1e-2 * 0.5 ** i for i in range(6)]

# -- the schedules' state, by optimizer name ----------------------------------------------------------------------

def test_a_checkpoint_of_other_optimizer_names_is_refused(tmp_path):
    learn = gan(schedules(), CheckpointS(tmp_path, every_epochs=1))
    learn.fit(1)
    other = gan(SchedulerS({'d': partial(OneCycleLR, max_lr=1e-2), 'g': CosineAnnealingLR}), optimizers={'d': 'critic', 'g': 'generator'})
    with pytest.raises(CheckpointError) as e: other.fit(2, resume=tmp_path)
    assert "the checkpoint holds the optimizers ['critic', 'generator'], but this learner has ['d', 'g']; expected the same names" in str(e.value)
    sched = SchedulerS({'d': partial(OneCycleLR, max_lr=1e-2), 'g': CosineAnnealingLR})
    gan(sched, optimizers={'d': 'critic', 'g': 'generator'}).fit(1, valid=False)
    with pytest.raises(ValueError) as e: sched.load_state_dict(learn.subs[1].state_dict())
    assert str(e.value) == ("the checkpoint holds the schedules of the optimizers ['critic', 'generator'], but this SchedulerS "
                            "schedules ['d', 'g']; expected the same names")

def test_a_resumed_schedule_of_one_optimizer_with_other_bounds_is_refused_naming_it(tmp_path):
    gan(schedules(), CheckpointS(tmp_path, every_epochs=1)).fit(2)
    changed = SchedulerS({'critic': partial(OneCycleLR, max_lr=2e-2), 'generator': CosineAnnealingLR})
    learn = gan(changed)
    with pytest.raises(CheckpointError) as e: learn.fit(3, resume=tmp_path/'checkpoint-e0000-b00000006.pt')
    assert "the checkpoint's OneCycleLR of optimizer 'critic' has another schedule: total_steps=12 in the checkpoint, 18 now; " in str(e.value)
    assert str(e.value).endswith("max_lr=0.01 in the checkpoint, 0.02 now; expected the same epochs and scheduler arguments as the run that wrote it)")
    learn = gan(changed)
    with pytest.raises(CheckpointError) as e: learn.fit(2, resume=tmp_path/'checkpoint-e0000-b00000006.pt')
    assert ("the checkpoint's OneCycleLR of optimizer 'critic' has another schedule: max_lr=0.01 in the checkpoint, 0.02 now; "
            "expected the same epochs") in str(e.value)
    assert 'generator' not in str(e.value)

def test_single_and_named_schedule_states_do_not_mix():
    torch.manual_seed(0)
    single = Learner(nn.Linear(6, 2), data(), F.cross_entropy, torch.optim.SGD, 0.1, [one := SchedulerS(partial(StepLR, step_size=1))])
    single.fit(1, valid=False)
    assert list(one.state_dict()) == ['scheduler', 'steps'] and one.state_dict()['steps'] == 6   # today's format, unchanged
    two = SchedulerS(partial(StepLR, step_size=1))
    gan(two).fit(1, valid=False)
    with pytest.raises(ValueError) as e: two.load_state_dict(one.state_dict())
    assert str(e.value) == ("the checkpoint holds the schedule of one optimizer, but this SchedulerS schedules the named optimizers "
                            "['critic', 'generator']; expected a checkpoint of a run with the same optimizers=")
    with pytest.raises(ValueError) as e: one.load_state_dict(two.state_dict())
    assert str(e.value) == ("the checkpoint holds the schedules of the named optimizers ['critic', 'generator'], but this "
                            "learner has one optimizer; expected a checkpoint of a run with the same optimizers=")
    with pytest.raises(AttributeError) as e: two.scheduler
    assert str(e.value) == ("SchedulerS.scheduler is the scheduler of a single optimizer; this one schedules ['critic', 'generator']: "
                            "use schedulers[name]")

def test_scheduler_arguments_are_checked():
    with pytest.raises(ValueError) as e: gan(SchedulerS({'crit': StepLR})).fit(1)
    assert str(e.value) == ("SchedulerS was given schedules for the optimizers ['crit'], but this learner has no ['crit']; "
                            "its optimizers are ['critic', 'generator']")
    with pytest.raises(TypeError) as e: SchedulerS({'critic': 3})
    assert str(e.value) == "SchedulerS expected make to be a dict of optimizer names (str) to scheduler classes or partials, got 'critic': 3"
    with pytest.raises(TypeError) as e: SchedulerS({})
    assert str(e.value) == "SchedulerS expected make to be a dict of optimizer names (str) to scheduler classes or partials, got an empty dict"
    with pytest.raises(TypeError) as e: SchedulerS('OneCycleLR')
    assert str(e.value) == ("SchedulerS expected make to be a scheduler class or a partial of one, called as make(optimizer), "
                            "or a dict of them by optimizer name; got 'OneCycleLR'")
    torch.manual_seed(0)
    single = Learner(nn.Linear(6, 2), data(), F.cross_entropy, torch.optim.SGD, 0.1)
    with pytest.raises(TypeError) as e: fit_one_cycle(single, 1, max_lr={'opt': 0.1})
    assert str(e.value) == "fit_one_cycle was given max_lr by optimizer name (['opt']), but this learner has one optimizer; expected a number"

# -- the step subscribers with two optimizers ----------------------------------------------------------------------

class PhaseLog(Subscriber):
    "The dtype of each phase's predictions and the gradient norm each phase's optimizer steps with."
    order = GradClipS.order + 1
    def before_fit(self, learn): self.dtypes, self.norms = [], {}
    def after_predict(self, learn): self.dtypes.append((learn.training, learn.opt_name, learn.preds.dtype))
    def before_step(self, learn):
        grads = [p.grad.flatten() for g in learn.opt.param_groups for p in g['params']]
        self.norms.setdefault(learn.opt_name, []).append(torch.cat(grads).norm().item())

def test_mixed_precision_and_clipping_work_phase_by_phase():
    learn = gan(MixedPrecisionS(), GradClipS(0.1), log := PhaseLog())
    learn.fit(1)
    assert {dtype for _, _, dtype in log.dtypes} == {torch.bfloat16}
    assert [(t, n) for t, n, _ in log.dtypes[:4]] == [(True, 'critic'), (True, 'generator')] * 2
    assert {n for t, n, _ in log.dtypes if not t} == {'critic', 'generator'}   # validation runs the phases too, under autocast
    assert list(log.norms) == ['critic', 'generator'] and all(len(v) == 6 for v in log.norms.values())
    assert max(n for v in log.norms.values() for n in v) <= 0.1 + 1e-5
    unclipped = gan(MixedPrecisionS(), log := PhaseLog())
    unclipped.fit(1)
    assert min(max(v) for v in log.norms.values()) > 0.1   # both optimizers' gradients were larger
    assert {p.dtype for p in learn.model.parameters()} == {torch.float32}
    assert not torch.is_autocast_enabled('cpu')

def test_clipping_one_optimizer_clips_what_it_steps_and_equals_clipping_the_model():
    def run(clip):
        torch.manual_seed(0)
        learn = Learner(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), data(), F.cross_entropy, torch.optim.SGD, 0.5, [clip])
        learn.fit(2)
        return weights(learn)
    class ModelClip(Subscriber):
        order = 20
        def before_step(self, learn): nn.utils.clip_grad_norm_(learn.model.parameters(), 0.05)
    assert_same_weights(run(GradClipS(0.05)), run(ModelClip()))
    clip = GradClipS(0.05)
    learn = gan(clip)
    learn.fit(1)
    assert len(clip.params) == 0   # the cache is dropped with the fit's optimizers
    learn = gan(clip)
    critic_params = {id(p) for p in learn.model.critic.parameters()}
    seen = []
    class Peek(Subscriber):
        order = 21
        def before_step(self, learn): seen.append({id(p) for params in clip.params.values() for p in params})
    learn.fit(1, valid=False, subs=[Peek()])
    assert seen[0] == critic_params and len(clip.params) == 0

class PoisonGenerator(Subscriber):
    "An infinite generator loss at training batch `at`."
    order = 5
    def __init__(self, at): self.at = at
    def after_loss(self, learn):
        if learn.training and learn.iter == self.at and learn.opt_name == 'generator': learn.loss = learn.loss * math.inf

def test_float16_loss_scaling_skips_only_the_overflowing_phase():
    mp = MixedPrecisionS(dtype=torch.float16, scaling=True)
    learn = gan(mp, PoisonGenerator(2), log := PhaseLog(), optim_class=torch.optim.SGD)
    learn.fit(1, valid=False)
    assert mp.skipped_steps == 1
    assert {name: len(v) for name, v in log.norms.items()} == {'critic': 6, 'generator': 5}   # the poisoned phase took no step
    assert mp.scaler.get_scale() < 2.0 ** 16
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())

def test_gradient_accumulation_refuses_named_optimizers():
    learn = gan(GradAccumS(2))
    with pytest.raises(ValueError) as e: learn.fit(1)
    assert str(e.value) == ("GradAccumS accumulates gradients over 2 batches, but this learner has the named optimizers "
                            "['critic', 'generator'], whose phases zero every gradient after each one's step, so nothing carries over "
                            "to the next batch; expected a Learner with one optimizer (no optimizers=)")
    assert 'grad_accumulation' not in learn.__dict__

# -- the learner's checks of `optimizers=` (02) --------------------------------------------------------------------

@pytest.mark.parametrize('optimizers, error, message', [
    ({'critic': 'critc'}, ValueError,
     "Learner expected optimizers['critic'] to name a submodule of the model, got 'critc'; its submodules are ['generator', 'critic']"),
    ({'critic': 'critic', 'both': lambda m: [m.critic[0].weight, *m.generator.parameters()]}, ValueError,
     "Learner expected each parameter to belong to one optimizer, but optimizers 'critic' and 'both' share parameters; give each its own part of the model"),
    ({'1critic': 'critic'}, ValueError,
     "Learner expected each optimizer's name to be an identifier (it names a phase, a checkpoint entry and a log column) "
     "other than 'state' and 'param_groups', got '1critic'"),
    ({'param_groups': 'critic'}, ValueError,
     "Learner expected each optimizer's name to be an identifier (it names a phase, a checkpoint entry and a log column) "
     "other than 'state' and 'param_groups', got 'param_groups'"),
    ({'critic': 'GENERATOR'.lower(), 'generator': ('critic', torch.optim.SGD, 0)}, ValueError,
     "Learner (optimizers['generator']) expected lr to be a finite number > 0 and at most 3.4e+38 (the largest float32), got 0"),
    ({'critic': lambda m: []}, ValueError, "Learner expected optimizers['critic'] to have parameters to step, got none from the function <lambda>"),
])
def test_named_optimizers_are_checked(optimizers, error, message):
    with pytest.raises(error) as e: Learner(GAN(), data(), None, torch.optim.SGD, 0.1, optimizers=optimizers)
    assert str(e.value) == message

def test_a_generator_of_parameters_is_refused():
    model = GAN()
    with pytest.raises(TypeError) as e: Learner(model, data(), None, torch.optim.SGD, 0.1, optimizers={'critic': model.critic.parameters()})
    assert str(e.value).startswith("Learner expected optimizers['critic'] to be the parameters it steps (a submodule's name, a module, or a function "
                                   "of the model), alone or as (parameters, optim_class) or (parameters, optim_class, lr); got a generator (a generator "
                                   "is used up after one fit, and optimizers are built at each: pass a function of the model")
    learn = Learner(model, data(), None, torch.optim.SGD, 0.1, optimizers={'critic': lambda m: m.critic.parameters(), 'generator': model.generator})
    assert [len(list(ps)) for ps in (learn.optimizers['critic'][0](model), model.generator.parameters())] == [4, 4]   # a function is called at each fit

# -- each phase starts from zero gradients -----------------------------------------------------

def test_each_phase_starts_with_zero_gradients():
    class Plain(GANLearner):
        zero_grad = Learner.zero_grad
    class Grads(Subscriber):
        def before_fit(self, learn): self.dirty = []
        def before_phase(self, learn):
            self.dirty += [(learn.iter, learn.opt_name, n) for n, p in learn.model.named_parameters() if p.grad is not None and p.grad.any()]
    torch.manual_seed(0)
    learn = Plain(GAN(), data(), None, torch.optim.SGD, 0.1, [quiet_metrics(), grads := Grads()], optimizers=NAMES)
    learn.fit(1, valid=False)
    assert grads.dirty == []


def test_a_learner_with_named_optimizers_evaluates_before_any_fit():
    "Found by the break-it pass of issue 16: get_preds and evaluate before the first fit failed on the missing optimizers."
    from nntrain.dataloaders import DataLoaders
    from nntrain.learner import Learner, MetricsS
    from nntrain.trial import get_preds, evaluate   # noqa: F401 (they add Learner.get_preds and Learner.evaluate)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    seen = []
    class Phases(MetricsS):
        def before_phase(self, learn): seen.append(learn.opt_name)
    learn = Learner(model, DataLoaders([(x, y)], [(x, y)]), F.cross_entropy, subs=[Phases()], optimizers={'first': '0', 'second': '1'})
    preds, targets = learn.get_preds()
    assert preds.shape == (12, 3) and seen == ['first', 'second']
    assert set(learn.evaluate()) >= {'loss'}
