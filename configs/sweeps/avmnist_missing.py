"""AV-MNIST concat: each imputation strategy, trained with and without modality dropout.

  python -m mmlearn.main --config=configs/mvae/avmnist.py --workdir=runs/mvae_avmnist
  python scripts/sweep.py --config=configs/sweeps/avmnist_missing.py:runs/mvae_avmnist \\
    --workdir=runs/avmnist_missing
  for v in runs/avmnist_missing/*/; do for s in validation test; do
    python scripts/robustness.py --workdir=$v --split=$s --nonoise --num_examples=2000 \\
      --output=$v/robustness_$s
  done; done
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

Reaches (one epoch, seed 0, builder 1.4.0; mean area of the audio-, image- and both-missing curves over
missing rates 0-0.9, on a seeded 2,000 validation examples): `learned` with dropout 78.26 (selected;
clean validation accuracy 90.06%), `zero` with dropout 78.09, `generative` without dropout 74.88 (the
best without dropout). Test, once for every variant: docs/imbalance-and-missing.md, "Robustness curves",
and the README's missing-modality table.
"""

from configs.avmnist import fusion

DROPOUT = 0.5


def get_config(generative_workdir: str = ""):
  config = fusion.get_config("concat,towers=plain")
  if generative_workdir:
    config.missing.generative_workdir = generative_workdir
  return config


def get_sweep(h):
  dropout = h.sweep("missing.modality_dropout", [0.0, DROPOUT])
  return h.chain(  # The generative variants last: they are the ones that need the MVAE run.
    h.product(dropout, h.sweep("missing.imputation", ["zero", "mean", "learned"])),
    h.product(dropout, h.sweep("missing.imputation", ["generative"])),
  )
