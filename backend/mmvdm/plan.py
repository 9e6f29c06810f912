"""The MMVDM inference schedule (paper §4 "Sampling", S2.3, Fig. S10/S11): which views and frames each
diffusion pass generates, what it is conditioned on, and in which order the passes run.

For a :class:`~backend.cameras.CameraRing` and F = 1 + 4k output frames per view:

1. **Window 0** (output frames 0 … min(F, 49) − 1, at most 13 latent frames):

   * ``w0-key`` — **mode 1**: all key views jointly, conditioned on the reference image only,
     ``steps_key`` (100) DDIM steps.
   * ``w0-cNN`` — **mode 2**, one pass per cluster of (up to) 4 non-key views: the cluster's views are
     generated jointly with its (up to) 4 nearest key views (``ring.cluster_keys``) given as clean
     reference videos (the key pass's latents of the same window), ``steps_other`` (50) steps.

2. **Extension n ≥ 1** (sliding window, paper: "extend … by 40 output frames with the last nine output
   frames as reference"; Table S14 iterates it): window = the last 9 already generated output frames
   (3 latent frames, given clean) + up to 40 new frames (10 latent frames); the last extension may be
   shorter (still 1 + 4k frames because F − 49 is a multiple of 4).

   * ``wN-key`` — **mode 3**: all key views jointly, their own last 9 frames clean, ``steps_key``.
   * ``wN-cNN`` — **mode 4**: each cluster, conditioned on its 4 nearest key views' videos of this
     window (the ``wN-key`` result: 9 context + new frames, all clean) and its own last 9 frames,
     ``steps_other``.

So 49 frames = window 0 only; 89 = window 0 + 1 extension; 129 = + 2; 57 = window 0 + one 8-frame
extension. Every view receives every output frame exactly once (context frames are inputs, not
outputs). ``depends_on`` lists the passes whose *outputs* a pass reads (data dependencies only): a
cluster pass needs the key pass of its window and its own previous window; a key extension needs the
previous key pass. Clusters of one window are independent of each other and of the next key
extension — units of work for several GPUs (docs/design.md, "Scale beyond one GPU"). The returned list
is in an executable order (key pass, then its clusters, window by window).

Window sizes are parameters (``window_frames``, ``context_frames``) so tests can exercise extensions
with tiny windows; the product uses the paper's 49 / 9.

``python -m backend plan --preset 120 [--frames 89] [--json]`` prints a preset's plan (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..errors import EXIT_ERROR, MVP4DError, bad_input

__all__ = [
    "WINDOW_FRAMES",
    "CONTEXT_FRAMES",
    "TEMPORAL_COMPRESSION",
    "Pass",
    "build_plan",
    "validate_ring",
    "check_plan",
    "describe_plan",
    "plan_to_json",
    "plan_from_json",
    "latent_count",
    "main",
]

#: output frames of one MMVDM window (13 latent frames; CogVideoX-2B's 49)
WINDOW_FRAMES = 49
#: output frames of the same views given clean when extending (3 latent frames)
CONTEXT_FRAMES = 9
#: output frames per latent frame after the first
TEMPORAL_COMPRESSION = 4


def latent_count(num_frames: int) -> int:
    """Latent frames of a video of ``num_frames`` = 1 + 4k output frames (1 + k)."""
    return 1 + (int(num_frames) - 1) // TEMPORAL_COMPRESSION


def _check_frames(n: Any, what: str, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum or (n - 1) % TEMPORAL_COMPRESSION:
        raise bad_input(f"{what} must be 1 + 4k frames (1, 5, 9, …, 49, 89, …), got {n!r}",
                        "Use a frame count of the form 1 + 4k, e.g. 49 or 89.")
    return n


@dataclass
class Pass:
    """One diffusion sampling run of the MMVDM.

    ``views``: ring view indices generated (and checkpointed) by this pass. ``frames``: output frames
    generated, ``[start, stop)``. ``reference_views``: other views given as clean videos over the whole
    window (mode 2/4). ``context_frames``: output frames of ``views`` themselves given clean (mode 3/4),
    always the frames just before ``frames[0]``. The pass's window — the video the model sees for every
    view — is ``context_frames + range(*frames)``.
    """

    id: str
    mode: int
    views: list[int]
    frames: tuple[int, int]
    reference_views: list[int] = field(default_factory=list)
    context_frames: list[int] = field(default_factory=list)
    steps: int = 50
    depends_on: list[str] = field(default_factory=list)
    window_index: int = 0

    @property
    def window(self) -> tuple[int, int]:
        """Output frames ``[start, stop)`` of the video the model sees (context + generated)."""
        start = self.context_frames[0] if self.context_frames else self.frames[0]
        return (start, self.frames[1])

    @property
    def num_window_frames(self) -> int:
        return self.window[1] - self.window[0]

    @property
    def num_latent_frames(self) -> int:
        return latent_count(self.num_window_frames)

    @property
    def num_context_latent_frames(self) -> int:
        return latent_count(len(self.context_frames)) if self.context_frames else 0

    @property
    def all_views(self) -> list[int]:
        """Views in the order the model sees them: clean reference views first, then generated views."""
        return list(self.reference_views) + list(self.views)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["frames"] = list(self.frames)
        d["window"] = list(self.window)
        d["latent_frames"] = self.num_latent_frames
        d["context_latent_frames"] = self.num_context_latent_frames
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Pass":
        return cls(id=str(d["id"]), mode=int(d["mode"]), views=[int(v) for v in d["views"]],
                   frames=(int(d["frames"][0]), int(d["frames"][1])),
                   reference_views=[int(v) for v in d.get("reference_views", [])],
                   context_frames=[int(f) for f in d.get("context_frames", [])], steps=int(d["steps"]),
                   depends_on=[str(x) for x in d.get("depends_on", [])], window_index=int(d.get("window_index", 0)))


# ---------------------------------------------------------------------------------------------
# ring checks
# ---------------------------------------------------------------------------------------------


def validate_ring(ring) -> None:
    """Raise ``BAD_INPUT`` unless the ring's key views and clusters are consistent.

    Needed: at least one view; key views unique, in range and no more than the views; clusters
    non-empty, made of non-key views, disjoint and covering every non-key view; one ``cluster_keys``
    entry per cluster, each a non-empty list of key views.
    """
    hint = "Rebuild the camera ring (CameraRing.from_cameras or a preset) so keys and clusters agree."
    n = len(ring.cameras)
    keys = list(ring.key_indices)
    if n == 0:
        raise bad_input("the camera ring has no views", hint)
    if not keys:
        raise bad_input("the camera ring has no key views", hint)
    if len(keys) > n:
        raise bad_input(f"the camera ring has {n} views but {len(keys)} key views", hint)
    if len(set(keys)) != len(keys) or any(not (0 <= k < n) for k in keys):
        raise bad_input(f"the camera ring's key views {keys} are not distinct view indices in 0..{n - 1}", hint)
    keyset = set(keys)
    seen: set[int] = set()
    for c, members in enumerate(ring.clusters):
        if not members:
            raise bad_input(f"cluster {c} of the camera ring is empty", hint)
        for v in members:
            if not (0 <= v < n):
                raise bad_input(f"cluster {c} names view {v}, but the ring has {n} views", hint)
            if v in keyset:
                raise bad_input(f"cluster {c} contains key view {v}", hint)
            if v in seen:
                raise bad_input(f"view {v} is in more than one cluster", hint)
            seen.add(v)
    missing = sorted(set(range(n)) - keyset - seen)
    if missing:
        raise bad_input(f"views {missing} are neither key views nor in a cluster", hint)
    if len(ring.cluster_keys) != len(ring.clusters):
        raise bad_input(f"the ring has {len(ring.clusters)} clusters but {len(ring.cluster_keys)} cluster_keys", hint)
    for c, ck in enumerate(ring.cluster_keys):
        if not ck or any(k not in keyset for k in ck) or len(set(ck)) != len(ck):
            raise bad_input(f"cluster {c}'s nearest key views {list(ck)} are not distinct key views", hint)


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


def _windows(num_frames: int, window_frames: int, context_frames: int) -> list[tuple[list[int], tuple[int, int]]]:
    """[(context output frames, (gen start, gen stop))] for window 0 and every extension."""
    first = min(num_frames, window_frames)
    out: list[tuple[list[int], tuple[int, int]]] = [([], (0, first))]
    start = first
    step = window_frames - context_frames
    while start < num_frames:
        stop = min(start + step, num_frames)
        out.append((list(range(start - context_frames, start)), (start, stop)))
        start = stop
    return out


def build_plan(
    ring,
    num_frames: int,
    steps_key: int = 100,
    steps_other: int = 50,
    *,
    window_frames: int = WINDOW_FRAMES,
    context_frames: int = CONTEXT_FRAMES,
) -> list[Pass]:
    """The passes that generate every view of ``ring`` for ``num_frames`` output frames, in executable
    order (see the module docstring). Raises ``BAD_INPUT`` for frame counts not 1 + 4k or an
    inconsistent ring."""
    num_frames = _check_frames(num_frames, "the number of frames per view")
    window_frames = _check_frames(window_frames, "window_frames")
    context_frames = _check_frames(context_frames, "context_frames")
    if context_frames >= window_frames:
        raise bad_input(f"context_frames ({context_frames}) must be smaller than window_frames ({window_frames})")
    for name, s in (("steps_key", steps_key), ("steps_other", steps_other)):
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise bad_input(f"{name} must be a positive integer, got {s!r}")
    validate_ring(ring)
    keys = list(ring.key_indices)
    plan: list[Pass] = []
    for n, (ctx, frames) in enumerate(_windows(num_frames, window_frames, context_frames)):
        key_id = f"w{n}-key"
        plan.append(Pass(
            id=key_id, mode=1 if n == 0 else 3, views=keys, frames=frames, reference_views=[],
            context_frames=list(ctx), steps=steps_key, depends_on=[] if n == 0 else [f"w{n - 1}-key"],
            window_index=n,
        ))
        for c, (members, ck) in enumerate(zip(ring.clusters, ring.cluster_keys)):
            deps = [key_id] + ([] if n == 0 else [f"w{n - 1}-c{c:02d}"])
            plan.append(Pass(
                id=f"w{n}-c{c:02d}", mode=2 if n == 0 else 4, views=list(members), frames=frames,
                reference_views=list(ck), context_frames=list(ctx), steps=steps_other, depends_on=deps,
                window_index=n,
            ))
    return plan


def check_plan(plan: Sequence[Pass], num_views: int, num_frames: int) -> None:
    """Raise ``INTERNAL`` unless every (view, frame) is generated exactly once, every pass's inputs
    (reference views over its window, its own context frames) are produced by passes listed in
    ``depends_on`` (directly or transitively) that come earlier, and windows are 1 + 4k frames."""
    def fail(msg: str) -> MVP4DError:
        return MVP4DError("INTERNAL", f"inconsistent MMVDM plan: {msg}")

    produced: dict[tuple[int, int], str] = {}
    index = {p.id: i for i, p in enumerate(plan)}
    if len(index) != len(plan):
        raise fail("duplicate pass ids")
    closure: dict[str, set[str]] = {}
    for i, p in enumerate(plan):
        deps: set[str] = set()
        for d in p.depends_on:
            if d not in index or index[d] >= i:
                raise fail(f"{p.id} depends on {d}, which does not run before it")
            deps |= {d} | closure[d]
        closure[p.id] = deps
        if (p.num_window_frames - 1) % TEMPORAL_COMPRESSION:
            raise fail(f"{p.id}: window of {p.num_window_frames} frames is not 1 + 4k")
        needed = [(v, f) for v in p.reference_views for f in range(*p.window)]
        needed += [(v, f) for v in p.views for f in p.context_frames]
        for v, f in needed:
            src = produced.get((v, f))
            if src is None or src not in deps:
                raise fail(f"{p.id} needs view {v} frame {f}, not produced by its dependencies")
        for v in p.views:
            for f in range(*p.frames):
                if (v, f) in produced:
                    raise fail(f"view {v} frame {f} generated by {produced[(v, f)]} and {p.id}")
                produced[(v, f)] = p.id
    missing = [(v, f) for v in range(num_views) for f in range(num_frames) if (v, f) not in produced]
    if missing:
        raise fail(f"{len(missing)} (view, frame) pairs never generated, e.g. {missing[0]}")


def plan_to_json(plan: Sequence[Pass]) -> dict[str, Any]:
    """JSON-ready description: the passes (with window and latent counts) and totals."""
    views = sorted({v for p in plan for v in p.views})
    frames = max((p.frames[1] for p in plan), default=0)
    return {
        "num_passes": len(plan),
        "num_views": len(views),
        "num_frames": frames,
        "num_windows": 1 + max((p.window_index for p in plan), default=0),
        "total_steps": sum(p.steps for p in plan),
        "passes": [p.to_json() for p in plan],
    }


def plan_from_json(d: dict[str, Any]) -> list[Pass]:
    return [Pass.from_json(p) for p in d["passes"]]


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(xs)
    if not xs:
        return "-"
    parts, start, prev = [], xs[0], xs[0]
    for x in xs[1:]:
        if x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = x
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def describe_plan(plan: Sequence[Pass], ring=None) -> str:
    """A human-readable table of the plan (view names from ``ring`` when given)."""
    def names(vs: Sequence[int]) -> str:
        if ring is None or len(vs) > 4:
            return _ranges(vs) if len(vs) > 4 else ",".join(str(v) for v in vs) or "-"
        return ",".join(ring.cameras[v].name for v in vs) or "-"

    head = f"{'pass':<8} {'mode':>4} {'steps':>5} {'frames':>9} {'ctx':>7} {'lat':>3}  {'views':<30} {'references':<30} depends on"
    lines = [head, "-" * len(head)]
    for p in plan:
        ctx = f"{p.context_frames[0]}-{p.context_frames[-1]}" if p.context_frames else "-"
        lines.append(
            f"{p.id:<8} {p.mode:>4} {p.steps:>5} {f'{p.frames[0]}-{p.frames[1] - 1}':>9} {ctx:>7} "
            f"{p.num_latent_frames:>3}  {names(p.views):<30} {names(p.reference_views):<30} "
            f"{','.join(p.depends_on) or '-'}"
        )
    j = plan_to_json(plan)
    n_key = sum(1 for p in plan if p.mode in (1, 3))
    lines.append("")
    lines.append(f"{j['num_passes']} passes ({n_key} key, {j['num_passes'] - n_key} cluster) over {j['num_windows']} "
                 f"window(s); {j['num_views']} views x {j['num_frames']} frames; {j['total_steps']} DDIM steps in all")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI: python -m backend plan
# ---------------------------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from ..protocol import PRESETS

    p = parser or argparse.ArgumentParser(prog="python -m backend plan",
                                          description="print the MMVDM sampling plan of a preset ring")
    p.add_argument("--preset", default="120", choices=list(PRESETS), help="camera ring and quality preset")
    p.add_argument("--frames", type=int, default=None, help="frames per view, 1 + 4k (default: the preset's)")
    p.add_argument("--steps-key", type=int, default=100, help="DDIM steps of key-view passes (modes 1, 3)")
    p.add_argument("--steps-other", type=int, default=50, help="DDIM steps of cluster passes (modes 2, 4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    from ..cameras import ring_preset
    from ..events import EventSink
    from ..protocol import PRESETS

    try:
        ring = ring_preset(args.preset)
        frames = PRESETS[args.preset].num_frames if args.frames is None else args.frames
        plan = build_plan(ring, frames, args.steps_key, args.steps_other)
        check_plan(plan, len(ring), frames)
    except MVP4DError as e:
        EventSink(None, stream=sys.stderr).error(e)
        return EXIT_ERROR
    if args.json:
        d = plan_to_json(plan)
        d["preset"] = args.preset
        d["views"] = [{"index": i, "name": c.name, "key": i in ring.key_indices} for i, c in enumerate(ring.cameras)]
        print(json.dumps(d, indent=2))
    else:
        print(f"preset {args.preset}: {len(ring)} views ({len(ring.key_indices)} key, {len(ring.clusters)} "
              f"clusters), {frames} frames")
        print(describe_plan(plan, ring))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m backend plan --preset 120|360|tiny|preview [--frames N] [--json]``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
