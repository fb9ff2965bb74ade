"""Which position a loader resumes from: its own saved state, or (map-style) the saved states of
every data rank of a run on another data-parallel size.

A map-style epoch's plan is global: micro-batch ``m`` goes to rank ``m % dp_size``. After rank
``r`` has handed out ``p_r`` micro-batches, the ranks together consumed the first
``G = sum(p_r)`` global micro-batches of the epoch (a prefix whenever the ranks move in step, as
they do in training). A loader whose global plan is the same (same data, seed, micro-batch size,
sequence length, packing, and global batch ``dp_size * grad_accum`` in micro-batches) continues
at local position ``G / dp_size``: its ranks deal the next global micro-batches exactly as the old
ranks would have. Streaming shards records over ``dp_size * workers``, so a streaming state
resumes only on the layout it was saved on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from mm_core.errors import ConfigError

STATE_VERSIONS = (1,)
# the layout fields that fix the global map-style plan (plan_key: the data and sampler settings)
SAME_PLAN = ("seed", "micro_batch_size", "seq_len", "packing", "plan_key")


def _check_version(state: Mapping[str, Any]) -> None:
    version = state.get("version")
    if "position" not in state or "layout" not in state:
        raise ConfigError(f"not a data loader state (keys {sorted(state)}): the saved data position comes from "
                          "another data source (e.g. data.source=synthetic); resume with that source, or start "
                          "a new run from the checkpoint's weights")
    if version not in STATE_VERSIONS:
        raise ConfigError(f"data loader state version {version!r} is not one this loader reads {STATE_VERSIONS}; "
                          "resume it with the mm version that saved it, or start the data from the beginning")


def _diff(saved: Mapping[str, Any], mine: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}: saved {saved.get(k)} vs now {mine.get(k)}" for k in keys if saved.get(k) != mine.get(k))


def resume_position(saved: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                    mine: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(position, bad-record stats)`` for the loader whose layout is ``mine``.

    ``saved`` is one rank's ``state_dict()`` or the list of every saved data rank's, in rank
    order (needed to move a run saved on more than one data rank to another ``dp_size``).
    """
    states = [saved] if isinstance(saved, Mapping) else list(saved)
    if not states:
        raise ConfigError("no data loader state to resume from (an empty list of rank states)")
    for s in states:
        _check_version(s)
    first = states[0].get("layout", {})
    n, new = first.get("dp_size"), mine["dp_size"]
    if n == new:  # the same data-parallel size: this rank's own state, every setting unchanged
        own = states[0] if len(states) == 1 else states[mine["dp_rank"]] if len(states) == n else None
        if own is None:
            raise ConfigError(f"got {len(states)} data loader states for dp_size={n}: pass this rank's state "
                              f"or all {n} in rank order")
        layout = own.get("layout", {})
        keys = [k for k in mine if k != "plan_key" or "plan_key" in layout]  # states before plan_key lack it
        diff = _diff(layout, mine, keys)
        if diff:
            raise ConfigError(f"data loader state does not match this run's layout {diff}")
        return dict(own["position"]), dict(own.get("bad_records", {}))
    what = f"a data loader state saved at dp_size={n} cannot resume at dp_size={new}"
    if first.get("streaming") or mine["streaming"]:
        raise ConfigError(f"{what}: streaming shards records over dp_size x dataloader workers, so its position "
                          f"exists only on that layout; resume with dp_size={n} (streaming={first.get('streaming')} "
                          f"saved, {mine['streaming']} now), or use map-style loading (basic_parameters.streaming="
                          "false) to change the data-parallel size")
    if len(states) != n:
        raise ConfigError(f"{what} from {len(states)} rank state(s): pass the states of all {n} saved data ranks "
                          "in rank order")
    keys = [k for k in SAME_PLAN if k != "plan_key" or "plan_key" in first]
    for r, s in enumerate(states):
        layout = s.get("layout", {})
        if layout.get("dp_rank") != r or layout.get("dp_size") != n or _diff(layout, first, keys):
            raise ConfigError(f"{what}: state {r} of the list is not rank {r} of the same run "
                              f"(its layout: {layout})")
    diff = _diff(first, mine, keys)
    if diff:
        raise ConfigError(f"{what}: the global micro-batch plan differs ({diff}); resume with the saved "
                          "data and settings, or start the data from the beginning")
    if n * first.get("grad_accum", 1) != new * mine["grad_accum"]:
        raise ConfigError(f"{what}: the global batch differs (saved dp_size x grad_accum = {n} x "
                          f"{first.get('grad_accum')}, now {new} x {mine['grad_accum']}); keep dp_size x grad_accum "
                          f"= {n * first.get('grad_accum', 1)} micro-batches per step")
    positions = [s["position"] for s in states]
    epochs = {p.get("epoch") for p in positions}
    if len(epochs) != 1 or any(p.get("mode") != "map" for p in positions):
        raise ConfigError(f"{what}: the saved ranks are in different epochs {[p.get('epoch') for p in positions]}")
    counts = [int(p["position"]) for p in positions]
    consumed = sum(counts)
    if counts != [-(-(consumed - r) // n) for r in range(n)]:
        raise ConfigError(f"{what}: the saved ranks stopped at uneven positions {counts}, which are not the first "
                          f"{consumed} global micro-batches; resume with dp_size={n}")
    if consumed % new:
        raise ConfigError(f"{what}: {consumed} global micro-batches of epoch {epochs.pop()} were consumed, which "
                          f"{new} ranks cannot split evenly; resume with dp_size={n} or from a checkpoint taken at a "
                          "global-batch boundary")
    counter: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for r, s in enumerate(states):  # saved rank r's skip counts go to new rank r % dp_size
        if r % new == mine["dp_rank"]:
            bad = s.get("bad_records", {})
            counter.update(bad.get("counts", {}))
            for reason, ex in bad.get("examples", {}).items():
                examples[reason] = (examples.get(reason, []) + list(ex))[:5]
    position = {"mode": "map", "epoch": epochs.pop(), "position": consumed // new}
    return position, {"counts": dict(counter), "examples": examples}
