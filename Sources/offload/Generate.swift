import ArgumentParser

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "(in progress)")
    func run() throws { throw ValidationError("'generate' is not built yet") }
}
