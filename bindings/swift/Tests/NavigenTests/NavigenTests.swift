// The Swift package on a real bundle, trained and exported by the test run (scripts/swift-check.sh
// passes NAVIGEN_TEST_BUNDLE and NAVIGEN_TEST_HISTORY, a JSON array of item ids).
import Foundation
import XCTest

@testable import Navigen

let bundle = ProcessInfo.processInfo.environment["NAVIGEN_TEST_BUNDLE"] ?? "NAVIGEN_TEST_BUNDLE is not set"
let history: [String] = (try? JSONDecoder().decode(
    [String].self, from: Data((ProcessInfo.processInfo.environment["NAVIGEN_TEST_HISTORY"] ?? "[]").utf8))) ?? []

func tempDir() throws -> URL {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("navigen-swift-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    return d
}

/// Counts what it is given from any thread.
final class Counter: @unchecked Sendable {
    private var n = 0
    private let lock = NSLock()
    func add() -> Int {
        lock.lock()
        defer { lock.unlock() }
        n += 1
        return n
    }
}

final class EngineTests: XCTestCase {
    static var shared: Engine?
    var engine: Engine {
        if Self.shared == nil { Self.shared = try! Engine(bundle: bundle, options: EngineOptions(threads: 2)) }
        return Self.shared!
    }

    func testVersionMatchesTheHeader() {
        XCTAssertEqual(Engine.abiVersion, 2)
        XCTAssertNotNil(Engine.version.range(of: #"^\d+\.\d+\.\d+"#, options: .regularExpression))
    }

    func testPredictsDistinctCatalogItemsBestFirst() async throws {
        XCTAssertFalse(history.isEmpty, "the test history is empty")
        let preds = try await engine.predictNext(history, k: 5)
        XCTAssertEqual(preds.count, 5)
        XCTAssertEqual(Set(preds.map(\.id)).count, 5)
        XCTAssertEqual(preds.map(\.score), preds.map(\.score).sorted(by: >))
        for p in preds {
            XCTAssertTrue(p.cid.contains("<s_a_"), p.cid)
            XCTAssertFalse(p.title.isEmpty)
        }
        let reg = try await engine.registerItem("A heist thriller in Paris; Crime, Thriller")
        XCTAssertTrue(reg.cid.contains("<s_a_"), reg.cid)
    }

    func testStreamedPiecesAreTheRawAnswer() async throws {
        let opts = InstructionOptions(maxAnswerTokens: 48)
        var pieces: [String] = []
        for try await piece in engine.generateInstruction(history, options: opts) { pieces.append(piece) }
        XCTAssertGreaterThan(pieces.count, 1)
        let whole = try await engine.instruct(history, options: opts)
        XCTAssertTrue(whole.raw.hasPrefix("<think>"), String(whole.raw.prefix(80)))
        XCTAssertEqual(pieces.joined(), whole.raw) // greedy: the same text both times
    }

    func testCancellingTheConsumingTaskStopsTheCall() async throws {
        let long = InstructionOptions(maxThinkTokens: 256, maxAnswerTokens: 256)
        let got = Counter()
        let third = AsyncStream<Void>.makeStream()
        // The consumer stops reading after its third piece and waits to be cancelled, so the count is
        // what it read before the cancel, however slow this machine is.
        let consumer = Task {
            for try await _ in engine.generateInstruction(history, options: long) {
                if got.add() == 3 {
                    third.continuation.yield()
                    try await Task.sleep(nanoseconds: 120_000_000_000)
                }
            }
        }
        for await _ in third.stream { break }
        consumer.cancel() // from another task, mid-instruction
        do {
            try await consumer.value
        } catch {
            XCTAssertTrue(error is CancellationError || error is NavigenError, "\(error)")
        }
        var full = 0
        for try await _ in engine.generateInstruction(history, options: long) { full += 1 }
        let n = got.add() - 1
        XCTAssertLessThan(n, full, "\(n) pieces after the cancel, \(full) in all")
        // A consumer that takes two pieces and stops also ends the call; the engine works after.
        var two = 0
        for try await _ in engine.generateInstruction(history, options: long) {
            two += 1
            if two == 2 { break }
        }
        let preds = try await engine.predictNext(history, k: 3)
        XCTAssertEqual(preds.count, 3)
    }

    func testCancelFromAnotherTaskThrowsCancelled() async throws {
        let started = AsyncStream<Void>.makeStream()
        let cancelSent = DispatchSemaphore(value: 0)
        let count = Counter()
        let e = engine
        let call = Task {
            try await e.instruct(history, options: InstructionOptions(maxThinkTokens: 256, maxAnswerTokens: 256)) { _ in
                if count.add() == 3 {
                    started.continuation.yield()
                    // The call waits here (on the engine's queue) until the cancel was sent.
                    _ = cancelSent.wait(timeout: .now() + 60)
                }
            }
        }
        for await _ in started.stream { break }
        engine.cancel()
        cancelSent.signal()
        do {
            _ = try await call.value
            XCTFail("the call was not cancelled")
        } catch let err as NavigenError {
            guard case .cancelled = err else { return XCTFail("\(err)") }
        }
        let preds = try await engine.predictNext(history, k: 3)
        XCTAssertEqual(preds.count, 3)
    }

    func testBadArgumentsGiveReadableErrors() async throws {
        do {
            _ = try await engine.predictNext(history, k: 0)
            XCTFail("k = 0 was accepted")
        } catch let err as NavigenError {
            guard case .invalidArgument(let m) = err else { return XCTFail("\(err)") }
            XCTAssertFalse(m.isEmpty)
        }
        do {
            _ = try await engine.predictNext(["a\u{0}b"])
            XCTFail("a NUL inside an id was accepted")
        } catch let err as NavigenError {
            XCTAssertTrue(err.message.contains("NUL"), err.message)
        }
    }

    func testMissingAndDamagedBundlesAreRefused() throws {
        XCTAssertThrowsError(try Engine(bundle: "/nonexistent/navigen-bundle")) { err in
            switch err as? NavigenError {
            case .io?, .format?: break
            default: XCTFail("\(err)")
            }
        }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("bundle")
        try FileManager.default.copyItem(atPath: bundle, toPath: copy.path)
        let catalog = try FileHandle(forUpdating: copy.appendingPathComponent("catalog.nvct"))
        try catalog.seek(toOffset: 64)
        catalog.write(Data(repeating: 0xff, count: 64))
        try catalog.close()
        XCTAssertThrowsError(try Engine(bundle: copy.path)) { err in
            guard case .format(let m)? = err as? NavigenError else { return XCTFail("\(err)") }
            XCTAssertTrue(m.contains("catalog"), m)
        }
    }
}

final class HistoryTests: XCTestCase {
    func testAppendItemsExportForget() async throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        do {
            let h = try History(directory: dir.path)
            let t0: Int64 = 1_700_000_000_000
            for (i, id) in history.prefix(4).enumerated() {
                try h.append(profile: "alice", item: id, kind: .play, timestampMs: t0 + Int64(i))
            }
            try h.append(profile: "alice", item: "not-in-any-catalog", kind: .click, timestampMs: t0 + 10)
            XCTAssertEqual(try h.items(profile: "alice"), Array(history.prefix(4)) + ["not-in-any-catalog"])
            let e = try Engine(bundle: bundle)
            let events = try h.export(profile: "alice", engine: e)
            XCTAssertEqual(events.map(\.inCatalog), [true, true, true, true, false])
            XCTAssertEqual(events.last?.kind, .click)
            XCTAssertEqual(events.last?.timestampMs, t0 + 10)
            // One handle per folder.
            XCTAssertThrowsError(try History(directory: dir.path)) { err in
                guard case .io? = err as? NavigenError else { return XCTFail("\(err)") }
            }
            let byProfile = try await e.predictNext(history: h, profile: "alice", k: 3, beams: 8, excludeHistory: true)
            let byHand = try await e.predictNext(Array(history.prefix(4)) + ["not-in-any-catalog"], k: 3, beams: 8,
                                                 excludeHistory: true)
            XCTAssertEqual(byProfile, byHand)
            var text = ""
            for try await piece in e.generateInstruction(history: h, profile: "alice",
                                                         options: InstructionOptions(maxAnswerTokens: 16)) {
                text += piece
            }
            XCTAssertTrue(text.hasPrefix("<think>"))
            try h.forget(profile: "alice")
            XCTAssertEqual(try h.items(profile: "alice"), [])
        }
        // The handle was released (deinit): the lock with it.
        _ = try History(directory: dir.path)
    }

    final class MemoryKeyStore: KeyStore {
        var keys: [String: [UInt8]] = [:]
        var destroyed: [String] = []
        func key(for profile: String, create: Bool) throws -> [UInt8]? {
            if keys[profile] == nil && create { keys[profile] = (0..<32).map { _ in UInt8.random(in: 0...255) } }
            return keys[profile]
        }
        func destroyKey(for profile: String) throws {
            keys[profile] = nil
            destroyed.append(profile)
        }
    }

    struct Locked: Error {}
    final class LockedKeyStore: KeyStore {
        func key(for profile: String, create: Bool) throws -> [UInt8]? { throw Locked() }
        func destroyKey(for profile: String) throws {}
    }

    func testEncryptedItemsAreSealedAndForgetDestroysTheKey() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let store = MemoryKeyStore()
        do {
            let h = try History(directory: dir.path, keyStore: store)
            try h.append(profile: "alice", item: "secret-film-1")
            try h.append(profile: "alice", item: "secret-film-2")
            XCTAssertEqual(try h.items(profile: "alice"), ["secret-film-1", "secret-film-2"])
        }
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) {
            let bytes = try Data(contentsOf: dir.appendingPathComponent(name))
            XCTAssertNil(bytes.range(of: Data("secret-film".utf8)), name)
        }
        do {
            let h = try History(directory: dir.path, keyStore: MemoryKeyStore())
            XCTAssertThrowsError(try h.items(profile: "alice")) { err in
                guard case .mismatch? = err as? NavigenError else { return XCTFail("\(err)") }
            }
        }
        do {
            let h = try History(directory: dir.path, keyStore: LockedKeyStore())
            XCTAssertThrowsError(try h.items(profile: "alice")) { err in XCTAssertTrue(err is Locked, "\(err)") }
        }
        let h = try History(directory: dir.path, keyStore: store)
        XCTAssertEqual(try h.items(profile: "alice").count, 2)
        try h.forget(profile: "alice")
        XCTAssertEqual(store.destroyed, ["alice"])
        XCTAssertNil(store.keys["alice"])
    }
}
