"""The loop's extras: device prefetch, the profiler window, the summary line; the schema in the library."""

import os

import numpy as np
import pytest

from conftest import run_python
from mmlearn.errors import ConfigError
from mmlearn.train import loop, prefetch, profiler


class CountingIterator:
  """An iterator with grain's `get_state`: its state is how many batches it has produced."""

  def __init__(self):
    self.count = 0

  def __next__(self):
    self.count += 1
    return {"x": np.full(2, self.count)}

  def get_state(self):
    return {"count": self.count}


def test_prefetch_saves_the_state_of_the_batches_handed_out_not_of_those_read_ahead():
  source = CountingIterator()
  batches = prefetch.DevicePrefetch(source, place=lambda b: b["x"], size=2)
  assert batches.consumed_state().state == {"count": 0}
  first = next(batches)
  assert first.tolist() == [1, 1] and source.count == 3  # Two batches read ahead.
  assert batches.consumed_state().state == {"count": 1}
  assert [next(batches)[0] for _ in range(3)] == [2, 3, 4]
  saved = batches.consumed_state()
  assert saved.state == {"count": 4} and saved.get_state() == b'{\n    "count": 4\n}'


def test_profile_steps_are_parsed_and_checked():
  assert profiler.parse_steps(None) is None and profiler.parse_steps("3,5") == (3, 5)
  for bad in ("3", "5,3", "0,2", "a,b"):
    with pytest.raises(ConfigError, match="--profile_steps"):
      profiler.parse_steps(bad)


@pytest.mark.e2e
def test_profile_window_writes_a_trace(tiny_config, tmp_path):
  loop.train_and_evaluate(tiny_config, str(tmp_path), profile_steps=(2, 3))
  files = [name for _, _, names in os.walk(tmp_path / "profile") for name in names]
  assert any(name.endswith(".xplane.pb") for name in files), files
  assert any(name.endswith(".trace.json.gz") for name in files), files


def test_summary_line_leads_with_the_last_split():
  results = {"validation/accuracy": 0.9995, "test/accuracy": 0.9998, "test/loss": 0.01}
  line = loop.summary_line(results, "accuracy", ("validation", "test"), 640)
  assert line == "test accuracy 99.98% (validation 99.95%) at step 640"
  assert loop.summary_line({"test/elbo": -1234.5}, "elbo", ("test",), 8) == "test elbo -1234 at step 8"


@pytest.mark.e2e
def test_configs_validate_without_the_repository_configs_package(tmp_path):
  """The reference schema ships in mmlearn/, so a pip-installed mmlearn checks configs on its own."""
  code = (
    "import sys; sys.modules['configs'] = None\n"  # Any `import configs...` now fails.
    "from mmlearn.config import checks, schema\n"
    "config = schema.get_config(); checks.check(config)\n"
    "config.optimizer.learnig_rate = 1.0\n"
    "try:\n  checks.check(config)\nexcept checks.ConfigError as e:\n  print(e)\n"
  )
  result = run_python(["-c", code])
  assert result.returncode == 0, result.stderr[-2000:]
  expected = "unknown config key 'optimizer.learnig_rate'; did you mean 'optimizer.learning_rate'?"
  assert result.stdout.strip() == expected
