package dev.navigen

import java.io.File
import java.io.RandomAccessFile
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitCancellation
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.collect
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.AfterClass
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.BeforeClass
import org.junit.Test

/**
 * The Kotlin binding on a real bundle, trained and exported by the test run
 * (sdk/ffi/tests/bindings.rs passes NAVIGEN_TEST_BUNDLE and NAVIGEN_TEST_HISTORY, a JSON array of ids).
 */
class EngineTest {
    companion object {
        val bundle: String = System.getenv("NAVIGEN_TEST_BUNDLE") ?: error("NAVIGEN_TEST_BUNDLE is not set")
        val history: List<String> = Json.parse(System.getenv("NAVIGEN_TEST_HISTORY") ?: "[]").list().map { it as String }
        lateinit var engine: Engine

        @BeforeClass @JvmStatic
        fun open() {
            engine = runBlocking { Engine.open(bundle, EngineOptions(threads = 2)) }
        }

        @AfterClass @JvmStatic
        fun close() = engine.close()
    }

    @Test
    fun versionMatchesTheHeader() {
        assertEquals(2, Engine.abiVersion)
        assertTrue(Engine.version, Engine.version.matches(Regex("""\d+\.\d+\.\d+.*""")))
    }

    @Test
    fun predictsDistinctCatalogItemsBestFirst() = runBlocking {
        assertTrue("the test history is empty", history.isNotEmpty())
        val preds = engine.predictNext(history, k = 5)
        assertEquals(5, preds.size)
        assertEquals(5, preds.map { it.id }.toSet().size)
        assertEquals(preds.map { it.score }.sortedDescending(), preds.map { it.score })
        for (p in preds) {
            assertTrue(p.cid, "<s_a_" in p.cid)
            assertTrue(p.title.isNotEmpty())
        }
        val reg = engine.registerItem("A heist thriller in Paris; Crime, Thriller")
        assertTrue(reg.cid, "<s_a_" in reg.cid)
    }

    @Test
    fun streamedPiecesAreTheRawAnswer() = runBlocking {
        val opts = InstructionOptions(maxAnswerTokens = 48)
        val pieces = engine.generateInstruction(history, opts).toList()
        assertTrue(pieces.size > 1)
        val whole = engine.instruct(history, opts)
        assertTrue(whole.raw.take(80), whole.raw.startsWith("<think>"))
        assertEquals(whole.raw, pieces.joinToString("")) // greedy: the same text both times
        val viaCallback = StringBuilder()
        assertEquals(whole, engine.instruct(history, opts) { viaCallback.append(it) }.copy(timings = whole.timings))
        assertEquals(whole.raw, viaCallback.toString())
    }

    @Test
    fun cancellingTheCollectorStopsTheNativeCall() = runBlocking {
        val long = InstructionOptions(maxThinkTokens = 256, maxAnswerTokens = 256)
        val got = CopyOnWriteArrayList<String>()
        val third = CompletableDeferred<Unit>()
        val ended = CompletableDeferred<Result<*>>()
        engine.onCallEnd = { ended.complete(it) }
        // No buffer, and the collector waits after its third piece: the generation cannot run ahead
        // and finish before the cancel, however slow this machine is.
        val collector = launch(Dispatchers.Default) {
            engine.generateInstruction(history, long).buffer(0).collect {
                got.add(it)
                if (got.size == 3) {
                    third.complete(Unit)
                    awaitCancellation()
                }
            }
        }
        third.await()
        collector.cancel() // from another coroutine, mid-instruction
        collector.join()
        assertTrue(collector.isCancelled)
        // The native call itself was stopped, not just no longer read.
        val end = ended.await().exceptionOrNull()
        engine.onCallEnd = null
        assertTrue("$end", end is NavigenException && end.status == Status.CANCELLED)
        // The native call stopped: far fewer pieces than the full answer has.
        val full = engine.generateInstruction(history, long).toList()
        assertTrue("${got.size} pieces after cancel, ${full.size} in all", got.size < full.size)
        // A consumer that takes a few pieces and stops also stops the call.
        assertEquals(2, engine.generateInstruction(history, long).take(2).toList().size)
        assertEquals(3, engine.predictNext(history, k = 3).size)
    }

    @Test
    fun cancelFromAnotherCoroutineEndsTheCallWithCancelled() = runBlocking {
        val pieces = AtomicInteger()
        val started = CompletableDeferred<Unit>()
        val cancelled = CountDownLatch(1)
        val call = async(Dispatchers.Default) {
            runCatching {
                engine.instruct(history, InstructionOptions(maxThinkTokens = 256, maxAnswerTokens = 256)) {
                    if (pieces.incrementAndGet() == 3) {
                        started.complete(Unit)
                        // The call waits here until the cancel was sent: it cannot finish first.
                        cancelled.await(60, TimeUnit.SECONDS)
                    }
                }
            }
        }
        started.await()
        engine.cancel()
        cancelled.countDown()
        val e = call.await().exceptionOrNull()
        assertTrue("expected NavigenException, got $e", e is NavigenException)
        assertEquals(Status.CANCELLED, (e as NavigenException).status)
        // The engine works after a cancelled call.
        assertEquals(3, engine.predictNext(history, k = 3).size)
    }

    @Test
    fun cancellingASuspendedPredictionLeavesTheEngineUsable() = runBlocking {
        val job = launch(Dispatchers.Default) { engine.instruct(history, InstructionOptions(maxThinkTokens = 256)) }
        val queued = async(Dispatchers.Default) { engine.predictNext(history, k = 2) }
        job.cancel()
        queued.cancel()
        job.join()
        try {
            queued.await()
        } catch (_: CancellationException) {
        }
        assertEquals(2, engine.predictNext(history, k = 2).size)
    }

    @Test
    fun anExceptionInTheCollectorStopsTheCallAndSurfaces() = runBlocking {
        try {
            engine.generateInstruction(history).collect { throw IllegalStateException("from the collector") }
            fail("no exception")
        } catch (e: IllegalStateException) {
            assertEquals("from the collector", e.message)
        }
        try {
            engine.instruct(history) { throw IllegalStateException("from the callback") }
            fail("no exception")
        } catch (e: IllegalStateException) {
            assertEquals("from the callback", e.message)
        }
        assertEquals(1, engine.predictNext(history, k = 1).size)
    }

    @Test
    fun badArgumentsGiveReadableErrors() = runBlocking {
        try {
            engine.predictNext(history, k = 0)
            fail("k = 0 was accepted")
        } catch (e: NavigenException) {
            assertEquals(Status.INVALID_ARGUMENT, e.status)
            assertTrue(e.message!!.isNotEmpty())
        }
        try {
            engine.predictNext(listOf("a\u0000b"))
            fail("a NUL inside an id was accepted")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message!!.contains("NUL"))
        }
    }

    @Test
    fun missingAndDamagedBundlesAreRefused() {
        try {
            Engine("/nonexistent/navigen-bundle").close()
            fail("opened a missing bundle")
        } catch (e: NavigenException) {
            assertTrue(e.toString(), e.status == Status.IO || e.status == Status.FORMAT)
        }
        val dir = Files.createTempDirectory("navigen-kt").toFile()
        try {
            val copy = File(dir, "bundle")
            File(bundle).copyRecursively(copy)
            RandomAccessFile(File(copy, "catalog.nvct"), "rw").use {
                it.seek(64)
                it.write(ByteArray(64) { 0xff.toByte() })
            }
            try {
                Engine(copy.path).close()
                fail("opened a damaged bundle")
            } catch (e: NavigenException) {
                assertEquals(e.toString(), Status.FORMAT, e.status)
                assertTrue(e.message!!, e.message!!.contains("catalog"))
            }
        } finally {
            dir.deleteRecursively()
        }
    }

    @Test
    fun aClosedEngineRefusesCalls() = runBlocking {
        val e = Engine(bundle)
        e.close()
        e.close() // idempotent
        try {
            e.predictNext(history, k = 1)
            fail("a closed engine answered")
        } catch (x: NavigenException) {
            assertEquals(Status.INVALID_ARGUMENT, x.status)
        }
    }

    @Test
    fun closingStopsACallInFlight() = runBlocking {
        val e = Engine(bundle)
        val first = CompletableDeferred<Unit>()
        val closed = CountDownLatch(1)
        val call = async(Dispatchers.Default) {
            runCatching {
                e.instruct(history, InstructionOptions(maxThinkTokens = 256)) {
                    if (first.complete(Unit)) closed.await(60, TimeUnit.SECONDS)
                }
            }
        }
        first.await()
        e.close()
        closed.countDown()
        val x = call.await().exceptionOrNull()
        assertTrue("$x", x is NavigenException && x.status == Status.CANCELLED)
    }
}

class HistoryTest {
    private val bundle = EngineTest.bundle
    private val items = EngineTest.history

    private fun <T> inTempDir(block: (String) -> T): T {
        val d = Files.createTempDirectory("navigen-kt-history").toFile()
        try {
            return block(d.path)
        } finally {
            d.deleteRecursively()
        }
    }

    @Test
    fun appendItemsExportForget() = inTempDir { d ->
        runBlocking {
            History(d).use { h ->
                val t0 = System.currentTimeMillis()
                items.take(4).forEachIndexed { i, id -> h.append("alice", id, EventKind.PLAY, t0 + i) }
                h.append("alice", "not-in-any-catalog", EventKind.CLICK, t0 + 10)
                assertEquals(items.take(4) + "not-in-any-catalog", h.items("alice"))
                Engine(bundle).use { e ->
                    val events = h.export("alice", e)
                    assertEquals(listOf(true, true, true, true, false), events.map { it.inCatalog })
                    assertEquals(EventKind.CLICK, events.last().kind)
                    assertEquals(t0 + 10, events.last().timestampMs)
                }
                // One handle per folder.
                try {
                    History(d).close()
                    fail("a second handle opened the folder")
                } catch (x: NavigenException) {
                    assertEquals(Status.IO, x.status)
                }
                h.forget("alice")
                assertEquals(emptyList<String>(), h.items("alice"))
            }
            History(d).close() // closed: the lock was released
        }
    }

    @Test
    fun predictAndInstructFromAProfile() = inTempDir { d ->
        runBlocking {
            History(d).use { h ->
                Engine(bundle).use { e ->
                    items.forEachIndexed { i, id -> h.append("u", id, EventKind.PLAY, 1_700_000_000_000 + i) }
                    val byProfile = e.predictNext(h, "u", k = 6, beams = 8, excludeHistory = true)
                    assertEquals(e.predictNext(items, k = 6, beams = 8, excludeHistory = true), byProfile)
                    assertEquals(6, byProfile.size)
                    assertTrue(byProfile.none { it.id in items })
                    val opts = InstructionOptions(maxAnswerTokens = 32)
                    assertEquals(e.instruct(items, opts).raw, e.generateInstruction(h, "u", opts).toList().joinToString(""))
                    try {
                        e.predictNext(h, "nobody")
                        fail("predicted for a profile without events")
                    } catch (x: NavigenException) {
                        assertEquals(Status.INVALID_ARGUMENT, x.status)
                    }
                }
            }
        }
    }

    class MapKeyStore : KeyStore {
        val keys = HashMap<String, ByteArray>()
        val destroyed = ArrayList<String>()
        override fun getKey(profile: String, create: Boolean): ByteArray? {
            if (profile !in keys && create) keys[profile] = ByteArray(32).also { java.security.SecureRandom().nextBytes(it) }
            return keys[profile]
        }

        override fun destroyKey(profile: String) {
            keys.remove(profile)
            destroyed.add(profile)
        }
    }

    @Test
    fun encryptedItemsAreSealedAndForgetDestroysTheKey() = inTempDir { d ->
        runBlocking {
            val store = MapKeyStore()
            History(d, keyStore = store).use { h ->
                h.append("alice", "secret-film-1")
                h.append("alice", "secret-film-2")
                assertEquals(listOf("secret-film-1", "secret-film-2"), h.items("alice"))
            }
            for (f in File(d).listFiles()!!) {
                assertFalse(f.name, String(f.readBytes(), Charsets.ISO_8859_1).contains("secret-film"))
            }
            // Another store: refused as a mismatch, and the log is kept.
            History(d, keyStore = MapKeyStore()).use { h ->
                try {
                    h.items("alice")
                    fail("read without the key")
                } catch (x: NavigenException) {
                    assertEquals(Status.MISMATCH, x.status)
                }
            }
            History(d, keyStore = store).use { h ->
                assertEquals(2, h.items("alice").size)
                h.forget("alice")
            }
            assertEquals(listOf("alice"), store.destroyed)
            assertFalse("alice" in store.keys)
        }
    }

    @Test
    fun aThrowingKeyStoreSurfacesItsException() = inTempDir { d ->
        runBlocking {
            val broken = object : KeyStore {
                override fun getKey(profile: String, create: Boolean): ByteArray? = throw SecurityException("keystore locked")
                override fun destroyKey(profile: String) {}
            }
            History(d, keyStore = broken).use { h ->
                try {
                    h.append("alice", "x")
                    fail("appended without a key")
                } catch (x: SecurityException) {
                    assertEquals("keystore locked", x.message)
                }
            }
        }
    }
}
