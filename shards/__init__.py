"""Per-model statistics, their storage, and the scoring kernels; pure numpy/torch, no Ray."""
