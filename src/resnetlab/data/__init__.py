"""Data: CIFAR readers, users' image sources (folders, manifests, shards) decoded into a memory-mapped cache,
and the batch pipeline."""
from .augment import AugmentConfig
from .cache import cache_dir, list_caches, remove_caches
from .cifar import ImageSet, cifar10, cifar100, download, load_cifar, load_cifar_splits, resolve_data_root
from .folders import cached_set, load_image_folder, stratified_split, subset
from .loader import BatchLoader, BatchSource, channel_stats, split_stats

__all__ = ["AugmentConfig", "ImageSet", "cifar10", "cifar100", "download", "load_cifar", "load_cifar_splits",
           "resolve_data_root", "load_image_folder", "cached_set", "cache_dir", "list_caches", "remove_caches",
           "stratified_split", "subset", "BatchLoader", "BatchSource", "channel_stats", "split_stats"]
