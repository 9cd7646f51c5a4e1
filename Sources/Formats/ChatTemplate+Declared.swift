// Whether a model declares a chat template at all: chat needs one; serving without one
// still answers plain completions.
import Foundation

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
