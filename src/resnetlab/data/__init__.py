"""Data: CIFAR readers, image folders, and the in-memory batch pipeline."""
from .augment import AugmentConfig
from .cifar import ImageSet, cifar10, cifar100, download, load_cifar, load_cifar_splits, resolve_data_root
from .folders import load_image_folder, stratified_split, subset
from .loader import BatchLoader, BatchSource, channel_stats

__all__ = ["AugmentConfig", "ImageSet", "cifar10", "cifar100", "download", "load_cifar", "load_cifar_splits",
           "resolve_data_root", "load_image_folder", "stratified_split", "subset", "BatchLoader", "BatchSource",
           "channel_stats"]
