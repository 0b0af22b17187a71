"""The vocabulary every face shares: bank kinds, metric names and the methods' choices, with no torch to import.

`melbo_tui.bank` re-exports the first two, `ortho` and `calibrate` their enums; the explorer
imports them from here before its first frame and the CLI to build its help, when importing
torch would cost seconds.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melbo_tui.sink import SinkRule


class BankKind(StrEnum):
    """How a bank was made; decides what its base row means and which KL is worth reading."""

    MELBO = "melbo"  # `train`: every row is its own vector of norm R; row 0 is not special
    ORTHO = "ortho"  # `ortho`: row 0 = theta0, rows 1.. orthogonal vectors with its effect
    IMPORTED = "imported"  # a seed .pt file: laid out like an ortho bank
    DCT = "dct"  # `dct`: Deep Causal Transcoding factors, ranked
    JACOBIAN = "jacobian"  # `jacobian`: top right singular directions of the source->target Jacobian

    @property
    def has_base(self) -> bool:
        """Whether row `base_index` is a reference the other rows imitate (KL to it means something)."""
        return self in (BankKind.ORTHO, BankKind.IMPORTED)


class Metric(StrEnum):
    """Per-vector numbers a bank can store, one float32 `[N]` tensor each (nats for every KL).

    `P_i` is the model's next-token distribution steered by row i, `P_base` by the base row,
    `P_unsteered` with no vector; all at the last prompt position unless said otherwise.
    """

    KL = "kl"  # KL(P_i || P_base): what the seed's code computes
    KL_REV = "kl_rev"  # KL(P_base || P_i): what the seed's plot title says
    KL_SEQ = "kl_seq"  # mean over N positions of KL(P_base || P_i), teacher-forced along the base's greedy continuation
    KL_UNSTEERED = "kl_unsteered"  # KL(P_i || P_unsteered): how much the vector changes the next token
    ERR = "err"  # target-layer RMS error to the base over the compared positions, / that of no steering
    NORM = "norm"  # ||theta_i||
    COS_BASE = "cos_base"  # cos(theta_i, theta_base)
    SCORE = "score"  # DCT: alpha_l^2, the factor's share of the fitted response
    SIGMA = "sigma"  # Jacobian: the singular value of the direction

    @property
    def needs_model(self) -> bool:
        """Norm and cosine come from the vectors alone; the rest need forward passes."""
        return self not in (Metric.NORM, Metric.COS_BASE, Metric.SCORE, Metric.SIGMA)


def default_kl(kind: BankKind) -> Metric:
    """The KL column that does not mislead: to the base where there is one, else to no steering."""
    return Metric.KL_SEQ if kind.has_base else Metric.KL_UNSTEERED


class Strategy(StrEnum):
    FAST = "fast"  # L-BFGS on cached source-layer activations
    SEQUENTIAL = "sequential"  # the seed's Adam loop on the full forward pass


class Objective(StrEnum):
    """What "reproduces theta0" means at the target layer (`melbo_tui.ortho`'s docstring says why each)."""

    TOKENS = "tokens"  # per-position match: mean_t ||Z_t(theta) - Z_t(theta0)||^2 over the compared prompt positions
    SEED = "seed"  # the seed's: ||mean_t Z_t(theta) - mean_t Z_t(theta0)||_2
    CONTINUATION = "continuation"  # tokens, over the prompt and theta0's own greedy continuation (teacher-forced)

    @property
    def default_sink(self) -> SinkRule:
        """`seed` is the seed's loss verbatim (every position); `tokens` leaves the sink out."""
        from melbo_tui.sink import SinkMode, SinkRule  # torch: only where a run needs it

        return SinkRule(SinkMode.KEEP) if self == Objective.SEED else SinkRule(SinkMode.EXCLUDE)


class CalibrationMethod(StrEnum):
    MELBO = "melbo"  # quick MELBO vectors per R: the take-off of their target-layer change
    DCT = "dct"  # random directions: the root of DCT's nonlinear / linear response ratio = 0.5
