"""The explorer App: wires the main screen, the keymap, the command palette and the last line of defence.

Everything a user sees lives in screens and widgets (`components/`): the App starts on
`MainScreen`, applies the user's keymap, offers the current screen's commands in the palette
(ctrl+p), and keeps running when an action fails: a user's mistake becomes a notification,
and so does a bug, in our code or in a library widget's (`run_action`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App, SystemCommand
from textual.command import CommandPalette
from textual.screen import Screen

from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import Backend
from melbo_tui.tui.components.help_screen import HelpScreen
from melbo_tui.tui.components.main_screen import ExploreOptions, MainScreen
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.keymap import APP_KEYS, bindings, load_keymap


class ExplorerPalette(CommandPalette):
    """Textual's command palette, minus a crash: paging its list before the list is laid out.

    Textual 8.2's `OptionList._move_page` indexes its line map, which is empty until the list
    has been drawn, so ctrl+p then PageDown typed together raised `KeyError` and ended the app.
    Nothing to page yet is nothing to do.
    """

    def _action_command_list(self, action: str) -> None:
        with contextlib.suppress(KeyError, IndexError):
            super()._action_command_list(action)


class ExplorerApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "melbo-tui"
    BINDINGS = bindings(APP_KEYS)

    def __init__(
        self,
        bank_paths: list[Path],
        backend: Backend,
        prompt: str | None = None,
        system: str | None = None,
        raw: bool | None = None,
        generation: GenerationSettings | None = None,
        cache_root: Path | None = None,
        keymap: dict[str, str] | None = None,
        debounce: float = 0.25,
        workspace: Path | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.options = ExploreOptions(tuple(Path(p) for p in bank_paths), backend, prompt, system, raw,
                                      generation or GenerationSettings(), cache_root, debounce, workspace or Path.cwd())
        self.keymap_overrides, self._keymap_warnings = (keymap, []) if keymap is not None else load_keymap()
        self._main: MainScreen | None = None
        self._quitting = False

    def get_default_screen(self) -> Screen[Any]:
        self._main = MainScreen(self.options)
        return self._main

    @property
    def main(self) -> MainScreen:
        """The main screen, wherever the user is."""
        assert self._main is not None, "the app is not running"
        return self._main

    def on_mount(self) -> None:
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        for warning in self._keymap_warnings:
            self.notify(warning, severity="warning", timeout=8)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and (self._quitting or not self.screen_stack):
            return  # typed after quit (or while the screens close): nothing is left to act on
        await super().on_event(event)

    async def run_action(self, action: Any, default_namespace: Any = None, namespaces: Any = None) -> bool:
        """Every key's action goes through here: a failure is a notification, and the app goes on."""
        if self._quitting:
            return True
        try:
            return await super().run_action(action, default_namespace, namespaces)
        except MelboError as exc:
            self.notify(error_line(exc), severity="error", timeout=6)
        except Exception as exc:  # a bug, ours or a widget's: one line, and the app keeps working
            self.notify(error_line(exc), severity="error", timeout=8)
        return True

    def action_command_palette(self) -> None:
        if self.use_command_palette and not CommandPalette.is_open(self):  # type: ignore[arg-type]
            self.push_screen(ExplorerPalette(id="--command-palette"))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, MainScreen):
            yield from screen.palette_commands()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap_overrides))

    async def action_quit(self) -> None:
        self._quitting = True
        if self._main is not None and self._main.is_mounted:
            self._main.panel.stop()
        self.exit()
