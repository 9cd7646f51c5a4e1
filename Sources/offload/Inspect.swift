import ArgumentParser

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "(in progress)")
    func run() throws { throw ValidationError("'inspect' is not built yet") }
}
