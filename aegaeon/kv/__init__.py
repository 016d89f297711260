"""KV cache: block layout over the slab pool and per-step gather/scatter indices."""
