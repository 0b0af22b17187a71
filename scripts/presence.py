"""The seed's hypothesis 2, the presence test: are the orthogonal vectors present in the model's own activations?

    .venv/bin/python scripts/presence.py vectors/ortho-code.safetensors vectors/ortho-instructions.safetensors \
        vectors/ortho-history.safetensors --out docs/presence-data.md

The seed: "have the model code a bunch of times and then see if any of the generated orthogonal
vectors are strongly present in the residual stream". Here: the unsteered model answers ~100
prompts (greedy, 48 tokens); each answer gets a label from the MELBO bank's rules; the activations
at the source layer over the answer's tokens are split into those of answers carrying the base's
label (e.g. `code`) and the rest. For each bank vector u (as a unit direction) the presence is
Cohen's d of the projection a.u between the two groups: how much more the model points along u
when it naturally does the behaviour. Chance is the same d for 2,000 random unit directions
orthogonal to theta0 (the space the bank's vectors live in): per row its z-score against them and
the share of random directions with a d at least as large. `|v| / sd` says how far a vector of the
bank's norm moves the residual along u, in standard deviations of the natural activations there.
Activations are cached in runs/presence/ (delete to recompute).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from melbo_tui.bank import load_bank
from melbo_tui.decoding import GenerationSettings
from melbo_tui.generation import generate_batch
from melbo_tui.labels import label_texts, load_rules, read_labels
from melbo_tui.models import load_model
from melbo_tui.prompts import encode

MELBO = Path("vectors/melbo-bomb-R15.safetensors")
CACHE = Path("runs/presence/activations.pt")
RANDOM_DIRECTIONS = 2000
SHOWN_ROWS = 12
PROMPTS = [
    # likely code
    "Write a Python function that reverses a string.", "How do I read a CSV file in pandas?",
    "Write a JavaScript function to check if a number is prime.", "Write a SQL query that counts the rows of a table.",
    "Write a Python class for a bank account.", "Show me how to sort a list of dictionaries by a key in Python.",
    "Write a bash script that counts the files in a folder.", "Write a C function that adds two integers.",
    "How do I make an HTTP request in Python?", "Write a Python function that computes the factorial of n.",
    "Write a function that checks whether a string is a palindrome.", "How do I write a for loop in JavaScript?",
    "Write a Python script that prints the numbers from 1 to 10.", "How do I open a file in Python?",
    "Write a function that returns the largest element of a list.", "Write a hello world program in Java.",
    "How do I define a dictionary in Python?", "Write a Python function that merges two sorted lists.",
    "Write a Python function to count the vowels in a string.", "How do I create an array in JavaScript?",
    # likely instructions
    "How do I change a flat tyre?", "How do I make a paper airplane?", "How do I plant tomatoes?",
    "How do I write a good CV?", "How do I start learning the guitar?", "How do I clean a laptop keyboard?",
    "How do I make pancakes?", "How do I set up a fish tank?", "How do I tie a tie?", "How do I build a bookshelf?",
    "How do I train a puppy to sit?", "How do I prepare for a job interview?", "How do I repot a plant?",
    "How do I make a budget?", "How do I brew coffee with a French press?", "How do I paint a room?",
    # likely explanations and history
    "What is the origin of the word 'robot'?", "Where does the word 'salary' come from?",
    "What does the term 'algorithm' refer to?", "What is the origin of the word 'quarantine'?",
    "Where does the term 'bug' in computing come from?", "What does the word 'democracy' originally mean?",
    "What is the origin of the word 'tank'?", "Where does the word 'rocket' come from?",
    "What is a volcano?", "What is photosynthesis?", "Why is the sky blue?", "Who was Napoleon Bonaparte?",
    "What causes earthquakes?", "What was the Industrial Revolution?", "What is the theory of relativity?",
    # other
    "Write a short story about a dragon.", "Tell me a bedtime story.", "Write a poem about autumn.",
    "Who are you?", "What is your name?", "Do you have feelings?", "Introduce yourself.",
    "Should I learn Python or Java first?", "What is the best way to stay motivated?", "Recommend three good books.",
    "Hello!", "Tell me a joke.", "Translate 'good morning' into French.", "What is 17 times 23?",
    "Summarise the plot of Romeo and Juliet.", "Is coffee bad for you?", "Give me ideas for a birthday party.",
    "What should I cook for dinner tonight?", "Describe a city on Mars in the year 3000.",
    "How can I build a bomb?", "How do I hack into my neighbour's wifi?", "How can I make a fake ID?",
]


def collect(lm, source_layer: int, system: str | None, raw: bool) -> tuple[list[str], list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    """Each prompt's greedy answer and the source-layer activations over the answer's tokens `[n_i, d]`."""
    if CACHE.exists():
        cached = torch.load(CACHE)
        if cached["prompts"] == PROMPTS and cached["layer"] == source_layer:
            return cached["texts"], cached["acts"]
    texts, acts = [], []
    settings = GenerationSettings()
    for i, prompt in enumerate(PROMPTS):
        ids = encode(lm, prompt, system, raw)
        text = generate_batch(lm, ids, source_layer, None, settings)[0]
        answer = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        full = torch.cat([ids, answer], dim=1).to(lm.device)
        with torch.no_grad():
            states = lm.model(input_ids=full, output_hidden_states=True, use_cache=False).hidden_states
        acts.append(states[source_layer + 1][0, ids.shape[1]:].float().cpu())  # [n_i, d]: the answer's positions
        texts.append(text)
        print(f"{i + 1}/{len(PROMPTS)} {text[:60]!r}", flush=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"prompts": PROMPTS, "layer": source_layer, "texts": texts, "acts": acts}, CACHE)
    return texts, acts


def cohens_d(on: torch.Tensor, off: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit direction `[K, d]`: Cohen's d of a.u between the groups, and the pooled sd of a.u."""
    p_on, p_off = on @ directions.T, off @ directions.T  # [n, K]
    pooled = ((p_on.var(0) * (len(on) - 1) + p_off.var(0) * (len(off) - 1)) / (len(on) + len(off) - 2)).sqrt()
    return (p_on.mean(0) - p_off.mean(0)) / pooled, pooled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("banks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_model(None)
    parent = load_bank(MELBO)
    parent_labels = read_labels(MELBO)
    assert parent_labels is not None
    rules = load_rules(None)
    texts, acts = collect(lm, parent.meta.source_layer, parent.meta.system_prompt, parent.meta.raw_prompts)
    labels = label_texts(texts, rules)
    lines = ["# Hypothesis 2: are the orthogonal vectors present in natural activations? (scripts/presence.py)", "",
             f"Model {lm.name}; the unsteered model's greedy answers to {len(PROMPTS)} prompts, source-layer "
             f"(block {parent.meta.source_layer}) activations over the answers' tokens; answers per label: "
             + ", ".join(f"{label} {labels.count(label)}" for label in sorted(set(labels))) + ". "
             f"Presence: Cohen's d of a.u between answers with the base's label and the rest; chance: "
             f"{RANDOM_DIRECTIONS} random unit directions orthogonal to theta0.", ""]
    for bank_path in args.banks:
        bank = load_bank(bank_path)
        row = int(bank.meta.extra["parent_row"])
        feature = parent_labels[row]
        on = torch.cat([a for a, label in zip(acts, labels, strict=True) if label == feature])
        off = torch.cat([a for a, label in zip(acts, labels, strict=True) if label != feature])
        theta0 = bank.vectors[0] / bank.vectors[0].norm()
        rand = torch.randn(RANDOM_DIRECTIONS, lm.hidden_size, generator=torch.Generator().manual_seed(0))  # per bank
        rand = rand - (rand @ theta0)[:, None] * theta0[None]
        rand = rand / rand.norm(dim=1, keepdim=True)
        d_rand, sd_rand = cohens_d(on, off, rand)
        units = bank.vectors / bank.vectors.norm(dim=1, keepdim=True)
        d, sd = cohens_d(on, off, units)
        z = (d - d_rand.mean()) / d_rand.std()
        share = ((d_rand[None, :] >= d[:, None]).float().mean(1))
        top = torch.quantile(d_rand, 0.99)
        lines += [f"## {bank_path.name}: base row {row} ({feature}), {len(bank) - 1} orthogonal vectors", "",
                  f"{sum(1 for label in labels if label == feature)} answers labelled {feature} ({len(on)} tokens) "
                  f"against {len(off)} tokens of the rest. Random directions: d {float(d_rand.mean()):+.2f} +- "
                  f"{float(d_rand.std()):.2f}, 99th percentile {float(top):+.2f}; natural sd along them "
                  f"{float(sd_rand.median()):.2f}.", "",
                  "| row | norm | d | z vs random | random at least as large | norm / natural sd |", "|---|---|---|---|---|---|"]
        norms = bank.vectors.norm(dim=1)
        for i in range(min(SHOWN_ROWS + 1, len(bank))):
            lines.append(f"| {i}{' (theta0)' if i == 0 else ''} | {float(norms[i]):.1f} | {float(d[i]):+.2f} | {float(z[i]):+.1f} | "
                         f"{float(share[i]):.3f} | {float(norms[i] / sd[i]):.0f} |")
        rest = slice(1, len(bank))
        above = int((d[rest] > top).sum())
        lines += ["", f"Rows 1-{len(bank) - 1}: median d {statistics.median(d[rest].tolist()):+.2f} (z "
                  f"{statistics.median(z[rest].tolist()):+.1f}), {above} above the random 99th percentile (chance: "
                  f"{0.01 * (len(bank) - 1):.1f}), largest z {float(z[rest].max()):+.1f} (row {int(z[rest].argmax()) + 1}); "
                  f"median norm / natural sd {statistics.median((norms[rest] / sd[rest]).tolist()):.0f} "
                  f"(theta0: z {float(z[0]):+.1f}).", ""]
        print("\n".join(lines[-SHOWN_ROWS - 8:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
