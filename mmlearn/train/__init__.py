"""The training loop, its per-device step, the train state, prefetch and profiling."""
