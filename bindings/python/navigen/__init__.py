"""navigen for Python: next-item prediction and creation instructions from a person's history,
on this device, over navigen's C ABI (include/navigen.h).

    import navigen
    with navigen.Engine("bundle/") as engine:
        for p in engine.predict_next(["50", "181"], k=5):
            print(p.title, p.score)
        stream = engine.stream_instruction(["50", "181"])
        for piece in stream:
            print(piece, end="", flush=True)
        print(stream.result.target_ins)

Every call releases the GIL while the library works. An `Engine` may be used from several threads
(each call has its own inference context); `Engine.cancel()` stops every call in flight on it. A
`History` holds its folder's lock until it is closed.
"""
from __future__ import annotations

import ctypes
import enum
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

from . import _ffi

__all__ = [
    "Engine",
    "History",
    "KeyStore",
    "EventKind",
    "Status",
    "NavigenError",
    "Cancelled",
    "Prediction",
    "Instruction",
    "InstructionStream",
    "version",
]

_lib = _ffi.load()


class Status(enum.IntEnum):
    """navigen_status."""

    OK = 0
    INVALID_ARGUMENT = 1
    IO = 2
    FORMAT = 3
    MODEL = 4
    CANCELLED = 5
    NOT_SUPPORTED = 6
    MISMATCH = 7
    INTERNAL = 8


class NavigenError(Exception):
    """A failed call: `status` (a `Status`) and the library's message."""

    def __init__(self, status: int, message: str):
        try:
            self.status: Any = Status(status)
        except ValueError:
            self.status = status
        self.message = message
        super().__init__(f"{_lib.navigen_status_string(status).decode()}: {message}")


class Cancelled(NavigenError):
    """Stopped by `Engine.cancel()`, by a consumer that stopped reading, or by a callback."""


def _check(status: int) -> None:
    # navigen_last_error() is per thread: read it on the thread that made the call.
    if status != Status.OK:
        msg = (_lib.navigen_last_error() or b"").decode("utf-8", "replace")
        raise (Cancelled if status == Status.CANCELLED else NavigenError)(status, msg)


def _take_string(p: ctypes.c_void_p) -> str:
    try:
        return ctypes.string_at(p.value).decode("utf-8") if p.value else ""
    finally:
        _lib.navigen_string_free(p)


def _items(history: Sequence[str]) -> tuple[Any, int]:
    if isinstance(history, str):
        raise TypeError("history is a sequence of item ids, not one string")
    arr = (ctypes.c_char_p * max(len(history), 1))(*[str(h).encode("utf-8") for h in history])
    return arr, len(history)


def version() -> str:
    """The library's version, e.g. "0.1.0"."""
    return _lib.navigen_version().decode()


class EventKind(enum.IntEnum):
    VIEW = 0
    CLICK = 1
    PURCHASE = 2
    PLAY = 3
    RATE = 4
    LIKE = 5
    OTHER = 255


@dataclass(frozen=True)
class Prediction:
    id: str
    title: str
    cid: str
    score: float


@dataclass(frozen=True)
class Instruction:
    """The instruction answer: `target_tid` (terms), `target_ins` (the instruction), whether the
    answer parsed as the trained JSON shape, the raw text and timings."""

    target_tid: list
    target_ins: str
    parsed: bool
    raw: str
    reasoning: Any = None
    timings: dict = field(default_factory=dict)

    @staticmethod
    def _from_json(text: str) -> "Instruction":
        v = json.loads(text)
        return Instruction(
            target_tid=list(v.get("target_tid") or []),
            target_ins=v.get("target_ins") or "",
            parsed=bool(v.get("parsed")),
            raw=v.get("raw") or "",
            reasoning=v.get("reasoning"),
            timings=v.get("timings") or {},
        )


class _Closing:
    """`with` support and close-on-collection for objects with a `close()`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _Handle(_Closing):
    _free: Callable[[Any], None]

    def __init__(self) -> None:
        self._h: Optional[ctypes.c_void_p] = None

    @property
    def _handle(self) -> ctypes.c_void_p:
        if self._h is None:
            raise NavigenError(Status.INVALID_ARGUMENT, f"this {type(self).__name__} is closed")
        return self._h

    def close(self) -> None:
        """Releases the handle (idempotent). Calls in flight on other threads finish first."""
        h, self._h = self._h, None
        if h is not None:
            type(self)._free(h)


class Engine(_Handle):
    """An opened bundle (model.gguf, catalog, codebooks, bundle.json)."""

    _free = staticmethod(lambda h: _lib.navigen_engine_free(h))

    def __init__(
        self,
        bundle_dir: str,
        *,
        threads: int = 0,
        gpu_layers: int = 0,
        context_size: int = 0,
        seed: int = 0,
        verify_checksums: bool = False,
    ) -> None:
        super().__init__()
        p = _ffi.EngineParams()
        _check(_lib.navigen_engine_default_params(ctypes.byref(p)))
        p.threads, p.gpu_layers, p.context_size, p.seed = threads, gpu_layers, context_size, seed
        p.verify_checksums = verify_checksums
        out = ctypes.c_void_p()
        _check(_lib.navigen_engine_open(str(bundle_dir).encode(), ctypes.byref(p), ctypes.byref(out)))
        self._h = out

    def predict_next(
        self,
        history: Sequence[str],
        k: int = 10,
        *,
        beams: Optional[int] = None,
        exclude_history: bool = False,
    ) -> list[Prediction]:
        """The `k` items most likely next after `history` (item ids, oldest first), best first.
        `beams`: the beam width (1..=256, default 20); `exclude_history` leaves out items the
        history holds."""
        arr, n = _items(history)
        out = ctypes.c_void_p()
        p = self._predict_params(k, beams, exclude_history)
        _check(_lib.navigen_predict(self._handle, arr, n, ctypes.byref(p), ctypes.byref(out)))
        return _predictions(out)

    def predict_for_profile(
        self,
        history: "History",
        profile: str,
        k: int = 10,
        *,
        beams: Optional[int] = None,
        exclude_history: bool = False,
    ) -> list[Prediction]:
        """`predict_next` on the events of `profile` in an opened history."""
        out = ctypes.c_void_p()
        p = self._predict_params(k, beams, exclude_history)
        _check(
            _lib.navigen_predict_for_profile(
                self._handle, history._handle, profile.encode(), ctypes.byref(p), ctypes.byref(out)
            )
        )
        return _predictions(out)

    @staticmethod
    def _predict_params(k: int, beams: Optional[int], exclude_history: bool) -> _ffi.PredictParams:
        p = _ffi.PredictParams()
        _check(_lib.navigen_predict_default_params(ctypes.byref(p)))
        p.k = k
        if beams is not None:
            p.beams = beams
        p.exclude_history = exclude_history
        return p

    def register_item(self, text: str) -> dict:
        """A CID for a new item's text (title, description, genres), as the trainer would give it."""
        out = ctypes.c_void_p()
        _check(_lib.navigen_register_item(self._handle, text.encode("utf-8"), ctypes.byref(out)))
        return json.loads(_take_string(out))

    def cancel(self) -> None:
        """Stops every call in flight on this engine at its next decode step (any thread)."""
        _check(_lib.navigen_cancel(self._handle))

    def generate_instruction(
        self,
        history: Sequence[str],
        *,
        on_text: Optional[Callable[[str], Optional[bool]]] = None,
        max_think_tokens: Optional[int] = None,
        max_answer_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        no_repeat_ngram: Optional[int] = None,
    ) -> Instruction:
        """Writes a creation instruction for what `history` points to. `on_text` receives the text as
        it is generated (on this thread); returning False stops it (raises `Cancelled`)."""
        arr, n = _items(history)
        return self._instruct(
            lambda p, cb, out: _lib.navigen_generate_instruction(self._handle, arr, n, p, cb, None, out),
            on_text,
            (max_think_tokens, max_answer_tokens, temperature, top_p, no_repeat_ngram),
        )

    def instruct_for_profile(
        self,
        history: "History",
        profile: str,
        *,
        on_text: Optional[Callable[[str], Optional[bool]]] = None,
        max_think_tokens: Optional[int] = None,
        max_answer_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        no_repeat_ngram: Optional[int] = None,
    ) -> Instruction:
        """`generate_instruction` on the events of `profile` in an opened history."""
        name = profile.encode("utf-8")
        return self._instruct(
            lambda p, cb, out: _lib.navigen_generate_instruction_for_profile(
                self._handle, history._handle, name, p, cb, None, out
            ),
            on_text,
            (max_think_tokens, max_answer_tokens, temperature, top_p, no_repeat_ngram),
        )

    def _instruct(self, call: Callable[..., int], on_text: Optional[Callable[[str], Optional[bool]]], values: tuple) -> Instruction:
        p = _ffi.InstructionParams()
        _check(_lib.navigen_instruction_default_params(ctypes.byref(p)))
        names = ("max_think_tokens", "max_answer_tokens", "temperature", "top_p", "no_repeat_ngram")
        for name, v in zip(names, values):
            if v is not None:
                setattr(p, name, v)
        failure: list[BaseException] = []

        def piece(ptr: int, n: int, _user: int) -> bool:
            if on_text is None:
                return True
            try:
                return on_text(ctypes.string_at(ptr, n).decode("utf-8", "replace")) is not False
            except BaseException as e:  # an exception cannot cross the C frames: stop, re-raise after
                failure.append(e)
                return False

        cb = _ffi.TOKEN_CALLBACK(piece)
        out = ctypes.c_void_p()
        status = call(ctypes.byref(p), cb, ctypes.byref(out))
        if failure:
            raise failure[0]
        _check(status)
        return Instruction._from_json(_take_string(out))

    def stream_instruction(self, history: Sequence[str], **params: Any) -> "InstructionStream":
        """`generate_instruction` as an iterator of text pieces; the final `Instruction` is
        `.result` once the iterator is exhausted. Closing the stream early (`close()`, `break` out
        of a `with` block, or letting it be collected) cancels the call."""
        return InstructionStream(self, history, params)


class InstructionStream(_Closing):
    """Text pieces of one instruction as they are generated. A worker thread makes the call; it hands
    over one piece at a time and waits for the reader, so a slow reader holds the generation back
    and a reader that stops (close) stops it at the next piece."""

    _END = object()

    def __init__(self, engine: Engine, history: Sequence[str], params: dict) -> None:
        self._engine = engine
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._finished = False  # the worker's end marker has been taken
        self._got_text = False
        self.result: Optional[Instruction] = None
        self.error: Optional[BaseException] = None

        def on_text(t: str) -> bool:
            self._got_text = True
            if self._stop.is_set():
                return False
            self._q.put(t)
            return not self._stop.is_set()

        def run() -> None:
            try:
                self.result = engine.generate_instruction(history, on_text=on_text, **params)
            except BaseException as e:
                self.error = e
            finally:
                self._q.put(self._END)

        self._thread = threading.Thread(target=run, name="navigen-instruction", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        while not self._finished:
            item = self._q.get()
            if item is self._END:
                self._finished = True
                self._thread.join()
                if self.error is not None:
                    raise self.error
                return
            yield item

    def close(self) -> None:
        """Stops the call if it is still running and waits for it to return."""
        if self._finished:
            return
        self._stop.set()
        if not self._got_text:
            # Still reading the prompt, where no piece comes: cancel the engine's calls
            # (navigen_cancel stops every call in flight on it, other threads' too).
            try:
                self._engine.cancel()
            except NavigenError:
                pass
        while self._q.get() is not self._END:
            pass  # unblock the worker; what it still hands over is dropped
        self._finished = True
        self._thread.join()


def _predictions(out: ctypes.c_void_p) -> list[Prediction]:
    return [Prediction(p["id"], p["title"], p["cid"], float(p["score"])) for p in json.loads(_take_string(out))]


class KeyStore(Protocol):
    """Where an encrypted history's per-profile keys live (the platform's secret store, never the
    history folder). Called from the thread that calls into the history."""

    def get_key(self, profile: str, create: bool) -> Optional[bytes]:
        """The profile's 32-byte key; with `create`, a profile without one gets a new random key that
        the store keeps. None when there is none."""
        ...

    def destroy_key(self, profile: str) -> None:
        """Destroys the profile's key (called by `History.forget`, before the files go)."""
        ...


def _c_key_store(store: KeyStore) -> tuple[_ffi.KeyStore, tuple[Any, Any]]:
    """The C struct for `store`, and the callback objects that must live as long as the history.
    A Python exception inside a callback is a failed call (navigen reports it), never an unwind
    through C."""

    def get_key(profile: bytes, create: bool, out: Any, _user: Any) -> bool:
        try:
            key = store.get_key(profile.decode(), bool(create))
            if key is None:
                return False
            if len(key) != 32:
                raise ValueError(f"get_key returned {len(key)} bytes, 32 needed")
            ctypes.memmove(out, bytes(key), 32)
            return True
        except Exception:
            return False

    def destroy_key(profile: bytes, _user: Any) -> bool:
        try:
            store.destroy_key(profile.decode())
            return True
        except Exception:
            return False

    callbacks = (_ffi.GET_KEY(get_key), _ffi.DESTROY_KEY(destroy_key))
    return _ffi.KeyStore(callbacks[0], callbacks[1], None), callbacks


class History(_Handle):
    """An opened history folder: per-profile event logs, crash-safe, private to this device. With
    `key_store`, every profile's log is encrypted with its own key from the store, and `forget`
    destroys the key first (see docs/hardening.md)."""

    _free = staticmethod(lambda h: _lib.navigen_history_free(h))

    def __init__(
        self,
        folder: str,
        *,
        sync_every_append: Optional[bool] = None,
        max_items: Optional[int] = None,
        max_age_ms: Optional[int] = None,
        key_store: Optional[KeyStore] = None,
    ) -> None:
        super().__init__()
        p = _ffi.HistoryParams()
        _check(_lib.navigen_history_default_params(ctypes.byref(p)))
        if sync_every_append is not None:
            p.sync_every_append = sync_every_append
        if max_items is not None:
            p.max_items = max_items
        if max_age_ms is not None:
            p.max_age_ms = max_age_ms
        out = ctypes.c_void_p()
        if key_store is None:
            _check(_lib.navigen_history_open(str(folder).encode(), ctypes.byref(p), ctypes.byref(out)))
        else:
            keys, self._key_callbacks = _c_key_store(key_store)
            _check(
                _lib.navigen_history_open_encrypted(
                    str(folder).encode(), ctypes.byref(p), ctypes.byref(keys), ctypes.byref(out)
                )
            )
        self._h = out

    def append(
        self,
        profile: str,
        item_id: str,
        kind: EventKind = EventKind.VIEW,
        timestamp_ms: Optional[int] = None,
    ) -> None:
        """Stores an event; when this returns, it is on disk (synced by default)."""
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        _check(_lib.navigen_history_append(self._handle, profile.encode(), item_id.encode(), int(kind), ts))

    def items(self, profile: str) -> list[str]:
        """The profile's item ids, oldest first."""
        out = ctypes.c_void_p()
        _check(_lib.navigen_history_items(self._handle, profile.encode(), ctypes.byref(out)))
        return json.loads(_take_string(out))

    def forget(self, profile: str) -> None:
        """Removes the profile from disk (see the header for what holds on flash storage)."""
        _check(_lib.navigen_history_forget(self._handle, profile.encode()))

    def export(self, profile: str, engine: Optional[Engine] = None) -> Any:
        """The profile's events; with an engine, each says whether its item is in the catalog."""
        out = ctypes.c_void_p()
        e = engine._handle if engine is not None else None
        _check(_lib.navigen_history_export(self._handle, profile.encode(), e, ctypes.byref(out)))
        return json.loads(_take_string(out))
