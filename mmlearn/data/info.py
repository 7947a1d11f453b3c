"""The `DatasetInfo` every mmlearn builder declares, built directly rather than from package metadata."""

import tensorflow_datasets as tfds


def local_dataset_info(
  builder: tfds.core.DatasetBuilder,
  *,
  doc: str,
  features: tfds.features.FeaturesDict,
  homepage: str | None = None,
) -> tfds.core.DatasetInfo:
  """Info for a locally generated builder whose files keep the generator's order.

  Not `builder.dataset_info_from_configs`: it reads package metadata files this package does not ship.
  `disable_shuffling` keeps generator order, so element i of the files is the generator's example i.
  """
  return tfds.core.DatasetInfo(
    builder=builder,
    description=doc.split("\n\n")[0],
    features=features,
    supervised_keys=None,
    homepage=homepage,
    citation=None,
    disable_shuffling=True,
  )
