import ArgumentParser

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plan", abstract: "(in progress)")
    func run() throws { throw ValidationError("'plan' is not built yet") }
}
