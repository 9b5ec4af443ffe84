"""lclmt_jax: certified L2 robustness by Lipschitz-margin training (LMT, LC-LMT) in JAX/Flax."""

from lclmt_jax.restore import RestoredModel, restore

__all__ = ['RestoredModel', 'restore']
