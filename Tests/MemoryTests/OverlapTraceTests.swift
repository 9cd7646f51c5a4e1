// The overlap benchmark's trace (`offload profile --overlap-test --trace`):
// compute spans and I/O spans must overlap in time, and the file must be the
// Chrome trace format the decoder reads.
import Foundation
import Memory
import XCTest

final class OverlapTraceTests: XCTestCase {
    func testOverlapJobTraceShowsComputeAndIOOverlapping() throws {
        let root = scratchFolder("overlap")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let tracePath = root + "/trace.json"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try offloadBinary())
        p.arguments = ["profile", "--overlap-test", "--quick", "--layers", "4", "--repeats", "1",
                       "--disk", root, "--trace", tracePath, "--json"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let report = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, String(decoding: report, as: UTF8.self))
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: report) as? [String: Any])
        XCTAssertEqual(json["layers"] as? Int, 4)
        XCTAssertEqual((json["runs"] as? [Any])?.count, 1)

        let events = try TraceEvent.decode(try Data(contentsOf: URL(fileURLWithPath: tracePath)))
        let compute = events.filter { $0.phase == .span && $0.stream == "compute" }
        let io = events.filter { $0.phase == .span && ($0.stream == "read" || $0.stream == "write") }
        XCTAssertEqual(compute.map(\.name), ["layer 0", "layer 1", "layer 2", "layer 3"])
        XCTAssertEqual(io.filter { $0.stream == "read" }.count, 4)
        XCTAssertEqual(io.filter { $0.stream == "write" }.count, 4)
        let overlapping = compute.filter { c in io.contains { $0.start < c.end && c.start < $0.end } }
        XCTAssertGreaterThanOrEqual(overlapping.count, 3, "all but the last layer run with a prefetch in flight")
        let counters = Set(events.filter { $0.phase == .counter }.map(\.name))
        XCTAssertEqual(counters, ["compute bytes", "disk bytes"])
        XCTAssertEqual(entries(root), ["trace.json"], "the benchmark's spill folder is gone")
    }
}
