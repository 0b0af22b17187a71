"""`e`: a form for the prompt, system prompt, sampling settings, scale and composition mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from melbo_tui.compose import ComposeMode
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import MelboError
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.settings import ExploreSettings

SYSTEM_HINT = "empty = the model's own system prompt"


class SettingsScreen(ModalScreen[ExploreSettings | None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", show=True),
        Binding("ctrl+o", "apply", "Apply", show=True),
    ]

    def __init__(self, settings: ExploreSettings) -> None:
        super().__init__()
        self._settings = settings

    def compose(self) -> ComposeResult:
        s = self._settings
        with VerticalScroll(id="settings-form"):
            yield Label("Prompt")
            yield Input(s.prompt, id="prompt")
            yield Label(f"System prompt ({SYSTEM_HINT})")
            yield Input(s.system or "", id="system")
            yield Checkbox("raw prompt (no chat template)", s.raw, id="raw")
            with Horizontal(classes="row"):
                yield Label("Temperature (0 = greedy)")
                yield Input(f"{s.generation.temperature:g}", id="temperature")
            with Horizontal(classes="row"):
                yield Label("Max new tokens")
                yield Input(str(s.generation.max_new_tokens), id="max_new_tokens", type="integer")
            with Horizontal(classes="row"):
                yield Label("Seed")
                yield Input(str(s.generation.seed), id="seed", type="integer")
            with Horizontal(classes="row"):
                yield Label("Scale")
                yield Input(f"{s.scale:g}", id="scale")
            with Horizontal(classes="row"):
                yield Label("Composition")
                yield Select([(m.value, m.value) for m in ComposeMode], value=s.mode.value, allow_blank=False, id="mode")
            yield Static("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Apply (enter / ctrl+o)", variant="primary", id="apply")
                yield Button("Cancel (escape)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()

    def _read(self) -> ExploreSettings:
        def text(name: str) -> str:
            return self.query_one(f"#{name}", Input).value.strip()

        def number(name: str, kind: type) -> float | int:
            raw = text(name)
            try:
                return kind(raw)
            except ValueError:
                raise MelboError(f"{name.replace('_', ' ')}: '{raw}' is not a {'whole ' if kind is int else ''}number") from None

        settings = replace(
            self._settings,
            prompt=self.query_one("#prompt", Input).value,
            system=text("system") or None,
            raw=self.query_one("#raw", Checkbox).value,
            generation=GenerationSettings(
                max_new_tokens=int(number("max_new_tokens", int)),
                temperature=float(number("temperature", float)),
                seed=int(number("seed", int)),
            ),
            scale=float(number("scale", float)),
            mode=ComposeMode(str(self.query_one("#mode", Select).value)),
        )
        settings.check()
        return settings

    def action_apply(self) -> None:
        try:
            settings = self._read()
        except MelboError as exc:
            self.query_one("#settings-error", Static).update(f"⚠ {error_line(exc)}")
            return
        if self.is_active:
            self.dismiss(settings)

    def action_cancel(self) -> None:
        if self.is_active:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "apply":
            self.action_apply()
        else:
            self.action_cancel()
