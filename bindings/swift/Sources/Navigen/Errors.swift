import CNavigen

/// A failed navigen call: the C ABI's status, carrying navigen_last_error()'s message.
public enum NavigenError: Error, Equatable, CustomStringConvertible {
    /// A wrong argument, a closed handle, a value out of range.
    case invalidArgument(String)
    /// A file could not be read or written (also: a history folder another handle holds).
    case io(String)
    /// A navigen file is damaged or of another version.
    case format(String)
    /// llama.cpp refused the model or a decode step.
    case model(String)
    /// Stopped by `cancel()`, by the task's cancellation or by a consumer that went away.
    case cancelled(String)
    /// The bundle cannot do this (e.g. next-item prediction with a zero-shot model).
    case notSupported(String)
    /// Files that do not belong together; an encrypted profile without its key.
    case mismatch(String)
    /// A bug inside navigen (a caught panic).
    case `internal`(String)
    /// A status this binding does not know (a newer library).
    case unknown(Int32, String)

    init(status: navigen_status, message: String) {
        switch status {
        case NAVIGEN_ERR_INVALID_ARGUMENT: self = .invalidArgument(message)
        case NAVIGEN_ERR_IO: self = .io(message)
        case NAVIGEN_ERR_FORMAT: self = .format(message)
        case NAVIGEN_ERR_MODEL: self = .model(message)
        case NAVIGEN_ERR_CANCELLED: self = .cancelled(message)
        case NAVIGEN_ERR_NOT_SUPPORTED: self = .notSupported(message)
        case NAVIGEN_ERR_MISMATCH: self = .mismatch(message)
        case NAVIGEN_ERR_INTERNAL: self = .internal(message)
        default: self = .unknown(Int32(bitPattern: status.rawValue), message)
        }
    }

    /// The library's message.
    public var message: String {
        switch self {
        case .invalidArgument(let m), .io(let m), .format(let m), .model(let m), .cancelled(let m),
            .notSupported(let m), .mismatch(let m), .internal(let m), .unknown(_, let m):
            return m
        }
    }

    public var description: String { "navigen: \(message)" }
}

/// Throws the error of a failed status (the message is read on this thread, right after the call).
@inline(__always)
func check(_ status: navigen_status) throws {
    if status != NAVIGEN_OK {
        throw NavigenError(status: status, message: String(cString: navigen_last_error()))
    }
}

/// A navigen-owned result string, released after reading.
func take(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p else { return "" }
    defer { navigen_string_free(p) }
    return String(cString: p)
}

/// Refuses what a C string cannot carry: the C side would read only up to the first NUL.
func cString(_ s: String, _ what: String) throws -> String {
    if s.utf8.contains(0) { throw NavigenError.invalidArgument("\(what) contains a NUL character") }
    return s
}
