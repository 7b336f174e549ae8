"""Pseudo-labelling as pure functions: k-NN, Jaccard distance, DBSCAN, cross-modality association."""

from dmdl_dist.clustering.association import (
    Association,
    associate_hungarian,
    associate_nearest,
)
from dmdl_dist.clustering.dbscan import dbscan_labels
from dmdl_dist.clustering.jaccard import jaccard_distance
from dmdl_dist.clustering.knn import knn

__all__ = [
    "Association",
    "associate_hungarian",
    "associate_nearest",
    "dbscan_labels",
    "jaccard_distance",
    "knn",
]
