"""The dataset registry, in its own module so builders can register without importing the loader."""

from mmlearn.registry import Registry

DATASETS = Registry("dataset")  # name -> tfds.core.DatasetBuilder subclass.
