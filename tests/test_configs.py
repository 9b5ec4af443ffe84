"""The config schema: experiment files load and validate, and reading one needs no JAX."""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from lclmt_jax import config_schema, configs, losses, models, run_files, sweeps, validation

pytestmark = pytest.mark.fast

EXPERIMENTS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'experiments',
                                            '*.py')))


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _validate(config, tmp_path):
    """validate_config, with an npz path (a file a script writes, absent in CI) made to exist."""
    if config.data.source == 'npz':
        config.data.path = str(tmp_path / os.path.basename(config.data.path))
        open(config.data.path, 'wb').close()
    validation.validate_config(config, num_devices=1)


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_experiment_configs_validate(path, tmp_path):
    module = _load(path)
    assert 'launch.py' in module.__doc__  # the docstring says how to run it
    config = module.get_config()
    _validate(config, tmp_path)
    assert config.method in losses.METHODS and config.model in models.MODELS
    for member in getattr(module, 'get_sweep', lambda variant: [])(''):
        overrides = {key: value for key, value in member.items() if key != sweeps.NAME_KEY}
        _validate(config_schema.apply_overrides(module.get_config(), overrides), tmp_path)


CIFAR_FILES = ('cifar10_certified', 'cifar100_certified')
CIFAR_CASES = [(name, variant) for name in CIFAR_FILES for variant in configs.CIFAR_VARIANTS] + [
    ('cifar10_certified', 'standin,short'), ('cifar10_certified', 'standin,short,cpl'),
    ('cifar10_certified', 'bronet_ref,short'), ('cifar100_certified', 'liresnet_ref,short')]


def _experiment(name):
    return _load(os.path.join(os.path.dirname(EXPERIMENTS[0]), f'{name}.py'))


@pytest.mark.parametrize('name, variant', CIFAR_CASES, ids=lambda case: case or "''")
def test_every_cifar_variant_loads_and_validates(name, variant, tmp_path):
    config = _experiment(name).get_config(variant)
    _validate(config, tmp_path)
    expected = 'npz' if 'standin' in variant else 'tfds'
    assert config.data.source == expected
    if expected == 'tfds':
        assert config.data.name == name.split('_')[0]
    assert config.evaluation.epsilons[0] == pytest.approx(36 / 255)


@pytest.mark.parametrize('name', CIFAR_FILES)
def test_the_reference_recipes_are_liresnets_and_bronets_settings(name):
    """hukkai/liresnet configs/cifar10.yaml and ntuaislab/BRONet benchmark_reproduce/cifar10.yaml
    (the CIFAR-100 files are the same but for the dataset)."""
    experiment = _experiment(name)
    for variant, method, weight_decay in (('liresnet_ref', 'emma', 0.0),
                                          ('bronet_ref', 'la', 4e-5)):
        config = experiment.get_config(variant)
        assert (config.method, config.weight_decay) == (method, weight_decay)
        assert (config.model, config.liresnet.depth, config.liresnet.width,
                config.liresnet.dense_features) == ('liresnet', 12, 512, 2048)
        assert (config.num_epochs, config.batch_size, config.learning_rate_warmup_epochs) == (
            800, 256, 20)
        assert (config.optimizer, config.learning_rate, config.schedule,
                config.grad_clip_norm) == ('nadam', 1e-3, 'cosine', 3.0)
        assert dict(config.lookahead) == {'sync_period': 6, 'slow_step_size': 0.5,
                                          'sync_each_epoch': True}
        assert config.bound.power_iterations == 10
        # the training radius: 0.1x -> 3x of 36/255 over the first 400 epochs
        assert config.epsilon == pytest.approx(3 * 36 / 255)
        assert config.epsilon * config.epsilon_start_fraction == pytest.approx(0.1 * 36 / 255)
        assert (config.epsilon_schedule, config.epsilon_warmup_epochs) == ('linear', 400)
        assert (config.augment.crop_padding, config.augment.flip,
                config.augment.colour_ops) == (4, True, 2)
    with pytest.raises(ValueError, match='liresnet_ref and bronet_ref exclude each other'):
        experiment.get_config('liresnet_ref,bronet_ref')
    assert experiment.get_config('bro').liresnet.block == 'bro'  # BRONet's backbone
    assert experiment.get_config('').liresnet.block == 'residual'
    with pytest.raises(ValueError, match="unknown config variant 'brox'"):
        experiment.get_config('brox')


def test_the_standin_liresnet_trains_its_longer_cpu_schedule():
    """``standin,short`` stretches the LiResNet's 16 epochs to 44 with the ramps in proportion;
    the LipConvNets and CIFAR-10 itself keep 16."""
    cifar10 = _experiment('cifar10_certified')
    standin = cifar10.get_config('standin,short')
    assert (standin.num_epochs, standin.epsilon_warmup_epochs, standin.batch_size) == (
        cifar10.STANDIN_LIRESNET_EPOCHS, cifar10.STANDIN_LIRESNET_EPOCHS / 2, 64)
    reference = cifar10.get_config('standin,short,liresnet_ref')
    assert reference.learning_rate_warmup_epochs == pytest.approx(
        cifar10.STANDIN_LIRESNET_EPOCHS / 40)
    for variant in ('short', 'standin,short,aol', 'standin,short,cpl'):
        config = cifar10.get_config(variant)
        assert (config.num_epochs, config.epsilon_warmup_epochs) == (16, 8), variant


def test_the_cifar_variants_pick_their_network():
    cifar10 = _experiment('cifar10_certified')
    for layer in ('aol', 'sll', 'cpl'):
        config = cifar10.get_config(layer)
        assert (config.model, config.lipconvnet.layer) == ('lipconvnet', layer)
    assert cifar10.get_config('6c2f').model == 'cnn'
    default = cifar10.get_config('')
    assert (default.method, default.liresnet.width, default.augment.colour_ops) == (
        'lc_lmt_pairwise', 128, 0)
    standin = cifar10.get_config('standin,liresnet_ref')  # digits: no crops, flips, colours
    assert (standin.augment.crop_padding, standin.augment.flip,
            standin.augment.colour_ops) == (0, False, 0)
    with pytest.raises(ValueError, match="unknown config variant 'standin'"):
        _experiment('cifar100_certified').get_config('standin')


def test_method_and_model_of_the_named_experiments():
    expected = {'mnist_lc': ('lc_lmt_pairwise', 'mlp'), 'mnist_lmt': ('lmt_pairwise', 'mlp'),
                'mnist_certified_mlp': ('lc_lmt_pairwise', 'mlp'),
                'mnist_plain': ('plain', 'mlp'), 'svhn_lc': ('lc_lmt', 'wrn'),
                'svhn_lmt': ('lmt', 'wrn'), 'svhn_plain': ('plain', 'wrn')}
    for name, (method, model) in expected.items():
        config = _load(os.path.join(os.path.dirname(EXPERIMENTS[0]), f'{name}.py')).get_config()
        assert (config.method, config.model) == (method, model)
    svhn = _load(os.path.join(os.path.dirname(EXPERIMENTS[0]), 'svhn_lc.py')).get_config()
    assert (svhn.wrn.depth, svhn.wrn.width, svhn.data.name) == (16, 4, 'svhn_cropped')


def test_reading_a_config_imports_no_jax_and_no_model_code():
    code = ('import sys, importlib.util as u; spec = u.spec_from_file_location("e", sys.argv[1]); '
            'm = u.module_from_spec(spec); spec.loader.exec_module(m); c = m.get_config("idx"); '
            'print(c.method, sorted(k for k in ("jax", "flax", "lclmt_jax.models") '
            'if k in sys.modules))')
    path = os.path.join(os.path.dirname(EXPERIMENTS[0]), 'mnist_lc.py')
    out = subprocess.run([sys.executable, '-c', code, path], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(path)))
    assert out.stdout.split() == ['lc_lmt_pairwise', '[]']
    path = os.path.join(os.path.dirname(EXPERIMENTS[0]), 'cifar100_certified.py')
    out = subprocess.run([sys.executable, '-c', code.replace('"idx"', '"bronet_ref"'), path],
                         capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(path)))
    assert out.stdout.split() == ['la', '[]']


def test_an_unknown_variant_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown config variant 'foo'; allowed:"):
        configs.mnist_variant(config_schema.default_config(), 'foo')
    with pytest.raises(ValueError, match="unknown config variant 'foo'; allowed:"):
        configs.svhn_variant(config_schema.default_config(), 'foo')


def test_optimizer_settings_reach_optax_and_bad_ones_are_one_line():
    config = configs.svhn_variant(config_schema.default_config(), 'smoke')
    assert (config.optimizer, dict(config.optimizer_kwargs)) == (
        'sgd', {'momentum': 0.9, 'nesterov': True})
    validation.validate_config(config, num_devices=1)
    config.optimizer_kwargs.betas = 0.9
    with pytest.raises(ValueError, match='do not fit optax.sgd'):
        validation.validate_config(config, num_devices=1)


def test_a_saved_config_reads_back_over_todays_defaults():
    config = configs.svhn_variant(config_schema.default_config(), 'smoke')
    saved = run_files.config_as_dict(config)
    del saved['evaluators']  # as if saved before the field existed
    restored = run_files.config_from_dict(saved)
    assert restored.evaluators == config_schema.default_config().evaluators
    assert restored.evaluation.epsilons == config.evaluation.epsilons  # a tuple again
    assert restored.wrn.depth == 10 and restored.optimizer_kwargs.nesterov


def test_the_paper_variant_composes_with_the_data_variants():
    from lclmt_jax import bounds

    new = configs.mnist_variant(config_schema.default_config(), 'idx')
    paper = configs.mnist_variant(config_schema.default_config(), 'idx,paper')
    assert new.data.source == paper.data.source == 'idx'
    assert (new.method, paper.method) == ('lc_lmt_pairwise', 'lc_lmt')
    assert models.estimator(new) == bounds.Estimator(1, 16, 16)
    assert models.estimator(paper) == bounds.ONE_VECTOR  # one vector, one step
    with pytest.raises(ValueError, match="unknown config variant 'papers'"):
        configs.mnist_variant(config_schema.default_config(), 'idx,papers')


def test_the_gloro_learning_rate_schedule_decays_to_1e_6_after_half():
    from lclmt_jax import optimizers

    schedule = optimizers.SCHEDULES.get('decay_after_half')(1e-3, 1000)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 499, 500, 750, 1000)],
                               [1e-3, 1e-3, 1e-3, np.sqrt(1e-3 * 1e-6), 1e-6], rtol=1e-4)



def test_config_sections_that_mirror_library_defaults_agree_with_them():
    """``config.mlp`` mirrors the MLP's defaults and ``config.evals.cw_l2`` the attack's, so the
    command line can override them; each default is chosen once, where its reason is written."""
    import dataclasses

    from lclmt_jax import attacks
    from lclmt_jax.models.mlp import MLP

    config = config_schema.default_config()
    fields = {field.name: field.default for field in dataclasses.fields(MLP)}
    assert {name: fields[name] for name in config.mlp} == dict(config.mlp)
    attack = dict(config.evals.cw_l2)
    assert attack.pop('max_examples') is None
    assert attack == attacks.CWConfig()._asdict()


@pytest.mark.parametrize('field, value, message', [
    ('epsilon_shedule', 'log', "'epsilon_shedule', which is not a config field; did you mean "
                               "'epsilon_schedule'"),
    ('epsilon_schedule', 'lnear', "unknown config.epsilon_schedule 'lnear'"),  # warm-up 0 too
    ('trades_lambda', -1.0, 'trades_lambda must be a finite number >= 0'),
    ('bound.subspace_size', 0, 'bound.subspace_size must be a positive integer, got 0'),
    ('bound.reconverge_steps', -2, 'bound.reconverge_steps must be an integer >= 0'),
    ('certificate', 'tight', "unknown config.certificate 'tight'; allowed: global, pairwise"),
    ('evaluation.epsilons', (), 'evaluation.epsilons must be a non-empty tuple of radii'),
])
def test_every_field_is_checked_in_one_line(field, value, message):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    if '.' in field and field.split('.')[0] in config:
        section, name = field.split('.')
        config[section][name] = value
    else:
        config[field] = value
    with pytest.raises(ValueError, match=message.replace('(', r'\(')):
        validation.validate_config(config, num_devices=1)
