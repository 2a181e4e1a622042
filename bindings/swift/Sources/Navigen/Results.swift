import Foundation

/// A predicted next item, best first.
public struct Prediction: Codable, Equatable, Sendable {
    public let id: String
    public let title: String
    public let cid: String
    public let score: Double
}

/// A creation instruction: the terms, the instruction for an image or video generator, the
/// reasoning, whether the answer parsed as the trained JSON shape, everything the model wrote and
/// timings (ms and tokens).
public struct Instruction: Codable, Equatable, Sendable {
    public let targetTid: [String]
    public let targetIns: String
    public let reasoning: String?
    public let parsed: Bool
    public let raw: String
    public let timings: [String: Double]
}

/// A catalog item.
public struct CatalogItem: Codable, Equatable, Sendable {
    public let id: String
    public let title: String
}

/// Where a new item's text lands in the catalog's CID space.
public struct Registration: Codable, Equatable, Sendable {
    public let cid: String
    /// The catalog item that already holds `cid`.
    public let takenBy: CatalogItem?
    /// The nearest CID with the same prefix that no item holds.
    public let freeCid: String?
    public let distance: Double
}

/// What happened with an item (the C ABI's `kind`).
public enum EventKind: UInt32, Codable, Sendable {
    case view = 0, click = 1, purchase = 2, play = 3, rate = 4, like = 5, other = 255

    public init(from decoder: Decoder) throws {
        let name = try decoder.singleValueContainer().decode(String.self)
        self = ["view": .view, "click": .click, "purchase": .purchase, "play": .play, "rate": .rate,
                "like": .like][name] ?? .other
    }
}

/// A stored event; `inCatalog` is known when exported with an engine.
public struct Event: Codable, Equatable, Sendable {
    public let itemId: String
    public let kind: EventKind
    public let timestampMs: Int64
    public let inCatalog: Bool?
}

func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
    let d = JSONDecoder()
    d.keyDecodingStrategy = .convertFromSnakeCase
    do {
        return try d.decode(type, from: Data(json.utf8))
    } catch {
        throw NavigenError.internal("navigen returned JSON this binding cannot read: \(error)")
    }
}
