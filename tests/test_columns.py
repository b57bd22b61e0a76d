"""`DataLoaders.from_hf_dd(..., inputs=, targets=)`: batches hold the named columns, inputs first, on both paths."""
import contextlib, math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import nn

import nntrain.dataloaders as dataloaders_module
from nntrain.dataloaders import DataLoaders, TensorLoader, hf_ds_collate_fn, load_mnist
from nntrain.learner import Learner, Subscriber


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch): monkeypatch.chdir(tmp_path)

@pytest.fixture(scope='module')
def small():
    "512 training and 256 validation digits, columns (image, label) as bundled."
    dd = load_mnist()
    return DatasetDict(train=dd['train'].select(range(512)), test=dd['test'].select(range(256)))

@pytest.fixture(scope='module')
def swapped(small):
    "The same digits with the columns the other way round: (label, image)."
    return DatasetDict({name: split.select_columns(['label', 'image']) for name, split in small.items()})

@pytest.fixture(scope='module')
def three(swapped):
    "(label, image, index): a third, integer column."
    return DatasetDict({name: split.add_column('index', list(range(len(split)))) for name, split in swapped.items()})

@contextlib.contextmanager
def raises(exc, message: str):
    "Expect `exc` whose message is exactly `message`."
    with pytest.raises(exc) as info: yield
    assert str(info.value) == message

def shapes(batch): return [(tuple(t.shape), t.dtype) for t in batch]

IMAGE, LABEL, INDEX = ((128, 784), torch.float32), ((128,), torch.int64), ((128,), torch.int64)

class RecordingCollate:
    "A collate function of the user's own (so the row-collating path is taken) that records the keys of the rows it gets."
    def __init__(self): self.keys = []
    def __call__(self, rows):
        self.keys.append(list(rows[0]))
        return hf_ds_collate_fn(rows)

class LossRecorder(Subscriber):
    def __init__(self): self.losses = []
    def after_loss(self, learn): self.losses.append(learn.loss.item())


def test_named_columns_train_one_epoch(swapped):
    dls = DataLoaders.from_hf_dd(swapped, 64, seed=0, inputs='image', targets='label')
    torch.manual_seed(0)
    recorder = LossRecorder()
    learn = Learner(nn.Sequential(nn.Linear(784, 10)), dls, F.cross_entropy, torch.optim.SGD, 0.1, [recorder])
    learn.fit(1)
    assert len(recorder.losses) == 512 // 64 + 256 // 128
    assert all(math.isfinite(loss) for loss in recorder.losses)

def test_by_position_the_swapped_dataset_fails_in_torch(swapped):
    "The fault the names fix: without them, batch[0] is the label column."
    dls = DataLoaders.from_hf_dd(swapped, 64)
    assert shapes(next(iter(dls.valid))) == [LABEL, IMAGE]
    learn = Learner(nn.Sequential(nn.Linear(784, 10)), dls, F.cross_entropy, torch.optim.SGD, 0.1)
    with pytest.raises(RuntimeError, match='dtype'): learn.fit(1)

ORDERS = [
    (dict(inputs='image', targets='label'), ['image', 'label'], [IMAGE, LABEL]),
    (dict(inputs=['image'], targets=('label',)), ['image', 'label'], [IMAGE, LABEL]),
    (dict(inputs='image'), ['image', 'label', 'index'], [IMAGE, LABEL, INDEX]),      # targets: the other columns
    (dict(targets='label'), ['image', 'index', 'label'], [IMAGE, INDEX, LABEL]),     # inputs: the other columns
    (dict(inputs=('index', 'image'), targets='label'), ['index', 'image', 'label'], [INDEX, IMAGE, LABEL]),
    (dict(inputs='image', targets=('index', 'label')), ['image', 'index', 'label'], [IMAGE, INDEX, LABEL]),
    (dict(inputs='index', targets='label'), ['index', 'label'], [INDEX, LABEL]),     # the image column is left out
    (dict(inputs='label', targets='image'), ['label', 'image'], [LABEL, IMAGE]),
]

@pytest.mark.parametrize('names, keys, expected', ORDERS)
def test_fast_path_order(three, names, keys, expected):
    dls = DataLoaders.from_hf_dd(three, 64, **names)
    assert isinstance(dls.train, TensorLoader) and isinstance(dls.valid, TensorLoader)
    assert list(dls.valid.columns) == keys and list(dls.train.columns) == keys
    assert dls.valid.dataset.column_names == keys
    assert shapes(next(iter(dls.valid))) == expected
    assert shapes(next(iter(dls.train))) == [((64, *shape[1:]), dtype) for shape, dtype in expected]

@pytest.mark.parametrize('names, keys, expected', ORDERS)
def test_fallback_order(three, names, keys, expected):
    collate = RecordingCollate()
    dls = DataLoaders.from_hf_dd(three, 64, collate_fn=collate, **names)
    assert type(dls.valid).__name__ == 'DataLoader'
    assert shapes(next(iter(dls.valid))) == expected
    assert shapes(next(iter(dls.train))) == [((64, *shape[1:]), dtype) for shape, dtype in expected]
    assert collate.keys == [keys, keys]

def test_both_paths_give_the_same_batches(three):
    fast = DataLoaders.from_hf_dd(three, 64, inputs=('index', 'image'), targets='label')
    rows = DataLoaders.from_hf_dd(three, 64, inputs=('index', 'image'), targets='label', collate_fn=RecordingCollate())
    for a, b in zip(fast.valid, rows.valid):
        assert len(a) == len(b) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))

def test_named_batches_match_the_unswapped_dataset(small, swapped):
    named = DataLoaders.from_hf_dd(swapped, 64, seed=3, inputs='image', targets='label')
    plain = DataLoaders.from_hf_dd(small, 64, seed=3)
    for dl_named, dl_plain in ((named.train, plain.train), (named.valid, plain.valid)):
        for a, b in zip(dl_named, dl_plain): assert all(torch.equal(x, y) for x, y in zip(a, b))

def test_flatten_partial_keeps_fast_path_and_order(swapped):
    dls = DataLoaders.from_hf_dd(swapped, 64, collate_fn=partial(hf_ds_collate_fn, flatten=False), inputs='image', targets='label')
    assert isinstance(dls.valid, TensorLoader)
    assert shapes(next(iter(dls.valid))) == [((128, 1, 28, 28), torch.float32), LABEL]

def test_dataloader_kwargs_path_order(swapped):
    dls = DataLoaders.from_hf_dd(swapped, 64, num_workers=0, inputs='image', targets='label')
    assert type(dls.valid).__name__ == 'DataLoader'
    assert shapes(next(iter(dls.valid))) == [IMAGE, LABEL]

def test_unchosen_text_column_keeps_fast_path(swapped):
    noted = DatasetDict({name: split.add_column('note', ['a digit'] * len(split)) for name, split in swapped.items()})
    assert type(DataLoaders.from_hf_dd(noted, 64).train).__name__ == 'DataLoader'
    dls = DataLoaders.from_hf_dd(noted, 64, inputs='image', targets='label')
    assert isinstance(dls.train, TensorLoader) and shapes(next(iter(dls.valid))) == [IMAGE, LABEL]

def test_only_chosen_columns_are_decoded(three, monkeypatch):
    def no_images(*args): raise AssertionError('an image column was decoded')
    monkeypatch.setattr(dataloaders_module, '_image_column', no_images)
    dls = DataLoaders.from_hf_dd(three, 64, inputs='index', targets='label')
    assert shapes(next(iter(dls.valid))) == [INDEX, LABEL]

def test_valid_may_have_extra_columns(swapped):
    extra = DatasetDict(train=swapped['train'], test=swapped['test'].add_column('note', ['x'] * len(swapped['test'])))
    dls = DataLoaders.from_hf_dd(extra, 64, inputs='image', targets='label')
    assert isinstance(dls.valid, TensorLoader) and list(dls.valid.columns) == ['image', 'label']

def test_unchanged_without_names(small, swapped):
    for dd in (small, swapped):
        dls, named_none = DataLoaders.from_hf_dd(dd, 64), DataLoaders.from_hf_dd(dd, 64, inputs=None, targets=None)
        assert dls.train.dataset is dd['train'] and dls.valid.dataset is dd['test']
        assert list(dls.valid.columns) == dd['test'].column_names
        for a, b in zip(dls.valid, named_none.valid): assert all(torch.equal(x, y) for x, y in zip(a, b))
    collate = RecordingCollate()
    rows = DataLoaders.from_hf_dd(swapped, 64, collate_fn=collate)
    assert rows.valid.dataset is swapped['test']
    assert shapes(next(iter(rows.valid))) == [LABEL, IMAGE] and collate.keys == [['label', 'image']]


TYPE_EXPECTED = "from_hf_dd expected {} to be a column name (str) or a non-empty tuple or list of column names, got "

@pytest.mark.parametrize('role', ['inputs', 'targets'])
@pytest.mark.parametrize('value, got', [
    (3, '3'), (b'image', "b'image'"), ({'image'}, 'a set'), ({'image': 0}, 'a dict'),
    ((), 'an empty tuple'), ([], 'an empty list'), (('image', 3), 'a tuple holding 3'), (['label', None], 'a list holding None'),
])
def test_wrong_type(swapped, role, value, got):
    with raises(TypeError, TYPE_EXPECTED.format(role) + got): DataLoaders.from_hf_dd(swapped, 64, **{role: value})

@pytest.fixture
def no_decoding(monkeypatch):
    "Every error below comes before any column is decoded."
    def refuse(*args, **kwargs): raise AssertionError('decoding started')
    monkeypatch.setattr(dataloaders_module, 'dataset_to_tensors', refuse)

@pytest.mark.parametrize('names, dd_name, message', [
    (dict(inputs='img'), 'swapped',
     "from_hf_dd expected inputs to name columns of the 'train' split, got 'img'; its columns are ['label', 'image']"),
    (dict(inputs='image', targets='lbl'), 'swapped',
     "from_hf_dd expected targets to name columns of the 'train' split, got 'lbl'; its columns are ['label', 'image']"),
    (dict(inputs=('img', 'image', 'pixels')), 'swapped',
     "from_hf_dd expected inputs to name columns of the 'train' split, got 'img', 'pixels'; its columns are ['label', 'image']"),
    (dict(inputs='index', targets='label'), 'no_index_in_valid',
     "from_hf_dd expected inputs to name columns of the 'test' split, got 'index'; its columns are ['label', 'image']"),
    (dict(inputs='image', targets='label'), 'no_image_in_valid',
     "from_hf_dd expected inputs to name columns of the 'test' split, got 'image'; its columns are ['label']"),
    (dict(inputs='image'), 'no_index_in_valid',
     "from_hf_dd expected the 'test' split to have the columns ['image', 'label', 'index'] chosen from the 'train' split, "
     "but it lacks ['index']; its columns are ['label', 'image']"),
    (dict(inputs='image', targets='image'), 'swapped',
     "from_hf_dd expected inputs and targets to name different columns, got 'image' in both"),
    (dict(inputs=('image', 'label'), targets=['index', 'label']), 'three',
     "from_hf_dd expected inputs and targets to name different columns, got 'label' in both"),
    (dict(inputs=('image', 'image')), 'swapped', "from_hf_dd expected inputs to name each column once, got 'image' more than once"),
    (dict(targets=['label', 'index', 'label']), 'three', "from_hf_dd expected targets to name each column once, got 'label' more than once"),
])
def test_wrong_names(request, swapped, three, no_decoding, names, dd_name, message):
    datasets = {'swapped': swapped, 'three': three,
                'no_index_in_valid': DatasetDict(train=three['train'], test=swapped['test']),
                'no_image_in_valid': DatasetDict(train=swapped['train'], test=swapped['test'].select_columns(['label']))}
    with raises(ValueError, message): DataLoaders.from_hf_dd(datasets[dd_name], 64, **names)
    with raises(ValueError, message): DataLoaders.from_hf_dd(datasets[dd_name], 64, collate_fn=RecordingCollate(), **names)

def test_splits_without_named_columns(no_decoding):
    rows = [{'image': 0, 'label': 1}] * 4
    with raises(TypeError, "from_hf_dd expected the 'train' split to be a Hugging Face Dataset, with named columns to choose "
                           "inputs and targets from, got a list"):
        DataLoaders.from_hf_dd({'train': rows, 'test': rows}, 2, collate_fn=len, inputs='image')
    assert next(iter(DataLoaders.from_hf_dd({'train': rows, 'test': rows}, 2, collate_fn=len).valid)) == 4  # unchanged without names

def test_other_arguments_are_checked_first(swapped):
    with raises(ValueError, "from_hf_dd expected batch_size to be an int >= 1 (not a bool), got 0"):
        DataLoaders.from_hf_dd(swapped, 0, inputs='img')


# -- text columns, and the validation split's column order -----------------------------------------------------------

@pytest.fixture(scope='module')
def noted(swapped):
    "(label, image, note): a text column."
    return DatasetDict({name: split.add_column('note', ['a digit'] * len(split)) for name, split in swapped.items()})

TEXT = ("from_hf_dd cannot batch the text column 'note' of the 'train' split (a Value('{}') feature; {}) with hf_ds_collate_fn, "
        "which makes tensors of images and numbers; leave it out of inputs and targets, or pass a collate_fn of your own")

@pytest.mark.parametrize('names, how', [
    (dict(inputs='image', targets='note'), 'targets names it'),
    (dict(inputs=('image', 'note'), targets='label'), 'inputs names it'),
    (dict(inputs='image'), 'targets, left out, takes the columns inputs does not name'),
    (dict(targets='label'), 'inputs, left out, takes the columns targets does not name'),
])
@pytest.mark.parametrize('collate', [{}, dict(collate_fn=hf_ds_collate_fn), dict(collate_fn=partial(hf_ds_collate_fn, flatten=False)),
                                     dict(num_workers=0)])
def test_a_chosen_text_column_is_refused_before_decoding(noted, no_decoding, names, how, collate):
    with raises(ValueError, TEXT.format('string', how)): DataLoaders.from_hf_dd(noted, 16, **collate, **names)

def test_a_large_string_column_is_refused_too(noted, no_decoding):
    large = DatasetDict({name: split.cast_column('note', split.features['note'].__class__('large_string')) for name, split in noted.items()})
    with raises(ValueError, TEXT.format('large_string', 'targets names it')): DataLoaders.from_hf_dd(large, 16, inputs='image', targets='note')

def test_a_text_column_only_in_the_validation_split_is_refused(swapped, noted, no_decoding):
    dd = DatasetDict(train=swapped['train'].add_column('note', list(range(len(swapped['train'])))), test=noted['test'])
    with raises(ValueError, TEXT.format('string', 'targets names it').replace("'train' split", "'test' split")):
        DataLoaders.from_hf_dd(dd, 16, inputs='image', targets='note')

def test_a_collate_fn_of_ones_own_takes_text_columns(noted):
    def with_notes(rows): return [hf_ds_collate_fn([{'image': row['image']} for row in rows])[0], [row['note'] for row in rows]]
    dls = DataLoaders.from_hf_dd(noted, 16, collate_fn=with_notes, inputs='image', targets='note')
    x, notes = next(iter(dls.valid))
    assert x.shape == (32, 784) and notes == ['a digit'] * 32

def test_without_names_a_text_column_still_builds(noted):
    dls = DataLoaders.from_hf_dd(noted, 16)   # SPEC: all columns, as before; the text fails at the first batch, in torch
    assert type(dls.train).__name__ == 'DataLoader' and dls.valid.dataset is noted['test']

def test_without_names_the_validation_split_follows_the_training_columns(small, swapped):
    mixed = DatasetDict(train=small['train'], test=swapped['test'])   # (image, label) and (label, image)
    fast = DataLoaders.from_hf_dd(mixed, 64)
    assert list(fast.train.columns) == list(fast.valid.columns) == ['image', 'label']
    assert fast.valid.dataset.column_names == ['image', 'label'] and shapes(next(iter(fast.valid))) == [IMAGE, LABEL]
    collate = RecordingCollate()
    rows = DataLoaders.from_hf_dd(mixed, 64, collate_fn=collate)
    assert shapes(next(iter(rows.valid))) == [IMAGE, LABEL] and collate.keys == [['image', 'label']]
    for a, b in zip(fast.valid, DataLoaders.from_hf_dd(small, 64).valid): assert all(torch.equal(x, y) for x, y in zip(a, b))

def test_without_names_other_column_sets_keep_their_own_order(swapped):
    extra = DatasetDict(train=swapped['train'].select_columns(['image', 'label']), test=swapped['test'].add_column('index', [0] * 256))
    rows = DataLoaders.from_hf_dd(extra, 64, collate_fn=RecordingCollate())
    assert rows.valid.dataset is extra['test']


# -- missing values, ragged columns, and targets that take every column ---------------------------------------------

MISSING = ("{who}: column '{name}'{split} has {n} (the first at row {row}); "
           "expected a value in every row: fill them (ds.map) or drop those rows (ds.filter)")

@pytest.fixture(scope='module')
def eight():
    "8 training and 8 validation digits, (image, label)."
    dd = load_mnist()
    return DatasetDict({name: split.select(range(8)) for name, split in dd.items()})

def with_column(dd, name, values, splits=('train', 'test')):
    return DatasetDict({k: v.add_column(name, values) if k in splits else v.add_column(name, [0] * len(v)) for k, v in dd.items()})

GAP = [None if i == 5 else 3 for i in range(8)]

@pytest.mark.parametrize('kwargs', [dict(inputs='image', targets='k'), {}, dict(num_workers=0), dict(collate_fn=hf_ds_collate_fn),
                                    dict(collate_fn=partial(hf_ds_collate_fn, flatten=False), inputs='image')])
def test_missing_int_values_are_refused_when_built(eight, no_decoding, kwargs):
    "Once the fast path gave -9223372036854775808 at row 5, and the row path torch's 'Could not infer dtype of NoneType'."
    with raises(ValueError, MISSING.format(who='from_hf_dd', name='k', split=" of the 'train' split", n='1 missing value', row=5)):
        DataLoaders.from_hf_dd(with_column(eight, 'k', GAP), 8, **kwargs)

def test_missing_float_values_and_the_validation_split(eight, no_decoding):
    "Once nan; here only the validation split has gaps, two of them."
    dd = with_column(eight, 'f', [None if i in (2, 6) else 0.5 for i in range(8)], splits=('test',))
    with raises(ValueError, MISSING.format(who='from_hf_dd', name='f', split=" of the 'test' split", n='2 missing values', row=2)):
        DataLoaders.from_hf_dd(dd, 8, targets='f')

def test_missing_values_are_counted_in_the_rows_a_split_selects(eight):
    dd = with_column(eight, 'k', GAP)
    shuffled = DatasetDict({k: v.shuffle(seed=0) for k, v in dd.items()})
    row = shuffled['train']['k'].index(None)
    with raises(ValueError, MISSING.format(who='from_hf_dd', name='k', split=" of the 'train' split", n='1 missing value', row=row)):
        DataLoaders.from_hf_dd(shuffled, 8)
    without = DatasetDict({k: v.select([i for i in range(8) if i != 5]) for k, v in dd.items()})   # the table has a null, the rows none
    dls = DataLoaders.from_hf_dd(without, 4, inputs='image', targets='k')
    assert isinstance(dls.valid, TensorLoader) and next(iter(dls.valid))[1].tolist() == [3] * 7

def test_unchosen_missing_values_and_own_collate_fn_are_fine(eight):
    dd = with_column(eight, 'k', GAP)
    assert shapes(next(iter(DataLoaders.from_hf_dd(dd, 4, inputs='image', targets='label').valid))) == [((8, 784), torch.float32), ((8,), torch.int64)]
    rows = DataLoaders.from_hf_dd(dd, 4, collate_fn=lambda rows: [row['k'] for row in rows], inputs='k')
    assert next(iter(rows.valid)) == GAP

def test_dataset_to_tensors_refuses_missing_values(eight, monkeypatch):
    def no_images(*args): raise AssertionError('an image column was decoded')
    monkeypatch.setattr(dataloaders_module, '_image_column', no_images)
    ds = with_column(eight, 'k', GAP)['train']
    with raises(ValueError, MISSING.format(who='dataset_to_tensors', name='k', split='', n='1 missing value', row=5)):
        dataloaders_module.dataset_to_tensors(ds)
    named = Dataset.from_dict({'k': [1, None, None]}, split='train')
    with raises(ValueError, MISSING.format(who='dataset_to_tensors', name='k', split=" of the 'train' split", n='2 missing values', row=1)):
        dataloaders_module.dataset_to_tensors(named)

RAGGED = ("hf_ds_collate_fn cannot make one tensor of column 'v' (rows of different lengths?): expected sequence of length 3 at dim 1 "
          "(got 1); pass a collate_fn of your own that pads it")

def test_a_ragged_column_is_named_at_the_first_batch(eight):
    dd = with_column(eight, 'v', [[1.0] * (i % 3 + 1) for i in range(8)])
    dls = DataLoaders.from_hf_dd(dd, 2, inputs=('image', 'v'))
    rows = [{'v': [1.0] * 3}, {'v': [1.0]}]
    with raises(ValueError, RAGGED): hf_ds_collate_fn(rows)
    with pytest.raises(ValueError, match=r"^hf_ds_collate_fn cannot make one tensor of column 'v' \(rows of different lengths\?\): "
                                         r"expected sequence of length \d at dim 1 \(got \d\); pass a collate_fn of your own that pads it$"):
        next(iter(dls.valid))

def test_other_columns_that_cannot_become_tensors_are_named():
    with raises(RuntimeError, "hf_ds_collate_fn cannot make one tensor of column 'k' (it holds a missing value, None): Could not infer "
                              "dtype of NoneType; fill them (ds.map), drop those rows (ds.filter) or pass a collate_fn of your own"):
        hf_ds_collate_fn([{'k': 1}, {'k': None}])
    with raises(ValueError, "hf_ds_collate_fn cannot make one tensor of column 'note': too many dimensions 'str'; "
                            "pass a collate_fn of your own that batches it"):
        hf_ds_collate_fn([{'note': 'a'}, {'note': 'b'}])

ALL_TARGETS = ("from_hf_dd: targets names every column of the 'train' split, which leaves no inputs (inputs, left out, takes the "
               "columns targets does not name); leave the input columns out of targets, or name them as inputs")

@pytest.mark.parametrize('targets', [('image', 'label'), ['label', 'image']])
@pytest.mark.parametrize('collate', [{}, dict(collate_fn=RecordingCollate())])
def test_targets_naming_every_column_is_refused(swapped, no_decoding, targets, collate):
    with raises(ValueError, ALL_TARGETS): DataLoaders.from_hf_dd(swapped, 64, targets=targets, **collate)

def test_inputs_naming_every_column_leave_no_targets(small):
    "Allowed: a dataset of images alone, for a Learner with targets=None."
    images = DatasetDict({k: v.select_columns(['image']) for k, v in small.items()})
    assert shapes(next(iter(DataLoaders.from_hf_dd(images, 64, inputs='image').valid))) == [IMAGE]
    assert shapes(next(iter(DataLoaders.from_hf_dd(small, 64, inputs=('label', 'image')).valid))) == [LABEL, IMAGE]
