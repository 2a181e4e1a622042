package dev.navigen

/**
 * The JNI shim's natives (bindings/kotlin/jni/navigen_jni.c registers them by these names and
 * signatures). Strings cross as UTF-8 byte arrays; negative numbers and NaN mean "the library's
 * default", so the defaults live in one place: the C ABI's *_default_params.
 */
internal object NativeLib {
    init {
        // An app may ship the shim under another name or path (tests, desktop JVMs).
        val path = System.getProperty("navigen.jni.path")
        if (path != null) System.load(path) else System.loadLibrary("navigen_jni")
    }

    /** Called by the shim to build the exception of a failed status. */
    @JvmStatic
    fun error(status: Int, message: ByteArray): Throwable =
        NavigenException(Status.of(status), message.decodeToString())

    @JvmStatic external fun abiVersion(): Int
    @JvmStatic external fun version(): ByteArray

    @JvmStatic external fun engineOpen(
        dir: ByteArray, threads: Int, gpuLayers: Int, contextSize: Int, seed: Long, verifyChecksums: Int,
    ): Long
    @JvmStatic external fun engineFree(engine: Long)
    @JvmStatic external fun cancel(engine: Long)
    @JvmStatic external fun predict(
        engine: Long, history: Array<ByteArray>, k: Int, beams: Int, excludeHistory: Boolean,
    ): ByteArray
    @JvmStatic external fun predictForProfile(
        engine: Long, history: Long, profile: ByteArray, k: Int, beams: Int, excludeHistory: Boolean,
    ): ByteArray
    @JvmStatic external fun registerItem(engine: Long, text: ByteArray): ByteArray
    /** From `items` when it is not null, else from `profile` of the opened history `history`. */
    @JvmStatic external fun instruct(
        engine: Long, items: Array<ByteArray>?, history: Long, profile: ByteArray?,
        maxThinkTokens: Int, maxAnswerTokens: Int, temperature: Float, topP: Float, noRepeatNgram: Int,
        sink: TextSink?,
    ): ByteArray

    /** `out` receives the history handle and the key store context (0 without a store). */
    @JvmStatic external fun historyOpen(
        dir: ByteArray, sync: Int, maxItems: Long, maxAgeMs: Long, keys: KeyStoreBridge?, out: LongArray,
    )
    @JvmStatic external fun historyFree(history: Long, keys: Long)
    @JvmStatic external fun historyAppend(history: Long, profile: ByteArray, item: ByteArray, kind: Int, timestampMs: Long)
    @JvmStatic external fun historyItems(history: Long, profile: ByteArray): ByteArray
    @JvmStatic external fun historyForget(history: Long, profile: ByteArray)
    @JvmStatic external fun historyExport(history: Long, profile: ByteArray, engine: Long): ByteArray
}

/** Receives generated text on the calling (engine) thread; returning false stops the call. */
internal fun interface TextSink {
    fun onText(piece: ByteArray): Boolean
}

/** The app's [KeyStore] as the shim calls it: UTF-8 profile names, no exception lost. */
internal class KeyStoreBridge(private val store: KeyStore) {
    fun getKey(profile: ByteArray, create: Boolean): ByteArray? {
        val key = store.getKey(profile.decodeToString(), create) ?: return null
        require(key.size == 32) { "KeyStore.getKey must return 32 bytes, not ${key.size}" }
        return key
    }

    fun destroyKey(profile: ByteArray): Boolean {
        store.destroyKey(profile.decodeToString())
        return true
    }
}

/** UTF-8 for the C side, which reads up to the first NUL: a NUL inside would cut the string short. */
internal fun String.utf8(what: String): ByteArray {
    require('\u0000' !in this) { "$what contains a NUL character" }
    return encodeToByteArray()
}

/**
 * A native pointer that is freed exactly once, and never while a call is using it: [close] frees it
 * at once when no call is in flight, otherwise the last call to finish does.
 */
internal class NativeHandle(private val what: String, ptr: Long, private val release: (Long) -> Unit) {
    private var ptr = ptr
    private var users = 0
    private var closed = false

    val isClosed: Boolean
        get() = synchronized(this) { closed }

    fun <T> use(block: (Long) -> T): T {
        val p = synchronized(this) {
            if (closed) throw NavigenException(Status.INVALID_ARGUMENT, "the $what is closed")
            users++
            ptr
        }
        try {
            return block(p)
        } finally {
            val free = synchronized(this) {
                users--
                closed && users == 0 && ptr != 0L
            }
            if (free) freeNow()
        }
    }

    /** Runs `block` on the pointer only if it is open and in use by a call (cancellation). */
    fun ifBusy(block: (Long) -> Unit) = synchronized(this) { if (!closed && users > 0) block(ptr) }

    fun close() {
        val free = synchronized(this) {
            if (closed) return
            closed = true
            users == 0
        }
        if (free) freeNow()
    }

    private fun freeNow() {
        val p = synchronized(this) { ptr.also { ptr = 0L } }
        if (p != 0L) release(p)
    }
}
