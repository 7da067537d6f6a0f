"""Prototype initialisation: streaming mini-batch k-means over the feature store."""

from recomil.prototypes.kmeans import KMeansResult, lloyd_kmeans, minibatch_kmeans

__all__ = ["KMeansResult", "lloyd_kmeans", "minibatch_kmeans"]
