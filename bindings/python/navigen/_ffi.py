"""The C ABI (include/navigen.h) as ctypes declarations: structs, signatures, library loading.

Kept in step with the header by hand; `ABI_VERSION` must equal the header's NAVIGEN_ABI_VERSION and
the library's navigen_abi_version(), which `load()` checks.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int32, c_int64, c_size_t, c_uint8, c_uint32, c_void_p

ABI_VERSION = 2


class EngineParams(ctypes.Structure):
    _fields_ = [
        ("threads", c_uint32),
        ("gpu_layers", c_uint32),
        ("context_size", c_uint32),
        ("seed", c_uint32),
        ("prompt_chunk_ms", c_uint32),
        ("op_offload", c_bool),
        ("verify_checksums", c_bool),
    ]


class InstructionParams(ctypes.Structure):
    _fields_ = [
        ("max_think_tokens", c_uint32),
        ("max_answer_tokens", c_uint32),
        ("temperature", c_float),
        ("top_p", c_float),
        ("no_repeat_ngram", c_uint32),
    ]


class PredictParams(ctypes.Structure):
    _fields_ = [("k", c_size_t), ("beams", c_uint32), ("exclude_history", c_bool)]


class HistoryParams(ctypes.Structure):
    _fields_ = [
        ("sync_every_append", c_bool),
        ("max_items", c_uint32),
        ("max_age_ms", c_int64),
    ]


# bool (*get_key)(const char *profile, bool create, uint8_t *key_out, void *user)
GET_KEY = ctypes.CFUNCTYPE(c_bool, c_char_p, c_bool, POINTER(c_uint8), c_void_p)
# bool (*destroy_key)(const char *profile, void *user)
DESTROY_KEY = ctypes.CFUNCTYPE(c_bool, c_char_p, c_void_p)


class KeyStore(ctypes.Structure):
    _fields_ = [("get_key", GET_KEY), ("destroy_key", DESTROY_KEY), ("user", c_void_p)]


# bool (*)(const char *piece, size_t len, void *user); the piece is not NUL-terminated, so it is
# taken as a plain pointer and read with its length.
TOKEN_CALLBACK = ctypes.CFUNCTYPE(c_bool, c_void_p, c_size_t, c_void_p)

_SIGNATURES = {
    "navigen_abi_version": (c_uint32, []),
    "navigen_version": (c_char_p, []),
    "navigen_last_error": (c_char_p, []),
    "navigen_status_string": (c_char_p, [c_int32]),
    "navigen_string_free": (None, [c_void_p]),
    "navigen_engine_default_params": (c_int32, [POINTER(EngineParams)]),
    "navigen_engine_open": (c_int32, [c_char_p, POINTER(EngineParams), POINTER(c_void_p)]),
    "navigen_engine_free": (None, [c_void_p]),
    "navigen_cancel": (c_int32, [c_void_p]),
    "navigen_predict_next": (c_int32, [c_void_p, POINTER(c_char_p), c_size_t, c_size_t, POINTER(c_void_p)]),
    "navigen_predict_default_params": (c_int32, [POINTER(PredictParams)]),
    "navigen_predict": (c_int32, [c_void_p, POINTER(c_char_p), c_size_t, POINTER(PredictParams), POINTER(c_void_p)]),
    "navigen_predict_for_profile": (c_int32, [c_void_p, c_void_p, c_char_p, POINTER(PredictParams), POINTER(c_void_p)]),
    "navigen_register_item": (c_int32, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "navigen_instruction_default_params": (c_int32, [POINTER(InstructionParams)]),
    "navigen_generate_instruction": (
        c_int32,
        [c_void_p, POINTER(c_char_p), c_size_t, POINTER(InstructionParams), TOKEN_CALLBACK, c_void_p,
         POINTER(c_void_p)],
    ),
    "navigen_generate_instruction_for_profile": (
        c_int32,
        [c_void_p, c_void_p, c_char_p, POINTER(InstructionParams), TOKEN_CALLBACK, c_void_p, POINTER(c_void_p)],
    ),
    "navigen_history_default_params": (c_int32, [POINTER(HistoryParams)]),
    "navigen_history_open": (c_int32, [c_char_p, POINTER(HistoryParams), POINTER(c_void_p)]),
    "navigen_history_open_encrypted": (
        c_int32, [c_char_p, POINTER(HistoryParams), POINTER(KeyStore), POINTER(c_void_p)]
    ),
    "navigen_history_free": (None, [c_void_p]),
    "navigen_history_append": (c_int32, [c_void_p, c_char_p, c_char_p, c_uint32, c_int64]),
    "navigen_history_items": (c_int32, [c_void_p, c_char_p, POINTER(c_void_p)]),
    "navigen_history_forget": (c_int32, [c_void_p, c_char_p]),
    "navigen_history_export": (c_int32, [c_void_p, c_char_p, c_void_p, POINTER(c_void_p)]),
}


def _candidates() -> list[str]:
    """Where the library is looked for, in order: $NAVIGEN_LIB, next to this package (a wheel), the
    system's search path."""
    out = []
    if os.environ.get("NAVIGEN_LIB"):
        out.append(os.environ["NAVIGEN_LIB"])
    here = os.path.dirname(os.path.abspath(__file__))
    name = {"darwin": "libnavigen.dylib", "win32": "navigen.dll"}.get(sys.platform, "libnavigen.so")
    out.append(os.path.join(here, name))
    found = ctypes.util.find_library("navigen")
    if found:
        out.append(found)
    return out


def load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(f"{path} (missing)")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        for name, (res, args) in _SIGNATURES.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        got = lib.navigen_abi_version()
        if got != ABI_VERSION:
            raise ImportError(
                f"{path} implements navigen C ABI {got}; this package speaks {ABI_VERSION}: "
                "install the matching library or package"
            )
        return lib
    raise ImportError(
        "libnavigen not found; set NAVIGEN_LIB to the library built by `cargo build -p navigen-ffi` "
        "(target/<profile>/libnavigen.so). Tried: " + "; ".join(tried)
    )
