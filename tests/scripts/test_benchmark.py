"""scripts/benchmark.py end to end on the tiny config, and the CNN fast paths it measured (same function)."""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import own_flags, run_python
from mmlearn import data
from mmlearn.errors import ConfigError
from mmlearn.models.encoders import ImageCNN, PatchConv, max_pool_2x2

FAKE_KERAS = """import argparse
p = argparse.ArgumentParser(); p.add_argument("--batch", type=int); p.add_argument("--n", type=int)
a = p.parse_args()
print("some TensorFlow chatter")
print(f"keras_seed examples_per_s={a.batch * 10:.1f} epoch_s=[1.0, 0.5, 0.5]")
"""


@pytest.fixture(scope="module")
def benchmark_module():
  sys.path.insert(0, "scripts")
  try:
    with own_flags():  # Its functions only: other tests define `--config` in this worker too.
      import benchmark
  finally:
    sys.path.remove("scripts")
  return benchmark


@pytest.mark.e2e
def test_benchmark_reports_throughput_flops_and_keras_ratio(data_dir, tmp_path):
  fake = tmp_path / "fake_keras.py"
  fake.write_text(FAKE_KERAS)
  args = [
    "scripts/benchmark.py",
    "--config=configs/tiny.py",
    "--batch_sizes=8,16,32",
    "--override=microbatch_size=8",  # Batches 16 and 32 train in chunks, a scan cost analysis counts once.
    "--steps=2",
    "--repeats=2",
    "--matmul_size=256",
    "--epoch",
    f"--out={tmp_path / 'out'}",
    f"--keras_python={sys.executable}",
    f"--keras_script={fake}",
  ]
  result = run_python(args, env={"MMLEARN_DATA_DIR": data_dir})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "out" / "benchmark.json").read_text())["rows"]
  assert [r["batch_size"] for r in rows] == [8, 16, 32]
  num_train = len(
    data.load_sources("mmshapes", config="tiny", data_dir=data_dir, splits=("train",))[0]["train"]
  )
  for r in rows:
    for key in ("step_examples_per_s", "loop_examples_per_s", "compile_s", "mflop_per_example"):
      assert r[key] > 0, (key, r)
    assert r["step_gflop_per_s"] == pytest.approx(r["mflop_per_example"] * r["step_examples_per_s"] / 1e3)
    assert r["matmul_gflop_per_s"] > 0
    assert r["step_over_matmul"] == pytest.approx(r["step_gflop_per_s"] / r["matmul_gflop_per_s"])
    assert r["epoch_s"] > 0
    assert r["epoch_examples_per_s"] == pytest.approx(
      num_train // r["batch_size"] * r["batch_size"] / r["epoch_s"]
    )
    assert r["keras_examples_per_s"] == 10 * r["batch_size"]  # The fake echoes the batch it was given.
    assert r["loop_over_keras"] == pytest.approx(r["loop_examples_per_s"] / r["keras_examples_per_s"])
  # FLOPs grow linearly with the batch: a fixed per-step part (the optimizer update) plus a per-example
  # part, which must be the same between 8 -> 16 and 16 -> 32, chunked or not.
  flops = [r["mflop_per_example"] * r["batch_size"] for r in rows]
  assert flops[2] - flops[1] == pytest.approx(2 * (flops[1] - flops[0]), rel=1e-3)
  assert rows[0]["mflop_per_example"] == pytest.approx(rows[2]["mflop_per_example"], rel=0.5)
  table = (tmp_path / "out" / "benchmark.md").read_text()
  assert (
    "| `configs/tiny.py` | 32 |" in table
    and "loop / Keras" in table
    and "of matmul rate" in table
    and "epoch (s)" in table
  )
  assert (tmp_path / "out" / "benchmark.csv").read_text().count("\n") == 4
  assert table in result.stdout


def test_keras_output_line_is_parsed(benchmark_module):
  out = "I0000 oneDNN custom operations are on\nkeras_seed examples_per_s=1234.5 epoch_s=[6.6, 5.11, 3.46]\n"
  assert benchmark_module.parse_keras_output(out) == 1234.5
  assert benchmark_module.parse_keras_output("examples_per_s=2e3\nexamples_per_s=7\n") == 7.0
  with pytest.raises(ValueError, match="no 'examples_per_s='"):
    benchmark_module.parse_keras_output("Traceback (most recent call last): ...")


def test_flops_of_reads_dict_and_list_cost_analyses(benchmark_module):
  class Compiled:
    def __init__(self, analysis):
      self.analysis = analysis

    def cost_analysis(self):
      return self.analysis

  assert benchmark_module.flops_of(Compiled({"flops": 6.0, "bytes accessed": 1.0})) == 6.0
  assert benchmark_module.flops_of(Compiled([{"flops": 2.0}, {"flops": 3.0}])) == 5.0
  real = jax.jit(lambda x: x @ x).lower(jnp.ones((8, 8))).compile()
  assert benchmark_module.flops_of(real) == 2 * 8**3


def assert_close_trees(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize(
  "kernel_size, padding, shape",
  [((3, 3), "SAME", (4, 9, 8, 3)), ((3, 3), "VALID", (2, 7, 10, 5)), ((2, 3), "SAME", (3, 6, 5, 2))],
)
def test_patch_conv_equals_nn_conv_outputs_and_gradients(kernel_size, padding, shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  conv = nn.Conv(7, kernel_size=kernel_size, padding=padding)
  patch = PatchConv(7, kernel_size=kernel_size, padding=padding)
  params = conv.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # Non-zero bias too.
  assert jax.tree.map(jnp.shape, patch.init(jax.random.PRNGKey(1), x)) == jax.tree.map(jnp.shape, params)
  out = conv.apply(params, x)
  np.testing.assert_allclose(patch.apply(params, x), out, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), out.shape)

  def grads(module):
    return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * cotangent), argnums=(0, 1))(params, x)

  assert_close_trees(grads(patch), grads(conv), rtol=1e-4, atol=1e-4)


def test_patch_conv_rejects_unknown_padding():
  with pytest.raises(ConfigError, match="padding"):
    PatchConv(2, padding="CIRCULAR").init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1)))


def test_max_pool_2x2_equals_nn_max_pool_with_ties_and_odd_sizes():
  # Small integers make ties common (as relu zeros and flat image regions do); 7x9 drops a row and column.
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (3, 7, 9, 4)), jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 4, 4)), jnp.float32)
  ours, ours_vjp = jax.vjp(max_pool_2x2, x)
  ref, ref_vjp = jax.vjp(lambda x: nn.max_pool(x, (2, 2), (2, 2)), x)
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(ours_vjp(cotangent)[0], ref_vjp(cotangent)[0])


@pytest.mark.parametrize("pool, padding, flat", [(True, "SAME", 3 * 3 * 6), (False, "VALID", 8 * 8 * 6)])
def test_image_cnn_conv_implementations_agree(pool, padding, flat):
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12, 3), minval=-1, maxval=1)
  xla = ImageCNN(widths=(4, 6), dense=5, conv="xla", pool=pool, padding=padding)
  patches = ImageCNN(widths=(4, 6), dense=5, conv="patches", pool=pool, padding=padding)
  params = xla.init(jax.random.PRNGKey(1), images)
  np.testing.assert_allclose(patches.apply(params, images), xla.apply(params, images), rtol=1e-5, atol=1e-5)

  def grads(module):
    return jax.grad(lambda p: jnp.sum(module.apply(p, images) ** 2))(params)

  assert_close_trees(grads(patches), grads(xla), rtol=1e-4, atol=1e-4)
  assert params["params"]["dense"]["kernel"].shape == (flat, 5)  # 12 -> 6 -> 3 pooled; 12 -> 10 -> 8 VALID.


def test_image_cnn_rejects_an_unknown_conv():
  with pytest.raises(ConfigError, match="conv must be one of"):
    ImageCNN(widths=(2,), conv="winograd").init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 3)))
