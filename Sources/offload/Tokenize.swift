import ArgumentParser
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize")
}
