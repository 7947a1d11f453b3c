"""The coherence judge for AV-MNIST generation: the image-only LeNet classifier, trained longer (Adam).

It judges the digit of generated 28x28 images, which imitate the dataset's degraded (PCA, 25% of the
variance) images, so it is trained on those; its own test accuracy is reported beside the coherence.
"""

from configs.avmnist import image_only


def get_config():
  config = image_only.get_config()
  config.optimizer.update(
    name="adam", learning_rate=1e-3, weight_decay=0.0, warmup_steps=100, schedule="cosine"
  )
  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_epochs = 5.0
  return config
