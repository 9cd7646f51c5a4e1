// The OpenAI request bodies `offload serve` accepts, read field by field so that a
// wrong type or value gets an error naming the field (OpenAI's error shape), and the
// errors themselves.
import Foundation
import Formats
import Runtime

/// An error answered as OpenAI answers it: a status and {"error": {message, type, param, code}}.
public struct APIError: Error, CustomStringConvertible {
    public var status: Int
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Seconds a client should wait before retrying (429, 503).
    public var retryAfter: Int?

    public init(_ status: Int, _ message: String, type: String = "invalid_request_error", param: String? = nil,
                code: String? = nil, retryAfter: Int? = nil) {
        self.status = status; self.message = message; self.type = type; self.param = param; self.code = code
        self.retryAfter = retryAfter
    }
    public var description: String { "\(status): \(message)" }

    var json: [String: Any] {
        ["error": ["message": message, "type": type, "param": param as Any? ?? NSNull(), "code": code as Any? ?? NSNull()]]
    }

    static func invalid(_ param: String, _ message: String) -> APIError {
        APIError(400, message, param: param, code: "invalid_value")
    }
}

/// What both endpoints share, validated.
struct GenerationParameters {
    var model: String
    var maxTokens: Int?
    var sampling: SamplingOptions
    var seed: UInt64?
    var stop: [String]
    var stream: Bool
    var includeUsage: Bool
}

enum ChatContent {
    /// Messages as (role, text); a content given as parts keeps its text parts, joined.
    static func messages(_ body: [String: Any]) throws -> [ChatMessage] {
        guard let raw = body["messages"] else { throw APIError.invalid("messages", "'messages' is required") }
        guard let list = raw as? [Any], !list.isEmpty else {
            throw APIError.invalid("messages", "'messages' must be a non-empty array of {role, content} objects")
        }
        return try list.enumerated().map { i, m in
            guard let m = m as? [String: Any] else {
                throw APIError.invalid("messages[\(i)]", "messages[\(i)] must be an object with 'role' and 'content'")
            }
            guard let role = m["role"] as? String else {
                throw APIError.invalid("messages[\(i)].role", "messages[\(i)].role must be a string")
            }
            guard ["system", "developer", "user", "assistant", "tool"].contains(role) else {
                throw APIError.invalid("messages[\(i)].role",
                                       "messages[\(i)].role '\(role)' is not one of system, developer, user, assistant, tool")
            }
            switch m["content"] {
            case let s as String: return ChatMessage(role: role, content: s)
            case is NSNull, nil where role == "assistant": return ChatMessage(role: role, content: "")
            case let parts as [Any]:
                var text = ""
                for (j, p) in parts.enumerated() {
                    guard let p = p as? [String: Any], let type = p["type"] as? String else {
                        throw APIError.invalid("messages[\(i)].content[\(j)]", "content parts must be objects with a 'type'")
                    }
                    guard type == "text", let t = p["text"] as? String else {
                        throw APIError.invalid("messages[\(i)].content[\(j)]",
                                               "content part type '\(type)' is not supported: this model reads text only")
                    }
                    text += t
                }
                return ChatMessage(role: role, content: text)
            default:
                throw APIError.invalid("messages[\(i)].content", "messages[\(i)].content must be a string or an array of text parts")
            }
        }
    }
}

extension GenerationParameters {
    /// Reads the fields both endpoints take. `knownModels`: the ids this server answers to.
    init(_ body: [String: Any], knownModels: [String], defaultTemperature: Float = 1) throws {
        guard let m = body["model"] else { throw APIError.invalid("model", "'model' is required") }
        guard let model = m as? String else { throw APIError.invalid("model", "'model' must be a string") }
        guard knownModels.contains(model) else {
            throw APIError(404, "The model '\(model)' does not exist; this server has \(knownModels.first ?? "none")",
                           param: "model", code: "model_not_found")
        }
        self.model = model
        func number(_ key: String) throws -> Double? {
            guard let v = body[key], !(v is NSNull) else { return nil }
            // JSONSerialization reads true/false as NSNumber too: refuse booleans where numbers go.
            guard let n = v as? NSNumber, !isJSONBool(n) else {
                throw APIError.invalid(key, "'\(key)' must be a number")
            }
            guard n.doubleValue.isFinite else { throw APIError.invalid(key, "'\(key)' must be finite") }
            return n.doubleValue
        }
        func integer(_ key: String) throws -> Int? {
            guard let d = try number(key) else { return nil }
            guard d == d.rounded(), abs(d) < 1e15 else { throw APIError.invalid(key, "'\(key)' must be an integer") }
            return Int(d)
        }
        func bool(_ key: String) throws -> Bool? {
            guard let v = body[key], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, isJSONBool(n) else {
                throw APIError.invalid(key, "'\(key)' must be true or false")
            }
            return n.boolValue
        }
        maxTokens = try integer("max_completion_tokens") ?? integer("max_tokens")
        if let n = maxTokens, n < 1 { throw APIError.invalid("max_tokens", "'max_tokens' must be at least 1, got \(n)") }
        let temperature = try number("temperature") ?? Double(defaultTemperature)
        guard (0...2).contains(temperature) else {
            throw APIError.invalid("temperature", "'temperature' must be between 0 and 2, got \(temperature)")
        }
        let topP = try number("top_p") ?? 1
        guard topP > 0 && topP <= 1 else { throw APIError.invalid("top_p", "'top_p' must be in (0, 1], got \(topP)") }
        let topK = try integer("top_k") ?? 0
        guard topK >= 0 else { throw APIError.invalid("top_k", "'top_k' must be 0 (all) or more, got \(topK)") }
        sampling = SamplingOptions(temperature: Float(temperature), topK: topK, topP: Float(topP))
        if let s = try integer("seed") { seed = UInt64(bitPattern: Int64(s)) }
        if let n = try integer("n"), n != 1 {
            throw APIError.invalid("n", "'n' must be 1: this server makes one choice per request")
        }
        switch body["stop"] {
        case nil, is NSNull: stop = []
        case let s as String: stop = [s]
        case let a as [Any]:
            guard a.count <= 4, let strings = a as? [String] else {
                throw APIError.invalid("stop", "'stop' must be a string or an array of at most 4 strings")
            }
            stop = strings
        default: throw APIError.invalid("stop", "'stop' must be a string or an array of at most 4 strings")
        }
        stop = stop.filter { !$0.isEmpty }
        // Refused rather than ignored: a client asking for these would silently get less.
        switch body["logprobs"] {
        case nil, is NSNull: break
        case let n as NSNumber where (isJSONBool(n) && !n.boolValue) || (!isJSONBool(n) && n.intValue == 0): break
        default: throw APIError.invalid("logprobs", "'logprobs' is not supported by this server")
        }
        if let tools = body["tools"], !(tools is NSNull), !((tools as? [Any])?.isEmpty ?? false) {
            throw APIError.invalid("tools", "'tools' (function calling) is not supported by this server")
        }
        stream = try bool("stream") ?? false
        switch body["stream_options"] {
        case nil, is NSNull: includeUsage = false
        case let o as [String: Any]:
            guard let v = o["include_usage"] else { includeUsage = false; break }
            guard let n = v as? NSNumber, isJSONBool(n) else {
                throw APIError.invalid("stream_options.include_usage", "'stream_options.include_usage' must be true or false")
            }
            includeUsage = n.boolValue
        default: throw APIError.invalid("stream_options", "'stream_options' must be an object")
        }
        if includeUsage && !stream {
            throw APIError.invalid("stream_options", "'stream_options' is only allowed when 'stream' is true")
        }
    }
}

/// JSONSerialization gives true and false as NSNumbers too (of C type char, which no JSON number has).
func isJSONBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

/// Reads a JSON object body, or answers 400 with what is wrong.
func parseJSONObject(_ data: Data) throws -> [String: Any] {
    guard !data.isEmpty else { throw APIError(400, "The request body is empty; expected a JSON object") }
    let value: Any
    do { value = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
        throw APIError(400, "The request body is not valid JSON: \(error.localizedDescription)", code: "invalid_json")
    }
    guard let object = value as? [String: Any] else {
        throw APIError(400, "The request body must be a JSON object", code: "invalid_json")
    }
    return object
}

/// Stop strings over streamed text: emits what can no longer be the start of a stop
/// string, holds back the rest, and says when one has appeared (the text before it is kept).
struct StopMatcher {
    let stops: [String]
    private var held = ""
    init(_ stops: [String]) { self.stops = stops }

    /// Text that is safe to send after `piece`, and whether a stop string ended the text.
    mutating func push(_ piece: String) -> (text: String, stopped: Bool) {
        held += piece
        guard !stops.isEmpty else { defer { held = "" }; return (held, false) }
        if let r = stops.compactMap({ held.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
            defer { held = "" }
            return (String(held[..<r.lowerBound]), true)
        }
        // Hold back the longest suffix that starts some stop string.
        var keep = 0
        for s in stops {
            for k in stride(from: min(s.count - 1, held.count), to: 0, by: -1) where held.hasSuffix(s.prefix(k)) {
                keep = max(keep, k); break
            }
        }
        let cut = held.index(held.endIndex, offsetBy: -keep)
        defer { held = String(held[cut...]) }
        return (String(held[..<cut]), false)
    }

    /// Whatever is held at the end of the text.
    mutating func flush() -> String { defer { held = "" }; return held }
}
