// A JSON tree for the small documents Offload reads (safetensors headers,
// config.json, shard indexes), and string escaping for the ones it writes.
// Not a general JSON library: no streaming, no number fidelity past Int / Double.

import Foundation
import Tensors

public indirect enum JSONValue: Sendable, Equatable, Decodable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Parses a JSON document; the error is one line, without the decoder's context dump.
    public static func parse(_ data: Data) throws -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch let DecodingError.dataCorrupted(ctx) {
            let detail = (ctx.underlyingError.map { "\($0)" } ?? ctx.debugDescription)
            throw OffloadJSONError(message: oneLine(detail))
        } catch {
            throw OffloadJSONError(message: oneLine("\(error)"))
        }
    }

    /// "an integer", "a string", ...: for messages that say what was found.
    public var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    public var int: Int? { if case .int(let v) = self { return v }; return nil }
    /// Integers widen to Double.
    public var double: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .double(let v): return v
        default: return nil
        }
    }
    public var string: String? { if case .string(let v) = self { return v }; return nil }
    public var bool: Bool? { if case .bool(let v) = self { return v }; return nil }
    public var array: [JSONValue]? { if case .array(let v) = self { return v }; return nil }
    public var object: [String: JSONValue]? { if case .object(let v) = self { return v }; return nil }
}

extension JSONValue: CustomStringConvertible {
    /// Compact JSON text (object keys sorted), for messages.
    public var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return "\(i)"
        case .double(let d): return "\(d)"
        case .string(let s): return jsonQuoted(s)
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { jsonQuoted($0) + ": " + o[$0]!.description }.joined(separator: ", ") + "}"
        }
    }
}

/// A JSON syntax error, already one line; callers prefix the file.
public struct OffloadJSONError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

private func oneLine(_ s: String) -> String {
    s.split(whereSeparator: \.isNewline).joined(separator: " ")
}

