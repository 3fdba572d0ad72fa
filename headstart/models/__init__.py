"""Model zoo: backbones with a uniform API, their preprocessing specs and pretrained weights."""

from headstart.models.base import POOLED, Backbone
from headstart.models.labels import imagenet_labels
from headstart.models.registry import ZooEntry, create_model, list_models, model_entry, register_model
from headstart.models.spec import PreprocessSpec

__all__ = ["POOLED", "Backbone", "PreprocessSpec", "ZooEntry", "create_model", "imagenet_labels",
           "list_models", "model_entry", "register_model"]
