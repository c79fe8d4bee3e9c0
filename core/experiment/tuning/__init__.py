"""``lab tune``: Optuna searches over any dotted config key (loss weights first), tracked in MLflow.

The pieces, each small and testable on its own:

- ``space``: the ``search:`` block of an experiment (schema, validation with key paths, sampling)
- ``study``: Optuna storage (heartbeats, retries), sampler and pruner, the shared trial budget
- ``records``: the MLflow side (one parent run per study, one nested run per trial)
- ``trial``: one trial: sample, validate, train with per-epoch pruning, record
- ``worker``: the loop one ``lab tune`` process runs until the study has its trials
- ``options``: what one ``lab tune`` is asked to do (``TuneOptions``), defined once for the CLI and the worker
- ``trial_floors``: the floors of a study (measured once, stored in the study) and each trial judged against them
- ``results``: the table of best trials, the best config as a ready-to-run experiment, plots

The command itself, turning every error into one clear message, is ``losslab.core.cli.tune_commands``; the CLI
also hands the worker the report builder (``on_finished``), as the engine never imports ``losslab.reports``.

Optuna and MLflow are imported inside functions only, so ``lab --help`` stays fast.
"""
