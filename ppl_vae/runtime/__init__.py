"""What every layer runs on: torch.distributed process groups, fast elementwise kernels,
the compiler check, and parameters a trainer already holds. Imports nothing of ppl_vae."""

from .compiler import compiler_available, quiet_inductor
from .distributed import (
    World,
    agree,
    broadcast_object,
    broadcast_tensors,
    gather_objects,
    init_from_env,
    join,
    leave,
    on_root,
    rank_seed,
    shard_rows,
    sum_all,
    world,
)
from .kernels import (
    FastBernoulli,
    Softplus,
    bernoulli,
    flush_denormals,
    flushing_denormals,
    fused_elementwise,
    softplus,
)
from .params import RegisteredParams, parameters_held

__all__ = [
    "FastBernoulli",
    "RegisteredParams",
    "Softplus",
    "World",
    "agree",
    "bernoulli",
    "broadcast_object",
    "broadcast_tensors",
    "compiler_available",
    "flush_denormals",
    "flushing_denormals",
    "fused_elementwise",
    "gather_objects",
    "init_from_env",
    "join",
    "leave",
    "on_root",
    "parameters_held",
    "quiet_inductor",
    "rank_seed",
    "shard_rows",
    "softplus",
    "sum_all",
    "world",
]
