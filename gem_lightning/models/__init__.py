"""Networks: the specs ``model.network`` chooses with ``class_path``, and what they build."""

from gem_lightning.models.library import TimmSpec, TorchvisionSpec
from gem_lightning.models.spec import NetworkSpec, Normalization, spec_from_config
from gem_lightning.models.vgg import VGGSpec

__all__ = ["NetworkSpec", "Normalization", "TimmSpec", "TorchvisionSpec", "VGGSpec", "spec_from_config"]
