"""The coherence judge for AV-MNIST generation: the image-only LeNet classifier, trained longer (Adam).

  python -m mmlearn.main --config=configs/mvae/judge_avmnist.py --workdir=runs/judge_avmnist

It judges the digit of generated 28x28 images, which imitate the dataset's degraded (PCA, 25% of the
variance) images, so it is trained on those; its own accuracy is reported beside the coherence, which it
bounds.

Reaches (5 epochs of 128, seed 0, builder 1.4.0): validation accuracy 69.1% (68.9% on the seeded 2,000
validation examples the flow runs are judged on). Test: docs/generation.md, the AV-MNIST MVAE table (its
"real images" column) and the flow's AV-MNIST test table.
"""

from configs.avmnist import fusion


def get_config():
  config = fusion.get_config("image_only")
  config.optimizer.update(
    name="adam", learning_rate=1e-3, weight_decay=0.0, warmup_steps=100, schedule="cosine"
  )
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 5.0
  return config
