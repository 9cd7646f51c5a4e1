// `offload tokenize`: text to token ids with the model's own tokenizer.
import ArgumentParser
import Foundation
import Formats
import Models

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the token ids of a text under a model's tokenizer.",
        discussion: """
        BOS is added as llama.cpp adds it: when tokenizer.ggml.add_bos_token says so, and by default for
        SentencePiece vocabularies (Llama 2, Phi-3). Only the vocabulary is read, so a vocabulary-only GGUF
        (llama.cpp's ggml-vocab-*.gguf) will do. A Hugging Face folder's tokenizer.gguf is read if there is
        one, else its tokenizer.json, whose ids are transformers' (BOS as its post-processor adds it); a
        tokenizer.json file can be given directly.
        Example: offload tokenize --model SmolLM2-135M-Instruct.Q4_1.gguf --text "Hello world"
        """)

    @Option(help: "A GGUF file (its tokenizer.ggml.* metadata is used), a Hugging Face folder with a tokenizer.json or tokenizer.gguf, or a tokenizer.json.")
    var model: String
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "The text to tokenize.") var text: String
    @Flag(help: "Print JSON: ids and the piece of text each id stands for.") var json = false

    func run() throws {
        // No weights are loaded: the vocabulary is all that is needed.
        let tokenizer = try checkModelPath(model, sha256: sha256) ? folderTokenizer(model)
            : model.hasSuffix(".json") ? Tokenizer(huggingFaceJSON: model)
            : Tokenizer(gguf: GGUFFile(path: model))
        let ids = tokenizer.encode(text)
        if json {
            let pieces = ids.map { String(decoding: tokenizer.piece(for: $0), as: UTF8.self) }
            print(try jsonString(["ids": ids, "pieces": pieces, "count": ids.count] as [String: Any]))
        } else {
            print(ids.map(String.init).joined(separator: " "))
        }
    }
}
