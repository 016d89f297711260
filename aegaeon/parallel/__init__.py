"""Tensor parallelism: a model instance over a group of devices of one node (aegaeon.parallel.shard splits
the model, .group holds the collectives, .instance leads a group from rank 0, .follower runs the others)."""
