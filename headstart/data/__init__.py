"""Image data: decoding, folder datasets and splits, eval transforms, threaded batch loading."""

from headstart.data.decode import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, decode_image, is_image_file
from headstart.data.folder import SPLIT_ALIASES, ImageFolder, Sample, find_images
from headstart.data.loader import Batch, BatchLoader, DecodeFailure
from headstart.data.transforms import EvalTransform, center_crop, normalize, resize_short_side

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "SPLIT_ALIASES",
    "Batch",
    "BatchLoader",
    "DecodeFailure",
    "EvalTransform",
    "ImageFolder",
    "Sample",
    "center_crop",
    "decode_image",
    "find_images",
    "is_image_file",
    "normalize",
    "resize_short_side",
]
