"""The reference config: every key a config may set, with its default (`configs/default.py` is this).

It lives in the library, not in `configs/`, because `mmlearn.config.checks` validates every config against
it (unknown keys, wrong types), and a pip-installed mmlearn must be able to do that without the
repository's `configs/` package. The default run: CNN(image) + LSTM(text) -> concat -> MLP on mmshapes,
trained with SGD + momentum. Override fields on the command line, e.g.
`--config.optimizer.learning_rate=0.1`.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.task = "classification"
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
  # The builder's own settings (the generic `captioned` builder's: manifest, image_shape, tokenizer, ...;
  # see docs/datasets.md); a builder that takes none rejects any.
  config.dataset.options = ml_collections.ConfigDict()
  config.dataset.max_tokens = 16  # Captions are padded/truncated to this many tokens (with a mask).
  config.dataset.eval_splits = ("validation", "test")
  # Class imbalance (training split only; see mmlearn/data/imbalance.py). A ratio > 1 keeps a seeded
  # long-tailed subset: class c keeps n_min * ratio^(-c/(C-1)) examples, n_min the rarest class's count.
  config.dataset.imbalance_ratio = 1.0  # 1 = the whole split.
  config.dataset.imbalance_seed = 0
  config.dataset.sampler = "uniform"  # uniform (shuffled epochs) | class_balanced (every class equally often)

  # Training-batch augmentation, all off by default (see mmlearn/data/augment.py); never on eval batches.
  config.augment = ml_collections.ConfigDict()
  config.augment.image_crop_pad = 0  # Reflect-pad by this many pixels, then crop back at random.
  config.augment.image_rotate_degrees = 0.0  # Rotate by a uniform angle in [-d, d] (bilinear).
  config.augment.image_hflip = False  # Mirror with p = 0.5: wrong for digits and left/right captions.
  config.augment.audio_time_mask = 0  # SpecAugment: one time band of up to this many frames, set to -1.
  config.augment.audio_freq_mask = 0  # SpecAugment: one frequency band of up to this many bins.
  config.augment.text_token_dropout = 0.0  # Drop each token with this probability (kept ones shift left).

  config.model = ml_collections.ConfigDict()
  config.model.modalities = ml_collections.ConfigDict()
  config.model.modalities.image = ml_collections.ConfigDict(
    {"encoder": "cnn", "widths": (16, 32), "dense": 64}
  )
  config.model.modalities.text = ml_collections.ConfigDict({"encoder": "lstm", "embed_dim": 32, "hidden": 64})
  config.model.fusion = "concat"
  config.model.fusion_kwargs = ml_collections.ConfigDict()
  config.model.head_hidden = (64,)
  config.model.head_dropout = 0.0  # Dropout on the head's hidden layers while training.

  # Used by task="retrieval" only (dual encoder on config.model.modalities; see configs/retrieval/).
  config.retrieval = ml_collections.ConfigDict()
  config.retrieval.loss = "clip"  # clip | siglip
  config.retrieval.embed_dim = 64  # Joint embedding width (each tower's projection head).
  # Features that must agree for two items to count as relevant; () = only the paired item counts.
  config.retrieval.relevance = ()
  config.retrieval.query_chunk = 512  # Queries ranked at once: a [query_chunk, N] similarity block.
  config.retrieval.random_baseline = False  # Also report the metrics of random unit embeddings.

  # Used by task="classification" only: the training loss (see mmlearn/losses/classification.py). Losses that
  # weight or shift classes take the training split's class counts from the dataset.
  config.classification = ml_collections.ConfigDict()
  # cross_entropy | inverse_frequency | class_balanced | focal | logit_adjusted
  config.classification.loss = "cross_entropy"
  config.classification.class_balanced_beta = 0.999  # class_balanced: in [0, 1); 0 = uniform weights.
  config.classification.focal_gamma = 2.0  # focal: 0 = cross-entropy.
  config.classification.focal_alpha = 0.25  # focal: one weight for every class; None = 1.
  config.classification.logit_adjust_tau = 1.0  # logit_adjusted: logits + tau * log(class prior).

  # Missing modalities (classification; see mmlearn/data/missing.py): per-example presence masks drawn
  # in the pipeline, at a rate per modality (a rate for a modality the model lacks must stay 0).
  config.missing = ml_collections.ConfigDict()
  config.missing.train_rates = ml_collections.ConfigDict({"image": 0.0, "text": 0.0})
  config.missing.test_rates = ml_collections.ConfigDict({"image": 0.0, "text": 0.0})  # Every eval split.
  config.missing.modality_dropout = 0.0  # P(a training example loses one of its modalities, never the last).
  config.missing.imputation = "zero"  # zero | mean | learned | generative: what an absent modality gets.
  config.missing.generative_workdir = config_dict.placeholder(str)  # generative: a trained `mvae` run.
  config.missing.generative_temperature = 1.0  # generative: the MVAE's sampling temperature.
  config.missing.seed = 0  # Of the evaluation masks (and the sample `mean` averages).

  # Used by task="mvae" only (multimodal VAE; see mmlearn/tasks/mvae.py, configs/mvae/). Encoders
  # are config.model.modalities; decoders and likelihood weights are keyed by modality, like them.
  config.mvae = ml_collections.ConfigDict()
  config.mvae.latent_dim = 32
  config.mvae.decoders = ml_collections.ConfigDict(
    {
      # deconv: discretized-Gaussian levels of `shape` (H, W divisible by 2 ** len(widths)), std fixed
      # or learned ("learn_std": True); "translate": True reads a 2-wide private latent as a shift.
      # See mmlearn/models/decoders.py.
      "image": {"decoder": "deconv", "shape": (32, 32, 3), "widths": (64, 32), "std": 0.1},
      "text": {"decoder": "lstm", "embed_dim": 32, "hidden": 128},  # vocab_size, max_tokens: the dataset's.
      "audio": {"decoder": "deconv", "shape": (112, 112, 1), "widths": (64, 32, 16, 8), "std": 0.1},
    }
  )
  config.mvae.likelihood_weights = ml_collections.ConfigDict({"image": 1.0, "text": 1.0, "audio": 1.0})
  # Width of each modality's private latent, read by its decoder only (0: none; see mmlearn/models/mvae.py).
  config.mvae.private_dims = ml_collections.ConfigDict({"image": 0, "text": 0, "audio": 0})
  config.mvae.beta = 1.0  # Final KL weight (1: the ELBO).
  config.mvae.kl_anneal_steps = 0  # Linear KL warm-up from 0 to beta over this many steps; 0: off.
  config.mvae.joint_elbo = True  # Train on the joint ELBO (always reported as `elbo`).
  config.mvae.unimodal_elbos = True  # Also on each single modality's ELBO (MVAE's sub-sampling).
  config.mvae.cross_reconstruction = False  # Single-modality posteriors also reconstruct the others.
  config.mvae.temperature = 1.0  # Sample grids' (and generate.py's default) posterior temperature.
  config.mvae.grid_conditions = 8  # Sample grids: rows (the split's first examples) ...
  config.mvae.grid_samples = 4  # ... and samples per row; 0 disables the grids.

  # Used by task="flow" only (conditional flow matching; see mmlearn/tasks/flow.py, configs/flow/). The
  # condition is the one modality of config.model.modalities (its encoder); the target is generated.
  config.flow = ml_collections.ConfigDict()
  config.flow.target = "image"  # The generated array modality (image or audio).
  config.flow.widths = (32, 64)  # U-Net channels per resolution; H and W divisible by 2 ** (levels - 1).
  config.flow.blocks = 1  # Residual blocks per resolution (each way).
  config.flow.groups = 8  # GroupNorm groups.
  config.flow.embed_dim = 128  # Time and condition embedding width (FiLM input).
  # Training times t: "uniform" on [0, 1], or "logit_normal" (sigmoid of N(0, 1): Esser et al. 2024),
  # which spends more of the training on the middle of the path, where the velocity is hardest to predict.
  config.flow.time_sampling = "uniform"
  config.flow.cond_dropout = 0.1  # P(the condition is replaced by the learned null one): enables guidance.
  config.flow.guidance_scale = 1.0  # Classifier-free guidance at sampling: 0 unconditional, 1 conditional.
  config.flow.num_steps = 20  # ODE steps from noise to data.
  config.flow.sampler = "euler"  # euler | heun
  config.flow.temperature = 1.0  # Scale of the starting noise (generate.py's default).
  config.flow.grid_conditions = 8  # Sample grids: rows (the split's first examples) ...
  config.flow.grid_samples = 4  # ... and samples per row; 0 disables the grids.

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

  config.batch_size = 128  # Global batch, split over every device of every process.
  config.eval_batch_size = 512
  config.num_epochs = 4.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 0  # > 0: also evaluate every eval split this often (sample grids); 0: at the end.
  config.keep_checkpoints = 2
  # Evaluators (see mmlearn/evaluators/registry.py), big_vision style: `config.evals.<name> = {"type": ...,
  # "split": ..., "every_steps": ...}` plus the type's own keys. Empty: the task's default evaluator on
  # every `dataset.eval_splits` split, every `eval_every_steps` (0: at the end only).
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
  # and averages their gradients (the same update for a loss that is a mean over examples; refused for
  # in-batch-negative losses and BatchNorm). Bounds activation memory; on CPU it keeps a large model's
  # activations in cache (`docs/benchmark.md`). 0 = the whole batch at once.
  config.microbatch_size = 0

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "shard_map"  # shard_map | pmap
  # Parameters (and their optimizer state and EMA) with at least this many elements are split over the
  # devices, FSDP style (see mmlearn/parallel.py); 0 = every parameter replicated. shard_map mode only.
  config.parallel.shard_min_size = 0
  return config
