"""Image <-> caption retrieval with a pretrained CLIP or SigLIP checkpoint: fine-tune, freeze, LoRA, or
pretrain its architecture from scratch.

  python -m mmlearn.main --config=configs/pretrained/retrieval.py:ckpt=/ckpts/clip-vit-b16 \\
    --workdir=runs/clip_ft
  python -m mmlearn.main --config=configs/pretrained/retrieval.py:ckpt=/ckpts/siglip,mode=lora \\
    --workdir=runs/siglip_lora
  python scripts/export_pretrained.py --workdir=runs/clip_ft --out=exports/clip_ft

The text after ':' is `ckpt=DIR` (a Hugging Face CLIPModel or SiglipModel directory; without it, the
suite's tiny random-weight CLIP fixture, for a smoke run), then optionally
`mode=` full (the default: every weight trains), frozen (only the logit scale and bias train), lora
(rank-8 adapters on the attention projections; the towers frozen) or scratch (the checkpoint's
architecture, seeded weights), `dataset=` mmshapes (the `retrieval` build, the default) or
captioned (your own folder: set --config.dataset.manual_dir), and `evals=zero_shot`, which adds the
`zero_shot` and `linear_probe` evaluators on the test split (a dataset with labels; the probe's
regularisation is chosen on validation). The towers' own projections are the
joint space (`retrieval.projection` False) and the checkpoint's logit scale (and bias) start the loss,
so step 0 scores exactly as the released model does. Images and captions are read as the checkpoint's
processor and tokenizer read them (`use_checkpoint_inputs`). docs/pretrained.md has the walk-through.
"""

import os

import ml_collections

from mmlearn.config import schema
from mmlearn.pretrained import loading
from mmlearn.pretrained.preprocessing import use_checkpoint_inputs

MODES = ("full", "frozen", "lora", "scratch")
TEMPLATES = ("a photo of a {}.", "a {}.", "there is a {}.")  # CLIP's first, then plainer ones.
LORA_TARGETS = r"_encoder/.*(q_proj|k_proj|v_proj|out_proj)/kernel$"

# Without `ckpt=`: the suite's tiny random-weight CLIP (tests/fixtures/pretrained), so the file runs as is.
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "pretrained", "clip_a")


def parse(arg: str) -> dict[str, str]:
  """`"ckpt=DIR,mode=lora"` -> {"ckpt": DIR, "mode": "lora"}, checked; without `ckpt`, `FIXTURE`."""
  settings = {"ckpt": FIXTURE} | dict(item.partition("=")[::2] for item in arg.split(",") if item)
  unknown = sorted(set(settings) - {"ckpt", "mode", "dataset", "evals"})
  if unknown or not settings.get("ckpt"):
    raise ValueError(
      f"configs/pretrained/retrieval.py takes ckpt=DIR[,mode=][,dataset=][,evals=zero_shot], got {arg!r}"
    )
  if settings.setdefault("mode", "full") not in MODES:
    raise ValueError(f"mode={settings['mode']!r}: known modes are {', '.join(MODES)}")
  if settings.get("evals", "zero_shot") != "zero_shot":
    raise ValueError(f"evals={settings['evals']!r}: the only choice is evals=zero_shot")
  return settings


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  settings = parse(arg)
  directory, mode = settings["ckpt"], settings["mode"]
  image_tower, text_tower = loading.towers_of(directory, ("image", "text"))
  config = schema.get_config("retrieval")
  if settings.get("dataset", "mmshapes") == "captioned":
    config.dataset.name = "captioned"
    config.dataset.config = ""
  else:
    config.dataset.config = "retrieval"
    config.retrieval.relevance = ("shape", "colour", "size", "quadrant")
  load, freeze = mode != "scratch", mode in ("frozen", "lora")
  config.model.modalities = ml_collections.ConfigDict(
    {
      "image": loading.tower(image_tower, directory, load=load, freeze=freeze),
      "text": loading.tower(text_tower, directory, load=load, freeze=freeze),
    }
  )
  use_checkpoint_inputs(config.dataset, directory)
  config.dataset.max_tokens = loading.max_text_positions(directory)
  config.retrieval.projection = False
  config.retrieval.loss = "siglip" if text_tower.startswith("siglip") else "clip"
  if mode == "lora":
    config.lora.update(rank=8, alpha=16.0, targets=LORA_TARGETS)
  config.optimizer.update(
    name="adamw", learning_rate=1e-5 if load else 1e-3, warmup_steps=100, weight_decay=0.1
  )
  if "evals" in settings:
    config.evals = ml_collections.ConfigDict(
      {
        "retrieval": {"type": "retrieval", "split": "test"},
        "zero_shot": {"type": "zero_shot", "split": "test", "templates": TEMPLATES},
        "linear_probe": {"type": "linear_probe", "split": "test"},
      }
    )
  config.batch_size = 64
  config.num_epochs = 1.0
  return config
