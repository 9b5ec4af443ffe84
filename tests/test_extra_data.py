"""Extra training data mixed into every batch (``config.data.extra``): the batches' make-up,
the order's reproducibility and resume, share 0 changing nothing, the one-line refusals, the
``npy`` memory-mapped source, and runs that train with it (in process, and on 2 devices)."""

import os

import chex
import jax
import launching
import numpy as np
import pytest

from lclmt_jax import config_schema, configs, data, input_pipeline, run_files, train, validation
from lclmt_jax.data import extra as extra_data

SEED = 3


def small_dataset(num_train=40, num_test=10, shape=(2, 2, 1), classes=4, offset=0):
    """Images whose pixels number the rows (row i holds i + offset in its first pixel), labels
    cycling through the classes: every gathered row can be traced back."""
    def split(count, start):
        images = np.zeros((count, *shape), np.uint8)
        images.reshape(count, -1)[:, 0] = (np.arange(count) + start) % 256
        images.reshape(count, -1)[:, 1] = (np.arange(count) + start) // 256
        return images, (np.arange(count) % classes).astype(np.int32)

    train_split, test_split = split(num_train, offset), split(num_test, 0)
    return data.Dataset(*train_split, *test_split, num_classes=classes, name='small')


def row_ids(images, offset=0):
    flat = images.reshape(len(images), -1).astype(int)
    return flat[:, 0] + 256 * flat[:, 1] - offset


def write_npy(directory, images, labels, test=None):
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, 'x_train.npy'), images)
    np.save(os.path.join(directory, 'y_train.npy'), labels)
    if test is not None:
        np.save(os.path.join(directory, 'x_test.npy'), test[0])
        np.save(os.path.join(directory, 'y_test.npy'), test[1])
    return str(directory)


def mixed_config(batch_size=8, share=0.75, source='npy', path=''):
    config = config_schema.default_config()
    config.update(seed=SEED, batch_size=batch_size, eval_batch_size=batch_size)
    config.data.extra.update(source=source, path=path, share=share)
    return config


def as_extra(dataset, config):
    per_batch = extra_data.split_batch(config.batch_size, config.data.extra.share)[1]
    return extra_data.ExtraData(dataset.train_images, dataset.train_labels, dataset.num_classes,
                                dataset.name, per_batch)


# the batches -----------------------------------------------------------------------------------

@pytest.mark.fast
def test_every_batch_is_its_real_rows_then_its_extra_rows():
    real, more = small_dataset(40), small_dataset(1000, offset=5000)
    config = mixed_config(batch_size=8, share=0.75)  # 2 real + 6 extra per batch
    extra = as_extra(more, config)
    batches = list(input_pipeline.train_batches(config, real, extra)(2))
    assert len(batches) == 40 // 8  # the steps of a run without extra data
    real_order = input_pipeline.epoch_order(SEED, 2, 40)
    extra_order = input_pipeline.extra_order(SEED, 2, 1000, 5 * 6)
    for step, (images, labels) in enumerate(batches):
        chex.assert_shape(images, (8, 2, 2, 1))
        np.testing.assert_array_equal(row_ids(images[:2]), real_order[2 * step:2 * step + 2])
        np.testing.assert_array_equal(row_ids(images[2:], 5000),
                                      extra_order[6 * step:6 * step + 6])
        np.testing.assert_array_equal(labels[:2], real.train_labels[row_ids(images[:2])])
        np.testing.assert_array_equal(labels[2:], more.train_labels[row_ids(images[2:], 5000)])


@pytest.mark.fast
def test_share_zero_gives_exactly_the_batches_of_a_run_without_extra_data(tmp_path):
    real = small_dataset(44)
    config = mixed_config(batch_size=8, share=0.0, path=write_npy(tmp_path, *small_dataset(
        9)[:2]))
    assert extra_data.load(config) is None  # a source named but no share: off
    order = input_pipeline.epoch_order(SEED, 1, 44)
    batches = list(input_pipeline.train_batches(config, real)(1))
    assert len(batches) == 5  # the last partial batch dropped, as always
    for step, (images, labels) in enumerate(batches):
        rows = order[8 * step:8 * step + 8]
        np.testing.assert_array_equal(images, real.train_images[rows])
        np.testing.assert_array_equal(labels, real.train_labels[rows])
    default = config_schema.default_config().data.extra
    assert (default.source, default.share) == ('', 0.0)
    assert not extra_data.enabled(config_schema.default_config().data)


@pytest.mark.fast
def test_processes_split_the_same_global_batch_across_the_real_extra_boundary(monkeypatch):
    """2 processes (faked) each gather their half of the 2 real + 6 extra rows (process 0: the
    2 real and 2 extra, process 1: 4 extra): together, the batch of 1 process."""
    real, more = small_dataset(40), small_dataset(300, offset=1000)
    config = mixed_config(batch_size=8, share=0.75)
    extra = as_extra(more, config)
    whole = list(input_pipeline.train_batches(config, real, extra)(1))
    halves = []
    monkeypatch.setattr(jax, 'process_count', lambda: 2)
    for index in (0, 1):
        monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
        halves.append(list(input_pipeline.train_batches(config, real, extra)(1)))
    for step, (images, labels) in enumerate(whole):
        chex.assert_shape(halves[0][step][0], (4, 2, 2, 1))
        np.testing.assert_array_equal(np.concatenate([halves[0][step][0], halves[1][step][0]]),
                                      images)
        np.testing.assert_array_equal(np.concatenate([halves[0][step][1], halves[1][step][1]]),
                                      labels)


# the order -------------------------------------------------------------------------------------

@pytest.mark.fast
def test_the_extra_order_is_a_stream_of_permutations_that_any_epoch_resumes():
    num_extra, per_epoch = 50, 35
    epochs = [input_pipeline.extra_order(SEED, epoch, num_extra, per_epoch)
              for epoch in range(1, 6)]
    stream = np.concatenate([input_pipeline.extra_pass_order(SEED, index, num_extra)
                             for index in range(4)])
    np.testing.assert_array_equal(np.concatenate(epochs), stream[:5 * per_epoch])
    for index in range(3):  # each pass shows every extra image once
        np.testing.assert_array_equal(np.sort(stream[index * num_extra:(index + 1) * num_extra]),
                                      np.arange(num_extra))
    # computed afresh (a resumed run) epoch 4's rows are the same
    np.testing.assert_array_equal(input_pipeline.extra_order(SEED, 4, num_extra, per_epoch),
                                  epochs[3])
    assert not np.array_equal(input_pipeline.extra_order(SEED + 1, 4, num_extra, per_epoch),
                              epochs[3])
    # a small extra set is cycled through many passes within one epoch
    many = input_pipeline.extra_order(SEED, 2, 3, 10)
    np.testing.assert_array_equal(many, np.concatenate([input_pipeline.extra_pass_order(
        SEED, index, 3) for index in range(3, 7)])[1:11])
    assert not np.array_equal(input_pipeline.extra_pass_order(SEED, 1, 40),
                              input_pipeline.epoch_order(SEED, 1, 40))


# the npy source --------------------------------------------------------------------------------

@pytest.mark.fast
def test_the_npy_source_maps_its_images_and_gathers_rows_from_the_map(tmp_path):
    whole = small_dataset(30, 7)
    directory = write_npy(tmp_path / 'set', whole.train_images, whole.train_labels,
                          (whole.test_images, whole.test_labels))
    config = mixed_config()
    config.data.update(source='npy', path=directory)
    dataset = data.load_dataset(config.data)
    assert isinstance(dataset.train_images, np.memmap) and dataset.num_classes == 4
    rows = np.array([17, 3, 29, 3, 0])
    np.testing.assert_array_equal(input_pipeline.gather_rows(dataset.train_images, rows),
                                  whole.train_images[rows])
    config.data.extra.path = directory
    extra = extra_data.load(config)
    assert isinstance(extra.images, np.memmap) and extra.per_batch == 6
    np.testing.assert_array_equal(extra.labels, whole.train_labels)
    os.remove(os.path.join(directory, 'x_test.npy'))  # an extra set needs the train pair only
    assert len(extra_data.load(config).labels) == 30
    with pytest.raises(ValueError, match='lacks x_test.npy'):
        data.validate_data_config(config.data)


@pytest.mark.fast
def test_an_npz_extra_set_needs_only_its_train_arrays(tmp_path):
    whole = small_dataset(12)
    path = str(tmp_path / 'extra.npz')
    np.savez(path, x_train=whole.train_images, y_train=whole.train_labels)
    config = mixed_config(source='npz', path=path, share=0.5)
    extra = extra_data.load(config)
    np.testing.assert_array_equal(extra.images, whole.train_images)
    assert (extra.num_classes, extra.per_batch, extra.name) == (4, 4, 'extra')


# bad inputs ------------------------------------------------------------------------------------

def _refusal(config, num_devices=1):
    with pytest.raises(ValueError) as error:
        validation.validate_config(config, num_devices=num_devices)
    message = str(error.value)
    assert '\n' not in message
    return message


@pytest.mark.fast
@pytest.mark.parametrize('share', [1.0, -0.25, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    assert _refusal(mixed_config(share=share)) == (
        f'data.extra.share must be a finite number >= 0 and < 1, got {share!r}')


@pytest.mark.fast
def test_bad_extra_configs_are_one_clear_line(tmp_path):
    assert _refusal(mixed_config(source='')).startswith(
        'config.data.extra.share=0.75 but config.data.extra.source is empty')
    assert 'not a whole number' in _refusal(mixed_config(batch_size=100, share=0.333))
    assert 'unknown config.data.extra.source' in _refusal(mixed_config(source='ftp'))
    config = mixed_config(path=str(tmp_path))
    config.data.pipeline = 'device'
    assert _refusal(config).startswith("config.data.pipeline='device' cannot mix in")
    missing = str(tmp_path / 'nowhere')
    assert _refusal(mixed_config(path=missing)) == (
        f"config.data.extra.path={missing!r} does not exist; source='npy' expects a directory "
        'holding x_train.npy, y_train.npy')
    assert _refusal(mixed_config(path=str(tmp_path))).startswith(
        f'config.data.extra.path={str(tmp_path)!r} lacks x_train.npy, y_train.npy')
    assert _refusal(mixed_config(batch_size=6, share=0.5), num_devices=4) == (
        'batch_size=6 is not divisible by the device count 4')


@pytest.mark.fast
def test_an_extra_set_unlike_the_main_dataset_is_refused(tmp_path):
    real = small_dataset(40)
    other_shape = small_dataset(20, shape=(2, 3, 1))
    config = mixed_config(path=write_npy(tmp_path / 'shape', *other_shape[:2]))
    with pytest.raises(ValueError, match=r'^config.data.extra: shape images are 2x3x1, the '
                       r'main dataset small has 2x2x1 \(HWC\)'):
        extra_data.check_fits(extra_data.load(config), real)
    more_classes = small_dataset(20, classes=7)
    config = mixed_config(path=write_npy(tmp_path / 'classes', *more_classes[:2]))
    with pytest.raises(ValueError, match='^config.data.extra: classes has 7 classes'):
        extra_data.check_fits(extra_data.load(config), real)
    floats = write_npy(tmp_path / 'floats', np.zeros((4, 2, 2, 1), np.float32),
                       np.zeros(4, np.int32))
    with pytest.raises(ValueError, match='images must be uint8'):
        extra_data.load(mixed_config(path=floats))


# training with it ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def embedded_extra(tmp_path_factory):
    """An npy extra set of 600 embedded training digits moved one pixel right."""
    dataset = data.load_dataset(configs.mnist_variant(config_schema.default_config(),
                                                      'embedded').data)
    images = np.roll(dataset.train_images[:600], 1, axis=2)
    return write_npy(tmp_path_factory.mktemp('extra') / 'moved', images,
                     dataset.train_labels[:600])


def test_a_launch_with_extra_data_trains_and_reports(tmp_path, embedded_extra):
    result = launching.launch(
        '--config=experiments/mnist_lc.py:embedded', f'--workdir={tmp_path}',
        '--config.num_epochs=1', '--config.data.extra.source=npy',
        f'--config.data.extra.path={embedded_extra}', '--config.data.extra.share=0.5')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'every batch 50 real + 50 extra from 600 images of moved' in result.stdout
    records = run_files.read_metrics(str(tmp_path))
    assert [r['epoch'] for r in records] == [1] and np.isfinite(records[0]['train_loss'])
    assert records[0]['test_accuracy'] > 0.5
    info = run_files.read_json(os.path.join(tmp_path, run_files.RUN_INFO_FILE))
    assert info['extra'] == {'dataset': 'moved', 'examples': 600, 'per_batch': 50}


def _embedded_config(extra_path, **overrides):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(checkpoint_every_epochs=1, **overrides)
    config.bound.subspace_size = 1
    config.data.extra.update(source='npy', path=extra_path, share=0.5)
    return config


def test_a_resumed_run_with_extra_data_ends_where_an_uninterrupted_one_does(tmp_path,
                                                                            embedded_extra):
    straight = train.train_and_evaluate(_embedded_config(embedded_extra, num_epochs=2),
                                        str(tmp_path / 'straight'))
    train.train_and_evaluate(_embedded_config(embedded_extra, num_epochs=1),
                             str(tmp_path / 'resumed'))
    resumed = train.train_and_evaluate(_embedded_config(embedded_extra, num_epochs=2),
                                       str(tmp_path / 'resumed'))
    chex.assert_trees_all_equal(jax.device_get(straight.params), jax.device_get(resumed.params))


def test_two_devices_train_on_extra_data_like_one(embedded_extra):
    config = _embedded_config(embedded_extra)
    dataset = data.load_dataset(config.data)
    extra = extra_data.load(config)
    states = []
    for devices, more in ((jax.devices()[:1], extra), (jax.devices()[:2], extra),
                          (jax.devices()[:2], None)):
        trainer = train.create_trainer(config, (28, 28, 1), 10, 40, devices=devices)
        pipeline = input_pipeline.make_pipeline(config, dataset, trainer.mesh,
                                                trainer.train_step, trainer.eval_step, True,
                                                more)
        assert pipeline.kind == 'host'
        state, totals = pipeline.train_epoch(trainer.state, 1)
        assert int(totals.loss.count) == 40
        states.append(jax.device_get(state.params))
    chex.assert_trees_all_close(states[0], states[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(AssertionError):  # the extra rows did take part
        chex.assert_trees_all_close(states[1], states[2], rtol=1e-2, atol=1e-4)
