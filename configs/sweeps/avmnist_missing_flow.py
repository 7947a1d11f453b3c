"""AV-MNIST concat with a flow run (`configs/flow/avmnist.py`) as the generative imputation of the image.

  python -m mmlearn.main --config=configs/flow/avmnist.py --workdir=runs/flow_avmnist
  python scripts/sweep.py --config=configs/sweeps/avmnist_missing_flow.py:runs/flow_avmnist \\
    --workdir=runs/avmnist_missing_flow
  python scripts/robustness.py --workdir=runs/avmnist_missing_flow/<variant> --split=validation --nonoise \\
    --num_examples=2000 --output=runs/avmnist_missing_flow/<variant>/robustness_validation   # and test
  python scripts/robustness_table.py --workdir=runs/avmnist_missing_flow

The `generative` variant of `configs/sweeps/avmnist_missing.py` with a flow run in place of the MVAE, so
its curves compare with that sweep's. Without modality dropout only: the classifier trains on complete
examples and the flow imputes at evaluation. With dropout it would also sample an image for about a
quarter of the training examples, at 20 U-Net passes each (`flow.num_steps`), which costs more than the
classifier's own training. The flow imputes the image only: an absent spectrogram is zero-filled, and
where both are absent the image is drawn unconditionally (guidance's null condition).

Reaches (one epoch, seed 0, builder 1.4.0; the flow with its audio encoder trained with it, as in the first
command): mean validation area 69.88 over the three curves (clean validation accuracy 90.48%), lower
than every variant of `configs/sweeps/avmnist_missing.py`. Test: docs/imbalance-and-missing.md, the
"generative, flow" row of the robustness table, and the README's missing-modality table.
"""

from configs.sweeps import avmnist_missing


def get_config(flow_workdir: str = ""):
  return avmnist_missing.get_config(flow_workdir)


def get_sweep(h):
  return h.product(h.sweep("missing.modality_dropout", [0.0]), h.sweep("missing.imputation", ["generative"]))
