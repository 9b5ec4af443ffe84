"""End-to-end training on embedded MNIST, data parallelism, resume, NaN safety, bad input."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lclmt_jax import (
    checkpoints,
    config_schema,
    configs,
    data,
    input_pipeline,
    losses,
    metrics,
    run_files,
    sound_metrics,
    train,
    validation,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def embedded_config(**overrides):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.num_epochs = 4
    config.checkpoint_every_epochs = 1
    config.update(overrides)
    return config


@pytest.fixture(scope='module')
def embedded():
    return data.load_dataset(embedded_config().data)


def test_short_run_lowers_the_loss_and_raises_the_margin(tmp_path):
    train.train_and_evaluate(embedded_config(num_epochs=6), str(tmp_path))
    records = run_files.read_metrics(str(tmp_path))
    assert [r['epoch'] for r in records] == list(range(1, 7))
    assert records[-1]['train_loss'] < 0.7 * records[0]['train_loss']
    assert records[-1]['test_margin'] > records[0]['test_margin'] + 0.2
    assert records[-1]['test_accuracy'] > 0.7
    for name in ('config.json', 'run.json', 'metrics.jsonl'):
        assert os.path.exists(tmp_path / name)
    assert os.listdir(tmp_path / 'tensorboard')
    assert json.load(open(tmp_path / 'config.json'))['method'] == 'lc_lmt_pairwise'


@pytest.mark.parametrize('layer', ['aol', 'sll'])
def test_a_model_without_power_iteration_vectors_trains_with_epoch_refreshes(tmp_path, layer):
    """LipConvNets keep no ``'lipschitz'`` vectors (1-Lipschitz by construction): the refresh at
    each epoch start of the LiResNet recipe (``reconverge_steps``) has nothing to do, and the run
    trains and certifies."""
    config = embedded_config(num_epochs=1, model='lipconvnet')
    config.lipconvnet = ml_collections.ConfigDict({'layer': layer, 'width': 4, 'blocks': 1,
                                                   'layers_per_block': 1})
    config.bound.reconverge_steps = 20
    train.train_and_evaluate(config, str(tmp_path))
    assert [r['epoch'] for r in run_files.read_metrics(str(tmp_path))] == [1]


def _one_epoch(devices, embedded, method, paper):
    config = embedded_config(method=method)
    if paper:
        configs.paper_recipe(config)
    trainer = train.create_trainer(config, (28, 28, 1), embedded.num_classes, 8, devices)
    images, labels = embedded.train_images[:800], embedded.train_labels[:800]
    epoch = input_pipeline.device_train_epoch(trainer.train_step, trainer.mesh,
                                              config.batch_size, len(labels))
    state, totals = epoch(trainer.state, *input_pipeline.replicate(trainer.mesh, (images, labels)),
                          input_pipeline.epoch_key(0, 1))
    return jax.device_get(state), jax.device_get(totals)


def _spans(vectors):
    """Each block of power-iteration vectors as the projector onto its span: the default block
    estimator re-orthonormalises with an eigendecomposition, whose vectors are defined up to sign,
    so 1 and 4 devices agree on the subspace, not on each vector's sign."""
    return jax.tree.map(lambda v: v @ v.T if v.ndim == 2 else v, vectors)


@pytest.mark.parametrize('method, paper', [('lmt', True), ('lc_lmt', True),
                                           ('lc_lmt_pairwise', False)])
def test_four_devices_follow_the_one_device_trajectory(embedded, method, paper):
    assert jax.device_count() == 4
    one, one_metrics = _one_epoch(jax.devices()[:1], embedded, method, paper)
    four, four_metrics = _one_epoch(jax.devices(), embedded, method, paper)
    chex.assert_trees_all_close(one.params, four.params, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(*(_spans(state.model_state) for state in (one, four)),
                                rtol=1e-4, atol=1e-5 if paper else 1e-4)
    chex.assert_trees_all_close(one_metrics.loss.total, four_metrics.loss.total, rtol=1e-5)
    assert float(one_metrics.accuracy.total) == float(four_metrics.accuracy.total)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    whole = train.train_and_evaluate(embedded_config(), str(tmp_path / 'whole'))
    train.train_and_evaluate(embedded_config(num_epochs=2), str(tmp_path / 'split'))
    resumed = train.train_and_evaluate(embedded_config(), str(tmp_path / 'split'))
    chex.assert_trees_all_equal(jax.device_get(whole.params), jax.device_get(resumed.params))
    epochs = [r['epoch'] for r in run_files.read_metrics(str(tmp_path / 'split'))]
    assert epochs == [1, 2, 3, 4]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    train.train_and_evaluate(embedded_config(num_epochs=2), workdir)
    finite_loss = losses.method_loss
    monkeypatch.setattr(losses, 'method_loss', lambda *args: finite_loss(*args) * jnp.nan)
    with pytest.raises(train.NonFiniteLossError, match='epoch 3, step 1 .*epoch 2 is kept'):
        train.train_and_evaluate(embedded_config(), workdir)
    assert checkpoints.latest_epoch(workdir) == 2
    like = train.create_trainer(embedded_config(), (28, 28, 1), 10).state
    state, epoch = checkpoints.restore_train_state(workdir, like)
    assert epoch == 2
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


@pytest.mark.parametrize('overrides, message', [
    ({'method': 'lmtt'}, "unknown config.method 'lmtt'; allowed: plain, lmt, lc_lmt"),
    ({'model': 'resnet9'},
     "unknown config.model 'resnet9'; allowed: cnn, lipconvnet, liresnet, mlp, wrn"),
    ({'epsilon': -0.5}, 'epsilon must be a finite number >= 0, got -0.5'),
    ({'epsilon': float('nan')}, 'epsilon must be a finite number >= 0'),
    ({'batch_size': 102}, 'batch_size=102 is not divisible by the device count 4'),
    ({'optimizer': 'adamm'}, "unknown config.optimizer 'adamm'; allowed: adabelief"),
    ({'schedule': 'linear'}, "unknown config.schedule 'linear'; allowed: constant, cosine, step"),
    ({'learning_rate': 0.0}, 'learning_rate must be a finite number > 0, got 0.0'),
    ({'evaluators': ('certificates', 'pgd')}, "unknown evaluator 'pgd'"),
    ({'checkpoint_every_epochs': 0}, 'checkpoint_every_epochs must be a positive integer, got 0'),
    ({'epsilon_warmup_epochs': -1}, 'epsilon_warmup_epochs must be a finite number >= 0'),
])
def test_bad_config_is_one_clear_line_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        train.train_and_evaluate(embedded_config(**overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.parametrize('data_overrides, message', [
    ({'source': 'ftp'}, "unknown config.data.source 'ftp'; allowed: embedded, idx, npy, npz, tfds"),
    ({'source': 'idx', 'path': '/nonexistent/mnist'}, '/nonexistent/mnist'),
])
def test_bad_data_is_one_clear_line(tmp_path, data_overrides, message):
    config = embedded_config()
    config.data.update(data_overrides)
    with pytest.raises(ValueError, match=message):
        validation.validate_config(config)


def test_launch_reports_bad_input_in_one_line_and_exits_non_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, 'launch.py', '--config=experiments/mnist_lc.py:embedded',
         f'--workdir={tmp_path}', '--config.epsilon=-1'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        'error: epsilon must be a finite number >= 0, got -1.0')


def test_host_pipeline_trains_like_the_device_pipeline(tmp_path):
    on_device = embedded_config(num_epochs=2)
    on_device.data.pipeline = 'device'
    on_host = embedded_config(num_epochs=2)
    on_host.data.pipeline = 'host'
    device_state = train.train_and_evaluate(on_device, str(tmp_path / 'device'))
    host_state = train.train_and_evaluate(on_host, str(tmp_path / 'host'))
    chex.assert_trees_all_close(jax.device_get(device_state.params),
                                jax.device_get(host_state.params), rtol=1e-4, atol=1e-6)
    device_records = run_files.read_metrics(str(tmp_path / 'device'))
    host_records = run_files.read_metrics(str(tmp_path / 'host'))
    for key in ('train_loss', 'test_accuracy', 'test_margin', 'test_lipschitz'):
        np.testing.assert_allclose(host_records[-1][key], device_records[-1][key], rtol=1e-4)


def test_warmup_starts_lc_lmt_from_the_plain_loss(embedded):
    """At step 0 of a warm-up the loss's epsilon is 0: LC-LMT's first step is plain training."""
    images, labels = embedded.train_images[:100], embedded.train_labels[:100]
    first_loss = {}
    for method, warmup in (('plain', 0.0), ('lc_lmt', 5.0), ('lc_lmt', 0.0)):
        config = embedded_config(method=method, epsilon_warmup_epochs=warmup)
        trainer = train.create_trainer(config, (28, 28, 1), embedded.num_classes)
        _, totals = jax.jit(trainer.train_step)(trainer.state, images, labels)
        first_loss[method, warmup] = float(totals.loss.compute())
    np.testing.assert_allclose(first_loss['lc_lmt', 5.0], first_loss['plain', 0.0], rtol=1e-6)
    assert first_loss['lc_lmt', 0.0] > first_loss['plain', 0.0] + 0.1


def test_the_epoch_compiles_once_for_the_whole_run(embedded, monkeypatch):
    """The jitted epoch is traced once (chex.assert_max_traces on the step it scans): no
    recompiles across epochs."""
    make_step = train.make_train_step
    chex.clear_trace_counter()
    monkeypatch.setattr(train, 'make_train_step', lambda *args: chex.assert_max_traces(
        make_step(*args), n=1))
    config = embedded_config()
    trainer = train.create_trainer(config, (28, 28, 1), embedded.num_classes, 4)
    state, mesh = trainer.state, trainer.mesh
    images, labels = embedded.train_images[:400], embedded.train_labels[:400]
    arrays = input_pipeline.replicate(mesh, (images, labels))
    epoch = input_pipeline.device_train_epoch(trainer.train_step, mesh, config.batch_size,
                                              len(labels))
    for index in range(1, 4):
        state, totals = epoch(state, *arrays, input_pipeline.epoch_key(0, index))
    assert int(state.step) == 12 and int(totals.loss.count) == 4
    with pytest.raises(AssertionError, match='traced > 1 times'):  # a retrace would be caught
        epoch(state, *input_pipeline.replicate(mesh, (images[:200], labels[:200])),
              input_pipeline.epoch_key(0, 4))


def test_metrics_record_the_warmed_up_epsilon(tmp_path):
    train.train_and_evaluate(embedded_config(num_epochs=2, epsilon_warmup_epochs=4),
                             str(tmp_path))
    records = run_files.read_metrics(str(tmp_path))
    np.testing.assert_allclose([r['train_epsilon'] for r in records], [0.25, 0.5], rtol=1e-6)


def test_the_sound_bound_and_the_inflated_accuracy_are_logged(tmp_path):
    config = embedded_config(num_epochs=2)
    config.bound.update(subspace_size=1, exact_below=0, reconverge_steps=3)
    train.train_and_evaluate(config, str(tmp_path))
    for record in run_files.read_metrics(str(tmp_path)):
        # the sound bound is an upper bound of the (lower-bound) training estimate
        assert record['lipschitz_sound'] >= record['test_lipschitz'] * (1 - 1e-6)
        np.testing.assert_allclose(record['sound_over_training'],
                                   record['lipschitz_sound'] / record['test_lipschitz'],
                                   rtol=1e-6)
        # beating the inflated rival implies beating the clean one
        assert 0 <= record['train_accuracy_inflated'] <= record['train_accuracy']
        np.testing.assert_allclose(record['required_margin_sound'],
                                   2 ** 0.5 * record['lipschitz_sound'] * config.epsilon)
        # misclassified points have negative margins: leaving them out raises the mean
        assert record['train_margin_correct'] >= record['train_margin']


def test_the_median_margin_metric_matches_numpy_over_merged_steps():
    margins = np.random.default_rng(0).normal(0.5, 3.0, size=(7, 301))
    merged = metrics.MedianMargin.from_model_output(margin=jnp.asarray(margins[0]))
    for step in margins[1:]:
        merged = merged.merge(metrics.MedianMargin.from_model_output(margin=jnp.asarray(step)))
    median = np.median(margins)
    assert abs(float(merged.compute()) - median) <= 0.005 * (1 + abs(median))


def test_reconverging_at_an_epoch_start_brings_the_estimate_to_the_norm(embedded):
    config = embedded_config()
    config.bound.update(subspace_size=1, exact_below=0, reconverge_steps=300)
    trainer = train.create_trainer(config, (28, 28, 1), embedded.num_classes)
    model, state = trainer.model, trainer.state
    variables = lambda state: {'params': state.params, **state.model_state}  # noqa: E731
    estimate = lambda state: float(model.apply(  # noqa: E731
        variables(state), jnp.zeros((1, 28, 28, 1))).lipschitz)
    sound = sound_metrics.sound_scalars(model, variables(state), (28, 28, 1), 1.0,
                                        1.0)['lipschitz_sound']
    before = estimate(state)
    refresh = train.make_refresh(trainer, config.bound.reconverge_steps,
                                 embedded.train_images[:config.batch_size])
    state = refresh(state)
    assert before < 0.9 * sound
    np.testing.assert_allclose(estimate(state), sound, rtol=1e-3)
    assert estimate(state) <= sound


def _primitives(jaxpr) -> set[str]:
    """Every primitive of a jaxpr, inside nested jaxprs (scan, jit, custom derivatives) too."""
    names = set()
    for equation in jaxpr.eqns:
        names.add(equation.primitive.name)
        for param in equation.params.values():
            for inner in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    names |= _primitives(inner.jaxpr)
                elif isinstance(inner, jax.extend.core.Jaxpr):
                    names |= _primitives(inner)
    return names


DECOMPOSITIONS = {'eigh', 'svd', 'qr', 'householder_product', 'geqrf', 'cholesky',
                  'triangular_solve', 'lu'}


def test_the_default_training_step_has_matrix_products_only(embedded):
    """No decomposition in the default step: on accelerators a small eigh or QR per layer per
    step costs more than the rest of the step (docs/CERTIFIED.md); once per epoch it is free."""
    config = embedded_config()
    trainer = train.create_trainer(config, (28, 28, 1), embedded.num_classes)
    images, labels = embedded.train_images[:100], embedded.train_labels[:100]
    step = jax.make_jaxpr(trainer.train_step)(trainer.state, images, labels)
    names = _primitives(step.jaxpr)
    assert 'dot_general' in names and not names & DECOMPOSITIONS, names & DECOMPOSITIONS
    # the once-per-epoch refresh is where the Rayleigh-Ritz decompositions live
    refresh = train.make_refresh(trainer, 0, images)
    assert _primitives(jax.make_jaxpr(refresh)(trainer.state).jaxpr) & {'eigh', 'qr',
                                                                         'householder_product',
                                                                         'geqrf'}
