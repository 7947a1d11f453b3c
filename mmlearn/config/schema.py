"""The config schema: the core keys every run has, with their defaults, plus the sections of its task.

The core is what the trainer reads whatever the task: the dataset and its pipeline (augmentation), the
model's modalities, the optimizer and its schedule, the run's length, logging, checkpointing,
evaluators, precision, the parallel layout. Everything a single task reads lives in that task's own
sections, which the task class declares (`TaskFactory.config_sections`, with its checks beside them):
classification's `classification` (loss, fusion, head, class imbalance) and `missing` (missing
modalities), `retrieval`, `mvae`, `flow`. `get_config(task)` is the core plus that task's sections, so
a run's `config.json` holds only what the run reads.

It lives in the library, not in `configs/`, because `mmlearn.config.checks` validates every config
against it (unknown keys, wrong types), and a pip-installed mmlearn must be able to do that without the
repository's `configs/` package. Override fields on the command line, e.g.
`--config.optimizer.learning_rate=0.1`.
"""

import ml_collections
from ml_collections import config_dict

from mmlearn.errors import ConfigError
from mmlearn.tasks.registry import TASKS

# Sub-trees whose keys are the user's to choose: modality names (the encoders, the missing rates, the
# MVAE's decoders and likelihood weights), fusion arguments, the dataset builder's options, evaluators.
FREE_FORM = (
  "dataset.options",
  "model.modalities",
  "classification.fusion_kwargs",
  "missing.train_rates",
  "missing.test_rates",
  "mvae.decoders",
  "mvae.likelihood_weights",
  "mvae.private_dims",
  "evals",
)


def get_config(task: str = "classification") -> ml_collections.ConfigDict:
  """Every key a `task` run may set, with its default; the default run is CNN(image) + LSTM(text) ->
  concat -> MLP on mmshapes, trained with SGD + momentum."""
  config = core()
  config.task = task
  for name, section in task_sections(task).items():
    config[name] = section
  return config


def task_sections(task: str) -> dict[str, ml_collections.ConfigDict]:
  """The sections `task` owns, with their defaults (a `ConfigError` naming the known tasks if unknown)."""
  return TASKS.get(task).config_sections()


def core() -> ml_collections.ConfigDict:
  """The keys of every run, whatever its task."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "classification"  # A registered task (mmlearn.tasks): it adds its own sections.
  # Modules imported before any name is looked up (datasets, encoders, fusions, tasks registered outside
  # mmlearn, e.g. ("my_lab.datasets",)); recorded in config.json, so tools reading the run import them too.
  config.imports = ()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "mmshapes"
  config.dataset.config = "default"  # TFDS builder config: sizes and generator seed.
  # Where TFDS writes/reads prepared files; None -> $MMLEARN_DATA_DIR or ~/tensorflow_datasets.
  config.dataset.data_dir = config_dict.placeholder(str)
  # Raw files for builders that need them (AV-MNIST); None -> the builder's environment variable.
  config.dataset.manual_dir = config_dict.placeholder(str)
  # The builder's own settings (the generic `captioned` builder's: manifest, image_shape, ...; see
  # docs/datasets.md); a builder that takes none rejects any.
  config.dataset.options = ml_collections.ConfigDict()
  config.dataset.max_tokens = 16  # Captions are padded/truncated to this many tokens (with a mask).
  # Captions' tokenizer, run in the input pipeline (mmlearn/data/tokenizer_choice.py): "" = the dataset's
  # own | word | subword (built from the training captions) | a tokenizer.json or sentencepiece .model.
  config.dataset.tokenizer = ""
  config.dataset.vocab_size = 1000  # subword: at most this many pieces.
  config.dataset.min_count = 1  # word: words seen fewer times in the training captions become <unk>.
  # Images read at this size (shorter side resized, centre crop; 0 = as stored), normalised per channel
  # as (x / 255 - mean) / std: the defaults scale to [-1, 1]; a pretrained tower names its own.
  config.dataset.image_size = 0
  config.dataset.image_mean = (0.5,)
  config.dataset.image_std = (0.5,)
  config.dataset.image_resample = "bilinear"  # bilinear | bicubic (Pillow's filter, on uint8).
  config.dataset.image_crop = True  # False: resize the whole image to image_size square (no crop).
  # Processes that prepare the dataset and build training batches (decode, crop, tokenize); 0 = inline.
  config.dataset.workers = 0
  config.dataset.eval_splits = ("validation", "test")

  # Training-batch augmentation, all off by default (see mmlearn/data/augment.py); never on eval batches.
  config.augment = ml_collections.ConfigDict()
  config.augment.image_crop_pad = 0  # Reflect-pad by this many pixels, then crop back at random.
  config.augment.image_rotate_degrees = 0.0  # Rotate by a uniform angle in [-d, d] (bilinear).
  config.augment.image_hflip = False  # Mirror with p = 0.5: wrong for digits and left/right captions.
  # Inception's random-resized crop to dataset.image_size (8-100% of the area, aspect 3/4-4/3) instead of
  # the centre crop.
  config.augment.image_random_resized_crop = False
  config.augment.audio_time_mask = 0  # SpecAugment: one time band of up to this many frames, set to -1.
  config.augment.audio_freq_mask = 0  # SpecAugment: one frequency band of up to this many bins.
  config.augment.text_token_dropout = 0.0  # Drop each token with this probability (kept ones shift left).

  # One encoder per modality, `{"encoder": <registered name>, **its arguments}` (mmlearn/models/encoders.py).
  config.model = ml_collections.ConfigDict()
  config.model.modalities = ml_collections.ConfigDict()
  config.model.modalities.image = ml_collections.ConfigDict(
    {"encoder": "cnn", "widths": (16, 32), "dense": 64}
  )
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "lstm", "embed_dim": 32, "hidden": 64})

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9  # sgd only
  config.optimizer.weight_decay = 0.0  # sgd/adam: L2 added to the gradient; adamw: decoupled decay.
  config.optimizer.warmup_steps = 50
  config.optimizer.schedule = "cosine"  # cosine | constant (both after linear warmup)
  config.optimizer.grad_clip_norm = 0.0  # 0 disables global-norm clipping.
  # Regex over parameter paths, matched from the start ("embed/encoder/"): those parameters never change.
  config.optimizer.frozen = ""

  # Start from another run's parameters (a pretrained encoder, fine-tuning; see mmlearn/runs/init_from.py).
  config.init_from = ml_collections.ConfigDict()
  config.init_from.workdir = ""  # A trained run; "" = this run's seeded initialisation only.
  # "DEST=SOURCE,...": this run's parameter path <- the source run's ("embed/encoder=audio_encoder");
  # "" = the whole tree.
  config.init_from.params = ""

  # LoRA (mmlearn/train/lora.py): low-rank adapters W + (alpha / rank) a @ b of the 2-D kernels `targets`
  # matches, trained while every other parameter stays frozen; evaluation and export see the merged model.
  config.lora = ml_collections.ConfigDict()
  config.lora.rank = 0  # Rank of each adapter (a: [in, rank], b: [rank, out]); 0 = LoRA off.
  config.lora.alpha = 8.0  # The adapters' product is scaled by alpha / rank.
  # A regex searched (re.search) in the `/`-separated parameter paths of the 2-D kernels to adapt, e.g.
  # "q_proj|v_proj" or "^text_encoder/.*kernel$"; it must match at least one.
  config.lora.targets = ""

  config.batch_size = 128  # Global batch, split over every device of every process.
  config.eval_batch_size = 512
  config.num_epochs = 4.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 0  # > 0: also evaluate every eval split this often (sample grids); 0: at the end.
  config.keep_checkpoints = 2
  # Evaluators (see mmlearn/evaluators/), big_vision style: `config.evals.<name> = {"type": ...,
  # "split": ..., "every_steps": ...}` plus the type's own keys, added in a config file (the command line
  # may then change their keys). Empty: the task's default evaluators on every `dataset.eval_splits`
  # split, every `eval_every_steps` (0: at the end only).
  config.evals = ml_collections.ConfigDict()
  # Keeps a `best` checkpoint beside the latest, by this evaluation metric (e.g. "validation/accuracy");
  # "" = none. Losses, errors and distances are minimised, everything else maximised.
  config.select_metric = ""

  # Computation dtype: float32 | bfloat16. Parameters, optimizer state, losses and metrics stay float32.
  config.precision = "float32"
  # Exponential moving average of the parameters (0 = off). With it, evaluation uses the average, which
  # is checkpointed with the state.
  config.ema_decay = 0.0
  # Gradient accumulation inside a step: > 0 splits each device's batch into chunks of this many examples
  # and averages their gradients (the same update for a loss that is a mean over examples). For a
  # contrastive loss (in-batch negatives: retrieval) the chunks cache gradients instead (GradCache,
  # mmlearn/train/grad_cache.py): the full batch's gradient for a second forward pass. Refused with
  # BatchNorm. Bounds activation memory. 0 = the whole batch at once.
  config.microbatch_size = 0

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "shard_map"  # shard_map | pmap
  # Parameters (and their optimizer state and EMA) with at least this many elements are split over the
  # devices, FSDP style (see mmlearn/parallel.py); 0 = every parameter replicated. shard_map mode only.
  config.parallel.shard_min_size = 0
  return config


def check_sections(config: ml_collections.ConfigDict) -> None:
  """A `ConfigError` when the config lacks a section its task owns (e.g. `--config.task=mvae` given to a
  classification config file, which was built without the `mvae` section)."""
  for name in task_sections(config.task):
    if name not in config:
      raise ConfigError(
        f"config.task is {config.task!r}, but the config has no {name!r} section; start the config file "
        f"from mmlearn.config.schema.get_config({config.task!r})"
      )
