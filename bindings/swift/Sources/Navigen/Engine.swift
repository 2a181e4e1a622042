import CNavigen
import Dispatch
import Foundation

/// How an engine runs; `nil` keeps the library's default.
public struct EngineOptions: Sendable {
    /// CPU threads (0: the cores available).
    public var threads: UInt32?
    /// Layers offloaded to the GPU (Metal builds).
    public var gpuLayers: UInt32?
    /// Context size per call (0: automatic).
    public var contextSize: UInt32?
    /// Sampling seed (used with a temperature).
    public var seed: UInt32?
    /// Hash every bundle file at every open instead of when it changed.
    public var verifyChecksums: Bool?

    public init(threads: UInt32? = nil, gpuLayers: UInt32? = nil, contextSize: UInt32? = nil,
                seed: UInt32? = nil, verifyChecksums: Bool? = nil) {
        self.threads = threads
        self.gpuLayers = gpuLayers
        self.contextSize = contextSize
        self.seed = seed
        self.verifyChecksums = verifyChecksums
    }
}

/// How an instruction is generated; `nil` keeps the library's default.
public struct InstructionOptions: Sendable {
    public var maxThinkTokens: UInt32?
    public var maxAnswerTokens: UInt32?
    /// 0: greedy.
    public var temperature: Float?
    public var topP: Float?
    /// Greedy decoding never repeats an n-gram of this many tokens in the answer (0: off).
    public var noRepeatNgram: UInt32?

    public init(maxThinkTokens: UInt32? = nil, maxAnswerTokens: UInt32? = nil, temperature: Float? = nil,
                topP: Float? = nil, noRepeatNgram: UInt32? = nil) {
        self.maxThinkTokens = maxThinkTokens
        self.maxAnswerTokens = maxAnswerTokens
        self.temperature = temperature
        self.topP = topP
        self.noRepeatNgram = noRepeatNgram
    }
}

/// An opened bundle (model.gguf, catalog, codebooks, bundle.json).
///
/// Native work runs on the engine's own serial queue, one call at a time (calls share the cores),
/// never on Swift's cooperative threads, which must not block. Cancelling the task, or dropping an
/// instruction stream, stops the native call at its next decode step. The engine is freed when the
/// last reference goes; a call in flight holds one.
public final class Engine: @unchecked Sendable {
    let handle: OpaquePointer
    private let queue = DispatchQueue(label: "navigen.engine", qos: .userInitiated)

    /// Opens a bundle. This reads and maps the model: call it off the main thread.
    public init(bundle: String, options: EngineOptions = EngineOptions()) throws {
        var p = navigen_engine_params()
        try check(navigen_engine_default_params(&p))
        if let v = options.threads { p.threads = v }
        if let v = options.gpuLayers { p.gpu_layers = v }
        if let v = options.contextSize { p.context_size = v }
        if let v = options.seed { p.seed = v }
        if let v = options.verifyChecksums { p.verify_checksums = v }
        var out: OpaquePointer?
        try check(navigen_engine_open(try cString(bundle, "bundle"), &p, &out))
        handle = out!
    }

    deinit {
        navigen_engine_free(handle)
    }

    /// The library's version, e.g. "0.1.0".
    public static var version: String { String(cString: navigen_version()) }
    /// The C ABI version of the linked library.
    public static var abiVersion: UInt32 { navigen_abi_version() }

    /// The `k` items most likely next after `items` (item ids, oldest first), best first.
    public func predictNext(_ items: [String], k: Int = 10, beams: UInt32? = nil,
                            excludeHistory: Bool = false) async throws -> [Prediction] {
        var p = try predictParams(k, beams, excludeHistory)
        let json = try await run { [handle] in
            var out: UnsafeMutablePointer<CChar>?
            try check(try withCStrings(items) { navigen_predict(handle, $0, $1, &p, &out) })
            return take(out)
        }
        return try decode([Prediction].self, json)
    }

    /// `predictNext` on the events of `profile` in an opened history.
    public func predictNext(history: History, profile: String, k: Int = 10, beams: UInt32? = nil,
                            excludeHistory: Bool = false) async throws -> [Prediction] {
        var p = try predictParams(k, beams, excludeHistory)
        let name = try cString(profile, "profile")
        let json = try await run { [handle] in
            var out: UnsafeMutablePointer<CChar>?
            try check(navigen_predict_for_profile(handle, history.handle, name, &p, &out))
            return take(out)
        }
        return try decode([Prediction].self, json)
    }

    /// The CID the bundle's embedder and codebooks give a new item's text (title, description, genres).
    public func registerItem(_ text: String) async throws -> Registration {
        let t = try cString(text, "text")
        let json = try await run { [handle] in
            var out: UnsafeMutablePointer<CChar>?
            try check(navigen_register_item(handle, t, &out))
            return take(out)
        }
        return try decode(Registration.self, json)
    }

    /// The instruction for what `items` points to, streamed as pieces of text (whole characters) as
    /// they are generated. Cancelling the consuming task, or dropping the stream, stops the call.
    public func generateInstruction(_ items: [String],
                                    options: InstructionOptions = InstructionOptions()) -> AsyncThrowingStream<String, Error> {
        stream(.items(items), options)
    }

    /// `generateInstruction` on the events of `profile` in an opened history.
    public func generateInstruction(history: History, profile: String,
                                    options: InstructionOptions = InstructionOptions()) -> AsyncThrowingStream<String, Error> {
        stream(.profile(history, profile), options)
    }

    /// The whole instruction (terms, text, reasoning, timings). `onText`, if given, receives the
    /// pieces as they are generated, on the engine's queue.
    public func instruct(_ items: [String], options: InstructionOptions = InstructionOptions(),
                         onText: ((String) -> Void)? = nil) async throws -> Instruction {
        try await instruct(.items(items), options, onText)
    }

    /// `instruct` on the events of `profile` in an opened history.
    public func instruct(history: History, profile: String, options: InstructionOptions = InstructionOptions(),
                         onText: ((String) -> Void)? = nil) async throws -> Instruction {
        try await instruct(.profile(history, profile), options, onText)
    }

    /// Stops every call in flight on this engine (they throw `.cancelled`). Any thread.
    public func cancel() {
        _ = navigen_cancel(handle)
    }

    // MARK: - the engine's queue

    enum Source {
        case items([String])
        case profile(History, String)
    }

    private func instruct(_ source: Source, _ o: InstructionOptions, _ onText: ((String) -> Void)?) async throws -> Instruction {
        let sink = onText.map { f in Sink { f($0); return true } }
        let json = try await run { [self] in try self.instructJSON(source, o, sink) }
        return try decode(Instruction.self, json)
    }

    private func stream(_ source: Source, _ o: InstructionOptions) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let call = Call(handle)
            // A consumer that went away (its task cancelled, the stream dropped) stops the call at
            // the next piece; the cancel also covers the prompt, where no piece comes.
            let sink = Sink { piece in
                if case .terminated = continuation.yield(piece) { return false }
                return true
            }
            continuation.onTermination = { termination in
                if case .cancelled = termination { call.cancel() }
            }
            queue.async { [self] in
                guard call.start() else {
                    continuation.finish(throwing: NavigenError.cancelled("cancelled before it started"))
                    return
                }
                let r = Result { try self.instructJSON(source, o, sink) }
                call.finish()
                switch r {
                case .success: continuation.finish()
                case .failure(let e): continuation.finish(throwing: e)
                }
            }
        }
    }

    private func instructJSON(_ source: Source, _ o: InstructionOptions, _ sink: Sink?) throws -> String {
        var p = navigen_instruction_params()
        try check(navigen_instruction_default_params(&p))
        if let v = o.maxThinkTokens { p.max_think_tokens = v }
        if let v = o.maxAnswerTokens { p.max_answer_tokens = v }
        if let v = o.temperature { p.temperature = v }
        if let v = o.topP { p.top_p = v }
        if let v = o.noRepeatNgram { p.no_repeat_ngram = v }
        let user = sink.map { Unmanaged.passUnretained($0).toOpaque() }
        let cb: navigen_token_callback? = sink == nil ? nil : onPiece
        var out: UnsafeMutablePointer<CChar>?
        let status: navigen_status
        switch source {
        case .items(let items):
            status = try withCStrings(items) { navigen_generate_instruction(handle, $0, $1, &p, cb, user, &out) }
        case .profile(let history, let profile):
            status = navigen_generate_instruction_for_profile(
                handle, history.handle, try cString(profile, "profile"), &p, cb, user, &out)
        }
        withExtendedLifetime(sink) {}
        if status != NAVIGEN_OK { navigen_string_free(out) }
        try check(status)
        return take(out)
    }

    /// Runs `body` on the engine's queue; the task's cancellation cancels it (queued: it never runs;
    /// running: navigen_cancel).
    private func run<T>(_ body: @escaping () throws -> T) async throws -> T {
        let call = Call(handle)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, Error>) in
                queue.async { [self] in
                    guard call.start() else {
                        cont.resume(throwing: NavigenError.cancelled("cancelled before it started"))
                        return
                    }
                    let r = Result { try body() }
                    call.finish()
                    withExtendedLifetime(self) { cont.resume(with: r) }
                }
            }
        } onCancel: {
            call.cancel()
        }
    }

    private func predictParams(_ k: Int, _ beams: UInt32?, _ exclude: Bool) throws -> navigen_predict_params {
        var p = navigen_predict_params()
        try check(navigen_predict_default_params(&p))
        guard k >= 0 else { throw NavigenError.invalidArgument("k must not be negative") }
        p.k = k
        if let b = beams { p.beams = b }
        p.exclude_history = exclude
        return p
    }
}

/// One native call: queued -> running -> done, or queued -> dropped when cancelled before it ran.
/// navigen_cancel is sent under the lock while running, so it reaches this call only: the next call
/// on the serial queue cannot start before this one is marked done.
final class Call: @unchecked Sendable {
    private enum State { case queued, running, done, dropped }
    private var state = State.queued
    private let lock = NSLock()
    private let engine: OpaquePointer

    init(_ engine: OpaquePointer) { self.engine = engine }

    func start() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard state == .queued else { return false }
        state = .running
        return true
    }

    func finish() {
        lock.lock()
        state = .done
        lock.unlock()
    }

    func cancel() {
        lock.lock()
        defer { lock.unlock() }
        switch state {
        case .queued: state = .dropped
        case .running: _ = navigen_cancel(engine)
        default: break
        }
    }
}

/// Receives generated text on the engine's queue; returning false stops the call.
final class Sink {
    let onPiece: (String) -> Bool
    init(_ onPiece: @escaping (String) -> Bool) { self.onPiece = onPiece }
}

private let onPiece: navigen_token_callback = { piece, len, user in
    guard let user, let piece else { return false }
    let sink = Unmanaged<Sink>.fromOpaque(user).takeUnretainedValue()
    let text = String(decoding: UnsafeRawBufferPointer(start: piece, count: len), as: UTF8.self)
    return sink.onPiece(text)
}

/// `items` as a C array of C strings for the duration of `body`.
func withCStrings<R>(_ items: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>?, Int) throws -> R) throws -> R {
    for s in items { _ = try cString(s, "an item id") }
    let copies = items.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    let ptrs: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
    return try ptrs.withUnsafeBufferPointer { try body($0.baseAddress, items.count) }
}
