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
        (llama.cpp's ggml-vocab-*.gguf) will do.
        Example: offload tokenize --model SmolLM2-135M-Instruct.Q4_1.gguf --text "Hello world"
        """)

    @Option(help: "A GGUF file (its tokenizer.ggml.* metadata is used) or a Hugging Face folder with a tokenizer.gguf.")
    var model: String
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "The text to tokenize.") var text: String
    @Flag(help: "Print JSON: ids and the piece of text each id stands for.") var json = false

    func run() throws {
        // A GGUF file's weights are not loaded: its vocabulary is all that is needed.
        let tokenizer = try checkModelPath(model, sha256: sha256)
            ? loadTokenizer(for: loadWeights(model), modelPath: model)
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
