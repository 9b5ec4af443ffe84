"""LiResNet: its block bound against exact norms, the network against Jacobians and an attack,
the LLN head; and the on-device augmentation of the train step."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from bound_testing import converge, unit

from lclmt_jax import (
    attacks,
    augment,
    bounds,
    certify,
    config_schema,
    configs,
    convolution,
    data,
    input_pipeline,
    margins,
    train,
    validation,
)
from lclmt_jax.layers.liresnet_block import LiResBlock, block_kernel
from lclmt_jax.models.liresnet import LiResNet


def _randomize(variables, seed, spread=0.3):
    """Every parameter redrawn at random (kernels N(0, spread²), scales and biases around
    their init), so that no block is near the identity and the bounds have work to do."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == 'scale':
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if name == 'bias':
            return jnp.asarray(rng.normal(size=leaf.shape) * 0.1, leaf.dtype)
        return jnp.asarray(rng.normal(size=leaf.shape) * spread, leaf.dtype)

    return {**variables, 'params': jax.tree_util.tree_map_with_path(draw, variables['params'])}


def _dense_norm(fn, x):
    """Spectral norm of the Jacobian of ``fn`` at the single NHWC input ``x`` (float64 SVD)."""
    jac = jax.jacobian(lambda z: fn(z[None])[0])(x[0])
    out = int(np.prod(jac.shape[:jac.ndim - x.ndim + 1]))
    return float(np.linalg.norm(np.asarray(jac, np.float64).reshape(out, -1), 2))


# ----------------------------------------------------------------------------- the block


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_block_bound_dominates_the_exact_norm_of_identity_plus_conv(seed):
    x = unit((1, 6, 6, 3), seed)
    block = LiResBlock(3, residual_scale=0.7)
    variables = _randomize(block.init({'params': jax.random.key(seed)}, x), seed)
    params = variables['params']
    residual = 0.7 * params['kernel'] * params['scale']
    y, sound = block.apply(variables, x, sound=True)
    # the block is x + conv(x) + b, and its linear part's exact norm lies under the sound bound
    chex.assert_trees_all_close(
        y, x + convolution.conv(x, residual, (1, 1), ((1, 1), (1, 1))) + params['bias'], atol=1e-5)
    exact = _dense_norm(lambda z: block.apply(variables, z)[0], x)
    assert exact <= sound <= 1.5 * exact
    # one map is never looser than the triangle inequality 1 + |K| (here strictly tighter)
    assert sound < 1.0 + bounds.conv_upper_bound(residual, x.shape, 1, 'SAME')


def test_block_bound_holds_where_a_same_size_torus_would_not():
    """x -> x + conv_K(x) with K' = K + I = [-1, 0, 1] (one channel, one row) on a 6×6 grid:
    the zero-padded map's norm (1.80) exceeds the circular one on the 6×6 torus (1.73), so only
    a torus at least as large as the padded input (8×8) bounds it."""
    x = jnp.zeros((1, 6, 6, 1))
    block = LiResBlock(3, residual_scale=0.5)
    variables = block.init({'params': jax.random.key(0)}, x)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, :, 0, 0] = [-2.0, -2.0, 2.0]  # 0.5·K: [-1, -1, 1], plus I at the centre
    variables = {**variables, 'params': {**variables['params'], 'kernel': jnp.asarray(kernel)}}
    merged = block_kernel(kernel.astype(np.float64), np.ones(1), 0.5)
    exact = _dense_norm(lambda z: block.apply(variables, z)[0], x)
    same_size_torus = bounds.circular_conv_norm(merged, (6, 6), (1, 1))
    assert same_size_torus < exact <= block.apply(variables, x, sound=True)[1]


def test_block_bound_is_the_power_iteration_limit_on_a_large_grid():
    """Zero padding loses ~1/H² against the torus: at H = 64 the sound bound is within 1e-3 of
    the converged power iteration on the same map, which is below it."""
    x = jnp.zeros((1, 64, 64, 2))
    block = LiResBlock(3, estimator=bounds.Estimator(1, 1, 0))
    variables = _randomize(block.init({'params': jax.random.key(3)}, x), 3)
    variables = converge(block, variables, x, steps=3000)
    estimate = float(block.apply(variables, x)[1])
    sound = block.apply(variables, x, sound=True)[1]
    assert estimate <= sound
    np.testing.assert_allclose(estimate, sound, rtol=1e-3)


def test_block_kernel_puts_the_identity_at_the_centre_tap_only():
    kernel = np.zeros((3, 3, 2, 2))
    merged = block_kernel(kernel, np.ones(2), 0.5)
    np.testing.assert_array_equal(merged[1, 1], np.eye(2))
    assert np.count_nonzero(merged) == 2 and merged.dtype == np.float64
    with pytest.raises(ValueError, match='square odd kernel'):
        block_kernel(np.zeros((2, 2, 2, 2)), np.ones(2), 1.0)


# ----------------------------------------------------------------------------- the network


def _tiny(**settings):
    return LiResNet(**{'depth': 2, 'width': 4, 'stem_kernel': 3, 'stem_stride': 2,
                       'neck_features': 6, 'neck_size': 2, 'dense_features': 8,
                       'num_classes': 5, **settings})


def test_liresnet_sound_bounds_dominate_jacobian_norms_and_pairwise_gradients():
    model = _tiny()
    x = jnp.zeros((1, 8, 8, 3))
    variables = _randomize(model.init({'params': jax.random.key(0)}, x), 0)
    sound = model.apply(variables, x, sound=True)
    constants = np.asarray(margins.pairwise_constants(sound.head_kernel, sound.body_lipschitz))
    np.testing.assert_allclose(sound.lipschitz, sound.body_lipschitz
                               * bounds.dense_upper_bound(sound.head_kernel), rtol=1e-12)
    jacobians = jax.jit(jax.vmap(jax.jacobian(
        lambda z: model.apply(variables, z[None]).logits[0])))
    inputs = np.random.default_rng(1).uniform(size=(10, 8, 8, 3)).astype(np.float32)
    for jac in jacobians(inputs):
        jac = np.asarray(jac, np.float64).reshape(5, -1)
        assert 0 < np.linalg.norm(jac, 2) <= sound.lipschitz
        pairwise = np.linalg.norm(jac[:, None] - jac[None], axis=-1)  # |grad(f_t - f_j)|
        assert np.all(pairwise <= constants + 1e-12)
    converged = converge(model, variables, x, steps=300)
    assert float(model.apply(converged, x).lipschitz) <= sound.lipschitz


def test_lln_head_carries_unit_columns_that_the_forward_applies():
    model = _tiny()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 3)), jnp.float32)
    variables = model.init({'params': jax.random.key(1)}, x[:1])
    out = model.apply(variables, x)
    np.testing.assert_allclose(np.linalg.norm(out.head_kernel, axis=0), 1.0, rtol=1e-6)
    sound = model.apply(variables, x[:1], sound=True)
    np.testing.assert_allclose(np.linalg.norm(sound.head_kernel, axis=0), 1.0, rtol=1e-14)
    # rescaling the raw columns changes neither the logits nor the kernel the certificate reads
    params = variables['params']
    head = {**params['head'], 'kernel': params['head']['kernel'] * jnp.arange(1.0, 6.0)}
    scaled = model.apply({**variables, 'params': {**params, 'head': head}}, x)
    chex.assert_trees_all_close(scaled.logits, out.logits, atol=1e-5)
    chex.assert_trees_all_close(scaled.head_kernel, out.head_kernel, atol=1e-6)


def test_a_briefly_trained_liresnets_float32_pairwise_radii_survive_cw_l2():
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    config.update(model='liresnet', method='emma', epsilon=0.5, batch_size=64)
    config.liresnet = {'depth': 2, 'width': 8, 'neck_features': 8, 'neck_size': 7,
                       'dense_features': 32}
    dataset = data.load_dataset(config.data)
    trainer = train.create_trainer(config, dataset.train_images.shape[1:], 10)
    step = jax.jit(trainer.train_step)
    state = trainer.state
    for start in range(0, 40 * 64, 64):
        state, _ = step(state, dataset.train_images[start:start + 64],
                        dataset.train_labels[start:start + 64])
    variables = {'params': state.params, **state.model_state}
    images = np.asarray(data.to_float(dataset.test_images[:100]))
    labels = dataset.test_labels[:100]
    sound = certify.sound_bounds(trainer.model, variables, images.shape[1:])
    logits = certify.logits_float64(trainer.model, variables, images)
    exact = certify.certified_radii(logits, labels, sound, 'pairwise')
    allowance = certify.rounding_allowance(trainer.model, variables, images)
    radii = certify.certified_radii(logits, labels, sound, 'pairwise', allowance)
    correct = np.argmax(logits, axis=1) == labels
    assert correct.mean() > 0.5 and np.any(radii > 0)
    # float32 radii (rounding, LLN normalisation included) are never larger, and lose about
    # 5e-4 (E0/K) here: far under the radii that matter
    assert np.all(radii <= exact) and np.all(exact - radii <= 2e-3) and np.any(radii < exact)
    norms = attacks.cw_l2_min_norms(
        jax.jit(lambda z: trainer.model.apply(variables, z).logits), images, labels,
        attacks.CWConfig(steps=30, binary_search_steps=3, batch_size=100))
    assert np.isfinite(norms[correct]).any()  # the attack does find adversarial points
    assert certify.broken_certificates(radii, correct, norms).size == 0


# ----------------------------------------------------------------------------- augmentation


def _images(n=16, size=8):
    """uint8 NHWC images with no zero pixel, so the zeros of a crop show where it shifted."""
    return np.random.default_rng(0).integers(1, 256, (n, size, size, 3)).astype(np.uint8)


def _shift(image, dy, dx):
    """``image`` moved by (dy, dx) pixels, zeros where it left the frame."""
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_a_crop_is_a_shifted_copy_with_zeros_where_it_left_the_image():
    images = _images()
    out = np.asarray(augment.random_crop(jnp.asarray(images), jax.random.key(0), 2))
    assert out.shape == images.shape and out.dtype == np.uint8
    shifts = set()
    for image, cropped in zip(images, out, strict=True):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(cropped, _shift(image, dy, dx))]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 3  # offsets differ from image to image


def test_flips_are_mirror_images_and_the_same_seed_and_step_give_the_same_batch():
    images = jnp.asarray(_images(64))
    key = augment.step_key(3, 7)
    out = np.asarray(augment.augment(images, key, crop_padding=0, flip=True))
    flipped = [np.array_equal(o, np.asarray(x)[:, ::-1]) for o, x in zip(out, images,
                                                                        strict=True)]
    kept = [np.array_equal(o, x) for o, x in zip(out, np.asarray(images), strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) \
        and any(kept)
    again = augment.augment(images, augment.step_key(3, jnp.int32(7)), 2, True)
    chex.assert_trees_all_equal(augment.augment(images, key, 2, True), again)
    assert not np.array_equal(again, augment.augment(images, augment.step_key(3, 8), 2, True))
    assert augment.augment(images, key) is images  # both off: the batch itself


def test_augmentation_is_the_same_on_one_and_four_devices():
    images = jnp.asarray(_images(16))
    mesh = input_pipeline.make_mesh()
    assert mesh.size == 4
    fn = jax.jit(lambda x, step: augment.augment(x, augment.step_key(0, step), 2, True))
    sharded = jax.device_put(images, input_pipeline.batch_sharded(mesh))
    single = jax.device_put(images, jax.devices()[0])
    chex.assert_trees_all_equal(np.asarray(fn(sharded, 5)), np.asarray(fn(single, 5)))


def test_the_train_step_augments_with_the_key_of_seed_and_step_and_is_off_by_default():
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    assert (config.augment.crop_padding, config.augment.flip) == (0, False)
    config.mlp.hidden_sizes = (16,)
    images = _images(8, 28)[..., :1]
    labels = np.arange(8) % 10
    plain = train.create_trainer(config, (28, 28, 1), 10)
    state = plain.state.replace(step=jnp.int32(5))
    config.augment.update(crop_padding=3, flip=True)
    on = train.create_trainer(config, (28, 28, 1), 10)
    expected, _ = jax.jit(plain.train_step)(
        state, augment.augment(jnp.asarray(images), augment.step_key(config.seed, 5), 3, True),
        labels)
    got, _ = jax.jit(on.train_step)(state, images, labels)
    chex.assert_trees_all_close(got.params, expected.params, atol=1e-6)
    unaugmented, _ = jax.jit(plain.train_step)(state, images, labels)
    assert not np.allclose(unaugmented.params['head']['kernel'], got.params['head']['kernel'])


@pytest.mark.parametrize('field, value, message', [
    ('crop_padding', -1, 'augment.crop_padding must be an integer >= 0'),
    ('crop_padding', 1.5, 'augment.crop_padding must be an integer >= 0'),
    ('flip', 'yes', 'augment.flip must be True or False'),
])
def test_augment_settings_are_checked(field, value, message):
    config = configs.mnist_variant(config_schema.default_config(), 'embedded')
    # a whole new section: assigning a field of another type would fail in ml_collections first
    config.augment = ml_collections.ConfigDict({**config.augment, field: value})
    with pytest.raises(ValueError, match=message):
        validation.validate_config(config, num_devices=1)
