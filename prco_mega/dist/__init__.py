"""The distributed runtime: the torchrun world, the links of separate placement, and trajectory
routing (one function over one transport protocol)."""
