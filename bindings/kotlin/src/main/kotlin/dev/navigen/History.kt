package dev.navigen

import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** How a history keeps its events; `null` keeps the library's default. */
data class HistoryOptions(
    /** fsync after every append (an acknowledged event survives power loss). Default true. */
    val syncEveryAppend: Boolean? = null,
    /** Events kept per profile (0: unlimited). Default 10,000. */
    val maxItems: Long? = null,
    /** Events older than this are dropped (0: never). Default 0. */
    val maxAgeMs: Long? = null,
)

/**
 * Where the per-profile keys of an encrypted history live: the app's secure storage (Android
 * Keystore, a Keychain), never beside the logs. Called on the thread of the history call.
 */
interface KeyStore {
    /** The profile's 32-byte key; with `create`, a new random one kept by the store when it has none. */
    fun getKey(profile: String, create: Boolean): ByteArray?

    /** Destroys the profile's key (nothing to do when there is none). */
    fun destroyKey(profile: String)
}

/**
 * A history folder: each profile's events, crash-safe, one handle per folder (a second open, here or
 * in another process, fails with [Status.IO]). With a [KeyStore], logs are encrypted per profile and
 * [forget] destroys the key first. File work runs on [Dispatchers.IO].
 */
class History(dir: String, options: HistoryOptions = HistoryOptions(), keyStore: KeyStore? = null) : AutoCloseable {
    internal val handle: NativeHandle

    init {
        val out = LongArray(2)
        NativeLib.historyOpen(
            dir.utf8("dir"),
            when (options.syncEveryAppend) { null -> -1; true -> 1; false -> 0 },
            options.maxItems?.also { require(it >= 0) { "maxItems must not be negative" } } ?: -1L,
            options.maxAgeMs?.also { require(it >= 0) { "maxAgeMs must not be negative" } } ?: -1L,
            keyStore?.let(::KeyStoreBridge),
            out,
        )
        val keys = out[1]
        handle = NativeHandle("history", out[0]) { NativeLib.historyFree(it, keys) }
    }

    /** Appends an event; returns once it is stored (and synced, by default). */
    suspend fun append(
        profile: String, itemId: String, kind: EventKind = EventKind.VIEW,
        timestampMs: Long = System.currentTimeMillis(),
    ) {
        val p = profile.utf8("profile")
        val i = itemId.utf8("itemId")
        io { h -> NativeLib.historyAppend(h, p, i, kind.code, timestampMs) }
    }

    /** The profile's item ids, oldest first. */
    suspend fun items(profile: String): List<String> {
        val p = profile.utf8("profile")
        return Json.parse(io { h -> NativeLib.historyItems(h, p).decodeToString() }).list().map { it as String }
    }

    /** The profile's events; with an engine, whether each item is in its catalog. */
    suspend fun export(profile: String, engine: Engine? = null): List<Event> {
        val p = profile.utf8("profile")
        val json = io { h ->
            if (engine == null) NativeLib.historyExport(h, p, 0L)
            else engine.handle.use { e -> NativeLib.historyExport(h, p, e) }
        }
        return Event.listFrom(json.decodeToString())
    }

    /** Removes the profile from disk (and destroys its key, when encrypted). */
    suspend fun forget(profile: String) {
        val p = profile.utf8("profile")
        io { h -> NativeLib.historyForget(h, p) }
    }

    /** Releases the folder lock once no call is in flight. Idempotent. */
    override fun close() = handle.close()

    private suspend fun <T> io(block: (Long) -> T): T = withContext(Dispatchers.IO) { handle.use(block) }
}
