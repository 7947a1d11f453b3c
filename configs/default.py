"""Default config: CNN(image) + LSTM(text) -> concat -> MLP on mmshapes, trained with SGD + momentum.

The keys, their defaults and their comments live in `mmlearn/defaults.py` (the schema every config is
checked against, so it ships with the library); other configs import this file and override a few fields.
"""

from mmlearn.defaults import get_config  # noqa: F401
