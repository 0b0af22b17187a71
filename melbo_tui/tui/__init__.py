"""The explorer: a Textual face over the engine to browse vector banks and stream completions.

Direction of imports: `tui` -> `backend` -> engine modules (`bank`, `compose`, `generation`,
`metrics`, `models`, `prompts`). Widgets never touch the model; they render state the app
hands them. torch and transformers are imported lazily so the first frame appears before
either has loaded.
"""
