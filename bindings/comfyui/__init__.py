"""navigen's ComfyUI custom node: a personalised prompt from a person's history, on this machine.

Install: copy (or link) this folder into ComfyUI/custom_nodes/navigen, and install the navigen wheel
into ComfyUI's Python (bindings/python/build_wheel.sh makes it). The node's first output goes into
CLIPTextEncode's text input.
"""
from .node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
