"""Training methods on hand-made logits: what each inflates, and the epsilon schedule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lclmt_jax import config_schema, configs, losses, margins, validation
from lclmt_jax.models import ModelOutput

pytestmark = pytest.mark.fast

LOGITS = jnp.array([[3.0, 1.0, 2.0, -1.0],
                    [0.0, 5.0, 5.0, 1.0],   # tie for the runner-up of class 0: first index (1)
                    [4.0, 4.0, 0.0, 0.0]])  # true class 1 ties with class 0
LABELS = jnp.array([0, 0, 1])
REQUIRED = jnp.float32(0.5)
# sqrt(2)·L·eps = 0.5 at every wrong class, 0 at the true one
GAPS = margins.CERTIFICATES.get('global').gaps(
    ModelOutput(LOGITS, REQUIRED / np.sqrt(2), None, jnp.eye(4)), 1.0, LABELS)


def _method(name):
    return losses.METHODS.get(name)


def test_plain_leaves_logits_alone():
    chex.assert_trees_all_equal(_method('plain').inflate(LOGITS, LABELS, GAPS), LOGITS)


def test_lmt_raises_every_wrong_logit_and_never_the_true_one():
    out = _method('lmt').inflate(LOGITS, LABELS, GAPS)
    expected = LOGITS + REQUIRED * (1 - jnp.eye(4)[LABELS])
    chex.assert_trees_all_close(out, expected)
    np.testing.assert_array_equal(out[np.arange(3), LABELS], LOGITS[np.arange(3), LABELS])


def test_lc_lmt_raises_only_the_runner_up():
    out = _method('lc_lmt').inflate(LOGITS, LABELS, GAPS)
    changed = np.asarray(out != LOGITS)
    np.testing.assert_array_equal(changed, [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    chex.assert_trees_all_close(out[changed], LOGITS[changed] + REQUIRED)


def test_lc_lmt_with_pairwise_gaps_raises_the_binding_class_by_its_own_gap():
    """v = argmax_{j != t} f_j + R_j: a lower logit with a larger gap can be the binding one."""
    gaps = jnp.array([[0.0, 3.0, 0.5, 0.2]])
    out = _method('lc_lmt').inflate(LOGITS[:1], LABELS[:1], gaps)
    chex.assert_trees_all_close(out, jnp.array([[3.0, 4.0, 2.0, -1.0]]))  # class 1: 1 + 3 > 2.5


def test_methods_are_found_by_name_and_unknown_ones_list_the_allowed():
    assert {'plain', 'lmt', 'lc_lmt'} <= set(losses.METHODS.names())
    with pytest.raises(ValueError, match="unknown config.method 'lmtt'; allowed: plain, lmt"):
        losses.METHODS.get('lmtt', 'config.method')


def test_method_loss_is_cross_entropy_of_the_inflated_logits_with_global_gaps():
    output = ModelOutput(LOGITS, jnp.float32(2.0), jnp.float32(1.0), jnp.eye(4))
    expected_logits = LOGITS + np.sqrt(2) * 2.0 * 0.25 * (1 - jnp.eye(4)[LABELS])
    expected = optax.softmax_cross_entropy_with_integer_labels(expected_logits, LABELS).mean()
    chex.assert_trees_all_close(losses.method_loss(_method('lmt'), output, LABELS, 0.25),
                                expected, rtol=1e-6)


def test_a_logit_temperature_is_t_times_the_loss_of_logits_over_t():
    output = ModelOutput(LOGITS, jnp.float32(2.0), jnp.float32(1.0), jnp.eye(4))
    method = _method('lc_lmt')
    inflated = losses.inflated_logits(method, output, LABELS, 0.25)
    expected = 0.1 * optax.softmax_cross_entropy_with_integer_labels(inflated / 0.1, LABELS).mean()
    chex.assert_trees_all_close(losses.method_loss(method, output, LABELS, 0.25,
                                                   temperature=0.1), expected, rtol=1e-6)
    assert losses.method_loss(method, output, LABELS, 0.25, temperature=1.0) == \
        losses.method_loss(method, output, LABELS, 0.25)
    sharper = losses.method_loss(method, output, LABELS, 0.25, trades_lambda=1.0, temperature=0.5)
    assert np.isfinite(float(sharper)) and float(sharper) != float(
        losses.method_loss(method, output, LABELS, 0.25, trades_lambda=1.0))


def test_epsilon_warmup_ramps_linearly_then_holds():
    config = config_schema.default_config()
    config.update(epsilon=0.8, epsilon_warmup_epochs=2.0)
    schedule = losses.epsilon_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 20, 25, 1000)],
                               [0.0, 0.2, 0.4, 0.8, 0.8, 0.8], rtol=1e-6)
    config.epsilon_warmup_epochs = 0.0
    assert float(losses.epsilon_schedule(config, 10)(0)) == pytest.approx(0.8)
    assert float(jax.jit(schedule)(jnp.int32(15))) == pytest.approx(0.6)


def _output(kernel_scale=1.0):
    """Logits with a head whose columns are far apart for classes 0/1 and close for 2/3."""
    kernel = jnp.array([[1.0, -1.0, 0.0, 0.1], [0.0, 0.0, 1.0, 1.0]]) * kernel_scale
    return ModelOutput(LOGITS, jnp.float32(3.0), jnp.float32(2.0), kernel)


def test_pairwise_methods_use_the_pairwise_constants():
    output = _output()
    constants = margins.pairwise_constants(output.head_kernel, output.body_lipschitz)
    gaps = losses.required_gaps(_method('lmt_pairwise'), output, LABELS, 0.5)
    chex.assert_trees_all_close(gaps, 0.5 * constants[LABELS])
    assert np.all(np.asarray(gaps)[np.arange(3), np.asarray(LABELS)] == 0)
    chex.assert_trees_all_close(_method('lmt_pairwise').inflate(LOGITS, LABELS, gaps),
                                LOGITS + gaps)
    # the global methods use sqrt(2)·L·eps whatever the head
    chex.assert_trees_all_close(losses.required_gaps(_method('lmt'), output, LABELS, 0.5),
                                0.5 * np.sqrt(2) * 3.0 * (1 - jnp.eye(4)[LABELS]), rtol=1e-6)


def test_gloro_appends_the_bottom_logit_of_the_binding_rival():
    gaps = jnp.array([[0.0, 3.0, 0.5, 0.2]])
    out = _method('gloro').inflate(LOGITS[:1], LABELS[:1], gaps)
    chex.assert_trees_all_close(out, jnp.array([[3.0, 1.0, 2.0, -1.0, 4.0]]))
    loss = losses.method_loss(_method('gloro'), _output(), LABELS, 0.5)
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_trades_is_clean_cross_entropy_plus_lambda_kl():
    output = _output()
    method = _method('lc_lmt_pairwise')
    inflated = losses.inflated_logits(method, output, LABELS, 0.5)
    clean_ce = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
    p, q = jax.nn.softmax(LOGITS), jax.nn.softmax(inflated)
    kl = jnp.sum(p * (jnp.log(p) - jnp.log(q)), axis=-1)
    chex.assert_trees_all_close(losses.method_loss(method, output, LABELS, 0.5, 1.5),
                                jnp.mean(clean_ce + 1.5 * kl), rtol=1e-5)
    # with GloRo's extra class the clean distribution gives it probability 0
    gloro = losses.inflated_logits(_method('gloro'), output, LABELS, 0.5)
    divergence = losses.trades_divergence(LOGITS, gloro)
    assert np.all(np.asarray(divergence) >= -1e-6)
    chex.assert_trees_all_close(losses.trades_divergence(LOGITS, LOGITS), jnp.zeros(3), atol=1e-6)


def test_the_log_ramp_rises_fast_then_holds():
    config = config_schema.default_config()
    config.update(epsilon=1.0, epsilon_warmup_epochs=1.0, epsilon_schedule='log')
    schedule = losses.epsilon_schedule(config, steps_per_epoch=100)
    values = [float(schedule(s)) for s in (0, 38, 50, 100, 500)]
    np.testing.assert_allclose(values[0], 0.0)
    assert 0.49 < values[1] < 0.51 and values[2] > 0.5  # half way at 38% of the ramp
    np.testing.assert_allclose(values[3:], [1.0, 1.0], rtol=1e-6)
    config.epsilon_schedule = 'cubic'
    with pytest.raises(ValueError, match="unknown config.epsilon_schedule 'cubic'"):
        losses.epsilon_schedule(config, 100)


def test_every_method_trains_for_a_registered_certificate_and_has_a_paper_recipe():
    for name in losses.METHODS:
        method = losses.METHODS.get(name)
        assert method.certificate in margins.CERTIFICATES
        # the paper recipe of LMT and LC-LMT is their global form
        paper = losses.METHODS.get(method.paper)
        assert paper.inflate is method.inflate and paper.paper == method.paper
        config = configs.paper_recipe(config_schema.default_config())
        config.method = name
        assert configs.paper_recipe(config).method == method.paper
    assert losses.METHODS.get('lc_lmt_pairwise').paper == 'lc_lmt'
    assert losses.METHODS.get('gloro').paper == 'gloro'  # GloRo was published pairwise


def test_emma_raises_each_rival_by_the_share_of_its_gap_already_won():
    """e_j = clip((f_t - f_j)/R_j, 0.01, 1), stop-gradiented; f_j + e_j·R_j; f_t unchanged."""
    logits = jnp.array([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 5.0, 1.0]])
    labels = jnp.array([0, 0])
    gaps = jnp.array([[0.0, 4.0, 0.5, 2.0], [0.0, 1.0, 1.0, 1.0]])
    emma = _method('emma')
    assert emma.certificate == 'pairwise' and emma.paper == 'emma'
    out = emma.inflate(logits, labels, gaps)
    # row 0: won 2/4 of class 1's gap (e = 0.5), more than the whole gap of classes 2 and 3
    # (e = 1); row 1 is misclassified: every rival gets the floor e = 0.01
    chex.assert_trees_all_close(out, jnp.array([[3.0, 3.0, 2.5, 1.0],
                                                [0.0, 5.01, 5.01, 1.01]]))
    # the scale e carries no gradient: d out/d logits = I, d out/d gaps = diag(e) off the label
    d_logits = jax.jacobian(lambda z: emma.inflate(z, labels, gaps))(logits)
    chex.assert_trees_all_close(d_logits, jnp.einsum('ij,nk->injk', jnp.eye(2), jnp.eye(4)))
    d_gaps = jax.jacobian(lambda g: emma.inflate(logits, labels, g)[0])(gaps)[:, 0]
    chex.assert_trees_all_close(d_gaps, jnp.diag(jnp.array([0.0, 0.5, 1.0, 1.0])))
    # zero gaps (epsilon ramped to 0): logits unchanged, nothing non-finite
    zero = emma.inflate(logits, labels, jnp.zeros_like(gaps))
    chex.assert_trees_all_equal(zero, logits)
    loss = losses.method_loss(emma, _output(), LABELS, 0.5)
    assert np.isfinite(float(loss)) and float(loss) > 0


def _annealed(logits, label, gamma, temperature, offset):
    """The Logit Annealing loss of one example, written out with math on Python floats."""
    import math

    shifted = [(z - (offset if j == label else 0.0)) / temperature for j, z in enumerate(logits)]
    entropy = math.log(sum(math.exp(z) for z in shifted)) - shifted[label]
    return temperature * (1.0 - math.exp(-entropy)) ** gamma * entropy


def test_la_is_the_annealed_offset_cross_entropy_of_emma_logits():
    """BRONet's LA: EMMA's logits z, z' = (z - offset·[j = t])/T, T·(1 - p_t)^gamma·CE(z')."""
    la = _method('la')
    assert (la.certificate, la.paper, la.inflate) == ('pairwise', 'la', _method('emma').inflate)
    logits, labels = jnp.array([[2.0, 0.0, 1.0]]), jnp.array([0])
    gaps = jnp.array([[0.0, 1.0, 0.5]])
    inflated = la.inflate(logits, labels, gaps)  # e = 1 for both rivals: [2, 1, 1.5]
    chex.assert_trees_all_close(inflated, jnp.array([[2.0, 1.0, 1.5]]))
    expected = _annealed([2.0, 1.0, 1.5], 0, 5.0, 0.75, 2.0)  # CE = log(1 + e^(4/3) + e^2)
    assert expected == pytest.approx(0.75 * (1 - 1 / 12.18281) ** 5 * np.log(12.18281), rel=1e-4)
    np.testing.assert_allclose(la.criterion(inflated, labels), [expected], rtol=1e-5)
    # through method_loss: the gaps come from the pairwise certificate of the model's head
    output = _output()
    emma_logits = losses.inflated_logits(la, output, LABELS, 0.5)
    wanted = np.mean([_annealed(row, int(label), 5.0, 0.75, 2.0)
                      for row, label in zip(np.asarray(emma_logits).tolist(), LABELS,
                                            strict=True)])
    np.testing.assert_allclose(losses.method_loss(la, output, LABELS, 0.5), wanted, rtol=1e-5)
    # TRADES with LA: the clean term is LA's criterion of the clean logits
    clean = la.criterion(LOGITS, LABELS)
    kl = losses.trades_divergence(LOGITS, emma_logits)
    chex.assert_trees_all_close(losses.method_loss(la, output, LABELS, 0.5, 2.0),
                                jnp.mean(clean + 2.0 * kl), rtol=1e-6)


def test_logit_annealing_reduces_to_cross_entropy_and_its_gradient_stays_finite():
    plain = losses.logit_annealing(gamma=0.0, temperature=1.0, offset=0.0)
    chex.assert_trees_all_close(plain(LOGITS, LABELS), losses.cross_entropy(LOGITS, LABELS))
    # gamma = 0 alone: T times the cross-entropy of the offset, tempered logits
    tempered = losses.logit_annealing(gamma=0.0, temperature=0.5, offset=1.0)
    shifted = (LOGITS - jax.nn.one_hot(LABELS, 4)) / 0.5
    chex.assert_trees_all_close(tempered(LOGITS, LABELS),
                                0.5 * losses.cross_entropy(shifted, LABELS), rtol=1e-6)
    # saturated examples (p_t = 1 in float32, CE = 0) and misclassified ones: finite gradients,
    # and a saturated example pulls no more
    logits = jnp.array([[300.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = jnp.array([0, 0])
    for criterion in (losses.METHODS.get('la').criterion, tempered):
        grad = jax.grad(lambda z, c=criterion: c(z, labels).sum())(logits)
        assert np.all(np.isfinite(np.asarray(grad)))
        np.testing.assert_array_equal(grad[0], 0.0)
        assert float(jnp.abs(grad[1]).sum()) > 0.1
    # the annealing factor shrinks the loss of confident points much more than that of others
    la = losses.METHODS.get('la').criterion
    logits = jnp.array([[6.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    ce = losses.cross_entropy((logits - 2.0 * jax.nn.one_hot(labels, 3)) / 0.75, labels)
    ratio = np.asarray(la(logits, labels) / (0.75 * ce))
    assert ratio[0] < 1e-3 < 0.9 < ratio[1] <= 1.0


def test_la_reads_its_settings_from_the_config():
    """config.logit_annealing sets the LA criterion the train step uses; its defaults are the
    registered (BRONet) ones, and methods without settings come back as registered."""
    config = config_schema.default_config()
    config.method = 'la'
    chex.assert_trees_all_close(losses.configured_method(config).criterion(LOGITS, LABELS),
                                losses.METHODS.get('la').criterion(LOGITS, LABELS))
    config.logit_annealing.update(gamma=0.0, temperature=1.0, offset=0.0)
    chex.assert_trees_all_close(losses.configured_method(config).criterion(LOGITS, LABELS),
                                losses.cross_entropy(LOGITS, LABELS), rtol=1e-6)
    config.method = 'emma'
    assert losses.configured_method(config) is losses.METHODS.get('emma')


def test_the_epsilon_ramp_starts_at_its_start_fraction():
    """LiResNet's and BRONet's 0.1x -> 3x ramp: epsilon 3·r, start 1/30, over half the run."""
    config = config_schema.default_config()
    config.update(epsilon=3.0, epsilon_warmup_epochs=2.0, epsilon_start_fraction=1 / 30)
    schedule = losses.epsilon_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 10, 20, 100)],
                               [0.1, 1.55, 3.0, 3.0], rtol=1e-6)
    # the default 0 is the ramp from 0, bit for bit
    config.epsilon_start_fraction = 0.0
    schedule = losses.epsilon_schedule(config, steps_per_epoch=10)
    for step in (0, 3, 7, 15, 40):
        assert float(schedule(step)) == float(3.0 * jnp.clip(step / 20, 0.0, 1.0))
    config.epsilon_start_fraction = 1.5
    with pytest.raises(ValueError, match='epsilon_start_fraction must be a finite number >= 0 '
                                         'and <= 1, got 1.5'):
        validation.validate_config(config, num_devices=1)
