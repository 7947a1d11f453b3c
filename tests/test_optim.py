"""Optimizer construction: schedules, clipping and weight decay by config."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from mmlearn import optim
from mmlearn.errors import ConfigError


def optimizer_config(**overrides):
  config = default.get_config().optimizer
  config.update(overrides)
  return config


def test_warmup_then_cosine_to_zero():
  schedule = optim.make_schedule(optimizer_config(learning_rate=0.2, warmup_steps=10), total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.1)
  assert float(schedule(10)) == pytest.approx(0.2)
  assert float(schedule(60)) == pytest.approx(0.1, rel=1e-4)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_constant_schedule_after_warmup():
  schedule = optim.make_schedule(optimizer_config(schedule="constant", warmup_steps=4), total_steps=100)
  assert float(schedule(2)) == pytest.approx(0.05)
  assert float(schedule(50)) == float(schedule(99)) == pytest.approx(0.1)


def update(config, grads, params):
  tx = optim.make_optimizer(config, total_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_global_norm_clipping_bounds_the_gradient():
  config = optimizer_config(
    momentum=0.0, warmup_steps=0, schedule="constant", learning_rate=1.0, grad_clip_norm=1.0
  )
  grads = {"w": jnp.array([30.0, 40.0])}
  updates = update(config, grads, {"w": jnp.zeros(2)})
  np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)
  assert float(optax.global_norm(updates)) == pytest.approx(1.0)


def test_sgd_weight_decay_adds_l2_gradient():
  config = optimizer_config(
    momentum=0.0, warmup_steps=0, schedule="constant", learning_rate=0.5, weight_decay=0.1
  )
  updates = update(config, {"w": jnp.array([1.0])}, {"w": jnp.array([2.0])})
  np.testing.assert_allclose(updates["w"], [-0.5 * (1.0 + 0.1 * 2.0)], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_every_optimizer_moves_against_the_gradient(name):
  config = optimizer_config(name=name, warmup_steps=0, schedule="constant", learning_rate=0.01)
  updates = update(config, {"w": jnp.array([1.0, -1.0])}, {"w": jnp.zeros(2)})
  assert float(updates["w"][0]) < 0 < float(updates["w"][1])


def test_unknown_names_are_errors():
  with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop9'"):
    optim.make_optimizer(optimizer_config(name="rmsprop9"), 10)
  with pytest.raises(ConfigError, match="unknown learning-rate schedule 'linear9'"):
    optim.make_schedule(optimizer_config(schedule="linear9"), 10)
