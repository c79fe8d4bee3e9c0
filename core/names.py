"""The names runs are recorded under in MLflow: tags, artifact files and metric prefixes.

``docs/tracking.md`` is the contract; this module is its one copy in code. The writers (``lab run``'s
runner, the trainer, ``lab tune``'s records) and the reader (``losslab.reports.collect``) import these,
so a renamed tag cannot leave a report looking for the old name. Standard library only: every stage may
import it (it is part of the hub).
"""

from __future__ import annotations

# -- tags ----------------------------------------------------------------------------------------------

#: Every tag of ours starts with it (the report shows the version tags without it).
TAG_PREFIX = "losslab."

#: ``parent`` (one per ``lab run`` / ``lab tune``), ``child`` (one per variant x seed) or ``trial``.
ROLE_TAG = "losslab.role"
ROLE_PARENT = "parent"
ROLE_CHILD = "child"
ROLE_TRIAL = "trial"
#: ``run`` or ``tune``: which command made the parent (and the trials).
KIND_TAG = "losslab.kind"
KIND_RUN = "run"
KIND_TUNE = "tune"
#: A child's lifecycle: ``finished``, ``failed`` or ``killed`` (``running`` for a trial in flight).
STATUS_TAG = "losslab.status"
#: Why a run failed (the message the user saw, at most 5000 characters).
ERROR_TAG = "losslab.error"
#: What a pruned trial's user should know (why it stopped early).
NOTE_TAG = "losslab.note"
VARIANT_TAG = "losslab.variant"
SEED_TAG = "losslab.seed"
#: The parent's resolved experiment, hashed: ``--resume`` finds the unfinished parent of the same config.
CONFIG_HASH_TAG = "losslab.config_hash"
#: JSON lists on the parent: the variants compared and the seeds each was trained with.
VARIANTS_TAG = "losslab.variants"
SEEDS_TAG = "losslab.seeds"
# the tune parent
STUDY_TAG = "losslab.study"
STORAGE_TAG = "losslab.storage"
#: JSON lists, one entry per objective: ``maximize`` / ``minimize`` and the metric.
DIRECTIONS_TAG = "losslab.directions"
OBJECTIVES_TAG = "losslab.objectives"
#: Written by studies made before several objectives: one direction, not a list. Read, never written.
LEGACY_DIRECTION_TAG = "losslab.direction"
TRIALS_TARGET_TAG = "losslab.trials_target"
# one trial
TRIAL_TAG = "losslab.trial"
TRIAL_STATE_TAG = "losslab.trial_state"
#: The trial number a retried trial replaces (its worker died).
RETRY_OF_TAG = "losslab.retry_of"
# what made the run, on every parent
VERSION_TAG = "losslab.version"
TORCH_TAG = "losslab.torch"
CUDA_TAG = "losslab.cuda"
GIT_COMMIT_TAG = "losslab.git_commit"
VERSION_TAGS = (VERSION_TAG, TORCH_TAG, CUDA_TAG, GIT_COMMIT_TAG)
#: Set at the end of ``lab run`` from the report's analysis: its verdict in words, and the variant significantly
#: ahead of every other (else ``tied``, ``exploratory`` or ``none``).
VERDICT_TAG = "losslab.verdict"
WINNER_TAG = "losslab.winner"
#: Per task on the parent: ``losslab.first_above_floor.mask`` = the variant ranked first (by mean) among those
#: above that task's floors. Not a winner: whether it is significantly ahead is the verdict's (``losslab.winner``).
FIRST_ABOVE_FLOOR_TAG_PREFIX = "losslab.first_above_floor."
#: JSON: the variants below a floor, with the tasks.
BELOW_FLOOR_TAG = "losslab.below_floor"
#: The backgrounds held out for validation (the floors are scored on the same images).
VAL_BGS_TAG = "losslab.val_bgs"
#: ``lab run --until-decisive``: the sequential plan as JSON.
SEQUENTIAL_TAG = "losslab.sequential"
#: MLflow's own tag linking a nested run to its parent.
PARENT_ID_TAG = "mlflow.parentRunId"

# -- artifacts -----------------------------------------------------------------------------------------

#: The resolved config: every variant's on the parent, the run's own on a child or trial.
CONFIG_FILE = "config.yaml"
#: The parent's summary: monitor, mode, winner and one row per child (or trial).
SUMMARY_FILE = "summary.json"
#: A child's metrics per validation image at its best epoch.
PER_IMAGE_FILE = "val_per_image.csv"
#: The best weights' metrics per training image (train.fit_check of them), same columns as PER_IMAGE_FILE.
TRAIN_PER_IMAGE_FILE = "train_per_image.csv"
#: A few validation images with the best epoch's predictions, for the report's grid.
SAMPLES_FILE = "val_samples.npz"
#: The best epoch's mask calibration: 15 equal-width probability bins (counts, mean confidence, accuracy).
CALIBRATION_FILE = "val_calibration.json"
#: Those samples drawn as a PNG grid.
PREDICTIONS_FILE = "predictions.png"
#: Where a child's best checkpoint is logged, and the checkpoint files a run folder holds.
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
#: Where a study's Optuna plots are logged on its parent.
OPTUNA_DIR = "optuna"
#: Where the comparison report is logged on its parent.
REPORT_DIR = "report"

# -- Optuna study and trial attributes (in the Optuna storage, not MLflow) -----------------------------

#: A trial created after the budget was spent by other workers: failed at once, never counted.
SURPLUS_ATTR = "losslab.surplus"
#: ``host:pid`` of the worker running the trial (named in a dead worker's message).
WORKER_ATTR = "losslab.worker"
#: The config overrides the trial sampled, recorded at its start.
OVERRIDES_ATTR = "losslab.overrides"
#: A study attribute: its base config and seed, hashed; a study resumed with another config is refused.
CONFIG_HASH_ATTR = "losslab.config_hash"
#: The cell queue of a study's (variant, seed) cells (``core/experiment/cells.py``): the MLflow parent run's
#: id, a study attribute; and a finished cell's result (JSON), a trial attribute.
CELL_PARENT_ATTR = "losslab.parent_run_id"
#: A tune study's floors (JSON, ``floors_to_dict``), a study attribute: measured once, by the first worker.
FLOORS_ATTR = "losslab.floors"
#: A judged trial's verdict against the floors: ``{"below": [task, ...], "sentences": {task: str},
#: "margins": {task: float | None}}``, a trial attribute.
FLOOR_VERDICT_ATTR = "losslab.floor_verdict"
CELL_RESULT_ATTR = "losslab.cell_result"

# -- metrics -------------------------------------------------------------------------------------------

TRAIN_PREFIX = "train/"
#: ``val/loss``, ``val/<task>_<metric>`` (``val/mask_iou``) and ``val/<task>/<loss term>``.
VAL_PREFIX = "val/"
#: The best epoch's value of each ``val/`` metric, logged once at the end: ``best/val/mask_iou``.
BEST_PREFIX = "best/"
#: The best weights scored on ``train.fit_check`` training samples at the end of a run: ``fit/mask_iou``
#: (core/train/fit_check.py); beside ``best/val/...`` they tell a fit that does not generalize from no fit.
FIT_PREFIX = "fit/"
TIME_PREFIX = "time/"
PERF_PREFIX = "perf/"
SAMPLES_PER_S = "perf/samples_per_s"
VAL_LOSS = "val/loss"
BEST_EPOCH = "best/epoch"
EPOCH_TIME = "time/epoch_s"
TOTAL_TIME = "time/total_s"
#: What the end-of-run fit check took (core/train/fit_check.py): its cost beside time/total_s.
FIT_CHECK_TIME = "time/fit_check_s"
#: The held-out mask's expected calibration error (15 equal-width bins), each epoch.
CALIBRATION_ECE = "calib/mask_ece"
#: Per-epoch training diagnostics: ``diag/grad_norm/<task>/<term>``, ``diag/task_cosine``, ``diag/loss_share/...``.
DIAG_PREFIX = "diag/"
#: Training label noise on the parent: ``labelnoise/<variant>/<region>``, the share of the training pixels whose
#: training mask label differs from the validation truth's (core/experiment/label_noise.py; region ``all`` too).
LABEL_NOISE_PREFIX = "labelnoise/"
#: The key of those records (counts, producers, sample size) in the parent's summary.json.
LABEL_NOISE_KEY = "label_noise"
#: A trial's objective value: ``objective``, or ``objective/0``, ``objective/1``, ... with several objectives.
OBJECTIVE_METRIC = "objective"
