"""The explorer: a Textual face over the engine to browse vector banks and stream completions.

`app.ExplorerApp` starts on `components.main_screen.MainScreen`, which wires widgets that own
their state (`VectorList`, `CompletionPanel`, `StatusBar`, the invisible `Measurer` and
`JobRunner`); the other screens (compare, sweep, plots, help, settings, a one-line question)
own their keys. Imports flow one way: widgets -> `session` (open banks, completion caches) ->
`backend` (the only door to the engine). torch and transformers are imported lazily, so the
first frame appears before either has loaded.
"""
