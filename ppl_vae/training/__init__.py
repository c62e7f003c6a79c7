"""fit: stochastic variational inference on any Pyro program, and everything it needs
(config, data feeds, engines, the traced step, schedules, checkpoints, run folders, trackers)."""

from .batching import Feed, LoaderFeed, TensorFeed, as_batch, cast_batch, check_finite, make_feed
from .checkpoint import (
    FORMAT,
    CheckpointError,
    RunLock,
    load_checkpoint,
    read_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
    write_text,
)
from .config import RESUMABLE, FitConfig, check_config, kl_warmup
from .engines import (
    ENGINES,
    DistributedEngine,
    FastEngine,
    NonFiniteLoss,
    SVIEngine,
    bound_terms,
    mean_loss,
    negative_bound,
)
from .preflight import cast, check_data, discover, feeds, first_trace, split_arguments
from .schedules import SCHEDULES, Schedule, iwae_factor
from .signals import Terminated
from .state import FitResult, TrainState
from .traced import MODES, TracedStep
from .trackers import TRACKERS, CSVTracker, MLflowTracker, TensorBoardTracker, Tracker, make
from .trainer import fit

__all__ = [
    "CSVTracker",
    "CheckpointError",
    "DistributedEngine",
    "ENGINES",
    "FORMAT",
    "FastEngine",
    "Feed",
    "FitConfig",
    "FitResult",
    "LoaderFeed",
    "MLflowTracker",
    "MODES",
    "NonFiniteLoss",
    "RESUMABLE",
    "RunLock",
    "SCHEDULES",
    "SVIEngine",
    "Schedule",
    "TRACKERS",
    "TensorBoardTracker",
    "TensorFeed",
    "Terminated",
    "TracedStep",
    "Tracker",
    "TrainState",
    "as_batch",
    "bound_terms",
    "cast",
    "cast_batch",
    "check_config",
    "check_data",
    "check_finite",
    "discover",
    "feeds",
    "first_trace",
    "fit",
    "iwae_factor",
    "kl_warmup",
    "load_checkpoint",
    "make",
    "make_feed",
    "mean_loss",
    "negative_bound",
    "read_json",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "split_arguments",
    "write_json",
    "write_text",
]
