"""Prototype initialisation: streaming mini-batch k-means over the feature store."""

from recomil.prototypes.kmeans import KMeansResult, minibatch_kmeans

__all__ = ["KMeansResult", "minibatch_kmeans"]
