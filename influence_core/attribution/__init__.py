"""Training-data attribution: pairwise and self-influence scores over a fitted curvature, and
the precomputed attribution index that answers a query over the whole training set."""
