// Fine-tuning data as people write it: JSON Lines, one example per line, either
//   {"prompt": "...", "completion": "..."}    (the prompt, then the completion and EOS)
//   {"messages": [{"role": "...", "content": "..."}, ...]}   (a conversation)
// turned into token ids and a mask of the tokens trained on: the completion and its
// EOS, or every assistant turn. Conversations are rendered with the model's chat
// template; an assistant turn is what rendering the conversation up to and including
// it adds to rendering the conversation before it with the generation prompt (the
// assistant's header). The pieces between those boundaries are tokenized one by one
// (special tokens recognised, no BOS added: a template writes its own) and joined.
// Prompt/completion pairs are tokenized as two pieces, the prompt with the
// tokenizer's own BOS rule. Examples follow one another in one stream (packed).

import Foundation
import Tensors

public struct FineTuningData: Sendable {
    /// Every example's ids, one after another.
    public var tokens: [Int]
    /// Whether each token is trained on (predicted as a target).
    public var mask: [Bool]
    public var examples: Int

    /// Reads a JSONL file (see the file header). Blank lines are skipped.
    /// - Throws: naming the file and line: not JSON, not an object, neither shape, a field of the wrong
    ///   type, a conversation with no assistant turn, a model without a chat template for a conversation.
    public static func load(path: String, tokenizer: Tokenizer, template: ChatTemplate?) throws -> FineTuningData {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[data] \(path): cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw OffloadError("[data] \(path): not UTF-8 text") }
        return try parse(text, source: path, tokenizer: tokenizer, template: template)
    }

    public static func parse(_ text: String, source: String, tokenizer: Tokenizer, template: ChatTemplate?) throws -> FineTuningData {
        var out = FineTuningData(tokens: [], mask: [], examples: 0)
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            func fail(_ m: String) -> OffloadError { OffloadError("[data] \(source):\(i + 1): \(m)") }
            let row: OrderedJSON
            do { row = try OrderedJSON.parse(Data(trimmed.utf8)) } catch { throw fail("not JSON (\(error))") }
            guard row.object != nil else { throw fail("expected a JSON object, found \(row.kind)") }
            let pieces: [Piece]
            if let messages = row.member("messages") {
                guard let list = messages.array, !list.isEmpty else { throw fail("\"messages\" must be a non-empty array") }
                let conversation = try list.enumerated().map { k, m -> ChatMessage in
                    guard let role = m.member("role")?.string, let content = m.member("content")?.string else {
                        throw fail("message \(k) needs \"role\" and \"content\" strings")
                    }
                    return ChatMessage(role: role, content: content)
                }
                guard let template else {
                    throw fail("a conversation needs the model's chat template, and this model declares none")
                }
                pieces = try turns(conversation, template: template, fail: fail)
            } else if let prompt = row.member("prompt"), let completion = row.member("completion") {
                guard let p = prompt.string, let c = completion.string else {
                    throw fail("\"prompt\" and \"completion\" must be strings")
                }
                guard !c.isEmpty else { throw fail("\"completion\" is empty: nothing to train on") }
                // The completion ends with EOS, so the model learns where to stop.
                pieces = [Piece(text: p, trained: false, bos: nil), Piece(text: c, trained: true, eos: true)]
            } else {
                throw fail("expected {\"prompt\", \"completion\"} or {\"messages\": [...]}")
            }
            for piece in pieces {
                var ids = tokenizer.encode(piece.text, addBOS: piece.bos, parseSpecial: true)
                if piece.eos, let eos = tokenizer.eosID { ids.append(eos) }
                out.tokens += ids
                out.mask += [Bool](repeating: piece.trained, count: ids.count)
            }
            out.examples += 1
        }
        guard out.examples > 0 else { throw OffloadError("[data] \(source): no examples (the file is empty)") }
        return out
    }

    /// Text tokenized as one piece: trained on or not; `bos`: the tokenizer's BOS rule (nil: its default);
    /// `eos`: EOS appended.
    struct Piece { var text: String; var trained: Bool; var bos: Bool? = false; var eos = false }

    /// The rendered conversation cut at its assistant turns: pieces in order, the assistant turns trained on.
    static func turns(_ conversation: [ChatMessage], template: ChatTemplate,
                      fail: (String) -> OffloadError) throws -> [Piece] {
        let now = Date()
        // The template's own errors (roles that must alternate, a role it does not know) name the row too.
        func render(_ messages: ArraySlice<ChatMessage>, _ generationPrompt: Bool) throws -> String {
            do { return try template.render(Array(messages), addGenerationPrompt: generationPrompt, now: now) } catch {
                throw fail("\(error)")
            }
        }
        let full = try render(conversation[...], false)
        var pieces: [Piece] = []
        var done = full.startIndex
        for (k, m) in conversation.enumerated() where m.role == "assistant" {
            let before = try render(conversation[..<k], true), through = try render(conversation[...k], false)
            guard full.hasPrefix(before), full.hasPrefix(through), through.hasPrefix(before),
                  let start = full.index(full.startIndex, offsetBy: before.count, limitedBy: full.endIndex),
                  let end = full.index(full.startIndex, offsetBy: through.count, limitedBy: full.endIndex),
                  start >= done else {
                throw fail("the chat template does not render this conversation turn by turn (assistant message \(k)): "
                           + "its turns cannot be told apart")
            }
            if done < start { pieces.append(Piece(text: String(full[done..<start]), trained: false)) }
            pieces.append(Piece(text: String(full[start..<end]), trained: true))
            done = end
        }
        guard !pieces.isEmpty else { throw fail("the conversation has no assistant message: nothing to train on") }
        if done < full.endIndex { pieces.append(Piece(text: String(full[done...]), trained: false)) }
        return pieces
    }
}
