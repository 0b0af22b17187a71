"""The vocabulary every face shares: bank kinds and metric names, with no torch to import.

`melbo_tui.bank` re-exports both; the explorer imports them from here before its first frame,
when importing torch would cost seconds.
"""

from __future__ import annotations

from enum import StrEnum


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
