"""Published weights by name: ``pretrained=coco`` (or ``obj2coco``, ``imagenet``, ...) for the
model being built; see table.py for every name and store.py for the cache and its checks."""

from detforge.hub.resolve import published_names, resolve_pretrained
from detforge.hub.store import WeightsUnavailableError, fetch, weights_dir
from detforge.hub.table import PUBLISHED, PublishedWeights, find_published, published_for

__all__ = ["PUBLISHED", "PublishedWeights", "WeightsUnavailableError", "fetch", "find_published",
           "published_for", "published_names", "resolve_pretrained", "weights_dir"]
