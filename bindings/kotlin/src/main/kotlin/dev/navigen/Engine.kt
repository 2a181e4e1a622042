package dev.navigen

import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.atomic.AtomicBoolean
import java.util.concurrent.atomic.AtomicReference
import java.util.concurrent.locks.LockSupport
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlinx.coroutines.withContext

/** How an engine runs; `null` keeps the library's default. */
data class EngineOptions(
    /** CPU threads (0: the cores available). */
    val threads: Int? = null,
    /** Layers offloaded to a GPU (Metal/Vulkan builds). */
    val gpuLayers: Int? = null,
    /** Context size per call (0: automatic). */
    val contextSize: Int? = null,
    /** Sampling seed (used with a temperature). */
    val seed: Long? = null,
    /** Hash every bundle file at every open instead of when it changed. */
    val verifyChecksums: Boolean? = null,
)

/** How an instruction is generated; `null` keeps the library's default. */
data class InstructionOptions(
    val maxThinkTokens: Int? = null,
    val maxAnswerTokens: Int? = null,
    /** 0: greedy. */
    val temperature: Float? = null,
    val topP: Float? = null,
    /** Greedy decoding never repeats an n-gram of this many tokens in the answer (0: off). */
    val noRepeatNgram: Int? = null,
)

/**
 * An opened bundle (model.gguf, catalog, codebooks, bundle.json).
 *
 * Native work runs on the engine's own thread, one call at a time (calls share the cores, so
 * running them side by side would only make each slower), never on the caller's: the suspend
 * functions and flows can be used from the main thread. Cancelling the coroutine or the flow's
 * collector stops the native call at its next decode step. [close] releases the model; calls in
 * flight then end with [Status.CANCELLED].
 *
 * Opening reads and maps the model: use [open] from a coroutine, or construct it off the main thread.
 */
class Engine(bundleDir: String, options: EngineOptions = EngineOptions()) : AutoCloseable {
    internal val handle: NativeHandle = NativeHandle(
        "engine",
        NativeLib.engineOpen(
            bundleDir.utf8("bundleDir"),
            nonNegative(options.threads, "threads"),
            nonNegative(options.gpuLayers, "gpuLayers"),
            nonNegative(options.contextSize, "contextSize"),
            options.seed?.also { require(it in 0..0xffff_ffffL) { "seed is a 32-bit unsigned value" } } ?: -1L,
            when (options.verifyChecksums) { null -> -1; true -> 1; false -> 0 },
        ),
        NativeLib::engineFree,
    )

    private val thread: ExecutorService = Executors.newSingleThreadExecutor { r ->
        Thread(r, "navigen-engine").apply { isDaemon = true }
    }

    companion object {
        /** Opens a bundle on the IO dispatcher. */
        suspend fun open(bundleDir: String, options: EngineOptions = EngineOptions()): Engine =
            withContext(Dispatchers.IO) { Engine(bundleDir, options) }

        /** The library's version, e.g. "0.1.0". */
        val version: String
            get() = NativeLib.version().decodeToString()

        /** The C ABI version of the loaded library. */
        val abiVersion: Int
            get() = NativeLib.abiVersion()
    }

    /** The `k` items most likely next after `items` (item ids, oldest first), best first. */
    suspend fun predictNext(
        items: List<String>, k: Int = 10, beams: Int? = null, excludeHistory: Boolean = false,
    ): List<Prediction> {
        val ids = ids(items)
        return Prediction.listFrom(onEngineThread { e ->
            NativeLib.predict(e, ids, k, nonNegative(beams, "beams"), excludeHistory).decodeToString()
        })
    }

    /** [predictNext] on the events of `profile` in an opened history. */
    suspend fun predictNext(
        history: History, profile: String, k: Int = 10, beams: Int? = null, excludeHistory: Boolean = false,
    ): List<Prediction> {
        val p = profile.utf8("profile")
        return Prediction.listFrom(onEngineThread { e ->
            history.handle.use { h ->
                NativeLib.predictForProfile(e, h, p, k, nonNegative(beams, "beams"), excludeHistory).decodeToString()
            }
        })
    }

    /** The CID the bundle's embedder and codebooks give a new item's text (title, description, genres). */
    suspend fun registerItem(text: String): Registration {
        val t = text.utf8("text")
        return Registration.from(onEngineThread { e -> NativeLib.registerItem(e, t).decodeToString() })
    }

    /**
     * The instruction for what `items` points to, streamed: each element is a piece of the text as it
     * is generated (whole characters). Cancelling the collector stops the native call.
     */
    fun generateInstruction(items: List<String>, options: InstructionOptions = InstructionOptions()): Flow<String> {
        val ids = ids(items)
        return stream { e, sink -> options.run(e, ids, 0L, null, sink) }
    }

    /** [generateInstruction] on the events of `profile` in an opened history. */
    fun generateInstruction(
        history: History, profile: String, options: InstructionOptions = InstructionOptions(),
    ): Flow<String> {
        val p = profile.utf8("profile")
        return stream { e, sink -> history.handle.use { h -> options.run(e, null, h, p, sink) } }
    }

    /**
     * The whole instruction (terms, text, reasoning, timings). `onText`, if given, receives the pieces
     * as they are generated, on the engine's thread.
     */
    suspend fun instruct(
        items: List<String>, options: InstructionOptions = InstructionOptions(), onText: ((String) -> Unit)? = null,
    ): Instruction {
        val ids = ids(items)
        return Instruction.from(onEngineThread { e -> options.run(e, ids, 0L, null, sink(onText)) })
    }

    /** [instruct] on the events of `profile` in an opened history. */
    suspend fun instruct(
        history: History, profile: String, options: InstructionOptions = InstructionOptions(),
        onText: ((String) -> Unit)? = null,
    ): Instruction {
        val p = profile.utf8("profile")
        return Instruction.from(onEngineThread { e ->
            history.handle.use { h -> options.run(e, null, h, p, sink(onText)) }
        })
    }

    /** Stops every call in flight on this engine (they end with [Status.CANCELLED]). Any thread. */
    fun cancel() = handle.ifBusy(NativeLib::cancel)

    /** Stops calls in flight and releases the model once they have returned. Idempotent. */
    override fun close() {
        cancel()
        handle.close()
        thread.shutdown()
    }

    // --- the engine thread ----------------------------------------------------------------------

    /** One native call: QUEUED -> RUNNING -> DONE, or QUEUED -> DROPPED when cancelled before it ran. */
    private inner class Call<T>(private val block: (Long) -> T) {
        private var state = QUEUED

        fun run(): Result<T>? {
            synchronized(this) {
                if (state != QUEUED) return null
                state = RUNNING
            }
            val r = runCatching { handle.use(block) }
            synchronized(this) { state = DONE }
            return r
        }

        /**
         * Under this call's lock, so navigen_cancel reaches this call only: the next call cannot
         * start before this one is marked DONE, and a cancel only affects calls already in flight.
         */
        fun cancel() = synchronized(this) {
            when (state) {
                QUEUED -> state = DROPPED
                RUNNING -> handle.ifBusy(NativeLib::cancel)
            }
        }
    }

    /** Sees how every native call ended (tests: a cancelled stream's call ended CANCELLED). */
    @Volatile
    internal var onCallEnd: ((Result<*>) -> Unit)? = null

    private fun <T> submit(block: (Long) -> T, done: (Result<T>) -> Unit): Call<T> {
        val call = Call(block)
        try {
            thread.execute {
                call.run()?.let {
                    onCallEnd?.invoke(it)
                    done(it)
                }
            }
        } catch (e: RejectedExecutionException) {
            done(Result.failure(NavigenException(Status.INVALID_ARGUMENT, "the engine is closed")))
        }
        return call
    }

    private suspend fun <T> onEngineThread(block: (Long) -> T): T = suspendCancellableCoroutine { cont ->
        val call = submit(block) { cont.resumeWith(it) }
        cont.invokeOnCancellation { call.cancel() }
    }

    private fun stream(run: (Long, TextSink) -> String): Flow<String> = callbackFlow {
        // The engine thread hands pieces over with trySend and, while the collector is behind
        // (backpressure), waits parked until there is room or the flow has ended; the end wakes it.
        // Not trySendBlocking: its suspended send was not always released when the collector was
        // cancelled, which left the engine thread blocked for good (1 run in 6 of the cancel test).
        val stopped = AtomicBoolean(false)
        val waiting = AtomicReference<Thread?>(null)
        val sink = TextSink { piece ->
            val text = piece.decodeToString()
            waiting.set(Thread.currentThread())
            while (!stopped.get()) {
                val r = trySend(text)
                if (r.isSuccess) return@TextSink true
                if (r.isClosed) return@TextSink false
                LockSupport.parkNanos(PARK_NANOS)
            }
            false
        }
        val call = submit({ e -> run(e, sink) }) { r -> r.fold({ close() }, { close(it) }) }
        awaitClose {
            stopped.set(true)
            waiting.get()?.let(LockSupport::unpark)
            call.cancel()
        }
    }

    private fun InstructionOptions.run(e: Long, ids: Array<ByteArray>?, h: Long, profile: ByteArray?, sink: TextSink?): String =
        NativeLib.instruct(
            e, ids, h, profile,
            nonNegative(maxThinkTokens, "maxThinkTokens"), nonNegative(maxAnswerTokens, "maxAnswerTokens"),
            temperature ?: Float.NaN, topP ?: Float.NaN, nonNegative(noRepeatNgram, "noRepeatNgram"), sink,
        ).decodeToString()

    private fun sink(onText: ((String) -> Unit)?): TextSink? =
        onText?.let { f -> TextSink { piece -> f(piece.decodeToString()); true } }

    private fun ids(items: List<String>): Array<ByteArray> = Array(items.size) { items[it].utf8("an item id") }
}

/** How long the engine thread waits between offers of a piece while the collector is behind. */
private const val PARK_NANOS = 2_000_000L

private const val QUEUED = 0
private const val RUNNING = 1
private const val DONE = 2
private const val DROPPED = 3

/** null: the library's default (-1 to the shim); a negative value is the caller's mistake. */
internal fun nonNegative(v: Int?, what: String): Int {
    if (v == null) return -1
    require(v >= 0) { "$what must not be negative" }
    return v
}
