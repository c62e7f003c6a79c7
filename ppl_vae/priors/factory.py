"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape (z_dim,)."""

from __future__ import annotations

from torch import nn

from ppl_vae.priors.flow import FlowPrior
from ppl_vae.priors.mixture import MixturePrior
from ppl_vae.priors.normal import NormalPrior
from ppl_vae.priors.polymodal import PolymodalPrior
from ppl_vae.priors.vamp import VampPrior

__all__ = ["PRIORS", "make_prior"]


PRIORS = ("normal", "mixture", "vamp", "flow", "polymodal")


def make_prior(name: str, z_dim: int, **options: object) -> nn.Module:
    """Build the prior called ``name`` (one of :data:`PRIORS`) over ``z_dim`` dimensions.

    Options that a prior does not use are ignored, so the CLI can pass all of its prior flags:
    ``components`` (mixture), ``encoder``, ``x_dim``, ``pseudo_inputs``, ``pseudo_init``
    (vamp), ``flow_layers``, ``flow_type``, ``flow_hidden`` (flow), ``modes`` (polymodal).
    An option given as ``None`` takes the prior's default.

    >>> make_prior("mixture", 2, components=3, flow_layers=9).components
    3
    """
    opts = {k: v for k, v in options.items() if v is not None}
    if name == "normal":
        return NormalPrior(z_dim)
    if name == "mixture":
        return MixturePrior(z_dim, components=int(opts.get("components", 10)))
    if name == "vamp":
        if "encoder" not in opts or "x_dim" not in opts:
            raise ValueError("the VampPrior needs the guide's encoder=... and x_dim=...")
        return VampPrior(
            opts["encoder"],  # type: ignore[arg-type]
            int(opts["x_dim"]),  # type: ignore[call-overload]
            pseudo_inputs=int(opts.get("pseudo_inputs", 500)),  # type: ignore[call-overload]
            init=opts.get("pseudo_init"),  # type: ignore[arg-type]
        )
    if name == "flow":
        return FlowPrior(
            z_dim,
            flow_layers=int(opts.get("flow_layers", 4)),  # type: ignore[call-overload]
            flow_type=str(opts.get("flow_type", "affine-coupling")),
            hidden=opts.get("flow_hidden"),  # type: ignore[arg-type]
        )
    if name == "polymodal":
        return PolymodalPrior(z_dim, modes=int(opts.get("modes", 3)))  # type: ignore[call-overload]
    raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
