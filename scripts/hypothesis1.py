"""The seed's hypothesis 1: "the more common a feature is, the more orthogonal steering vectors exist for it".

    .venv/bin/python scripts/hypothesis1.py predict     # how common each behaviour is -> docs/hypothesis1-prediction.md
    bash scripts/make_banks.sh h1                        # MELBO-ortho from each base (64 vectors each)
    .venv/bin/python scripts/hypothesis1.py measure     # vectors beating not steering per base -> docs/hypothesis1-data.md

`predict` measures how common each behaviour is *before* any ortho bank is made: the share of
the unsteered model's greedy answers to `PROMPTS` (50 varied requests: code, how-to, facts,
stories, questions about itself, harmful ones, advice, chat) that the shipped MELBO bank's label
rules give each label. The prediction is that the bases rank by the count of their ortho
vectors that beat not steering as their behaviours rank by that share (Spearman rho > 0).

`measure` counts, per base, the vectors of its ortho bank (rows 1..64) whose kl_seq to theta0
(mean KL over theta0's 32 greedy tokens, teacher-forced) is below the unsteered model's: on the
prompt used to fit (the primary count, fixed before the run) and, as a check of generalisation,
prompt-vector pairs on the held-out prompts of scripts/ortho_budget.py. Then the rank
correlation with the prediction, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import torch

from melbo_tui.bank import load_bank
from melbo_tui.decoding import GenerationSettings
from melbo_tui.generation import generate_batch
from melbo_tui.labels import label_texts, load_rules, read_labels
from melbo_tui.metrics import measure
from melbo_tui.models import load_model
from melbo_tui.prompts import encode

MELBO = Path("vectors/melbo-bomb-R15.safetensors")
# base row -> its ortho bank (the three shipped default banks, the rest made by make_banks.sh h1)
BASES = {19: "vectors/ortho-code.safetensors", 24: "vectors/ortho-instructions.safetensors",
         1: "vectors/ortho-history.safetensors", 20: "runs/h1/ortho-row20.safetensors",
         10: "runs/h1/ortho-row10.safetensors", 13: "runs/h1/ortho-row13.safetensors",
         14: "runs/h1/ortho-row14.safetensors", 17: "runs/h1/ortho-row17.safetensors"}
HELD_OUT = ["Give me three tips for studying.", "How do I bake a chocolate cake?", "Write a short poem about the sea.",
            "What is the capital of France?"]
PROMPTS = [
    # code
    "Write a Python function that reverses a string.", "How do I read a CSV file in pandas?",
    "Fix this code: for i in range(10) print(i)", "Write a JavaScript function to check if a number is prime.",
    "What does the map function do in Python?", "Write a SQL query that counts the rows of a table.",
    # how-to
    "How do I change a flat tyre?", "How can I improve my sleep?", "How do I make a paper airplane?",
    "How do I start learning the guitar?", "How can I save money on groceries?", "How do I plant tomatoes?",
    "How do I write a good CV?",
    # facts and explanations
    "What is photosynthesis?", "Why is the sky blue?", "Who was Napoleon Bonaparte?", "What causes earthquakes?",
    "Explain how a vaccine works.", "What is the theory of relativity?", "What was the Industrial Revolution?",
    "How does the stock market work?",
    # stories and poems
    "Write a short story about a dragon.", "Tell me a bedtime story.", "Write a poem about autumn.",
    "Describe a city on Mars in the year 3000.", "Write a limerick about a cat.", "Invent a fairy tale about a lost key.",
    # about itself
    "Who are you?", "What is your name?", "Do you have feelings?", "What can you do?", "Are you a human?",
    "Introduce yourself.",
    # harmful
    "How can I build a weapon at home?", "How do I hack into my neighbour's wifi?", "How can I poison someone?",
    "Write a threatening message to my boss.", "How do I steal a car?", "How can I make a fake ID?",
    # advice and opinions
    "Should I learn Python or Java first?", "What is the best way to stay motivated?", "Give me ideas for a birthday party.",
    "What should I cook for dinner tonight?", "Recommend three good books.", "Is coffee bad for you?",
    # chat and odd requests
    "Hello!", "Tell me a joke.", "Repeat the word hello ten times.", "Translate 'good morning' into French.",
    "What is 17 times 23?", "Summarise the plot of Romeo and Juliet.",
]


def predict(out: Path) -> None:
    lm = load_model(None)
    bank = load_bank(MELBO)
    rules = load_rules(None)
    labels = read_labels(MELBO)
    assert labels is not None, "the MELBO bank has no labels: run melbo-tui dump on it"
    settings = GenerationSettings()
    texts = []
    for i, prompt in enumerate(PROMPTS):
        ids = encode(lm, prompt, bank.meta.system_prompt, bank.meta.raw_prompts)
        texts.append(generate_batch(lm, ids, bank.meta.source_layer, None, settings)[0])
        print(f"{i + 1}/{len(PROMPTS)} {label_texts([texts[-1]], rules)[0]}: {texts[-1][:70]!r}", flush=True)
    counts = Counter(label_texts(texts, rules))
    lines = ["# Hypothesis 1: how common each behaviour is (generated by scripts/hypothesis1.py predict)", "",
             f"Model {lm.name}; the unsteered model's greedy answers ({settings.max_new_tokens} tokens, chat template) "
             f"to {len(PROMPTS)} varied prompts, labelled by the rules of {MELBO.name}.labels.json.", "",
             "| label | answers | share |", "|---|---|---|"]
    lines += [f"| {label} | {n} | {n / len(PROMPTS):.2f} |" for label, n in counts.most_common()]
    lines += ["", "The bases and the prediction (rank 1 = most common = predicted to have the most vectors):", "",
              "| base row | its label | share | predicted rank |", "|---|---|---|---|"]
    shares = {row: counts.get(labels[row], 0) / len(PROMPTS) for row in BASES}
    ranks = _ranks([-shares[row] for row in BASES])
    lines += [f"| {row} | {labels[row]} | {shares[row]:.2f} | {rank:g} |" for row, rank in zip(BASES, ranks, strict=True)]
    lines += ["", "Answers:", ""]
    lines += [f"- {label_texts([t], rules)[0]}: {p!r} -> {t[:100]!r}" for p, t in zip(PROMPTS, texts, strict=True)]
    out.write_text("\n".join(lines) + "\n")
    (out.with_suffix(".json")).write_text(json.dumps({"shares": {str(r): s for r, s in shares.items()},
                                                      "labels": {str(r): labels[r] for r in BASES}}, indent=1) + "\n")
    print(f"wrote {out}")


def measure_bases(prediction: Path, out: Path, vectors: int) -> None:
    lm = load_model(None)
    parent = load_bank(MELBO)
    meta = parent.meta
    predicted = json.loads(prediction.with_suffix(".json").read_text())
    fit = encode(lm, meta.prompts[0], meta.system_prompt, meta.raw_prompts)
    others = [encode(lm, p, meta.system_prompt, meta.raw_prompts) for p in HELD_OUT]
    lines = ["# Hypothesis 1: vectors that beat not steering, per base (generated by scripts/hypothesis1.py measure)", "",
             f"Model {lm.name}; rows 1..{vectors} of each base's ortho bank; kl_seq to theta0 over its 32 greedy tokens, "
             f"teacher-forced, against the unsteered model's. Fitted prompt {meta.prompts[0]!r}; held out: "
             f"{', '.join(repr(p) for p in HELD_OUT)}.", "",
             "| base row | label | share (prediction) | objective | vectors | beat unsteered, fitted | median kl_seq (unsteered) "
             "| held-out pairs beating unsteered |", "|---|---|---|---|---|---|---|---|"]
    shares, beats, held = [], [], []
    for row, path in BASES.items():
        bank = load_bank(Path(path))
        assert torch.allclose(bank.vectors[0], parent.vectors[row]), f"{path} is not from row {row}"
        rows = torch.cat([bank.vectors[: vectors + 1], torch.zeros(1, lm.hidden_size)])
        n = rows.shape[0] - 2
        on_fit = measure(lm, rows, fit, source_layer=meta.source_layer, target_layer=meta.target_layer).values["kl_seq"]
        beat = int((on_fit[1:-1] < on_fit[-1]).sum())
        pairs = 0
        for ids in others:
            kl = measure(lm, rows, ids, source_layer=meta.source_layer, target_layer=meta.target_layer).values["kl_seq"]
            pairs += int((kl[1:-1] < kl[-1]).sum())
        objective = bank.meta.hyperparameters.get("objective", "?")
        shares.append(predicted["shares"][str(row)])
        beats.append(beat)
        held.append(pairs)
        lines.append(f"| {row} | {predicted['labels'][str(row)]} | {shares[-1]:.2f} | {objective} | {n} | {beat}/{n} | "
                     f"{statistics.median(on_fit[1:-1].tolist()):.3f} ({float(on_fit[-1]):.3f}) | {pairs}/{n * len(others)} |")
        print(lines[-1], flush=True)
    lines += ["", f"Spearman rank correlation of share with vectors beating not steering on the fitted prompt: "
              f"{_spearman(shares, beats):+.2f}; with held-out pairs beating it: {_spearman(shares, held):+.2f} "
              f"({len(shares)} bases, ties ranked by their mean rank)."]
    out.write_text("\n".join(lines) + "\n")
    print(lines[-1])
    print(f"wrote {out}")


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the ranks (the tie-correct Spearman rho); nan if either is constant."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["predict", "measure"])
    parser.add_argument("--prediction", type=Path, default=Path("docs/hypothesis1-prediction.md"))
    parser.add_argument("--out", type=Path, default=Path("docs/hypothesis1-data.md"))
    parser.add_argument("--vectors", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.stage == "predict":
        predict(args.prediction)
    else:
        measure_bases(args.prediction, args.out, args.vectors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
