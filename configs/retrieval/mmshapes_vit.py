"""Image <-> caption retrieval on mmshapes' `retrieval` build with Transformer towers, CLIP loss.

  python -m mmlearn.main --config=configs/retrieval/mmshapes_vit.py --workdir=runs/mmshapes_vit

As `mmshapes_clip.py` (data, loss, relevance, optimiser, 4 epochs), but the towers are a ViT-style patch
Transformer (image: 8x8 patches of the 32x32 image -> 16 tokens) and a Transformer text encoder (captions
padded to 16 tokens, padding masked), both pre-LN, width 64, 2 blocks, 4 heads, MLP 128, mean-pooled, no
dropout (see mmlearn/models/transformer.py). About 3 minutes on a busy 2-core CPU.

Chosen on the validation split (mean of both directions' R@1, seed 0): 4x4 patches 88.9 / 95.1 ->
8x8 patches 92.4 / 97.4 (and half the step time); at 8x8, learning rate 1e-3 86.9 / 91.3, 4e-3
91.6 / 98.2 (a tie with 2e-3); CLS pooling tied with mean pooling at seed 0 (93.1 / 97.6) and lost at
seed 1 (92.1 / 94.4 against 93.9 / 98.9). Each pair is image_to_text / text_to_image R@1 in %.

Reaches: the selected setting's validation R@1 above (8x8 patches, lr 2e-3, mean pooling: 92.4 / 97.4 at
seed 0). These are the same-description rule's (measured when it was the only rule; the paired R@1 is
capped near 3%), and they are recorded here only: docs/ has no table for this config. Test: not reported.
"""

import ml_collections

from configs.retrieval import mmshapes_clip


def get_config(loss: str = "clip") -> ml_collections.ConfigDict:
  config = mmshapes_clip.get_config(loss)
  tower = {"width": 64, "depth": 2, "heads": 4, "mlp_dim": 128, "dropout": 0.0, "pool": "mean"}
  config.model.modalities.image = ml_collections.ConfigDict({"encoder": "vit", "patch": 8, **tower})
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "transformer", **tower})
  return config
