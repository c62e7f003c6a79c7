"""What a checkpoint holds once: a module two parts of the program share, and the best epoch's
weights where they equal the current ones (the staged runs in benchmarks/trained/ commit one
checkpoint per session, so every copy is paid for in the repository)."""

from __future__ import annotations

import io

import torch

from ppl_vae import build_vae, fit
from ppl_vae.program import as_program
from ppl_vae.training.checkpoint import load_checkpoint, share_equal


def _bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_tensors(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[prefix + key] = value
    return out


def test_a_shared_encoder_is_copied_and_saved_once():
    """The VampPrior registers the guide's encoder as its own submodule: the state lists it
    under both names, one tensor each, and torch.save writes it once."""
    torch.manual_seed(0)
    vae = build_vae(20, z_dim=3, hidden=(16,), prior="vamp", pseudo_inputs=4, guide="flow")
    state = as_program(vae).state_dict()
    tensors = _tensors(state)
    for name, value in tensors.items():
        if ".prior.encoder." in name:
            assert value is tensors[name.replace(".prior.encoder.", ".encoder.")], name
    separate = {k: v.clone() for k, v in tensors.items()}
    own = sum(
        v.numel() * v.element_size() for k, v in tensors.items() if ".prior.encoder." not in k
    )
    assert _bytes(state) < own + 20_000 < _bytes(separate), (_bytes(state), own)
    restored = as_program(
        build_vae(20, z_dim=3, hidden=(16,), prior="vamp", pseudo_inputs=4, guide="flow")
    )
    restored.load_state_dict(state)
    again = _tensors(restored.state_dict())
    assert all(torch.equal(again[k], v) for k, v in tensors.items())


def test_share_equal_replaces_only_equal_tensors():
    current = {"a": torch.ones(3), "b": {"c": torch.zeros(2)}, "d": torch.ones(2)}
    best = {"a": torch.ones(3), "b": {"c": torch.ones(2)}, "d": torch.ones(2, dtype=torch.float64)}
    shared = share_equal(best, current)
    assert shared["a"] is current["a"]  # equal: the current tensor, saved once
    assert shared["b"]["c"] is best["b"]["c"] and shared["d"] is best["d"]  # differ, or dtype


def test_the_best_epochs_weights_cost_nothing_where_they_equal_the_current(tmp_path):
    """With patience, the checkpoint keeps the best epoch's weights beside the current ones:
    after an epoch that was the best they are the same tensors in the file (and a flow guide's
    masks always are), and a resumed run still ends on the best epoch's weights."""
    torch.manual_seed(0)
    data = torch.bernoulli(torch.full((200, 20), 0.3))
    vae = build_vae(20, z_dim=3, hidden=(16,), guide="flow")
    result = fit(vae, data[:150], data[150:], epochs=2, patience=5, out=tmp_path, progress=False)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    program, best = _tensors(saved["program"]), _tensors(saved["train"]["best_state"])
    assert set(program) == set(best)
    last_was_best = result.history[-1]["val_loss"] == result.best_val_loss
    for name, value in best.items():
        same = value.data_ptr() == program[name].data_ptr()  # one storage in the file
        assert same == (last_was_best or name.endswith((".mask", ".permutation"))), name
    extra = _bytes(saved) - _bytes({**saved, "train": {**saved["train"], "best_state": None}})
    assert extra < _bytes(saved["program"]) * (0.1 if last_was_best else 1.0), extra
