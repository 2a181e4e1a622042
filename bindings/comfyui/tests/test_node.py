"""The ComfyUI node loaded as ComfyUI loads a custom node (the folder as a package) and run headless
on a real bundle (sdk/ffi/tests/bindings.rs sets NAVIGEN_TEST_BUNDLE, NAVIGEN_TEST_HISTORY)."""
import importlib.util
import json
import os
import sys
import tempfile
import unittest

import navigen

BUNDLE = os.environ["NAVIGEN_TEST_BUNDLE"]
HISTORY = json.loads(os.environ["NAVIGEN_TEST_HISTORY"])
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_custom_node():
    spec = importlib.util.spec_from_file_location(
        "navigen_custom_node", os.path.join(HERE, "__init__.py"), submodule_search_locations=[HERE]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class NodeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mod = load_custom_node()
        cls.cls = cls.mod.NODE_CLASS_MAPPINGS["NavigenPersonalisedPrompt"]

    def test_declares_what_comfyui_reads(self):
        self.assertEqual(self.mod.NODE_DISPLAY_NAME_MAPPINGS["NavigenPersonalisedPrompt"], "navigen personalised prompt")
        types = self.cls.INPUT_TYPES()
        self.assertIn("bundle", types["required"])
        self.assertEqual(self.cls.RETURN_TYPES, ("STRING", "STRING"))
        self.assertTrue(callable(getattr(self.cls(), self.cls.FUNCTION)))

    def test_runs_from_item_ids_and_from_a_history_profile(self):
        node = self.cls()
        ins, preds = node.run(BUNDLE, 4, item_ids=", ".join(HISTORY))
        self.assertIsInstance(ins, str)
        preds = json.loads(preds)
        self.assertEqual(len(preds), 4)
        with tempfile.TemporaryDirectory() as d:
            with navigen.History(d) as h:
                for i, item in enumerate(HISTORY):
                    h.append("bob", item, navigen.EventKind.PLAY, 1_700_000_000_000 + i)
            ins2, preds2 = node.run(BUNDLE, 4, history_folder=d, profile="bob")
            self.assertEqual((ins2, json.loads(preds2)), (ins, preds))  # same history, greedy
            with self.assertRaises(ValueError):
                node.run(BUNDLE, 4, history_folder=d, profile="nobody")

    def test_a_broken_bundle_reports_the_library_error(self):
        with self.assertRaises(navigen.NavigenError):
            self.cls().run("/nonexistent/bundle", 3, item_ids="1")


if __name__ == "__main__":
    unittest.main()
