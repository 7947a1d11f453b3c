"""mmshapes: a small image+caption dataset, generated locally, that only both modalities together solve.

Each example is a 32x32 RGB image of one shape (circle, square, triangle, cross) in one colour (red,
green, blue, yellow), small or large, at a continuous position, on a dark noisy background, plus an
English caption from varied templates. The label is `shape * 4 + colour` (16 classes).

Two flags, each exactly half on within every label (and every combination of the two equally often),
make each modality alone insufficient, by construction:

* `grayscale`: the image is gray (three equal channels) and every shape is drawn at the same gray level,
  with noise that ignores the colour, so a grayscale image is the same function of (shape, size,
  position, noise) whatever the colour: the shape is visible, the colour is not, not even as brightness.
* `shape_mentioned` False: the caption says "shape" / "object" / "thing" (drawn independently of the
  shape) instead of a shape word. The colour is always named. Template, size and place words are drawn
  independently of shape and colour, and every colour and shape word is one token, so nothing else in a
  caption, its length included, tells the shape or the colour.

So the best possible accuracy is 62.5% from the image alone (colour images 100%; grayscale: shape known,
colour a 1-in-4 guess: 0.5 + 0.5 * 0.25), 62.5% from the text alone (symmetrically), and 100% from both
(a grayscale image still shows the shape; the caption always names the colour). A model far above 62.5%
on one modality is reading something it should not; a fused model below 100% is not fusing.

`generate_split` is pure numpy and deterministic in its seed; `Mmshapes` is the TFDS builder that writes
it to array_record files (no download, no TensorFlow). Attributes (`shape`, `colour`, `size`, `quadrant`,
`position`, both flags) are stored for retrieval, generation and robustness work.

The `retrieval` configs turn both flags off: every image is in colour and every caption names the shape,
colour, size and quadrant (`FULL_TEMPLATES`), so a caption determines exactly which (shape, colour, size,
quadrant) description it matches, and retrieval can be scored by that description.
"""

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mmlearn.data.builder import LocalBuilder
from mmlearn.data.info import local_dataset_info
from mmlearn.data.registry import DATASETS
from mmlearn.data.text import PAD, WordTokenizer
from mmlearn.errors import ConfigError

# ---- Attributes and classes ----
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")  # quadrant = 2 * bottom + right.
NUM_CLASSES = len(SHAPES) * len(COLOURS)
LABEL_NAMES = tuple(f"{colour}_{shape}" for shape in SHAPES for colour in COLOURS)  # shape * 4 + colour.

# Split sizes must be multiples of this: every label (16) x every combination of the two flags (4) must
# occur equally often, or the 62.5% / 62.5% / 100% ceilings above stop being exact.
BALANCE_UNIT = NUM_CLASSES * 4
SPLITS = ("train", "validation", "test")

# ---- Rendering ----
IMAGE_SIZE = 32
RGB = np.array([[220, 50, 50], [50, 200, 70], [60, 90, 230], [230, 210, 50]], np.float32)  # per COLOURS.
GRAY_LEVEL = 160.0  # Every shape in a grayscale image, whatever its colour.
BACKGROUND = 24.0
NOISE_STD = 10.0
RADII = np.array([5.0, 9.0], np.float32)  # Half-extent of the shape in pixels, per SIZES.
RADIUS_JITTER = 0.5
# Centres stay this far from the middle lines, so the quadrant a caption names is unambiguous.
MIDLINE_GAP = 2.0
_CHUNK = 2048  # Examples rendered at once: bounds the float32 temporaries to ~50 MB.

# ---- Captions ----
# Every colour and shape word is a single token, so caption length cannot reveal which was used.
COLOUR_WORDS = (
  ("red", "crimson", "scarlet"),
  ("green", "lime", "jade"),
  ("blue", "navy", "cobalt"),
  ("yellow", "golden", "lemon"),
)
SHAPE_WORDS = (
  ("circle", "disk", "disc"),
  ("square", "box", "block"),
  ("triangle", "wedge"),
  ("cross", "plus"),
)
GENERIC_NOUNS = ("shape", "object", "thing")  # Used instead of a shape word when `shape_mentioned` is False.
SIZE_WORDS = (("small", "little", "tiny"), ("large", "big", "huge"))
VERTICAL_WORDS = (("top", "upper"), ("bottom", "lower"))
HORIZONTAL_WORDS = ("left", "right")
PLACE_TEMPLATES = ("in the {v} {h}", "near the {v} {h}", "at the {v} {h}", "in the {v} {h} corner")
# A colour word always directly precedes the noun and no article directly precedes a noun, so "a" never
# has to become "an" (which would depend on the word after it).
TEMPLATES = (
  "a {size} {colour} {noun} {place}",
  "there is a {size} {colour} {noun}",
  "this picture shows a {size} {colour} {noun} {place}",
  "a {colour} {noun} {place}",
  "the image contains a {colour} {noun} that looks {size}",
  "{place}, there is a {colour} {noun}",
  "we see a {size} {colour} {noun}",
  "one {colour} {noun} on a dark background",
)
# The `retrieval` configs' templates: each names every attribute, in different orders and wordings.
FULL_TEMPLATES = (
  "a {size} {colour} {noun} {place}",
  "there is a {size} {colour} {noun} {place}",
  "this picture shows a {size} {colour} {noun} {place}",
  "{place}, there is a {size} {colour} {noun}",
  "the image contains a {colour} {noun} that looks {size} {place}",
  "we see a {size} {colour} {noun} {place}",
)

# Every word the templates can produce, in a fixed order: token ids are part of the dataset version.
VOCABULARY = (
  PAD,
  # Template and place words.
  "a", "at", "background", "contains", "corner", "dark", "image", "in", "is", "looks", "near", "on", "one",
  "picture", "see", "shows", "that", "the", "there", "this", "we",
  "top", "upper", "bottom", "lower", "left", "right",
  # Sizes.
  "small", "little", "tiny", "large", "big", "huge",
  # Colours.
  "red", "crimson", "scarlet", "green", "lime", "jade", "blue", "navy", "cobalt", "yellow", "golden", "lemon",
  # Shapes, then the generic nouns.
  "circle", "disk", "disc", "square", "box", "block", "triangle", "wedge", "cross", "plus",
  "shape", "object", "thing",
)  # fmt: skip
TOKENIZER = WordTokenizer(VOCABULARY)


def check_split_size(num_examples: int) -> None:
  if num_examples <= 0 or num_examples % BALANCE_UNIT:
    raise ConfigError(
      f"mmshapes split size {num_examples} must be a positive multiple of {BALANCE_UNIT} "
      f"({NUM_CLASSES} labels x 4 grayscale/shape_mentioned combinations) to stay balanced"
    )


def split_seed(seed: int, split: str) -> int:
  """The generator seed of one split: derived from the config seed, different for every split."""
  return int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1)[0])


def _balanced_design(num_examples: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
  """Labels and flags with every (label, grayscale, shape_mentioned) cell equally full, in random order.

  The random order matters beyond shuffling: readers shard splits by index (`source[i::n]`), so any
  pattern in the order would give processes different label mixes.
  """
  per_cell = num_examples // BALANCE_UNIT
  label = np.repeat(np.arange(NUM_CLASSES), num_examples // NUM_CLASSES)
  combo = np.tile(np.repeat(np.arange(4), per_cell), NUM_CLASSES)
  order = rng.permutation(num_examples)
  label, combo = label[order], combo[order]
  return label, combo >= 2, combo % 2 == 0


def _centres(quadrant: np.ndarray, radius: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Continuous (x, y) pixel centres inside `quadrant`, the whole shape on the canvas; `u` in [0, 1)^2."""
  far = np.stack([quadrant % 2 == 1, quadrant // 2 == 1], axis=1)  # right, bottom
  r = radius[:, None]
  middle = IMAGE_SIZE / 2
  low = np.where(far, middle + MIDLINE_GAP, r + 1.0)
  high = np.where(far, IMAGE_SIZE - 1.0 - r, middle - MIDLINE_GAP)
  return (low + u * (high - low)).astype(np.float32)


def _signed_distance(shape: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Approximate signed distance in pixels to the outline (negative inside); all fit in [-r, r]^2."""
  ax, ay = np.abs(dx), np.abs(dy)
  if shape == 0:  # circle
    return np.sqrt(dx * dx + dy * dy) - r
  if shape == 1:  # square
    return np.maximum(ax, ay) - 0.8 * r
  if shape == 2:  # triangle: apex (0, -r), base corners (+-r, r); y points down.
    return np.maximum(dy - r, (2.0 * ax - dy - r) / np.sqrt(5.0))
  w = 0.3 * r  # cross: two bars of half-width w and half-length r.
  return np.minimum(np.maximum(ax - w, ay - r), np.maximum(ay - w, ax - r))


def render_images(
  shape: np.ndarray,
  colour: np.ndarray,
  radius: np.ndarray,
  centre: np.ndarray,
  grayscale: np.ndarray,
  noise: np.ndarray,
) -> np.ndarray:
  """uint8 [N, 32, 32, 3] images from attributes and standard-normal `noise` [N, 32, 32, 3].

  Grayscale images use the shape's gray level and the first noise channel for all three channels, so
  they do not depend on `colour` at all. Edges are anti-aliased by the signed distance (1 px ramp).
  """
  n = len(shape)
  pixel = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5  # pixel centres; the canvas spans [0, 32].
  dx = pixel[None, None, :] - centre[:, 0, None, None]
  dy = pixel[None, :, None] - centre[:, 1, None, None]
  r = radius.astype(np.float32)[:, None, None]
  distance = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.float32)
  for s in range(len(SHAPES)):
    rows = shape == s
    if rows.any():
      distance[rows] = _signed_distance(s, dx[rows], dy[rows], r[rows])
  alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
  gray = grayscale[:, None, None, None]
  fill = np.where(grayscale[:, None], GRAY_LEVEL, RGB[colour])[:, None, None, :]
  noise = np.where(gray, noise[..., :1], noise)
  image = BACKGROUND + alpha * (fill - BACKGROUND) + NOISE_STD * noise
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_captions(
  shape: np.ndarray,
  colour: np.ndarray,
  size: np.ndarray,
  quadrant: np.ndarray,
  shape_mentioned: np.ndarray,
  rng: np.random.Generator,
  templates: tuple[str, ...] = TEMPLATES,
) -> list[str]:
  """One caption per example from `templates`; every random choice is drawn whatever the attributes are.

  The same uniforms are consumed for every example, so changing the shape or colour changes only the
  colour and shape words, never the template, the synonyms of other words, or the generic noun.
  """
  u = rng.random((len(shape), 7))

  def pick(options, value):
    return options[int(value * len(options))]

  captions = []
  for i in range(len(shape)):
    template, colour_word, shape_word, generic, size_word, place, vertical = u[i]
    noun = pick(SHAPE_WORDS[shape[i]], shape_word) if shape_mentioned[i] else pick(GENERIC_NOUNS, generic)
    v = pick(VERTICAL_WORDS[quadrant[i] // 2], vertical)
    words = {
      "size": pick(SIZE_WORDS[size[i]], size_word),
      "colour": pick(COLOUR_WORDS[colour[i]], colour_word),
      "noun": noun,
      "place": pick(PLACE_TEMPLATES, place).format(v=v, h=HORIZONTAL_WORDS[quadrant[i] % 2]),
    }
    captions.append(pick(templates, template).format(**words))
  return captions


def generate_split(num_examples: int, seed: int, *, retrieval: bool = False) -> dict[str, Any]:
  """`num_examples` balanced examples as a dict of per-example arrays (`caption`/`tokens`: lists).

  `retrieval`: every image in colour and every caption naming all four attributes (see module docstring).
  The random streams are consumed exactly as without it, so shapes, colours and layouts are the same.

  Keys: image uint8 [N,32,32,3]; caption str; tokens int32 [len]; label, shape, colour, size, quadrant
  int64 [N]; position float32 [N,2] (bounding-box centre x, y in [0, 1]); grayscale, shape_mentioned
  bool [N]. Independent seeded streams drive the design, layout, noise and captions.
  """
  check_split_size(num_examples)
  design, layout, noise, text = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
  label, grayscale, shape_mentioned = _balanced_design(num_examples, design)
  if retrieval:
    grayscale, shape_mentioned = np.zeros_like(grayscale), np.ones_like(shape_mentioned)
  shape, colour = np.divmod(label, len(COLOURS))
  size = layout.integers(0, len(SIZES), num_examples)
  radius = RADII[size] + layout.uniform(-RADIUS_JITTER, RADIUS_JITTER, num_examples).astype(np.float32)
  quadrant = layout.integers(0, len(QUADRANTS), num_examples)
  centre = _centres(quadrant, radius, layout.random((num_examples, 2)))
  image = np.empty((num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for start in range(0, num_examples, _CHUNK):
    rows = slice(start, start + _CHUNK)
    eps = noise.standard_normal((len(shape[rows]), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[rows] = render_images(shape[rows], colour[rows], radius[rows], centre[rows], grayscale[rows], eps)
  templates = FULL_TEMPLATES if retrieval else TEMPLATES
  caption = make_captions(shape, colour, size, quadrant, shape_mentioned, text, templates)
  return {
    "image": image,
    "caption": caption,
    "tokens": [TOKENIZER.encode(c) for c in caption],
    "label": label.astype(np.int64),
    "shape": shape.astype(np.int64),
    "colour": colour.astype(np.int64),
    "size": size.astype(np.int64),
    "quadrant": quadrant.astype(np.int64),
    "position": centre / np.float32(IMAGE_SIZE),
    "grayscale": grayscale,
    "shape_mentioned": shape_mentioned,
  }


@dataclasses.dataclass(eq=False)
class MmshapesConfig(tfds.core.BuilderConfig):
  """Split sizes (multiples of `BALANCE_UNIT`), the seed every split's generator seed derives from, and
  `retrieval`: colour images and captions naming every attribute (see `generate_split`)."""

  train_size: int = 20_480
  validation_size: int = 2_048
  test_size: int = 4_096
  seed: int = 0
  retrieval: bool = False

  def __post_init__(self):
    for split, size in self.split_sizes().items():
      try:
        check_split_size(size)
      except ConfigError as e:
        raise ConfigError(f"config {self.name!r}, {split}: {e}") from None

  def split_sizes(self) -> dict[str, int]:
    return {"train": self.train_size, "validation": self.validation_size, "test": self.test_size}


def features() -> tfds.features.FeaturesDict:
  """Plain tensors only: `tfds.features.Image` would PNG-encode, which needs TensorFlow."""
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
      "caption": tfds.features.Text(),
      "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "label": tfds.features.ClassLabel(names=LABEL_NAMES),
      "shape": tfds.features.ClassLabel(names=SHAPES),
      "colour": tfds.features.ClassLabel(names=COLOURS),
      "size": tfds.features.ClassLabel(names=SIZES),
      "quadrant": tfds.features.ClassLabel(names=QUADRANTS),
      "position": tfds.features.Tensor(shape=(2,), dtype=np.float32),
      "grayscale": tfds.features.Scalar(dtype=np.bool_),
      "shape_mentioned": tfds.features.Scalar(dtype=np.bool_),
    }
  )


@DATASETS.register("mmshapes")
class Mmshapes(LocalBuilder):
  """TFDS builder for mmshapes; element `i` of a split is example `i` of its `generate_split`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
    MmshapesConfig(name="default", description="20,480 / 2,048 / 4,096 examples."),
    MmshapesConfig(
      name="tiny", description="512 / 128 / 256 examples, for tests.", train_size=512, validation_size=128,
      test_size=256,
    ),
    MmshapesConfig(
      name="retrieval", description="20,480 / 2,048 / 4,096; colour images, captions name every attribute.",
      retrieval=True,
    ),
    MmshapesConfig(
      name="retrieval_tiny", description="1,024 / 256 / 256 `retrieval` examples, for tests.", retrieval=True,
      train_size=1024, validation_size=256, test_size=256,
    ),
  ]  # fmt: skip
  TOKENIZER = TOKENIZER

  def _info(self) -> tfds.core.DatasetInfo:
    return local_dataset_info(self, doc=__doc__, features=features())

  def _split_generators(self, dl_manager):
    config = self.builder_config
    return {
      split: self._generate_examples(size, split_seed(config.seed, split), config.retrieval)
      for split, size in config.split_sizes().items()
    }

  def _generate_examples(self, num_examples: int, seed: int, retrieval: bool):
    data = generate_split(num_examples, seed, retrieval=retrieval)
    for i in range(num_examples):
      yield i, {key: values[i] for key, values in data.items()}
