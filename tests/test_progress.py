"""Progress lines with an ETA (``lclmt_jax.progress``) and the attack's use of them."""

import jax.numpy as jnp
import numpy as np
import pytest

from lclmt_jax import attacks, progress

pytestmark = pytest.mark.fast


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_are_throttled_the_eta_skips_the_first_update_and_the_last_line_says_done():
    clock, lines = Clock(), []
    report = progress.Progress('attack', 'points', every_s=10.0, clock=clock, write=lines.append)
    clock.now += 30.0  # the first unit of work compiled for 30 s
    report(1, 11)
    clock.now += 2.0
    report(2, 11)  # within 10 s of the last line: silent
    clock.now += 8.0
    report(6, 11)  # 5 units in 10 s since the first update: 5 left take 10 s
    clock.now += 10.0
    report(11, 11)
    assert lines == ['attack: 1/11 points (9%), 0:00:30 elapsed',
                     'attack: 6/11 points (55%), 0:00:40 elapsed, ETA 0:00:10',
                     'attack: 11/11 points (100%), 0:00:50 elapsed, done']


def test_eta_and_duration():
    assert progress.eta_seconds(5, 10, 10.0, 0) == 10.0
    assert progress.eta_seconds(3, 10, 10.0, 3) is None  # nothing done since the first update
    assert progress.eta_seconds(10, 10, 0.0, 10) == 0.0
    assert progress.duration(3725.4) == '1:02:05'


def test_the_attack_reports_monotone_progress_up_to_its_total():
    def logits_fn(x):
        mean = x.mean(axis=(1, 2, 3))
        return jnp.stack([mean, 0.5 + 0.0 * mean], axis=-1)

    images = np.random.default_rng(0).uniform(0.52, 0.58, size=(5, 4, 4, 1)).astype(np.float32)
    calls = []
    config = attacks.CWConfig(steps=5, binary_search_steps=3, batch_size=2)
    norms = attacks.cw_l2_min_norms(logits_fn, images, np.zeros(5, np.int32), config,
                                    progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1] == 5 * 3  # every point, every round
    assert np.isfinite(norms).all()


def test_batches_report_each_finished_batch():
    calls = []
    spans = list(progress.batches(7, 3, lambda done, total: calls.append((done, total))))
    assert spans == [(0, 3), (3, 6), (6, 7)]
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert list(progress.batches(0, 3)) == []
