"""The Python package on a real bundle (trained and exported by the test run: sdk/ffi/tests/bindings.rs
sets NAVIGEN_TEST_BUNDLE, NAVIGEN_TEST_HISTORY and NAVIGEN_LIB). Plain unittest: pytest collects it
too, and it runs where pytest is not installed."""
import json
import os
import shutil
import tempfile
import threading
import time
import unittest

import navigen

BUNDLE = os.environ["NAVIGEN_TEST_BUNDLE"]
HISTORY = json.loads(os.environ["NAVIGEN_TEST_HISTORY"])


class EngineTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.engine = navigen.Engine(BUNDLE, threads=2)

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()

    def test_version(self):
        self.assertRegex(navigen.version(), r"^\d+\.\d+\.\d+")

    def test_predicts_distinct_catalog_items_best_first(self):
        preds = self.engine.predict_next(HISTORY, k=5)
        self.assertEqual(len(preds), 5)
        self.assertEqual(len({p.id for p in preds}), 5)
        scores = [p.score for p in preds]
        self.assertEqual(scores, sorted(scores, reverse=True))
        for p in preds:
            self.assertIn("<s_a_", p.cid)
            self.assertTrue(p.title)
        # A new item's text gets a CID of the catalog's shape.
        reg = self.engine.register_item("A heist thriller in Paris; Crime, Thriller")
        self.assertIn("<s_a_", reg["cid"])

    def test_streamed_pieces_are_the_raw_answer(self):
        pieces = []
        ins = self.engine.generate_instruction(HISTORY, on_text=pieces.append, max_answer_tokens=48)
        self.assertTrue(ins.raw.startswith("<think>"), ins.raw[:80])
        self.assertEqual("".join(pieces), ins.raw)
        stream = self.engine.stream_instruction(HISTORY, max_answer_tokens=48)
        joined = "".join(stream)
        self.assertEqual(joined, stream.result.raw)
        self.assertEqual(stream.result.raw, ins.raw)  # greedy: the same text again

    def test_cancel_from_another_thread_stops_mid_instruction(self):
        got = []

        def on_text(t):
            got.append(t)
            if len(got) == 3:
                # navigen_cancel from another thread, done before this piece returns: the call
                # stops at its next decode step.
                c = threading.Thread(target=self.engine.cancel)
                c.start()
                c.join()

        with self.assertRaises(navigen.Cancelled) as cm:
            self.engine.generate_instruction(HISTORY, on_text=on_text, max_think_tokens=256, max_answer_tokens=256)
        self.assertEqual(cm.exception.status, navigen.Status.CANCELLED)
        self.assertEqual(len(got), 3)
        # The engine works again after a cancelled call (the cancel applied to calls in flight).
        self.assertEqual(len(self.engine.predict_next(HISTORY, k=3)), 3)

    def test_a_consumer_that_stops_reading_stops_the_call(self):
        stream = self.engine.stream_instruction(HISTORY, max_think_tokens=256, max_answer_tokens=256)
        it = iter(stream)
        first = next(it)
        self.assertTrue(first)
        stream.close()
        self.assertFalse(stream._thread.is_alive())
        self.assertIsInstance(stream.error, navigen.Cancelled)
        self.assertIsNone(stream.result)
        self.assertEqual(list(stream), [])  # closed: nothing more comes
        # The engine still works after a cancelled call.
        self.assertEqual(len(self.engine.predict_next(HISTORY, k=3)), 3)

    def test_an_exception_in_the_callback_stops_the_call_and_surfaces(self):
        def boom(_t):
            raise KeyError("from the callback")

        with self.assertRaises(KeyError):
            self.engine.generate_instruction(HISTORY, on_text=boom)

    def test_bad_arguments_raise_readable_errors(self):
        with self.assertRaises(TypeError):
            self.engine.predict_next("ml100k:1", k=3)
        with self.assertRaises(navigen.NavigenError) as cm:
            self.engine.predict_next(HISTORY, k=0)
        self.assertEqual(cm.exception.status, navigen.Status.INVALID_ARGUMENT)
        self.assertTrue(cm.exception.message)


class BrokenBundleTest(unittest.TestCase):
    def test_missing_and_damaged_bundles_are_refused(self):
        with self.assertRaises(navigen.NavigenError) as cm:
            navigen.Engine("/nonexistent/navigen-bundle")
        self.assertIn(cm.exception.status, (navigen.Status.IO, navigen.Status.FORMAT))
        with tempfile.TemporaryDirectory() as d:
            b = os.path.join(d, "bundle")
            shutil.copytree(BUNDLE, b)
            with open(os.path.join(b, "catalog.nvct"), "r+b") as f:
                f.seek(64)
                f.write(b"\xff" * 64)
            with self.assertRaises(navigen.NavigenError) as cm:
                navigen.Engine(b)
            self.assertEqual(cm.exception.status, navigen.Status.FORMAT, cm.exception)
            self.assertIn("catalog", cm.exception.message)

    def test_a_closed_engine_refuses_calls(self):
        e = navigen.Engine(BUNDLE)
        e.close()
        e.close()  # idempotent
        with self.assertRaises(navigen.NavigenError):
            e.predict_next(HISTORY, k=1)


class HistoryTest(unittest.TestCase):
    def test_append_items_export_forget(self):
        with tempfile.TemporaryDirectory() as d:
            with navigen.History(d) as h:
                t0 = int(time.time() * 1000)
                for i, item in enumerate(HISTORY[:4]):
                    h.append("alice", item, navigen.EventKind.PLAY, t0 + i)
                h.append("alice", "not-in-any-catalog", navigen.EventKind.CLICK, t0 + 10)
                self.assertEqual(h.items("alice"), HISTORY[:4] + ["not-in-any-catalog"])
                with navigen.Engine(BUNDLE) as e:
                    events = h.export("alice", engine=e)
                    flags = [ev["in_catalog"] for ev in events]
                    self.assertEqual(flags, [True] * 4 + [False])
                    self.assertEqual(len(e.predict_next(h.items("alice")[:4], k=2)), 2)
                # One handle per folder.
                with self.assertRaises(navigen.NavigenError) as cm:
                    navigen.History(d)
                self.assertEqual(cm.exception.status, navigen.Status.IO)
                h.forget("alice")
                self.assertEqual(h.items("alice"), [])
            # Closed: the lock is released.
            navigen.History(d).close()

    def test_predict_from_a_profile_with_beam_width_and_exclusion(self):
        with tempfile.TemporaryDirectory() as d, navigen.History(d) as h, navigen.Engine(BUNDLE) as e:
            for i, item in enumerate(HISTORY):
                h.append("u", item, navigen.EventKind.PLAY, 1700000000000 + i)
            by_profile = e.predict_for_profile(h, "u", k=6, beams=8, exclude_history=True)
            by_hand = e.predict_next(HISTORY, k=6, beams=8, exclude_history=True)
            self.assertEqual(by_profile, by_hand)
            self.assertEqual(len(by_profile), 6)
            self.assertFalse({p.id for p in by_profile} & set(HISTORY))
            with self.assertRaises(navigen.NavigenError) as cm:
                e.predict_next(HISTORY, beams=0)
            self.assertEqual(cm.exception.status, navigen.Status.INVALID_ARGUMENT)
            with self.assertRaises(navigen.NavigenError) as cm:
                e.predict_for_profile(h, "nobody")
            self.assertEqual(cm.exception.status, navigen.Status.INVALID_ARGUMENT)

    def test_instruct_from_a_profile_is_the_instruction_for_its_items(self):
        with tempfile.TemporaryDirectory() as d, navigen.History(d) as h, navigen.Engine(BUNDLE) as e:
            for i, item in enumerate(HISTORY):
                h.append("u", item, navigen.EventKind.PLAY, 1700000000000 + i)
            pieces = []
            by_profile = e.instruct_for_profile(h, "u", on_text=pieces.append, max_answer_tokens=32)
            self.assertEqual(by_profile.raw, e.generate_instruction(HISTORY, max_answer_tokens=32).raw)
            self.assertEqual("".join(pieces), by_profile.raw)
            with self.assertRaises(navigen.NavigenError) as cm:
                e.instruct_for_profile(h, "nobody")
            self.assertEqual(cm.exception.status, navigen.Status.INVALID_ARGUMENT)

    def test_invalid_profile_names_are_refused(self):
        with tempfile.TemporaryDirectory() as d, navigen.History(d) as h:
            with self.assertRaises(navigen.NavigenError) as cm:
                h.append("x" * 101, "ml100k:1")
            self.assertEqual(cm.exception.status, navigen.Status.INVALID_ARGUMENT)


class DictKeyStore:
    """A key store in memory, as a Keychain/Keystore wrapper of an app would be."""

    def __init__(self):
        self.keys = {}
        self.destroyed = []

    def get_key(self, profile, create):
        if profile not in self.keys and create:
            self.keys[profile] = os.urandom(32)
        return self.keys.get(profile)

    def destroy_key(self, profile):
        self.keys.pop(profile, None)
        self.destroyed.append(profile)


class EncryptedHistoryTest(unittest.TestCase):
    def test_items_are_sealed_a_wrong_store_is_refused_and_forget_destroys_the_key(self):
        with tempfile.TemporaryDirectory() as d:
            store = DictKeyStore()
            with navigen.History(d, key_store=store) as h:
                h.append("alice", "secret-film-1")
                h.append("alice", "secret-film-2")
                self.assertEqual(h.items("alice"), ["secret-film-1", "secret-film-2"])
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as f:
                    self.assertNotIn(b"secret-film", f.read(), name)
            # Another store, or none: refused as a mismatch, and the log is kept.
            for other in (DictKeyStore(), None):
                with navigen.History(d, key_store=other) as h:
                    with self.assertRaises(navigen.NavigenError) as cm:
                        h.items("alice")
                    self.assertEqual(cm.exception.status, navigen.Status.MISMATCH)
            with navigen.History(d, key_store=store) as h:
                self.assertEqual(h.items("alice"), ["secret-film-1", "secret-film-2"])
                h.forget("alice")
                self.assertEqual(store.destroyed, ["alice"])
                self.assertNotIn("alice", store.keys)
                self.assertEqual(h.items("alice"), [])

    def test_a_failing_key_store_is_an_error_not_a_crash(self):
        class Broken:
            def get_key(self, profile, create):
                raise RuntimeError("keychain locked")

            def destroy_key(self, profile):
                raise RuntimeError("keychain locked")

        with tempfile.TemporaryDirectory() as d, navigen.History(d, key_store=Broken()) as h:
            with self.assertRaises(navigen.NavigenError):
                h.append("alice", "x")
            with self.assertRaises(navigen.NavigenError):
                h.forget("alice")


if __name__ == "__main__":
    unittest.main()
