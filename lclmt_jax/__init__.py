"""lclmt_jax: certified L2 robustness by Lipschitz-margin training (LMT, LC-LMT) in JAX/Flax.

The public API is :func:`restore` (a trained run as a pure JAX model with sound certification)
and :class:`RestoredModel`. They are imported on first use, so that reading a config
(``lclmt_jax.configs``) needs neither JAX nor the model code.
"""

import importlib

__all__ = ['RestoredModel', 'restore']


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module('lclmt_jax.restored'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
