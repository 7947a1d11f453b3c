"""mmshapes: determinism, balance, the 62.5% / 62.5% / 100% design, the tokenizer, the builder and loader."""

import os
import tempfile

import numpy as np
import pytest
from scipy import stats

from mmlearn import data
from mmlearn.data import mmshapes, text
from mmlearn.errors import ConfigError, DataError

N = 1024  # A multiple of mmshapes.BALANCE_UNIT: 16 examples per (label, grayscale, shape_mentioned) cell.
TOKENIZER = mmshapes.TOKENIZER
COLOUR_OF_WORD = {w: c for c, words in enumerate(mmshapes.COLOUR_WORDS) for w in words}
SHAPE_OF_WORD = {w: s for s, words in enumerate(mmshapes.SHAPE_WORDS) for w in words}


@pytest.fixture(scope="module")
def split():
  return mmshapes.generate_split(N, seed=7)


def caption_words(split):
  return [TOKENIZER.words(c) for c in split["caption"]]


# ---- Determinism and balance ----


def test_same_seed_gives_identical_data_and_another_seed_differs():
  a, b, c = (mmshapes.generate_split(128, seed) for seed in (3, 3, 4))
  for key in a:
    if key == "tokens":
      assert all(np.array_equal(x, y) for x, y in zip(a[key], b[key], strict=True))
    else:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["image"], c["image"])
  assert not np.array_equal(a["label"], c["label"])
  assert a["caption"] != c["caption"]


def test_splits_get_different_seeds():
  seeds = {mmshapes.split_seed(0, s) for s in mmshapes.SPLITS} | {mmshapes.split_seed(1, "train")}
  assert len(seeds) == 4


@pytest.mark.parametrize("size", [0, 100, 1000])
def test_unbalanceable_sizes_are_rejected(size):
  with pytest.raises(ConfigError, match=f"{size} must be a positive multiple of 64"):
    mmshapes.generate_split(size, 0)
  with pytest.raises(ConfigError, match="config 'odd', validation"):
    mmshapes.MmshapesConfig(name="odd", validation_size=size)


def test_every_label_and_flag_combination_is_equally_common(split):
  cells = np.zeros((16, 2, 2), int)
  np.add.at(cells, (split["label"], split["grayscale"].astype(int), split["shape_mentioned"].astype(int)), 1)
  assert (cells == N // 64).all()  # So each flag is exactly half on within every label, independently.


def test_order_is_shuffled_so_index_shards_see_every_label(split):
  for shard in (split["label"][0::2], split["label"][1::2], split["label"][: N // 4]):
    assert set(shard.tolist()) == set(range(16))


def test_label_is_shape_times_four_plus_colour(split):
  np.testing.assert_array_equal(split["label"], split["shape"] * 4 + split["colour"])
  names = [mmshapes.LABEL_NAMES[i] for i in split["label"]]
  assert names == [
    f"{mmshapes.COLOURS[c]}_{mmshapes.SHAPES[s]}"
    for s, c in zip(split["shape"], split["colour"], strict=True)
  ]


def test_shapes_stay_on_the_canvas_inside_their_quadrant(split):
  position, quadrant, image = split["position"], split["quadrant"], split["image"].max(-1)
  assert position.dtype == np.float32 and ((position > 0) & (position < 1)).all()
  np.testing.assert_array_equal(position[:, 0] > 0.5, quadrant % 2 == 1)
  np.testing.assert_array_equal(position[:, 1] > 0.5, quadrant // 2 == 1)
  border = np.concatenate([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], axis=1)
  assert border.max() < 100  # Only background touches the edge: no shape is cut off.
  # The bounding box of the shape's pixels is centred in the stated quadrant.
  bright = image > 100
  for axis, far in ((1, quadrant % 2 == 1), (2, quadrant // 2 == 1)):
    occupied = bright.any(axis)  # [N, 32] along x (axis 1 collapsed) or y.
    first, last = occupied.argmax(1), 31 - occupied[:, ::-1].argmax(1)
    np.testing.assert_array_equal((first + last + 1) / 2 > 16, far)


# ---- Images: shape always visible, colour only in colour images ----


def test_grayscale_images_have_equal_channels_and_colour_images_do_not(split):
  image, gray = split["image"].astype(int), split["grayscale"]
  equal = (image[..., 0] == image[..., 1]).all((1, 2)) & (image[..., 1] == image[..., 2]).all((1, 2))
  np.testing.assert_array_equal(equal, gray)


def test_grayscale_rendering_ignores_the_colour_exactly():
  rng = np.random.default_rng(0)
  n = 64
  shape, radius = rng.integers(0, 4, n), rng.uniform(4.5, 9.5, n)
  centre, noise = rng.uniform(10.5, 21.5, (n, 2)), rng.standard_normal((n, 32, 32, 3)).astype(np.float32)

  def render(colour, grayscale):
    return mmshapes.render_images(shape, np.full(n, colour), radius, centre, np.full(n, grayscale), noise)

  gray = [render(c, True) for c in range(4)]
  coloured = [render(c, False) for c in range(4)]
  for c in range(1, 4):
    np.testing.assert_array_equal(gray[c], gray[0])
    assert (coloured[c] != coloured[0]).any((1, 2, 3)).all()


def test_grayscale_gray_levels_do_not_depend_on_colour(split):
  gray = split["grayscale"]
  levels = split["image"][gray, :, :, 0]
  colour = split["colour"][gray]
  # Shape pixels sit at one gray level for every colour; only noise separates the per-colour means.
  fill = [levels[colour == c][levels[colour == c] > 100].mean() for c in range(4)]
  assert max(fill) - min(fill) < 1.0 and all(abs(f - mmshapes.GRAY_LEVEL) < 10 for f in fill)
  # Image by image (pixels of one image are not independent), brightness is distributed alike per colour.
  brightness = levels.mean((1, 2))
  assert stats.kruskal(*[brightness[colour == c] for c in range(4)]).pvalue > 1e-3


def test_colour_images_show_their_colour_by_a_simple_rule(split):
  rows = ~split["grayscale"]
  image = split["image"][rows].astype(np.float32)
  bright = image.max(-1) > 100
  mean = (image * bright[..., None]).sum((1, 2)) / bright.sum((1, 2))[:, None] - mmshapes.BACKGROUND
  palette = mmshapes.RGB - mmshapes.BACKGROUND
  cosine = (mean @ palette.T) / np.linalg.norm(mean, axis=1)[:, None] / np.linalg.norm(palette, axis=1)
  np.testing.assert_array_equal(cosine.argmax(1), split["colour"][rows])


def test_every_image_shows_its_shape(split):
  """Nearest noise-free template (at the stored position, radius searched) recovers the shape."""
  rows = np.arange(0, N, 4)
  image = split["image"][rows].astype(np.float32)
  n = len(rows)
  centre = split["position"][rows] * 32
  base_radius = mmshapes.RADII[split["size"][rows]]
  errors = np.full((n, 4), np.inf)
  for s in range(4):
    for jitter in np.linspace(-0.5, 0.5, 5):
      template = mmshapes.render_images(
        np.full(n, s), split["colour"][rows], base_radius + jitter, centre, split["grayscale"][rows],
        np.zeros((n, 32, 32, 3), np.float32),
      )  # fmt: skip
      errors[:, s] = np.minimum(errors[:, s], ((image - template) ** 2).sum((1, 2, 3)))
  np.testing.assert_array_equal(errors.argmin(1), split["shape"][rows])


# ---- Captions: colour always named, shape only when `shape_mentioned`, nothing else leaks ----


def test_captions_name_the_true_colour_and_the_shape_only_when_mentioned(split):
  for words, colour, shape, mentioned in zip(
    caption_words(split), split["colour"], split["shape"], split["shape_mentioned"], strict=True
  ):
    assert [COLOUR_OF_WORD[w] for w in words if w in COLOUR_OF_WORD] == [colour]
    shapes = [SHAPE_OF_WORD[w] for w in words if w in SHAPE_OF_WORD]
    generic = [w for w in words if w in mmshapes.GENERIC_NOUNS]
    if mentioned:
      assert shapes == [shape] and not generic
    else:
      assert not shapes and len(generic) == 1


def test_tokens_are_the_encoded_captions(split):
  assert len(split["tokens"]) == N
  for caption, tokens in zip(split["caption"], split["tokens"], strict=True):
    assert tokens.dtype == np.int32 and 5 <= len(tokens) <= 12
    np.testing.assert_array_equal(tokens, TOKENIZER.encode(caption))
    assert TOKENIZER.decode(tokens) == " ".join(TOKENIZER.words(caption))


def masked(captions):
  """Captions with colour words and nouns (shape or generic) replaced by placeholders."""
  nouns = set(SHAPE_OF_WORD) | set(mmshapes.GENERIC_NOUNS)
  return [
    " ".join("<colour>" if w in COLOUR_OF_WORD else "<noun>" if w in nouns else w for w in TOKENIZER.words(c))
    for c in captions
  ]


def test_caption_choices_do_not_depend_on_shape_or_colour():
  """Same seed, different shapes and colours: the captions differ only in colour and noun words."""
  rng = np.random.default_rng(0)
  n = 2000
  size, quadrant, mentioned = rng.integers(0, 2, n), rng.integers(0, 4, n), rng.random(n) < 0.5
  shape_a, colour_a, shape_b, colour_b = rng.integers(0, 4, (4, n))
  a = mmshapes.make_captions(shape_a, colour_a, size, quadrant, mentioned, np.random.default_rng(1))
  b = mmshapes.make_captions(shape_b, colour_b, size, quadrant, mentioned, np.random.default_rng(1))
  assert masked(a) == masked(b)
  # The generic noun itself is also the same word, whatever the hidden shape.
  generic = [[[w for w in TOKENIZER.words(c) if w in mmshapes.GENERIC_NOUNS] for c in x] for x in (a, b)]
  assert generic[0] == generic[1]


def test_caption_length_and_wording_are_distributed_alike_for_every_label():
  n_per_label = 1000
  label = np.repeat(np.arange(16), n_per_label)
  rng = np.random.default_rng(2)
  mentioned = np.tile([True, False], 8 * n_per_label)
  captions = mmshapes.make_captions(
    label // 4, label % 4, rng.integers(0, 2, len(label)), rng.integers(0, 4, len(label)), mentioned, rng
  )
  lengths = np.array([len(TOKENIZER.encode(c)) for c in captions])
  table = np.stack([np.bincount(lengths[label == k], minlength=13) for k in range(16)])
  assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > 1e-3
  skeletons = masked(captions)  # Template, place and size wording with colour and noun hidden.
  kinds = {s: i for i, s in enumerate(sorted(set(skeletons)))}
  codes = np.array([kinds[s] for s in skeletons])
  table = np.stack([np.bincount(codes[label == k], minlength=len(kinds)) for k in range(16)])
  assert stats.chi2_contingency(table).pvalue > 1e-3
  # When the shape is not named, the generic noun says nothing about it.
  generic = [
    next(w for w in TOKENIZER.words(c) if w in mmshapes.GENERIC_NOUNS) for c in np.array(captions)[~mentioned]
  ]
  table = np.zeros((4, 3), int)
  np.add.at(table, ((label // 4)[~mentioned], [mmshapes.GENERIC_NOUNS.index(w) for w in generic]), 1)
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_bayes_optimal_accuracies_are_62_5_62_5_and_100_percent(split):
  """What each modality reveals, read off the data itself; unrevealed attributes are 1-in-4 guesses."""
  image = split["image"]
  colour_in_image = ~((image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])).all((1, 2))
  shape_in_image = np.ones(N, bool)  # test_every_image_shows_its_shape
  words = caption_words(split)
  shape_in_text = np.array([any(w in SHAPE_OF_WORD for w in ws) for ws in words])
  colour_in_text = np.array([any(w in COLOUR_OF_WORD for w in ws) for ws in words])

  def accuracy(shape_known, colour_known):
    return float(np.mean(np.where(shape_known, 1.0, 0.25) * np.where(colour_known, 1.0, 0.25)))

  assert accuracy(shape_in_image, colour_in_image) == 0.625
  assert accuracy(shape_in_text, colour_in_text) == 0.625
  assert accuracy(shape_in_image | shape_in_text, colour_in_image | colour_in_text) == 1.0


# ---- Tokenizer ----


def test_tokenizer_round_trip_ignores_case_punctuation_and_padding():
  ids = TOKENIZER.encode("A large Crimson disk, in the TOP-left!")
  assert ids.dtype == np.int32 and text.PAD_ID not in ids
  assert TOKENIZER.decode(ids) == "a large crimson disk in the top left"
  assert (
    TOKENIZER.decode(np.concatenate([ids, np.zeros(5, np.int32)])) == "a large crimson disk in the top left"
  )
  assert TOKENIZER.vocab[text.PAD_ID] == "<pad>" and TOKENIZER.vocab_size == len(mmshapes.VOCABULARY)


def test_unknown_word_is_a_clear_error():
  with pytest.raises(DataError, match=r"unknown word 'xyz' in 'a red xyz'; the vocabulary has \d+ words"):
    TOKENIZER.encode("a red xyz")


def test_bad_vocabularies_are_rejected():
  for vocab in [("a", "<pad>"), ("<pad>", "a", "a"), ("<pad>", "Two words")]:
    with pytest.raises(ValueError):
      text.WordTokenizer(vocab)


def test_vocabulary_is_exactly_the_words_captions_can_use():
  words = set(" ".join(mmshapes.TEMPLATES + mmshapes.PLACE_TEMPLATES).replace(",", " ").split())
  words = (
    {w for w in words if not w.startswith("{")} | set(mmshapes.GENERIC_NOUNS) | set(mmshapes.HORIZONTAL_WORDS)
  )
  for group in (mmshapes.COLOUR_WORDS, mmshapes.SHAPE_WORDS, mmshapes.SIZE_WORDS, mmshapes.VERTICAL_WORDS):
    words |= {w for options in group for w in options}
  assert set(mmshapes.VOCABULARY[1:]) == words


# ---- Builder and loader ----


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("mmshapes"))
  sources, info = data.load_sources("mmshapes", config="tiny", data_dir=directory)
  return directory, sources, info


def dataset_files(directory):
  root = os.path.join(directory, "mmshapes", "tiny", "1.0.0")
  return {name: os.stat(os.path.join(root, name)).st_mtime_ns for name in os.listdir(root)}


def test_builder_splits_features_and_helpers(prepared):
  _, sources, info = prepared
  assert {split: len(source) for split, source in sources.items()} == {
    "train": 512,
    "validation": 128,
    "test": 256,
  }
  assert data.num_classes(info) == info.features["label"].num_classes == 16
  assert info.features["label"].names == list(mmshapes.LABEL_NAMES)
  assert data.vocab_size("mmshapes") == data.get_tokenizer("mmshapes").vocab_size == len(mmshapes.VOCABULARY)
  example = sources["test"][0]
  assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
  assert example["tokens"].dtype == np.int32 and example["tokens"].ndim == 1
  assert example["position"].shape == (2,) and example["position"].dtype == np.float32
  assert isinstance(example["caption"], bytes)
  assert set(example) == set(mmshapes.features().keys())


@pytest.mark.parametrize("split", ["train", "test"])
def test_files_hold_the_generators_examples_in_order(prepared, split):
  _, sources, _ = prepared
  expected = mmshapes.generate_split(len(sources[split]), mmshapes.split_seed(0, split))
  for i in (0, 1, len(sources[split]) - 1):
    got = sources[split][i]
    assert got["caption"].decode() == expected["caption"][i]
    np.testing.assert_array_equal(got["tokens"], expected["tokens"][i])
    for key in (
      "image",
      "label",
      "shape",
      "colour",
      "size",
      "quadrant",
      "position",
      "grayscale",
      "shape_mentioned",
    ):
      np.testing.assert_array_equal(got[key], expected[key][i], err_msg=key)


def test_second_load_reuses_the_files(prepared):
  directory, _, _ = prepared
  before = dataset_files(directory)
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=directory, splits=("validation",))
  assert dataset_files(directory) == before and list(sources) == ["validation"]


@pytest.mark.parametrize("name", ["mmshapes", "avmnist"])
def test_constructing_an_unprepared_builder_leaves_no_temporary_directory(monkeypatch, tmp_path, name):
  """TFDS looks for precomputed info of an unprepared builder on its bucket through a new temp dir."""
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  builder = data.DATASETS.get(name)(data_dir=str(tmp_path / "tfds"))
  assert not builder.is_prepared()
  assert list(scratch.iterdir()) == []


def test_data_dir_comes_from_argument_then_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  assert data.resolve_data_dir(None) == str(tmp_path)
  assert data.resolve_data_dir("/elsewhere") == "/elsewhere"
  monkeypatch.delenv(data.DATA_DIR_ENV)
  assert data.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


@pytest.mark.parametrize(
  "kwargs, error, message",
  [
    # The known names are whatever is registered (imports may add more): only the built-ins are certain.
    ({"name": "nope"}, ConfigError, r"unknown dataset 'nope'; known: (\w+, )*avmnist, (\w+, )*mmshapes"),
    ({"name": "mmshapes", "config": "huge"}, ConfigError, "unknown config 'huge'"),
    ({"name": "mmshapes", "splits": ("dev",)}, DataError, "unknown split 'dev'"),
  ],
)
def test_unknown_names_are_clear_errors(prepared, kwargs, error, message):
  directory, _, _ = prepared
  with pytest.raises(error, match=message):
    data.load_sources(**{"config": "tiny", "data_dir": directory, **kwargs})


def test_failed_preparation_leaves_nothing_that_looks_prepared(monkeypatch, tmp_path):
  real = mmshapes.generate_split
  calls = []

  def fail_on_second_split(num_examples, seed, **kwargs):
    calls.append(num_examples)
    if len(calls) == 2:
      raise RuntimeError("interrupted")
    return real(num_examples, seed, **kwargs)

  monkeypatch.setattr(mmshapes, "generate_split", fail_on_second_split)
  with pytest.raises(RuntimeError, match="interrupted"):
    data.load_sources("mmshapes", config="tiny", data_dir=str(tmp_path))
  assert not os.path.exists(tmp_path / "mmshapes" / "tiny" / "1.0.0")
  monkeypatch.setattr(mmshapes, "generate_split", real)
  sources, _ = data.load_sources("mmshapes", config="tiny", data_dir=str(tmp_path))
  assert len(sources["train"]) == 512


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def scramble(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 3)
    f.write(b"\xff" * 64)


def overwrite_json(path):
  with open(path, "w") as f:
    f.write("{not json")


@pytest.mark.parametrize(
  "filename, damage, error_type, message",
  [
    ("mmshapes-train.array_record-00000", os.remove, FileNotFoundError, "is missing"),
    (
      "mmshapes-train.array_record-00000",
      truncate,
      DataError,
      "holds 0 records, expected 512|cannot be read",
    ),
    ("mmshapes-test.array_record-00000", scramble, DataError, "cannot be read"),
    ("dataset_info.json", overwrite_json, DataError, "is not valid JSON"),
    ("features.json", os.remove, FileNotFoundError, "is missing"),
  ],
)
def test_damaged_files_are_named(tmp_path, filename, damage, error_type, message):
  """A deleted file is an OSError, a damaged one a DataError: both one `error:` line at the command line."""
  data.load_sources("mmshapes", config="tiny", data_dir=str(tmp_path))
  path = tmp_path / "mmshapes" / "tiny" / "1.0.0" / filename
  damage(path)
  with pytest.raises(error_type, match=message) as error:
    data.load_sources("mmshapes", config="tiny", data_dir=str(tmp_path))
  assert str(path) in str(error.value)
