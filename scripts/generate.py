"""Conditional generation from a trained MVAE or flow run; with `--judge`, its coherence over a split.

  python scripts/generate.py --workdir=runs/mvae --caption="a small blue triangle" --num=16
  python scripts/generate.py --workdir=runs/mvae_av --index=7 --condition=audio  # test example 7's digit
  python scripts/generate.py --workdir=runs/mvae --judge=runs/judge              # coherence on --split
  python scripts/generate.py --workdir=runs/flow --caption="a small blue triangle" --guidance_scale=2

Reads the run's resolved config (`WORKDIR/config.json`) and the state it reports: its best-validation
checkpoint where it selects one, else its latest; its parameters' moving average when it kept one.
`--caption` (or `--index`: example N of `--split`, its `--condition` modality alone) conditions on that
one modality, draws `--num` samples at `--temperature` (default: the run's `mvae.temperature` /
`flow.temperature`) and saves them as a PNG grid (`--output`, default `WORKDIR/generated.png`; with
`--index` the example's real image comes first). A flow run also takes `--guidance_scale` (0:
unconditional, 1: conditional, > 1: guided), `--num_steps` (ODE steps) and `--sampler` (euler, heun);
default: the run's `flow.*`.

`--judge=RUN` names a classification run of the same dataset on images alone (configs/mvae/judge_*.py).
For every other modality c, each example of `--split` gets one image generated from its c alone; the
coherence is the share the judge labels with the example's label (mmshapes: also shape and colour
separately; `mmlearn.metrics.coherence`), reported beside the judge's accuracy on the real images, printed and
saved to `WORKDIR/coherence.json` with the Fréchet distance and diversity of the same images in the
judge's feature space (`mmlearn.evaluators.coherence`) and the time sampling takes per image (one evaluation
batch, after compiling). For an MVAE, `image_to_image` is the same for each
image's reconstruction from its own posterior: how well the decoder draws what the image itself tells,
a reference for the others. `--num_examples=N` judges a seeded subset of N examples instead (the same
for every run). A word outside the vocabulary, a run without a checkpoint, a run of another
task or a flow option given to an MVAE run ends with one `error:` line and exit status 1.
"""

import functools
import json
import os
import sys
import time

import matplotlib
import ml_collections
import numpy as np
from absl import app, flags, logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from mmlearn.data import pipeline  # noqa: E402
from mmlearn.errors import USER_ERRORS, ConfigError, fail  # noqa: E402
from mmlearn.evaluators.coherence import CoherenceEvaluator, load_judge, sample_options  # noqa: E402
from mmlearn.evaluators.robustness import subsample  # noqa: E402
from mmlearn.metrics.images import to_uint8  # noqa: E402
from mmlearn.runs import restore  # noqa: E402

flags.DEFINE_string("workdir", None, "A finished (or checkpointed) mvae or flow run.")
flags.DEFINE_string("caption", None, "Generate from this text, in the dataset's vocabulary.")
flags.DEFINE_integer("index", None, "Generate from example INDEX of --split (its --condition modality).")
flags.DEFINE_string(
  "condition", None, "With --index: the modality to condition on; default the non-target one."
)
flags.DEFINE_string("target", "image", "The modality to generate.")
flags.DEFINE_integer("num", 16, "How many samples to draw.")
flags.DEFINE_float("temperature", None, "Posterior (flow: starting noise) temperature; default the run's.")
flags.DEFINE_float(
  "guidance_scale", None, "Flow runs: classifier-free guidance; default flow.guidance_scale."
)
flags.DEFINE_integer("num_steps", None, "Flow runs: ODE steps; default flow.num_steps.")
flags.DEFINE_string("sampler", None, "Flow runs: euler or heun; default flow.sampler.")
flags.DEFINE_integer("seed", 0, "Seed of the samples.")
flags.DEFINE_string("split", "test", "The split --index and --judge read.")
flags.DEFINE_string("output", None, "PNG grid of the samples; default WORKDIR/generated.png.")
flags.DEFINE_string("judge", None, "A classification run on images: report coherence over --split.")
flags.DEFINE_integer(
  "num_examples", 0, "With --judge: a seeded random subset of this many examples of --split (0: all of it)."
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS

TEXT_MODALITY = pipeline.TOKEN_FEATURES["tokens"]
COLUMNS = 8


GENERATORS = ("mvae", "flow")


def read_generator_config(workdir: str) -> ml_collections.ConfigDict:
  config = restore.read_config(workdir)
  if config.task not in GENERATORS:
    raise ConfigError(f"{workdir} is a {config.task!r} run; generating needs an 'mvae' or 'flow' run")
  flow_flags = (FLAGS.guidance_scale, FLAGS.num_steps, FLAGS.sampler)
  if config.task != "flow" and any(flag is not None for flag in flow_flags):
    raise ConfigError(
      f"--guidance_scale, --num_steps and --sampler apply to flow runs; {workdir} is an {config.task!r} run"
    )
  return config


def default_temperature(config: ml_collections.ConfigDict) -> float:
  return config[config.task].temperature if FLAGS.temperature is None else FLAGS.temperature


def options() -> dict:
  """The flow sampling flags that are set (the run's own settings otherwise)."""
  return sample_options(
    guidance_scale=FLAGS.guidance_scale, num_steps=FLAGS.num_steps or 0, sampler=FLAGS.sampler
  )


def describe(config: ml_collections.ConfigDict, temperature: float) -> str:
  if config.task != "flow":
    return f"temperature {temperature:g}"
  scale = config.flow.guidance_scale if FLAGS.guidance_scale is None else FLAGS.guidance_scale
  steps = FLAGS.num_steps or config.flow.num_steps
  sampler = FLAGS.sampler or config.flow.sampler
  return f"guidance {scale:g}, {steps} {sampler} steps, temperature {temperature:g}"


def save_grid(path: str, images: list[np.ndarray], titles: list[str], title: str) -> None:
  columns = min(len(images), COLUMNS)
  rows = -(-len(images) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.5), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, name in zip(axes.flat, images, titles, strict=False):
    ax.imshow(to_uint8(image))
    ax.set_title(name, fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def draw(task, variables, batch, condition: str, target: str, num: int, temperature: float, seed: int):
  samples, _ = task.sample(
    variables,
    batch,
    jax.random.PRNGKey(seed),
    temperature,
    condition=(condition,),
    target=target,
    num_samples=num,
    **options(),
  )
  return list(np.asarray(samples)[0])


def generate(workdir: str, output: str) -> None:
  config = read_generator_config(workdir)
  caption_batch = None
  if FLAGS.caption is not None:
    caption_batch = restore.text_batch(config, FLAGS.caption, what="caption")
  temperature = default_temperature(config)
  sources, info, task, variables = restore.load_run(config, workdir, (FLAGS.split,))
  if FLAGS.target not in task.array_modalities:
    raise ConfigError(
      f"--target={FLAGS.target}: the run decodes arrays of {', '.join(task.array_modalities)}"
    )
  if caption_batch is not None:
    samples = draw(
      task, variables, caption_batch, TEXT_MODALITY, FLAGS.target, FLAGS.num, temperature, FLAGS.seed
    )
    images, titles, title = samples, [f"sample {i + 1}" for i in range(len(samples))], f'"{FLAGS.caption}"'
  else:
    condition = FLAGS.condition or next((m for m in task.modalities if m != FLAGS.target), None)
    if condition not in task.modalities or condition == FLAGS.target:
      raise ConfigError(
        f"--condition={condition}: the run's other modalities are {', '.join(task.modalities)}"
      )
    source = sources[FLAGS.split]
    if not 0 <= FLAGS.index < len(source):
      raise ConfigError(f"--index={FLAGS.index} is outside {FLAGS.split} (0 to {len(source) - 1})")
    example = pipeline.batch_of(source, [FLAGS.index], config.dataset.max_tokens)
    samples = draw(task, variables, example, condition, FLAGS.target, FLAGS.num, temperature, FLAGS.seed)
    label = info.features["label"].int2str(int(example["label"][0]))
    images = [example[FLAGS.target][0], *samples]
    titles = [f"real ({label})", *(f"sample {i + 1}" for i in range(len(samples)))]
    caption = source[FLAGS.index].get("caption") if condition == TEXT_MODALITY else None
    said = f' "{caption.decode() if isinstance(caption, bytes) else caption}"' if caption is not None else ""
    title = f"{FLAGS.split} #{FLAGS.index} ({label}): its {condition}{said} -> {FLAGS.target}"
  save_grid(output, images, titles, f"{title}, {describe(config, temperature)}")
  print(f"saved {len(samples)} samples to {output}")


def sampling_ms_per_image(config, task, variables, source, temperature: float) -> dict[str, float]:
  """Per condition, the milliseconds per image of sampling one evaluation batch, compiled beforehand."""
  batch = next(
    pipeline.eval_batches(source, batch_size=config.eval_batch_size, max_tokens=config.dataset.max_tokens)
  )
  size = len(batch.pop("weight"))
  timings = {}
  for condition in task.sample_conditions("image"):
    sample = functools.partial(
      task.sample,
      variables,
      batch,
      jax.random.PRNGKey(0),
      temperature,
      condition=(condition,),
      target="image",
      **options(),
    )
    jax.block_until_ready(sample())  # Compiles.
    start = time.perf_counter()
    jax.block_until_ready(sample())
    timings[f"{condition}_to_image"] = 1000 * (time.perf_counter() - start) / size
  return timings


def measure_coherence(
  workdir: str, judge_workdir: str, split: str, seed: int, num_examples: int = 0
) -> dict[str, float]:
  """The `coherence` evaluator on the state the run reports; printed and saved to coherence.json.

  `num_examples` draws the same subset for every run (`subsample`, seeded by `seed`): a
  flow samples with tens of network passes per image, so a comparison of settings can afford a subset.
  """
  config = read_generator_config(workdir)
  sources, _, task, variables = restore.load_run(config, workdir, (split,))
  source = subsample(sources[split], num_examples, seed=seed)
  temperature = default_temperature(config)
  evaluator = CoherenceEvaluator(
    task,
    source,
    split=split,
    judge_fn=load_judge(restore.load_run_variables, judge_workdir, config.dataset.name),
    dataset=config.dataset.name,
    temperature=temperature,
    batch_size=config.eval_batch_size,
    max_tokens=config.dataset.max_tokens,
    seed=seed,
    sample_options=options(),
  )
  # Named as before the evaluator existed (coherence/<split>/..., judge/<split>/...), which runs' files use.
  results = {}
  for name, value in evaluator.run(variables):
    _, kind, rest = name.split("/", 2)
    results[f"{kind}/{split}/{rest}"] = value
  record = {
    "workdir": workdir,
    "sampling_ms_per_image": sampling_ms_per_image(config, task, variables, source, temperature),
    "judge": judge_workdir,
    "judge_dataset_config": restore.read_config(judge_workdir).dataset.config,
    "temperature": temperature,
    **({"sampling": describe(config, temperature)} if config.task == "flow" else {}),
    "seed": seed,
    "examples": len(source),
    **results,
  }
  with open(os.path.join(workdir, "coherence.json"), "w") as f:
    json.dump(record, f, indent=2)
  for name, value in results.items():
    print(f"{name}: {value:.4f}")
  print(f"saved {os.path.join(workdir, 'coherence.json')}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  modes = [name for name in ("caption", "index", "judge") if FLAGS[name].value is not None]
  if len(modes) != 1:
    raise app.UsageError("give exactly one of --caption, --index and --judge")
  if FLAGS.num <= 0:
    raise app.UsageError("--num must be positive")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log dozens of INFO lines per restore.
  try:
    if FLAGS.num_examples and FLAGS.judge is None:
      raise ConfigError("--num_examples applies to --judge")
    if FLAGS.judge is not None:
      measure_coherence(FLAGS.workdir, FLAGS.judge, FLAGS.split, FLAGS.seed, FLAGS.num_examples)
    else:
      generate(FLAGS.workdir, FLAGS.output or os.path.join(FLAGS.workdir, "generated.png"))
  except USER_ERRORS as e:
    fail(e)


if __name__ == "__main__":
  app.run(main)
