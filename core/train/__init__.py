"""Training one network for one config and one seed: objective, optimizer, the trainer, distributed helpers,
batch-size search, memory estimate and profiling."""
