from mmlearn.models import transformer  # noqa: F401  (registers the "vit" and "transformer" encoders)
