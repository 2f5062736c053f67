"""AlterNet's build rule as code (Park & Kim 2022, Sec. 4).

A *layout* names the block kinds of a pre-activation ResNet stage by stage: ``"CC,CC,CC"`` is the
zoo ResNet (three stages of two conv blocks), ``"CC,CM,CM"`` the zoo AlterNet (an MSA block at the
end of stages 2 and 3). Three tools turn the paper's recipe into something a reader can run:

* :func:`replace_block` and :func:`msa_positions` edit and read layouts;
* :func:`build_rule` replays the paper's search: starting from the end of the CNN, alternately
  replace conv blocks by MSA blocks; when an added MSA does not help, move it to the end of the
  stage before. It takes any scoring function of a layout, e.g. test accuracies of trained models;
* :func:`from_resnet` turns a (trained) zoo ResNet into any AlterNet variant, keeping every weight
  that still has a place and starting the new MSA blocks as the identity, so the new model computes
  the ResNet with the replaced blocks' residual branches removed until it is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..core import models

#: What :func:`build_rule` reports for each candidate layout.
OUTCOMES: tuple[str, ...] = ("start", "kept", "rejected", "unscored")


def _stages(layout: str) -> list[str]:
    return models.parse_layout(layout)


def msa_positions(layout: str) -> list[tuple[int, int]]:
    """``(stage, index)`` of every MSA block in ``layout``, in network order (both from 0)."""
    return [(s, i) for s, kinds in enumerate(_stages(layout)) for i, k in enumerate(kinds) if k == "M"]


def replace_block(layout: str, stage: int, index: int, kind: str = "M") -> str:
    """``layout`` with block ``index`` of stage ``stage`` (both from 0) made a ``kind`` block.

    Negative ``index`` counts from the end of the stage, as in Python (``-1`` is its last block).
    """
    stages = _stages(layout)
    kind = kind.upper()
    if kind not in ("C", "M"):
        raise ValueError(f"kind must be 'C' (conv block) or 'M' (MSA block), got {kind!r}")
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage {stage} does not exist in {layout!r}: choose 0..{len(stages) - 1}")
    blocks = list(stages[stage])
    if not -len(blocks) <= index < len(blocks):
        raise ValueError(f"stage {stage} of {layout!r} has {len(blocks)} blocks: index {index} is not "
                         f"in 0..{len(blocks) - 1}")
    blocks[index] = kind
    stages[stage] = "".join(blocks)
    return ",".join(stages)


Scores = Mapping[int, float]


@dataclass(frozen=True)
class Step:
    """One candidate of :func:`build_rule`: its layout, score and what the rule did with it.

    ``score`` is the layout's mean score over its seeds; ``gain`` the candidate's mean minus the
    current layout's over the ``seeds`` both have (``None`` for the start and unscored steps).
    """

    layout: str
    score: float | None
    outcome: str  # one of OUTCOMES
    reason: str
    gain: float | None = None
    seeds: tuple[int, ...] = ()


def _as_scores(value: float | Scores | None, layout: str) -> dict[int, float] | None:
    """A score as ``{seed: value}`` (a plain number counts as seed 0); ``None`` stays ``None``."""
    if value is None:
        return None
    scores = {0: float(value)} if isinstance(value, (int, float)) else {int(k): float(v) for k, v in value.items()}
    if not scores:
        return None
    bad = {k: v for k, v in scores.items() if v != v}  # NaN
    if bad:
        raise ValueError(f"score() gave NaN for layout {layout!r} (seeds {sorted(bad)})")
    return scores


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def build_rule(score: Callable[[str], float | Scores | None], base: str = models.RESNET_LAYOUT,
               min_gain: float = 0.0) -> list[Step]:
    """Replay Park & Kim's AlterNet build rule on ``base``, judging layouts with ``score``.

    Start in the last stage at its last block. A candidate replaces the conv block at the current
    position by an MSA block; it is kept when its score beats the current layout's by more than
    ``min_gain`` (higher is better), and the next candidate is two blocks earlier in the same stage
    (MSA and conv blocks alternate). When a candidate is rejected or the stage has no position left,
    the search moves to the last block of the stage before.

    ``score`` returns a number, or ``{seed: value}`` for layouts trained with several seeds; two
    layouts are then compared on the seeds both have (the mean difference over those seeds), so a
    three-seed mean never meets a single run of another seed. ``score`` returns ``None`` (or no
    seed in common with the current layout) for a layout it cannot judge, e.g. an untrained model;
    the search stops there. Returns every step, the start included; the last kept layout is the
    rule's AlterNet.
    """
    current = ",".join(_stages(base))
    best = _as_scores(score(current), current)
    if best is None:
        raise ValueError(f"score() gave no value for the base layout {current!r}")
    steps = [Step(current, _mean(best.values()), "start", "the CNN we start from")]
    stage = len(_stages(current)) - 1
    index = len(_stages(current)[stage]) - 1
    while stage >= 0:
        if index < 0 or _stages(current)[stage][index] == "M":
            stage -= 1
            index = len(_stages(current)[stage]) - 1 if stage >= 0 else -1
            continue
        candidate = replace_block(current, stage, index)
        value = _as_scores(score(candidate), candidate)
        where = f"block {index + 1} of stage {stage + 1}"
        common = tuple(sorted(set(best) & set(value))) if value is not None else ()
        if not common:
            why = "no score" if value is None else f"no seed in common with {current!r}"
            steps.append(Step(candidate, None if value is None else _mean(value.values()), "unscored",
                              f"MSA at {where}: {why}, the search stops"))
            break
        gain = _mean(value[k] for k in common) - _mean(best[k] for k in common)
        mean = _mean(value.values())
        if gain > min_gain:
            steps.append(Step(candidate, mean, "kept", f"MSA at {where} helps (+{gain:.2f})", gain, common))
            current, best, index = candidate, value, index - 2
        else:
            steps.append(Step(candidate, mean, "rejected",
                              f"MSA at {where} does not help ({gain:+.2f}): try the stage before", gain, common))
            stage -= 1
            index = len(_stages(current)[stage]) - 1 if stage >= 0 else -1
    return steps


def selected(steps: list[Step]) -> str:
    """The layout :func:`build_rule` ends with: its last kept step (or the start)."""
    return next(s.layout for s in reversed(steps) if s.outcome in ("start", "kept"))


def _is_convnet(model: nn.Module) -> bool:
    return isinstance(model, models.Classifier) and isinstance(model.net, models.PreActResNet)


def from_resnet(model: models.Classifier, layout: str, seed: int = 0,
                identity_init: bool = True) -> models.Classifier:
    """A new ``alternet`` with ``layout``, carrying over every weight of ``model`` that still fits.

    ``model`` is a zoo ``resnet`` or ``alternet`` (any layout) of the same depth per stage. The
    stem, the final norm and the head, and every block whose kind the layout keeps are copied.
    A block that turns from conv into MSA keeps the conv block's pre-activation BatchNorm and
    shortcut projection; its attention is freshly initialised (seeded by ``seed``). With
    ``identity_init`` its last 1x1 convolution starts at zero, so the block passes its shortcut
    through unchanged: the new model computes ``model`` with the residual branches of
    the replaced blocks removed, to floating-point rounding (a stage's first block keeps its
    projection shortcut, whose
    activation becomes GELU instead of ReLU, so there the match is close, not exact). A block
    that turns from MSA into conv is freshly initialised. Returns the model in eval mode.
    """
    if not _is_convnet(model):
        raise TypeError(f"from_resnet needs a zoo 'resnet' or 'alternet', got {type(model).__name__}"
                        + (f" ({model.arch!r})" if isinstance(model, models.Classifier) else ""))
    source = model.net.layout
    target = ",".join(_stages(layout))
    if [len(s) for s in _stages(source)] != [len(s) for s in _stages(target)]:
        raise ValueError(f"layout {target!r} must have the blocks per stage of {source!r} "
                         f"({', '.join(str(len(s)) for s in _stages(source))})")
    kwargs = dict(getattr(model, "build_kwargs", {}))
    kwargs["layout"] = target
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = models.build("alternet", **kwargs)
    new.to(next(model.parameters()).device)
    new.normalize.load_state_dict(model.normalize.state_dict())
    new.net.stem.load_state_dict(model.net.stem.state_dict())
    new.net.norm.load_state_dict(model.net.norm.state_dict())
    new.net.head.load_state_dict(model.net.head.state_dict())
    for s, (old_kinds, new_kinds) in enumerate(zip(_stages(source), _stages(target))):
        for i, (old, kind) in enumerate(zip(old_kinds, new_kinds)):
            src, dst = model.net.stages[s][i], new.net.stages[s][i]
            if old == kind:
                dst.load_state_dict(src.state_dict())
            elif kind == "M":  # conv -> MSA: keep the pre-activation and the shortcut
                dst.norm.load_state_dict(src.norm1.state_dict())
                if src.downsample is not None:
                    dst.downsample.load_state_dict(src.downsample.state_dict())
                if identity_init:
                    nn.init.zeros_(dst.up.weight)
    return models.use_fused_attention(new, False).eval()
