import CNavigen
import Foundation

/// How a history keeps its events; `nil` keeps the library's default.
public struct HistoryOptions: Sendable {
    /// fsync after every append (an acknowledged event survives power loss). Default true.
    public var syncEveryAppend: Bool?
    /// Events kept per profile (0: unlimited). Default 10,000.
    public var maxItems: UInt32?
    /// Events older than this are dropped (0: never). Default 0.
    public var maxAgeMs: Int64?

    public init(syncEveryAppend: Bool? = nil, maxItems: UInt32? = nil, maxAgeMs: Int64? = nil) {
        self.syncEveryAppend = syncEveryAppend
        self.maxItems = maxItems
        self.maxAgeMs = maxAgeMs
    }
}

/// Where the per-profile keys of an encrypted history live: the app's secure storage (the Keychain),
/// never beside the logs. Called on the thread of the history call.
public protocol KeyStore: AnyObject {
    /// The profile's 32-byte key; with `create`, a new random one kept by the store when it has none.
    func key(for profile: String, create: Bool) throws -> [UInt8]?
    /// Destroys the profile's key (nothing to do when there is none).
    func destroyKey(for profile: String) throws
}

/// A history folder: each profile's events, crash-safe, one handle per folder (a second open, here or
/// in another process, throws `.io`). With a `KeyStore`, logs are encrypted per profile and `forget`
/// destroys the key first. Its calls are quick local file work (an fsync per append by default).
public final class History: @unchecked Sendable {
    let handle: OpaquePointer
    private let keys: KeyBox?

    public init(directory: String, options: HistoryOptions = HistoryOptions(), keyStore: KeyStore? = nil) throws {
        var p = navigen_history_params()
        try check(navigen_history_default_params(&p))
        if let v = options.syncEveryAppend { p.sync_every_append = v }
        if let v = options.maxItems { p.max_items = v }
        if let v = options.maxAgeMs { p.max_age_ms = v }
        let dir = try cString(directory, "directory")
        var out: OpaquePointer?
        if let store = keyStore {
            let box = KeyBox(store)
            var ks = navigen_key_store(get_key: getKey, destroy_key: destroyKey,
                                       user: Unmanaged.passUnretained(box).toOpaque())
            try box.rethrow(navigen_history_open_encrypted(dir, &p, &ks, &out))
            keys = box
        } else {
            try check(navigen_history_open(dir, &p, &out))
            keys = nil
        }
        handle = out!
    }

    deinit {
        // The key box is released after this (stored properties outlive deinit's body).
        navigen_history_free(handle)
    }

    /// Appends an event; returns once it is stored (and synced, by default).
    public func append(profile: String, item: String, kind: EventKind = .view,
                       timestampMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) throws {
        let p = try cString(profile, "profile"), i = try cString(item, "item")
        try call { navigen_history_append(handle, p, i, kind.rawValue, timestampMs) }
    }

    /// The profile's item ids, oldest first.
    public func items(profile: String) throws -> [String] {
        let p = try cString(profile, "profile")
        var out: UnsafeMutablePointer<CChar>?
        try call { navigen_history_items(handle, p, &out) }
        return try decode([String].self, take(out))
    }

    /// The profile's events; with an engine, whether each item is in its catalog.
    public func export(profile: String, engine: Engine? = nil) throws -> [Event] {
        let p = try cString(profile, "profile")
        var out: UnsafeMutablePointer<CChar>?
        try call { navigen_history_export(handle, p, engine?.handle, &out) }
        return try withExtendedLifetime(engine) { try decode([Event].self, take(out)) }
    }

    /// Removes the profile from disk (and destroys its key, when encrypted).
    public func forget(profile: String) throws {
        let p = try cString(profile, "profile")
        try call { navigen_history_forget(handle, p) }
    }

    private func call(_ body: () -> navigen_status) throws {
        if let keys { try keys.rethrow(body()) } else { try check(body()) }
    }
}

/// The app's key store as the C callbacks reach it; an error the store threw is rethrown by the
/// history call that caused it, in place of navigen's status. navigen calls the store on the thread
/// of the history call, one call at a time per history.
final class KeyBox {
    let store: KeyStore
    private var error: Error?
    private let lock = NSLock()

    init(_ store: KeyStore) { self.store = store }

    func failed(_ e: Error) {
        lock.lock()
        if error == nil { error = e }
        lock.unlock()
    }

    func rethrow(_ status: navigen_status) throws {
        lock.lock()
        let e = error
        error = nil
        lock.unlock()
        if let e { throw e }
        try check(status)
    }
}

private func box(_ user: UnsafeMutableRawPointer?) -> KeyBox {
    Unmanaged<KeyBox>.fromOpaque(user!).takeUnretainedValue()
}

private let getKey: @convention(c) (UnsafePointer<CChar>?, Bool, UnsafeMutablePointer<UInt8>?, UnsafeMutableRawPointer?) -> Bool = {
    profile, create, out, user in
    let b = box(user)
    guard let profile, let out else { return false }
    do {
        guard let key = try b.store.key(for: String(cString: profile), create: create) else { return false }
        guard key.count == 32 else {
            b.failed(NavigenError.invalidArgument("KeyStore.key must return 32 bytes, not \(key.count)"))
            return false
        }
        out.update(from: key, count: 32)
        return true
    } catch {
        b.failed(error)
        return false
    }
}

private let destroyKey: @convention(c) (UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Bool = { profile, user in
    let b = box(user)
    guard let profile else { return false }
    do {
        try b.store.destroyKey(for: String(cString: profile))
        return true
    } catch {
        b.failed(error)
        return false
    }
}
