"""What the explorer has open, apart from any widget: banks, their completion caches, the model's state.

The completion panel, the comparison screen, the sweep and the read-ahead all ask a `Session`
for completions (`cached`, then `stream` or `prepare`, which remember what they made), so each
finished completion is generated once and shown everywhere. The unsteered model's completions
do not depend on the bank: one cache serves every bank. A row's label on the settings being
completed comes from its completion (`relabel`). No Textual here: a test can drive it directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melbo_tui.compose import Composition
from melbo_tui.decoding import GenerationResult
from melbo_tui.errors import MelboError
from melbo_tui.labels import classify
from melbo_tui.tui.backend import Backend, BatchRequest, GenerationRequest, OnText, ShouldStop
from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.cache import CachedCompletion, CompletionCache, completion_key
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.settings import ExploreSettings

UNSTEERED_CACHE = "unsteered"  # the file name of the cache every bank shares


@dataclass
class ModelState:
    """One model's load, as the explorer follows it."""

    name: str
    loading: bool = False
    ready: bool = False
    description: str = ""  # the backend's one line once loaded
    error: str | None = None  # why it failed to load


class Session:
    def __init__(self, backend: Backend, cache_root: Path | None = None) -> None:
        self.backend = backend
        self.cache_root = cache_root
        self.views: list[BankView] = []
        self.models: dict[str, ModelState] = {}  # by name: each model a bank names, loaded when first needed
        self.fit_errors: dict[str, str] = {}  # bank digest -> why it cannot steer this model
        self._caches: dict[str, CompletionCache] = {}
        self._cache_moved: dict[str, str] = {}  # digest of a superseded checkpoint -> digest of its successor
        self._unsteered: CompletionCache | None = None  # shared by every bank

    # ----- banks --------------------------------------------------------------------------

    def model_of(self, view: BankView) -> ModelState:
        """The state of the model that serves `view`."""
        name = self.backend.model_for(view.bank)
        if name not in self.models:
            self.models[name] = ModelState(name)
        return self.models[name]

    def check_fits(self) -> list[str]:
        """Ask each loaded model whether the open banks it serves fit it; one line per bank that does not."""
        errors = []
        for view in self.views:
            if view.digest in self.fit_errors or not self.model_of(view).ready:
                continue
            try:
                self.backend.check_bank(view.bank)
            except MelboError as exc:
                self.fit_errors[view.digest] = error_line(exc)
                errors.append(f"{view.name}: {error_line(exc)}")
        return errors

    def replace_or_add(self, new: BankView) -> int | None:
        """A job saved its bank again: swap the open view of that file (its cache follows), or add it.

        Returns the index replaced, None when the bank was not open yet.
        """
        for i, old in enumerate(self.views):
            if old.path.resolve() == new.path.resolve():
                self._carry_cache(old, new)
                self.views[i] = new
                return i
        self.views.append(new)
        return None

    def blocked(self, view: BankView) -> str | None:
        """Why nothing can stream for `view` now (None when it can)."""
        model = self.model_of(view)
        if model.error is not None:
            return f"no completions: the model {model.name} failed to load ({model.error})"
        if view.digest in self.fit_errors:
            return self.fit_errors[view.digest]
        if not model.ready:
            return f"model {model.name.removeprefix('embedded:')} loading… the completion streams as soon as it is ready"
        return None

    # ----- completions --------------------------------------------------------------------

    def cache_for(self, view: BankView) -> CompletionCache:
        digest = view.digest
        while digest in self._cache_moved:  # a late result for an earlier checkpoint of a growing bank
            digest = self._cache_moved[digest]
        if digest not in self._caches:
            self._caches[digest] = CompletionCache(digest, self.cache_root)
        return self._caches[digest]

    def cache_of(self, view: BankView, target: Composition) -> CompletionCache:
        """Where `target`'s completions live: the bank's cache, or the one unsteered cache of every bank."""
        if target.rows:
            return self.cache_for(view)
        if self._unsteered is None:
            self._unsteered = CompletionCache(UNSTEERED_CACHE, self.cache_root)
        return self._unsteered

    def cached(self, view: BankView, target: Composition, settings: ExploreSettings) -> CachedCompletion | None:
        return self.cache_of(view, target).get(completion_key(self.backend.model_for(view.bank), target, settings))

    def stream(self, view: BankView, target: Composition, settings: ExploreSettings, on_text: OnText,
               should_stop: ShouldStop) -> GenerationResult:
        """Generate (blocking, from a worker) and remember a finished completion."""
        reason = self.blocked(view)
        if reason is not None:
            raise MelboError(reason)
        result = self.backend.stream(GenerationRequest(view.bank, target, settings), on_text, should_stop)
        if not result.stopped:
            self._remember(view, target, settings, result)
        return result

    def prepare(self, view: BankView, targets: list[Composition], settings: ExploreSettings, should_stop: ShouldStop,
                on_ready: Callable[[Composition], None]) -> None:
        """Complete the targets the cache lacks, in batches, lowest priority (blocking, from a worker).

        `on_ready` hears each target as its completion is remembered. Returns early when a
        generation the user asked for needs the model (`Backend.complete`).
        """
        if self.blocked(view) is not None:
            return
        missing = tuple(t for t in targets if self.cached(view, t, settings) is None)
        if not missing:
            return

        def completed(target: Composition, result: GenerationResult) -> None:
            self._remember(view, target, settings, result)
            on_ready(target)

        self.backend.complete(BatchRequest(view.bank, missing, settings), completed, should_stop)

    def relabel(self, view: BankView, settings: ExploreSettings) -> None:
        """Label every row whose own completion (x1) on `settings` is cached: its label on these settings."""
        made_on = settings.made_on()
        view.live_on = made_on
        plain = settings.unscaled()
        cache = self.cache_for(view)
        model = self.backend.model_for(view.bank)
        labels: dict[int, str] = {}
        for row in range(len(view)):
            entry = cache.get(completion_key(model, Composition((row,)), plain))
            if entry is not None:
                labels[row] = classify(entry.text, view.label_rules)
        view.live_labels = labels

    def _remember(self, view: BankView, target: Composition, settings: ExploreSettings, result: GenerationResult) -> None:
        decoding = settings.generation
        model = self.backend.model_for(view.bank)
        entry = CachedCompletion(
            key=completion_key(model, target, settings), target=target.label, text=result.text,
            num_tokens=result.num_tokens, seconds=result.seconds, model=model,
            prompt=settings.prompt, system=settings.system, raw=settings.raw, temperature=decoding.temperature,
            max_new_tokens=decoding.max_new_tokens, seed=decoding.seed,
        )
        if len(target.rows) == 1 and target.scale == 1.0 and view.live_on == settings.made_on():
            view.live_labels[target.rows[0]] = classify(result.text, view.label_rules)
        with contextlib.suppress(OSError):  # a read-only cache dir only costs persistence (the entry is kept in memory)
            self.cache_of(view, target).put(entry)

    def _carry_cache(self, old: BankView, new: BankView) -> None:
        """A job's bank grew: its file hash changed, but every row it had is still there, bit for bit.

        The completions cached for the old checkpoint then hold for the new one too (a target names
        rows, and those rows are the same vectors at the same layer), so the cache moves along.
        """
        if old.digest == new.digest or old.digest in self._cache_moved:
            return
        a, b = old.bank, new.bank
        n = len(a)
        if (len(b) < n or a.meta.base_index != b.meta.base_index or a.meta.source_layer != b.meta.source_layer
                or a.vectors.shape[1:] != b.vectors.shape[1:] or not bool((a.vectors == b.vectors[:n]).all())):
            return
        cache = self.cache_for(old)
        if new.digest in self._caches:
            return  # already open under its own digest: keep that one
        cache.move_to(new.digest)
        self._caches.pop(old.digest, None)
        self._caches[new.digest] = cache
        self._cache_moved[old.digest] = new.digest
