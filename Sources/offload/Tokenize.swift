import ArgumentParser

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "(in progress)")
    func run() throws { throw ValidationError("'tokenize' is not built yet") }
}
