"""WebDataset-style tar shards (`tarshards`): indexing, reading in place, preparation and direct reading
giving the same examples, and bad shards reported by file and member."""

import glob
import gzip
import io
import json
import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmlearn import data
from mmlearn.data import media, prepare, tar_index, tar_source, tarshards
from mmlearn.errors import ConfigError, DataError

LABELS = ("dog", "cat")


def image_bytes(seed: int, fmt: str = "PNG", size=(6, 8), mode="RGB") -> bytes:
  """A tiny noise image, encoded."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, fmt)
  return out.getvalue()


def write_tar(path, members) -> None:
  """An uncompressed tar of (name, bytes) members; bytes None makes a directory."""
  with tarfile.open(path, "w") as tar:
    for name, content in members:
      info = tarfile.TarInfo(name)
      if content is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
      else:
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))


def samples(shard: int, n: int, *, labels=True, first=0) -> list[dict]:
  """`n` samples: even ones a PNG with a .txt caption and a .cls label, odd ones a JPEG with a .json
  caption and label; keys `part<shard>/<number>`."""
  out = []
  for i in range(first, first + n):
    png = i % 2 == 0
    sample = {
      "key": f"part{shard}/{i:04d}",
      "image_ext": "png" if png else "jpg",
      "image": image_bytes(100 * shard + i, "PNG" if png else "JPEG"),
      "caption": f"a picture number {i} of shard {shard}",
    }
    if labels:
      sample["label"] = LABELS[i % 3 % 2]
    out.append(sample)
  return out


def members_of(sample: dict) -> list[tuple[str, bytes]]:
  key = sample["key"]
  members = [(f"{key}.{sample['image_ext']}", sample["image"])]
  if sample["image_ext"] == "png":
    members.append((f"{key}.txt", (sample["caption"] + "\n").encode()))
    if "label" in sample:
      members.append((f"{key}.cls", sample["label"].encode()))
  else:
    metadata = {"caption": sample["caption"], "width": 8}
    if "label" in sample:
      metadata["label"] = sample["label"]
    members.append((f"{key}.json", json.dumps(metadata).encode()))
  return members


def write_shard(path, shard_samples) -> None:
  write_tar(path, [member for sample in shard_samples for member in members_of(sample)])


def write_raw(root, *, labels=True) -> dict[str, list[dict]]:
  """Two training shards of 10 and 9 samples and one validation shard of 6: {split: samples in order}."""
  os.makedirs(root, exist_ok=True)
  train = [samples(0, 10, labels=labels), samples(1, 9, labels=labels)]
  for number, shard in enumerate(train):
    write_shard(os.path.join(root, f"train-{number:03d}.tar"), shard)
  validation = samples(2, 6, labels=labels)
  write_shard(os.path.join(root, "val-000.tar"), validation)
  return {"train": train[0] + train[1], "validation": validation}


OPTIONS = {"train": "train-*.tar", "validation": ["val-000.tar"]}


def load(tmp_path, options=OPTIONS, **kwargs):
  return data.load_sources(
    "tarshards",
    config="mine",
    data_dir=str(tmp_path / "tfds"),
    manual_dir=str(tmp_path / "raw"),
    options=options,
    splits=[split for split in tarshards.SPLITS if options.get(split)],
    **kwargs,
  )


def builder(tmp_path, options=OPTIONS, *, manual_dir="raw") -> tarshards.Tarshards:
  builder_cls, config = data.resolve_config(
    "tarshards",
    "mine",
    options=options,
    manual_dir=str(tmp_path / manual_dir),
    data_dir=str(tmp_path / "tfds"),
  )
  return builder_cls(data_dir=str(tmp_path / "tfds"), config=config)


def direct(tmp_path, options=OPTIONS) -> dict[str, tar_source.DirectSource]:
  return builder(tmp_path, {**options, "direct": True}).direct_sources()


def prepared_dirs(tmp_path) -> list[str]:
  """The prepared dataset directories (a preparation that failed leaves none)."""
  return [p for p in glob.glob(str(tmp_path / "tfds" / "tarshards" / "*" / "*")) if prepare.is_prepared(p)]


def test_members_are_grouped_by_key_as_webdataset_does():
  assert tar_index.split_name("a/b/0001.jpg") == ("a/b/0001", "jpg")
  assert tar_index.split_name("0001.seg.png") == ("0001", "seg.png")
  assert tar_index.split_name("./x/0001.JPG") == ("./x/0001", "JPG")
  for name in ("README", "a/b/._0001.jpg", "a.b/noext", "0001."):
    assert tar_index.split_name(name) is None, name
  members = [("s/1.jpg", 512, 10), ("s/1.txt", 1536, 3), ("s/2.png", 2048, 7), ("s/1.cls", 3072, 1)]
  assert tar_index.group_members(members, "x.tar") == {
    "s/1": {"jpg": (512, 10), "txt": (1536, 3), "cls": (3072, 1)},
    "s/2": {"png": (2048, 7)},
  }
  with pytest.raises(DataError, match=r"x\.tar: member s/1\.jpg appears twice"):
    tar_index.group_members([*members, ("s/1.jpg", 4096, 5)], "x.tar")


def test_a_source_reads_each_sample_of_the_tars_in_place(tmp_path):
  expected = samples(0, 4) + samples(1, 3)
  extra = [
    ("part0", None),
    ("part0/0000.seg.png", image_bytes(9)),
    ("__meta__.json", b"{}"),
    ("._0001.jpg", b"x"),
  ]
  first = str(tmp_path / "a.tar")
  write_tar(first, extra + [m for s in expected[:4] for m in members_of(s)])
  second = str(tmp_path / "b.tar")
  write_shard(second, expected[4:])
  index = tar_index.scan(first)
  assert index.keys == [s["key"] for s in expected[:4]]  # The mask, metadata and directory are no samples.
  source = tar_source.TarShardSource([first, second])
  assert len(source) == 7
  for i in reversed(range(7)):  # Random access, across shards.
    sample = source[i]
    assert sample == {k: expected[i][k] for k in ("key", "image", "caption", "label")}
    assert (
      sample["image"].where
      == f"{first if i < 4 else second}: member {expected[i]['key']}.{expected[i]['image_ext']}"
    )
  with pytest.raises(IndexError):
    source[7]
  assert sorted(os.listdir(tmp_path)) == ["a.tar", "b.tar"]  # Nothing unpacked.


def test_a_source_pickles_without_its_open_files(tmp_path):
  write_raw(tmp_path / "raw")
  source = tar_source.TarShardSource([str(tmp_path / "raw" / "train-000.tar")])
  before = [source[i] for i in range(len(source))]  # Opens the shard.
  assert source._fds
  state = source.__getstate__()
  assert not {"_fds", "_lock", "_pid"} & set(state)
  copy = pickle.loads(pickle.dumps(source))
  assert not copy._fds
  assert [copy[i] for i in range(len(copy))] == before
  assert pickle.loads(pickle.dumps(before[0]["image"])).where == before[0]["image"].where
  copy.close()
  source.close()


def test_a_prepared_dataset_gives_what_direct_reading_gives(tmp_path):
  expected = write_raw(tmp_path / "raw")
  raw_files = sorted(os.listdir(tmp_path / "raw"))
  views, info = load(tmp_path)
  assert info.features["label"].names == ["cat", "dog"]  # Sorted class names.
  prepared = builder(tmp_path)
  sources = {split: prepared.as_data_source(split) for split in expected}
  read_directly = direct(tmp_path)
  decode = prepared.decoders()["image"]
  for split, split_samples in expected.items():
    assert len(sources[split]) == len(read_directly[split]) == len(split_samples)
    for i, sample in enumerate(split_samples):
      stored, directly = sources[split][i], read_directly[split][i]
      assert set(stored) == set(directly) == {"image", "caption", "key", "label"}
      for name in stored:
        assert stored[name] == directly[name], (split, i, name)
        assert type(stored[name]) is type(directly[name]) or name == "image", (name, type(stored[name]))
      assert stored["image"] == sample["image"]  # Its own bytes, untouched.
      assert stored["caption"] == sample["caption"].encode() and stored["key"] == sample["key"].encode()
      assert stored["label"] == ["cat", "dog"].index(sample["label"])
      np.testing.assert_array_equal(decode(directly["image"]), media.decode_image(sample["image"]))
  assert sorted(os.listdir(tmp_path / "raw")) == raw_files  # Nothing unpacked beside the shards.
  # Prepared, it reads without its shards.
  # What the pipeline reads: decoded images, and tokens of a tokenizer built from the training captions.
  example = views["validation"][3]
  np.testing.assert_array_equal(example["image"], media.decode_image(expected["validation"][3]["image"]))
  assert len(example["tokens"]) == len(expected["validation"][3]["caption"].split())
  # Prepared, it reads without its shards.
  os.rename(tmp_path / "raw", tmp_path / "moved")
  again, _ = load(tmp_path)
  assert again["validation"][3]["key"] == b"part2/0003"


def test_preparation_encodes_in_worker_processes(tmp_path):
  """What `prepare` sends to its spawned workers pickles, and encodes the same there."""
  write_raw(tmp_path / "raw")
  plans = builder(tmp_path).split_plans(None)
  assert {split: plan.num_examples for split, plan in plans.items()} == {"train": 19, "validation": 6}
  plan = plans["validation"]
  items = list(plan.items)
  assert plan.encode is not None
  encode = pickle.loads(pickle.dumps(plan.encode))
  assert encode(pickle.loads(pickle.dumps(items[1])))["caption"] == "a picture number 1 of shard 2"


def test_image_shape_resizes_and_reencodes_once_at_preparation(tmp_path):
  expected = write_raw(tmp_path / "raw", labels=False)
  options = {**OPTIONS, "image_shape": (4, 5, 1)}
  _, info = load(tmp_path, options)
  assert "label" not in info.features
  read_directly = direct(tmp_path, options)
  prepared = builder(tmp_path, options)
  decode = prepared.decoders()["image"]
  for i, sample in enumerate(expected["validation"]):
    stored = prepared.as_data_source("validation")[i]
    assert stored == read_directly["validation"][i]
    image = decode(stored["image"])
    assert image.shape == (4, 5, 1)
    if sample["image_ext"] == "png":  # Lossless: exactly the resized original.
      np.testing.assert_array_equal(image, media.resize(media.decode_image(sample["image"], 1), 4, 5))
  with pytest.raises(DataError, match=r"a stored image is \(6, 8, 1\)"):
    decode(image_bytes(0, mode="L"))


def test_numeric_labels_are_class_numbers(tmp_path):
  shard = str(tmp_path / "raw" / "train-000.tar")
  os.makedirs(tmp_path / "raw")
  members = []
  for i, label in enumerate(("3", "007", "0")):
    members += [(f"{i}.png", image_bytes(i)), (f"{i}.txt", b"words"), (f"{i}.cls", label.encode())]
  write_tar(shard, members)
  source = direct(tmp_path, {"train": "train-000.tar"})["train"]
  assert source.class_names == tuple(str(i) for i in range(8))
  assert [source[i]["label"] for i in range(3)] == [3, 7, 0]


def test_options_are_checked(tmp_path):
  with pytest.raises(
    ConfigError, match=r"unknown dataset.options \['shards'\].*known: train, validation, test"
  ):
    tarshards.check_options({"shards": "*.tar"})
  with pytest.raises(ConfigError, match="has no shards"):
    tarshards.check_options({})
  with pytest.raises(ConfigError, match="channels is 3 but image_shape"):
    tarshards.check_options({"train": "a.tar", "image_shape": (4, 4, 1), "channels": 3})
  with pytest.raises(ConfigError, match="image_shape must be"):
    tarshards.check_options({"train": "a.tar", "image_shape": (4, 4)})
  with pytest.raises(ConfigError, match="dataset.options.train must be a glob"):
    tarshards.check_options({"train": []})
  # Reading directly or not, the same prepared directory.
  assert tarshards.config_name("x", tarshards.check_options({"train": "a.tar"})) == tarshards.config_name(
    "x", tarshards.check_options({"train": ["a.tar"], "direct": True})
  )


def _members(path: str) -> list[tuple[str, bytes]]:
  with tarfile.open(path) as tar:
    return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # pyright: ignore[reportOptionalMemberAccess]


def _replace_image(path: str, key: str, content: bytes) -> None:
  image = lambda name: name.startswith(key + ".") and name.rpartition(".")[2] in tar_index.IMAGE_EXTENSIONS
  write_tar(path, [(name, content if image(name) else data) for name, data in _members(path)])


def _drop_member(path: str, name: str) -> None:
  write_tar(path, [member for member in _members(path) if member[0] != name])


def _truncate(path: str, size: int) -> None:
  with open(path, "r+b") as f:
    f.truncate(size)


def _member_at(path: str, name: str, where: str) -> int:
  """A byte of member `name`: the middle of its header or of its data, or where its blocks end."""
  with tarfile.open(path) as tar:
    member = tar.getmember(name)
  data = member.offset_data
  blocks = -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
  return {"header": data - tarfile.BLOCKSIZE // 2, "data": data + member.size // 2, "end": data + blocks}[
    where
  ]


SHARD = "train-001.tar"  # The shard each case damages.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAD_INPUTS = {  # case: (damage(path of SHARD), what the message names after the shard's path)
  "corrupt image": (
    lambda p: _replace_image(p, "part1/0002", PNG_SIGNATURE + b"x" * 50),
    "member part1/0002.png",
  ),
  "truncated image": (
    lambda p: _replace_image(p, "part1/0003", image_bytes(1, "JPEG")[:200]),
    "member part1/0003.jpg",
  ),
  "no caption": (lambda p: _drop_member(p, "part1/0004.txt"), "sample part1/0004 has no caption"),
  "no image": (lambda p: _drop_member(p, "part1/0004.png"), "sample part1/0004 has no image"),
  "some labels": (lambda p: _drop_member(p, "part1/0000.cls"), "sample part1/0000 has no label"),
  "not a tar": (lambda p: pathlib.Path(p).write_bytes(image_bytes(0) * 20), "not an uncompressed tar"),
  "truncated in a member": (
    lambda p: _truncate(p, _member_at(p, "part1/0005.jpg", "data")),
    "after member part1/0005.jpg",
  ),
  "truncated in a header": (
    lambda p: _truncate(p, _member_at(p, "part1/0005.json", "header")),
    "after member part1/0005.jpg",
  ),
  "truncated between members": (
    lambda p: _truncate(p, _member_at(p, "part1/0006.cls", "end")),
    "after member part1/0006.cls",
  ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_shard_is_named_and_nothing_reads_as_prepared(tmp_path, case):
  write_raw(tmp_path / "raw")
  path = str(tmp_path / "raw" / SHARD)
  damage, named = BAD_INPUTS[case]
  damage(path)
  raw_files = sorted(os.listdir(tmp_path / "raw"))
  with pytest.raises(DataError) as error:
    load(tmp_path)
  message = str(error.value)
  assert message.startswith(f"{path}: ") and named in message and "\n" not in message, message
  assert not prepared_dirs(tmp_path)
  assert sorted(os.listdir(tmp_path / "raw")) == raw_files


def test_a_glob_matching_nothing_is_named(tmp_path):
  write_raw(tmp_path / "raw")
  with pytest.raises(DataError, match=r"raw/test-\*\.tar: no tar shard matches it \(dataset.options.test\)"):
    load(tmp_path, {**OPTIONS, "test": "test-*.tar"})
  assert not prepared_dirs(tmp_path)


def test_a_compressed_shard_is_named(tmp_path):
  write_raw(tmp_path / "raw")
  path = tmp_path / "raw" / SHARD
  path.write_bytes(gzip.compress(path.read_bytes()))
  with pytest.raises(DataError, match=f"{path}: a gzip-compressed tar"):
    load(tmp_path)


def test_reading_directly_names_the_member_of_a_bad_image_when_it_is_decoded(tmp_path):
  write_raw(tmp_path / "raw")
  path = str(tmp_path / "raw" / SHARD)
  BAD_INPUTS["corrupt image"][0](path)
  source = direct(tmp_path)["train"]
  decode = builder(tmp_path, {**OPTIONS, "direct": True}).decoders()["image"]
  decode(source[10 + 1]["image"])
  with pytest.raises(DataError, match=f"^{path}: member part1/0002.png: image: cannot decode the image"):
    decode(source[10 + 2]["image"])
  # With `image_shape`, the image is resized where it is read: the error is raised there.
  resized = direct(tmp_path, {**OPTIONS, "image_shape": (4, 4, 3)})["train"]
  with pytest.raises(DataError, match=f"^{path}: member part1/0002.png: cannot decode the image"):
    resized[12]


def test_shards_changed_since_preparation_are_refused(tmp_path):
  write_raw(tmp_path / "raw")
  load(tmp_path)
  write_shard(str(tmp_path / "raw" / SHARD), samples(1, 12))
  with pytest.raises(DataError, match="changed since it was prepared"):
    load(tmp_path)
  sources = direct(tmp_path)  # Reading directly reads what is there now.
  assert len(sources["train"]) == 22


def test_load_sources_reads_shards_in_place_with_direct_and_decodes_as_prepared(tmp_path):
  write_raw(tmp_path / "raw")
  prepared, info = load(tmp_path)
  in_place, direct_info = load(tmp_path, {**OPTIONS, "direct": True})
  assert direct_info.features["label"].names == info.features["label"].names
  assert len(in_place["train"]) == len(prepared["train"]) == 19
  for i in (0, 7, 18):
    a, b = prepared["train"][i], in_place["train"][i]
    assert np.array_equal(a["image"], b["image"]) and a["image"].dtype == np.uint8
    assert list(a["tokens"]) == list(b["tokens"]) and a["label"] == b["label"]
  # Read in place, nothing was prepared beside the one preparation above.
  assert len(prepared_dirs(tmp_path)) == 1
