"""What a pass needs beyond the model: sample inputs, a metric, facts about the target.

The :class:`~graphpress.passes.manager.PassManager` hands every pass of a run the same
:class:`PassContext` (``pass_.context``), filled the same way by ``graphpress optimize``,
``graphpress compile`` and the Python API, instead of each caller setting attributes on the
passes that happen to want data. Passes never read the host machine and never import
backends: what a pass may know about where the model will run is a :class:`TargetFacts`
record that a backend (or the user) fills.

Example::

    ctx = PassContext(samples=[{"x": batch} for batch in loader], metric=my_accuracy)
    PassManager(build_passes("quantize:tolerance=0.01"), context=ctx).run(model)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["PassContext", "TargetFacts"]


@dataclasses.dataclass(frozen=True)
class TargetFacts:
    """What a pass may know about the machine the model will run on.

    Attributes:
        name: ``onnxruntime``, ``x86``, ``aarch64``, ``cuda`` (free text for reports).
        int8_dot_product: the target multiplies uint8 by int8 into int32 without saturating
            (x86 VNNI/AMX, Arm dot product); ``False`` asks quantizers for 7-bit weights
            (``reduce_range``); ``None``: unknown.
    """

    name: str = "onnxruntime"
    int8_dot_product: bool | None = None


@dataclasses.dataclass
class PassContext:
    """Inputs of a pass run beyond the model.

    Attributes:
        samples: sample inputs (feed dicts: input name -> array), for calibration, activation
            statistics and accuracy checks; ``None``: passes make their own from the declared
            input shapes (demo quality) and say so in their stats.
        samples_source: where ``samples`` came from, for reports.
        metric: a model's accuracy, higher is better (``quantize`` accuracy control); ``None``:
            the lowest output cosine to the model the pass received.
        target: where the model will run; ``None``: unknown (target-dependent choices take
            the portable default).
    """

    samples: Sequence[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray] | None = None
    samples_source: str = "given"
    metric: Callable[[ir.Model], float] | None = None
    target: TargetFacts | None = None

    def __post_init__(self) -> None:
        if self.samples is not None:
            from graphpress.ir.numeric import as_samples

            self.samples = as_samples(self.samples)

    def feeds(self, model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
        """One sample: the first given, or one made from the declared input shapes."""
        from graphpress.ir.numeric import make_inputs

        return dict(self.samples[0]) if self.samples else make_inputs(model, seed=seed)

    def calibration(self, model: ir.Model, count: int, seed: int = 0) -> tuple[list[dict[str, Any]], bool]:
        """Calibration samples and whether they were generated (``count`` of them, seeds ``seed``...)."""
        from graphpress.ir.numeric import make_inputs

        if self.samples:
            return [dict(s) for s in self.samples], False
        return [make_inputs(model, seed=seed + i) for i in range(count)], True
