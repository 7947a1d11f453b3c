"""AV-MNIST concat: each imputation strategy, trained with and without modality dropout.

  python scripts/sweep.py --config=configs/sweeps/avmnist_missing.py:runs/mvae_avmnist \\
    --workdir=runs/avmnist_missing
  python scripts/robustness.py --workdir=runs/avmnist_missing/<variant> --split=validation --nonoise \\
    --output=runs/avmnist_missing/<variant>/robustness_validation   # and the same for test, each variant
  python scripts/robustness_table.py --workdir=runs/avmnist_missing

`concat` because its head reads a slot per modality, so what fills an absent one matters; the pooling
fusions (sum, late, gated, attention) pool the present modalities only and never see the imputed input.
Training data is complete; with `missing.modality_dropout` half the training examples lose one of their
two modalities. The robustness suite then measures accuracy as the missing rate rises, on validation (which
selects the variant, `scripts/robustness_table.py`) and on test (reported). The towers
are the BatchNorm-free LeNets (`configs/avmnist/base.py`, "plain"), as in the robustness table in
docs/imbalance-and-missing.md, which was measured with them.

The config after ':' is a trained `mvae` run (configs/mvae/avmnist.py) for the `generative` variants;
without it those two (run last) fail with that one-line error and the other six still run; re-running
the command with the run named trains only what has not finished.
"""

from configs.avmnist import base

DROPOUT = 0.5


def get_config(generative_workdir: str = ""):
  config = base.get_config("concat", towers="plain")
  if generative_workdir:
    config.missing.generative_workdir = generative_workdir
  return config


def get_sweep(h):
  dropout = h.sweep("missing.modality_dropout", [0.0, DROPOUT])
  return h.chain(  # The generative variants last: they are the ones that need the MVAE run.
    h.product(dropout, h.sweep("missing.imputation", ["zero", "mean", "learned"])),
    h.product(dropout, h.sweep("missing.imputation", ["generative"])),
  )
