"""Every experiment file loads, and its configs pass validation (data paths aside)."""

import glob
import importlib.util
import os

import pytest

from lclmt_jax import configs, inflation, models

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
    configs.validate_config(config, num_devices=1)


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_experiment_configs_validate(path, tmp_path):
    module = _load(path)
    assert 'launch.py' in module.__doc__  # the docstring says how to run it
    config = module.get_config()
    _validate(config, tmp_path)
    assert config.method in inflation.INFLATIONS and config.model in models.MODELS
    for member in getattr(module, 'get_sweep', lambda variant: [])(''):
        member_config = module.get_config()
        member_config.update(member)
        _validate(member_config, tmp_path)


def test_method_and_model_of_the_named_experiments():
    expected = {'mnist_lc': ('lc_lmt', 'mlp'), 'mnist_lmt': ('lmt', 'mlp'),
                'mnist_plain': ('plain', 'mlp'), 'svhn_lc': ('lc_lmt', 'wrn'),
                'svhn_lmt': ('lmt', 'wrn'), 'svhn_plain': ('plain', 'wrn')}
    for name, (method, model) in expected.items():
        config = _load(os.path.join(os.path.dirname(EXPERIMENTS[0]), f'{name}.py')).get_config()
        assert (config.method, config.model) == (method, model)
    svhn = _load(os.path.join(os.path.dirname(EXPERIMENTS[0]), 'svhn_lc.py')).get_config()
    assert (svhn.wrn.depth, svhn.wrn.width, svhn.data.name) == (16, 4, 'svhn_cropped')
