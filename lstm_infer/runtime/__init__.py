"""Process-level runtime policy: how many threads the engine and its BLAS use."""
