"""DCT on synthetic maps with planted factors: how often OGI finds them, with the authors' plain QR
and with a sign-preserving QR (the variant melbo_tui.dct does not use). Numbers for docs/methods.md.

    python scripts/dct_synthetic.py [--problems 16] [--iterations 10 30]

Map (as tests/test_dct.py): Delta(theta) = sum_l alpha_l expm1(<v_l, theta>/R) u_l + 0.05 theta W^T / R,
6 planted factors in d = 48 (orthonormal v_l), alpha = 5 .. 1.5, R = 4; 12 factors fitted. A planted
factor counts as found when some fitted v has cos > 0.95 with it.
"""

from __future__ import annotations

import argparse
import math
from unittest import mock

import torch

from melbo_tui import dct


def planted_map(seed: int, orthonormal_u: bool, d: int = 48, d_out: int = 40, m: int = 6, radius: float = 4.0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(d, m, generator=g)).Q.T
    u = torch.linalg.qr(torch.randn(d_out, m, generator=g)).Q.T if orthonormal_u else torch.randn(m, d_out, generator=g)
    u = u / u.norm(dim=1, keepdim=True)
    alpha = torch.linspace(5.0, 1.5, m)
    w = torch.randn(d_out, d, generator=g) / math.sqrt(d)
    return v, lambda theta: (torch.expm1(theta @ v.T / radius) * alpha) @ u + 0.05 * theta @ w.T / radius


_plain_qr = torch.linalg.qr


def sign_preserving_qr(x: torch.Tensor) -> torch.return_types.linalg_qr:
    """Q with every column turned to keep the orientation of the input column it came from."""
    q, r = _plain_qr(x)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return torch.return_types.linalg_qr((q * signs, r * signs[:, None]))


def found(seed: int, iterations: int, orthonormal_u: bool) -> int:
    v, delta = planted_map(seed, orthonormal_u)
    result = dct.fit_dct(delta, 48, dct.DCTConfig(num_vectors=12, iterations=iterations, seed=seed), 4.0, torch.device("cpu"))
    assert result is not None
    cos = (result.vectors / 4.0) @ v.T
    return int((cos.max(dim=0).values > 0.95).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 30])
    args = parser.parse_args()
    print("| U | QR | iterations | planted factors found | problems with all 6 found |")
    print("|---|---|---|---|---|")
    for orthonormal_u in (True, False):
        for name in ("plain (authors', used)", "sign-preserving"):
            for iterations in args.iterations:
                if name == "sign-preserving":
                    with mock.patch.object(dct.torch.linalg, "qr", sign_preserving_qr):
                        counts = [found(s, iterations, orthonormal_u) for s in range(args.problems)]
                else:
                    counts = [found(s, iterations, orthonormal_u) for s in range(args.problems)]
                print(f"| {'orthonormal' if orthonormal_u else 'random unit'} | {name} | {iterations} | "
                      f"{sum(counts)}/{6 * args.problems} | {sum(c == 6 for c in counts)}/{args.problems} |")


if __name__ == "__main__":
    main()
