// A model's chat template: the Jinja text that turns a conversation into the prompt the model was
// trained on, rendered as transformers' `apply_chat_template` renders it (context: messages,
// add_generation_prompt, bos_token, eos_token, tools=None, documents=None). Loaded from a GGUF's
// `tokenizer.chat_template` or a Hugging Face folder. Tokenizing the result is the tokenizer's job.

import Foundation
import Tensors

/// One message of a conversation with text content.
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A parsed chat template and the special-token strings it is rendered with.
public struct ChatTemplate: Sendable {
    /// The template text as the model ships it.
    public let source: String
    /// `bos_token` in the template's context; nil leaves it undefined, as transformers does for a
    /// tokenizer without one (Qwen2.5).
    public let bosToken: String?
    public let eosToken: String?
    /// Where the template came from ("model.gguf tokenizer.chat_template", a file path); errors name it.
    public let origin: String
    private let template: JinjaTemplate

    /// Parses `source` once.
    /// - Throws: `OffloadError` naming the line and construct when the template is not valid Jinja,
    ///   uses a tag Offload does not support (`include`, `extends`, `call`…), or names a filter or
    ///   test jinja2 itself does not know.
    public init(source: String, bosToken: String?, eosToken: String?, origin: String = "template") throws {
        self.source = source
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.origin = origin
        template = try JinjaTemplate(source: source, origin: origin)
    }

    /// The prompt for `messages`; `addGenerationPrompt` appends the header of the assistant's turn.
    /// `now` is the time `strftime_now` formats (local time), for templates that print today's date.
    /// - Throws: `OffloadError` with the template's line when rendering fails: the template's own
    ///   `raise_exception(msg)` (the error carries msg), an undefined value used where jinja2 fails,
    ///   or a filter, test or method Offload does not implement (named).
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool, now: Date = Date()) throws -> String {
        let list = messages.map { JinjaValue.dict(JinjaDict([("role", .string($0.role)), ("content", .string($0.content))])) }
        return try render(messages: .list(list), addGenerationPrompt: addGenerationPrompt, variables: [:], now: now)
    }

    /// The prompt for messages given as a JSON array of objects (OpenAI-style: `role`, `content` as
    /// text or parts, `tool_calls`, …), in member order. `variablesJSON`, a JSON object, adds to the
    /// context (`tools`, `documents`, `enable_thinking`…) and may override the special tokens.
    /// As `apply_chat_template` does, members whose value is null are dropped, and a message's
    /// reasoning (`reasoning_content`, `thinking` or `reasoning`) is also given as `thinking` and
    /// `reasoning_content`.
    public func render(messagesJSON: Data, addGenerationPrompt: Bool, variablesJSON: Data? = nil,
                       now: Date = Date()) throws -> String {
        func fail(_ m: String) -> OffloadError { OffloadError("[chat template] \(origin): \(m)") }
        let parsed: OrderedJSON
        do { parsed = try OrderedJSON.parse(messagesJSON) } catch { throw fail("messages are not valid JSON: \(error)") }
        guard let array = parsed.array else { throw fail("messages must be a JSON array, found \(parsed.kind)") }
        var messages: [JinjaValue] = []
        for (i, m) in array.enumerated() {
            guard let members = m.object else { throw fail("message \(i) must be a JSON object, found \(m.kind)") }
            var d = JinjaDict()
            for (key, value) in members where !value.isNull { d[.string(key)] = Self.value(value) }
            if let reasoning = ["reasoning_content", "thinking", "reasoning"].lazy.compactMap({ d[$0] }).first {
                var aliased = JinjaDict()
                aliased[.string("thinking")] = reasoning
                for (k, v) in d.items { aliased[k] = v }
                aliased[.string("reasoning_content")] = reasoning
                d = aliased
            }
            messages.append(.dict(d))
        }
        var variables: [String: JinjaValue] = [:]
        if let variablesJSON {
            let v: OrderedJSON
            do { v = try OrderedJSON.parse(variablesJSON) } catch { throw fail("variables are not valid JSON: \(error)") }
            guard let members = v.object else { throw fail("variables must be a JSON object, found \(v.kind)") }
            for (key, value) in members { variables[key] = Self.value(value) }
        }
        return try render(messages: .list(messages), addGenerationPrompt: addGenerationPrompt, variables: variables, now: now)
    }

    private func render(messages: JinjaValue, addGenerationPrompt: Bool, variables: [String: JinjaValue], now: Date) throws -> String {
        var context: [String: JinjaValue] = ["tools": .none, "documents": .none]
        if let bosToken { context["bos_token"] = .string(bosToken) }
        if let eosToken { context["eos_token"] = .string(eosToken) }
        for (k, v) in variables { context[k] = v }
        context["messages"] = messages
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        return try template.render(context, now: now)
    }

    static func value(_ json: OrderedJSON) -> JinjaValue {
        switch json {
        case .null: return .none
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .list(a.map(value))
        case .object(let members):
            var d = JinjaDict()
            for (k, v) in members { d[.string(k)] = value(v) }  // a repeated key keeps its first place and last value, as json.loads does
            return .dict(d)
        }
    }

    // MARK: loading

    /// The template of a GGUF file (`tokenizer.chat_template`), with the BOS and EOS token texts from
    /// its vocabulary (`tokenizer.ggml.bos_token_id` / `eos_token_id`; for a SentencePiece vocabulary
    /// without them, llama.cpp's defaults 1 and 2, as the tokenizer uses).
    /// - Throws: `OffloadError` naming the file when it has no chat template.
    public static func fromGGUF(_ gguf: GGUFFile) throws -> ChatTemplate {
        let origin = "\(gguf.fileName) tokenizer.chat_template"
        guard let value = gguf.metadata["tokenizer.chat_template"] else {
            throw OffloadError("[chat template] \(gguf.fileName): the model has no chat template (no tokenizer.chat_template in its metadata)")
        }
        guard let source = value.string else {
            throw OffloadError("[chat template] \(gguf.fileName): tokenizer.chat_template is not a string")
        }
        let tokens = gguf.metadata["tokenizer.ggml.tokens"]?.array
        let sentencePiece = gguf.string("tokenizer.ggml.model") == "llama"
        func token(_ key: String, default fallback: Int) -> String? {
            guard let id = gguf.int(key) ?? (sentencePiece ? fallback : nil), let tokens, id >= 0, id < tokens.count else { return nil }
            return tokens[id].string
        }
        return try ChatTemplate(source: source, bosToken: token("tokenizer.ggml.bos_token_id", default: 1),
                                eosToken: token("tokenizer.ggml.eos_token_id", default: 2), origin: origin)
    }

    /// The template of a Hugging Face folder: `chat_template.jinja` when there is one, else
    /// tokenizer_config.json's `chat_template` (a string, or a list of `{name, template}` of which
    /// the one named "default" is used). BOS and EOS come from tokenizer_config.json (`bos_token`,
    /// `eos_token`: a string or an object with `content`).
    /// - Throws: `OffloadError` naming the folder when it has no chat template, or naming the file and
    ///   field when tokenizer_config.json is malformed.
    public static func fromHuggingFaceFolder(_ folder: String) throws -> ChatTemplate {
        let configPath = (folder as NSString).appendingPathComponent("tokenizer_config.json")
        let jinjaPath = (folder as NSString).appendingPathComponent("chat_template.jinja")
        func fail(_ path: String, _ m: String) -> OffloadError { OffloadError("[chat template] \(path): \(m)") }

        var config: OrderedJSON?
        if let data = FileManager.default.contents(atPath: configPath) {
            do { config = try OrderedJSON.parse(data) } catch { throw fail(configPath, "not valid JSON: \(error)") }
            guard config?.object != nil else { throw fail(configPath, "expected a JSON object at the top, found \(config!.kind)") }
        }
        func token(_ key: String) throws -> String? {
            guard let v = config?.member(key), !v.isNull else { return nil }
            guard let text = v.string ?? v.member("content")?.string else {
                throw fail(configPath, "\(key) is \(v.kind), expected a string or an object with \"content\"")
            }
            return text
        }
        let bos = try token("bos_token"), eos = try token("eos_token")

        if let data = FileManager.default.contents(atPath: jinjaPath) {
            guard let source = String(data: data, encoding: .utf8) else { throw fail(jinjaPath, "not UTF-8 text") }
            return try ChatTemplate(source: source, bosToken: bos, eosToken: eos, origin: jinjaPath)
        }
        guard let config else {
            throw OffloadError("[chat template] \(folder): the model has no chat template (neither chat_template.jinja nor tokenizer_config.json)")
        }
        guard let field = config.member("chat_template"), !field.isNull else {
            throw fail(configPath, "the model has no chat template (no chat_template in tokenizer_config.json, and no chat_template.jinja beside it)")
        }
        if let source = field.string {
            return try ChatTemplate(source: source, bosToken: bos, eosToken: eos, origin: "\(configPath) chat_template")
        }
        guard let list = field.array else {
            throw fail(configPath, "chat_template is \(field.kind), expected a string or a list of {name, template}")
        }
        var names: [String] = []
        for (i, entry) in list.enumerated() {
            guard let name = entry.member("name")?.string, let template = entry.member("template")?.string else {
                throw fail(configPath, "chat_template[\(i)] is not an object with string members name and template")
            }
            if name == "default" {
                return try ChatTemplate(source: template, bosToken: bos, eosToken: eos, origin: "\(configPath) chat_template 'default'")
            }
            names.append(name)
        }
        throw fail(configPath, "chat_template lists no template named 'default' (it has: \(names.map { "'\($0)'" }.joined(separator: ", ")))")
    }

    /// `fromHuggingFaceFolder` for a folder, `fromGGUF` for a file.
    public static func load(model path: String) throws -> ChatTemplate {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw OffloadError("[chat template] \(path): no such file or folder")
        }
        return isDirectory.boolValue ? try fromHuggingFaceFolder(path) : try fromGGUF(GGUFFile(path: path))
    }
}

// Whether a model declares a chat template at all: chat needs one; serving without one
// still answers plain completions.
extension ChatTemplate {
    /// The GGUF file's template, or nil when its metadata has none (a malformed one throws).
    public static func ifDeclared(gguf: GGUFFile) throws -> ChatTemplate? {
        gguf.metadata["tokenizer.chat_template"] == nil ? nil : try fromGGUF(gguf)
    }

    /// The Hugging Face folder's template, or nil when it has neither chat_template.jinja nor a
    /// chat_template in tokenizer_config.json (a malformed one throws).
    public static func ifDeclared(folder: String) throws -> ChatTemplate? {
        let dir = folder as NSString
        let declares = FileManager.default.fileExists(atPath: dir.appendingPathComponent("chat_template.jinja"))
            || (FileManager.default.contents(atPath: dir.appendingPathComponent("tokenizer_config.json"))
                .flatMap { try? OrderedJSON.parse($0) }?.member("chat_template").map { !$0.isNull } ?? false)
        return declares ? try fromHuggingFaceFolder(folder) : nil
    }
}
