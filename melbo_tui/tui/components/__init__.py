"""Widgets and screens of the explorer, one per file, each with its .tcss beside it."""
