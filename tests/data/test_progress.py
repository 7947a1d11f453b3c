"""Progress lines: quiet for short passes, count, rate and ETA for long ones."""

import logging
import re

from mmlearn.data import progress


def test_progress_lines_show_count_and_eta_only_for_long_passes(monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  assert list(progress.track(range(5), "quick pass", 5)) == list(range(5))
  assert not caplog.records  # Shorter than QUIET_S: silent.
  monkeypatch.setattr(progress, "QUIET_S", 0.0)
  monkeypatch.setattr(progress, "EVERY_S", 0.0)
  assert list(progress.track(range(4), "evaluating test", 4, unit="batches")) == list(range(4))
  lines = [record.getMessage() for record in caplog.records]
  # Elapsed and ETA as H:MM:SS, whatever the machine's speed (a loaded CPU may take over a second).
  assert re.fullmatch(
    r"evaluating test: 1/4 batches \(25%\), [\d,]+ batches/s, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d",
    lines[0],
  )
  assert len(lines) == 4 and re.fullmatch(r"evaluating test: done in \d+:\d\d:\d\d", lines[-1]), lines


def test_a_pass_of_unknown_length_and_a_resumed_one_count_what_they_do(monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(progress, "QUIET_S", 0.0)
  monkeypatch.setattr(progress, "EVERY_S", 0.0)
  unknown = progress.Progress("streaming", None, unit="examples")
  unknown.update(3)
  assert re.fullmatch(r"streaming: 3 examples, [\d,]+ examples/s, elapsed \d+:\d\d:\d\d", caplog.messages[-1])
  resumed = progress.Progress("preparing", 10, unit="examples", done=8, every_s=0.0)
  monkeypatch.setattr(progress.time, "perf_counter", lambda: resumed.start + 2.0)
  resumed.update()  # One example in 2 s: the 8 done before are not part of the rate.
  assert caplog.messages[-1].startswith("preparing: 9/10 examples (90%), 0 examples/s")
