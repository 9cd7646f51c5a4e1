// Running the built `offload` binary from the Runtime tests, in a scratch folder
// holding a small byte-level text (the built-in tiny/small configs have 256+ ids).
import Foundation
import XCTest

class OffloadCommandTestCase: XCTestCase {
    var work = ""

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "offload-cli-\(Self.self)-\(getpid())-\(name.filter(\.isLetter).suffix(30))"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        // Byte-level text for the built-in tiny config (vocabulary 256).
        let text = (0..<60).map { "Line \($0): to be, or not to be, that is the question.\n" }.joined()
        try text.write(toFile: work + "/text.txt", atomically: true, encoding: .utf8)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: work) }

    /// The `offload` executable built beside the test bundle.
    func binary() throws -> String {
        var dir = Bundle.main.bundleURL
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("offload").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        XCTFail("offload binary not found next to the tests: build it with swift build -c release")
        throw CocoaError(.fileNoSuchFile)
    }

    @discardableResult
    func offload(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: work)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func logLines(_ file: String) throws -> [[String: Any]] {
        try String(contentsOfFile: work + "/" + file, encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
    }

}
