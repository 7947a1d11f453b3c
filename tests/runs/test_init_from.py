"""Starting from another run's parameters (`config.init_from`) and freezing them (`optimizer.frozen`)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from mmlearn import optim
from mmlearn.config import checks as config_checks
from mmlearn.errors import ConfigError, WorkdirError
from mmlearn.runs import init_from


def tree(seed: float) -> dict:
  return {
    "params": {
      "encoder": {"conv": {"kernel": jnp.full((3, 2), seed), "bias": jnp.full((2,), seed)}},
      "head": {"kernel": jnp.full((2, 4), seed)},
    },
    "batch_stats": {"encoder": {"norm": {"mean": jnp.full((2,), seed)}}},
  }


def test_transplant_copies_the_named_subtree_in_every_collection_and_nothing_else():
  mine = tree(0.0)
  source = {
    "params": {"audio_encoder": tree(1.0)["params"]["encoder"], "logits": {"kernel": jnp.ones((2, 9))}}
  }
  source["batch_stats"] = {"audio_encoder": tree(2.0)["batch_stats"]["encoder"]}
  out = init_from.transplant(mine, source, init_from.parse_pairs("encoder=audio_encoder"))
  np.testing.assert_array_equal(out["params"]["encoder"]["conv"]["kernel"], np.ones((3, 2)))
  np.testing.assert_array_equal(out["batch_stats"]["encoder"]["norm"]["mean"], np.full((2,), 2.0))
  np.testing.assert_array_equal(out["params"]["head"]["kernel"], np.zeros((2, 4)))  # Not named: kept.
  assert float(mine["params"]["encoder"]["conv"]["kernel"][0, 0]) == 0.0  # The input is not changed.
  whole = init_from.transplant(mine, tree(3.0), init_from.parse_pairs(""))  # "": the whole tree.
  assert all(float(x.ravel()[0]) == 3.0 for x in jax.tree.leaves(whole))


def test_bad_pairs_paths_and_shapes_are_config_errors_naming_them():
  with pytest.raises(ConfigError, match="'encoder' is not DEST=SOURCE"):
    init_from.parse_pairs("encoder")
  with pytest.raises(
    ConfigError, match="source run has no parameter path 'audio'.*names there: encoder, head"
  ):
    init_from.transplant(tree(0.0), tree(1.0), [("encoder", "audio")])
  smaller = {"params": {"encoder": {"conv": {"kernel": jnp.ones((3, 1)), "bias": jnp.ones(2)}}}}
  with pytest.raises(ConfigError, match=r"encoder\['conv'\]\['kernel'\] differs: this run \(\(3, 2\)"):
    init_from.transplant(tree(0.0), smaller, [("encoder", "encoder")])
  config = tiny.get_config()
  config.init_from.params = "encoder=audio_encoder"
  with pytest.raises(ConfigError, match="init_from.workdir names no run"):
    config_checks.check(config)
  config = tiny.get_config()
  config.optimizer.frozen = "encoder/("
  with pytest.raises(ConfigError, match="optimizer.frozen 'encoder/\\(' is not a regular expression"):
    config_checks.check(config)


def test_frozen_parameters_never_change_under_decay_clipping_and_adam():
  cfg = ml_collections.ConfigDict(tiny.get_config().optimizer.to_dict())
  cfg.update(name="adam", weight_decay=0.1, grad_clip_norm=0.5, frozen="encoder/")
  params = tree(1.0)["params"]
  tx = optim.make_optimizer(cfg, 10)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  new = params
  for _ in range(3):
    updates, state = tx.update(grads, state, new)
    new = jax.tree.map(lambda p, u: p + u, new, updates)
  for a, b in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(new["encoder"]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(params["head"]["kernel"], new["head"]["kernel"])
  cfg.frozen = "decoder/"
  with pytest.raises(ConfigError, match="'decoder/' matches no parameter.*encoder/conv/bias"):
    optim.make_optimizer(cfg, 10).init(params)


def test_a_source_that_is_not_a_run_is_named(tmp_path):
  settings = ml_collections.ConfigDict({"workdir": str(tmp_path / "nowhere"), "params": ""})
  with pytest.raises(WorkdirError, match="nowhere/config.json is missing"):
    init_from.load(settings, tree(0.0))
