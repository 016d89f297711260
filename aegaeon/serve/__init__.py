"""The proxy: admission, routing and scheduling across a node's workers (no tensors here)."""
