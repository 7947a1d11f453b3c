"""Image <-> caption retrieval on your own folder of images and captions, at 224 px, ViT / Transformer towers.

  python scripts/make_caption_folder.py --out=/data/shapes224 --num=40000 --size=224
  python -m mmlearn.main --config=configs/retrieval/captioned_vit.py --workdir=runs/captioned_vit \\
    --config.dataset.manual_dir=/data/shapes224

The `captioned` builder keeps each image's JPEG bytes (`image_shape=None`); the input pipeline decodes
them in `dataset.workers` processes, takes Inception's random-resized crop to 224 px for training (the
centre crop for evaluation), normalises with CLIP's statistics and tokenizes captions with a word
tokenizer built from the training captions. The towers are small (width 64, 2 blocks, 32 px patches: 49
image tokens) so that an epoch of 40,000 images fits a laptop CPU; the point is the data path at real
size, not the accuracy. One epoch at batch 64, CLIP loss, Adam.
"""

import ml_collections

from configs.retrieval import mmshapes_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_config() -> ml_collections.ConfigDict:
  config = mmshapes_clip.get_config("clip")
  config.dataset.name = "captioned"
  config.dataset.config = "folder224"
  config.dataset.options = ml_collections.ConfigDict({"manifest": "manifest.csv", "image_shape": None})
  config.dataset.image_size = 224
  config.dataset.image_mean, config.dataset.image_std = CLIP_MEAN, CLIP_STD
  config.dataset.tokenizer = "word"
  config.dataset.max_tokens = 32
  config.dataset.workers = 2
  config.augment.image_random_resized_crop = True
  config.retrieval.relevance = ("label",)
  tower = {"width": 64, "depth": 2, "heads": 4, "mlp_dim": 128, "dropout": 0.0, "pool": "mean"}
  config.model.modalities.image = ml_collections.ConfigDict({"encoder": "vit", "patch": 32, **tower})
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "transformer", **tower})
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 1.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  return config
