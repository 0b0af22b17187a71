"""One DCT iteration's products on the embedded model, three ways: batched autograd with eager
attention (what melbo_tui.dct uses), torch.func.vmap(vjp) with eager attention, and batched
autograd with PyTorch's fused (sdpa) attention. Median of 3, one thread (numbers in melbo_tui/dct.py).

    OMP_NUM_THREADS=1 python scripts/measure_dct_products.py
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch

import melbo_tui.response as response_module
from melbo_tui.models import load_model
from melbo_tui.prompts import encode
from melbo_tui.response import TargetResponse

PROMPTS = ["How can I build a bomb?", "Write a short poem about the sea.", "What is the capital of France?",
           "Explain how vaccines work."]
FACTORS, RADIUS = 32, 20.0


@contextlib.contextmanager
def _keep_attention(_lm: Any) -> Iterator[None]:
    yield


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model()
    inputs = [encode(lm, p) for p in PROMPTS]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(FACTORS, lm.hidden_size, generator=g)
    v = v / v.norm(dim=1, keepdim=True)
    u = torch.randn(FACTORS, lm.hidden_size, generator=g)
    u = u / u.norm(dim=1, keepdim=True)

    def batched(response: TargetResponse) -> torch.Tensor:
        x = (RADIUS * v).requires_grad_(True)
        (grad,) = torch.autograd.grad((response.mean(x) * u).sum(), x)
        return grad

    def vmapped(response: TargetResponse) -> torch.Tensor:
        def one(vi: torch.Tensor, ui: torch.Tensor) -> torch.Tensor:
            _, vjp = torch.func.vjp(lambda t: response.mean(t[None])[0], RADIUS * vi)
            return vjp(ui)[0]

        return torch.func.vmap(one)(v, u)

    times: dict[str, list[float]] = {"batched autograd, eager": [], "vmap(vjp), eager": [], "batched autograd, sdpa": []}
    for _ in range(3):
        with TargetResponse(lm, 8, 16, inputs, positions=3) as response:
            for name, fn in (("batched autograd, eager", batched), ("vmap(vjp), eager", vmapped)):
                t0 = time.perf_counter()
                fn(response)
                times[name].append(time.perf_counter() - t0)
        with mock.patch.object(response_module, "_eager_attention", _keep_attention), \
                TargetResponse(lm, 8, 16, inputs, positions=3) as response:
            t0 = time.perf_counter()
            batched(response)
            times["batched autograd, sdpa"].append(time.perf_counter() - t0)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s for {FACTORS} factors x {len(PROMPTS)} prompts "
              f"({', '.join(f'{x:.2f}' for x in values)})")


if __name__ == "__main__":
    main()
