"""melbo-tui: MELBO and MELBO-ortho steering-vector banks, trained, measured and explored.

Engine modules (no Textual, no typer): models, layers, prompts, steering, melbo, ortho,
metrics, bank, selection, compose, generation. Faces: `cli` (typer) and `tui/` (Textual).
"""

__version__ = "0.1.0"
