"""The `DatasetInfo` every mmlearn builder declares, built directly rather than from package metadata."""

import tensorflow_datasets as tfds


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """A `DatasetInfo` that never looks for precomputed info on TFDS's bucket.

  TFDS calls `initialize_from_bucket` for every builder whose files are not prepared yet. Datasets here
  are never on the bucket, and the call leaves an empty `/tmp/tmp*tfds` directory behind each time (one
  per builder constructed: thousands over a test suite).
  """

  def initialize_from_bucket(self) -> None:
    return None


def local_dataset_info(
  builder: tfds.core.DatasetBuilder,
  *,
  doc: str | None,
  features: tfds.features.FeaturesDict,
  homepage: str | None = None,
) -> tfds.core.DatasetInfo:
  """Info for a locally generated builder whose files keep the generator's order.

  Not `builder.dataset_info_from_configs`: it reads package metadata files this package does not ship.
  `disable_shuffling` keeps generator order, so element i of the files is the generator's example i.
  The description is the first paragraph of `doc` (the builder module's docstring: None under `python -OO`).
  """
  return _LocalDatasetInfo(
    builder=builder,
    description=None if doc is None else doc.split("\n\n")[0],
    features=features,
    supervised_keys=None,
    homepage=homepage,
    citation=None,
    disable_shuffling=True,
  )
