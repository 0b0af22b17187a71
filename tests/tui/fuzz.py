"""Random keys and resizes, delivered as a terminal delivers them, to prove the explorer never crashes.

Keys come from every binding of every screen (as the keymap defines them), the keys Textual
handles itself, control keys and printable characters, minus the two that quit. They are sent in
bursts through the driver, as a fast typist's keys arrive: several queued before the first is
handled, so screens open and close under keys already on their way. Now and then the terminal
is resized or the app is left to catch up. Any exception ends the run (Textual re-raises it when
the test leaves `run_test`); a notification starting "internal error" is a bug caught on the way.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from textual import events
from textual.keys import _character_to_key
from textual.pilot import Pilot

from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.keymap import ALL_KEYS

QUIT_KEYS = {"q", "ctrl+q"}
NAMED = ("up", "down", "left", "right", "pageup", "pagedown", "home", "end", "tab", "shift+tab", "enter", "escape",
         "backspace", "delete", "space", "ctrl+p", "ctrl+u", "ctrl+o", "ctrl+c", "ctrl+a", "ctrl+e", "ctrl+k", "ctrl+w",
         "ctrl+x", "ctrl+v", "ctrl+y", "ctrl+d", "ctrl+f", "ctrl+l", "f1", "f5", "insert")
CHARACTERS = "az0159-.=<>~|&,'\"_:/ÿ€"
SIZES = ((120, 40), (80, 24), (40, 12), (100, 30), (60, 20), (160, 50))


def key_pool() -> list[tuple[str, str | None]]:
    """(key, character) pairs: every bound key, the named keys, some characters; never a quit key."""
    pool: dict[str, str | None] = {}
    for spec in ALL_KEYS:
        for key in spec.keys.split(","):
            pool[key] = key if len(key) == 1 else None
    for key in NAMED:
        pool[key] = " " if key == "space" else None
    for char in CHARACTERS:
        pool[_character_to_key(char)] = char
    return [(k, c) for k, c in pool.items() if k not in QUIT_KEYS]


@dataclass
class FuzzReport:
    keys: int = 0
    resizes: int = 0
    screens: set[str] = field(default_factory=set)  # every screen that was on top at some point


async def fuzz(pilot: Pilot[None], app: ExplorerApp, seed: int, keys: int, burst: int = 6) -> FuzzReport:
    """Send `keys` random keys (bursts of up to `burst`), resizing about once every 150 keys."""
    rng = random.Random(seed)
    pool = key_pool()
    report = FuzzReport()
    while report.keys < keys:
        roll = rng.random()
        if roll < 0.007:
            await pilot.resize_terminal(*rng.choice(SIZES))
            report.resizes += 1
        elif roll < 0.02:
            await pilot.pause(rng.choice((0.05, 0.2)))  # let workers report while nothing is typed
        for _ in range(rng.randint(1, burst)):
            key, char = rng.choice(pool)
            event = events.Key(key, char)
            event.set_sender(app)
            app.post_message(event)  # queued as the driver queues a terminal's keys
            report.keys += 1
        await pilot.pause()
        report.screens.add(type(app.screen).__name__)
        assert app.is_running, f"the app stopped after {report.keys} keys (seed {seed})"
    return report


async def settle(pilot: Pilot[None], app: ExplorerApp, seconds: float = 0.5) -> None:
    """Let queued keys and workers finish, then leave every screen (escape) back to the list."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
    for _ in range(8):
        if app.screen is app.main:
            break
        await pilot.press("escape")
