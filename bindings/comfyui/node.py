"""The node "navigen personalised prompt" (ComfyUI's conventions: INPUT_TYPES, RETURN_TYPES, FUNCTION,
CATEGORY, NODE_CLASS_MAPPINGS)."""
from __future__ import annotations

import json
import re
import threading

import navigen

# Opening a bundle loads its model: keep one engine per bundle folder for the process's life.
_engines: dict = {}
_lock = threading.Lock()


def _engine(bundle: str) -> "navigen.Engine":
    with _lock:
        e = _engines.get(bundle)
        if e is None:
            e = _engines[bundle] = navigen.Engine(bundle)
        return e


class NavigenPersonalisedPrompt:
    """Instruction (for a text encoder) and the predicted next items, from an item-id list or from a
    profile of a navigen history folder."""

    CATEGORY = "navigen"
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("instruction", "predicted_items")
    DESCRIPTION = "A creation instruction and the likely next items for one person's history (on this machine)."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "bundle": ("STRING", {"default": "", "tooltip": "navigen bundle folder"}),
                "k": ("INT", {"default": 5, "min": 1, "max": 256}),
            },
            "optional": {
                "item_ids": ("STRING", {"default": "", "multiline": True,
                                        "tooltip": "item ids, oldest first (commas or new lines); empty: the profile's history"}),
                "history_folder": ("STRING", {"default": ""}),
                "profile": ("STRING", {"default": "default"}),
            },
        }

    def run(self, bundle: str, k: int, item_ids: str = "", history_folder: str = "", profile: str = "default"):
        items = [s for s in re.split(r"[,\s]+", item_ids or "") if s]
        if not items:
            if not history_folder:
                raise ValueError("navigen: give item ids or a history folder and profile")
            # Held only while reading: the app that writes the history may want its lock back.
            with navigen.History(history_folder) as h:
                items = h.items(profile)
            if not items:
                raise ValueError(f"navigen: profile {profile!r} has no history in {history_folder}")
        engine = _engine(bundle)
        ins = engine.generate_instruction(items)
        preds = engine.predict_next(items, k=k)
        return (
            ins.target_ins,
            json.dumps([{"id": p.id, "title": p.title, "score": p.score} for p in preds]),
        )


NODE_CLASS_MAPPINGS = {"NavigenPersonalisedPrompt": NavigenPersonalisedPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"NavigenPersonalisedPrompt": "navigen personalised prompt"}
