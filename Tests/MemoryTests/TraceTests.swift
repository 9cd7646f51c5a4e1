// The Chrome trace-event format: what the encoder writes is what Perfetto
// expects, and decoding gives back the events.
import Foundation
import Memory
import XCTest

final class TraceTests: XCTestCase {
    let sample: [TraceEvent] = [
        .span("matmul blk.0 \"q\"\n", stream: "compute", start: 10, duration: 250.5, args: ["flops": 1e9]),
        .span("read blk.1", stream: "read", start: 12.25, duration: 400, args: ["bytes": 4096]),
        TraceEvent(phase: .instant, name: "alloc blk.1", stream: "memory", start: 12, args: ["bytes": 4096]),
        .counter("compute bytes", at: 12, value: 4096),
        .span("write blk.0", stream: "write", start: 300, duration: 50),
    ]

    func testEncodedTraceIsChromeTraceEventJSON() throws {
        let json = TraceEvent.encode(sample, processName: "predicted")
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let list = try XCTUnwrap(root["traceEvents"] as? [[String: Any]])
        let threadNames = list.filter { $0["name"] as? String == "thread_name" }
            .map { ($0["tid"] as! Int, ($0["args"] as! [String: Any])["name"] as! String) }
        XCTAssertEqual(threadNames.map(\.1), ["compute", "read", "memory", "write"], "streams in order of first use")
        XCTAssertEqual(threadNames.map(\.0), [1, 2, 3, 4])
        let process = list.first { $0["name"] as? String == "process_name" }
        XCTAssertEqual((process?["args"] as? [String: Any])?["name"] as? String, "predicted")

        let spans = list.filter { $0["ph"] as? String == "X" }
        XCTAssertEqual(spans.count, 3)
        let read = try XCTUnwrap(spans.first { $0["name"] as? String == "read blk.1" })
        XCTAssertEqual(read["ts"] as? Double, 12.25)
        XCTAssertEqual(read["dur"] as? Int, 400)
        XCTAssertEqual(read["tid"] as? Int, 2)
        XCTAssertEqual(read["cat"] as? String, "read")
        let instant = try XCTUnwrap(list.first { $0["ph"] as? String == "i" })
        XCTAssertEqual(instant["s"] as? String, "t", "thread-scoped instant")
        let counter = try XCTUnwrap(list.first { $0["ph"] as? String == "C" })
        XCTAssertEqual((counter["args"] as? [String: Any])?["bytes"] as? Int, 4096)
        XCTAssertNil(counter["dur"])
    }

    func testDecodeGivesBackTheEvents() throws {
        let back = try TraceEvent.decode(Data(TraceEvent.encode(sample).utf8))
        XCTAssertEqual(back, sample)
    }

    func testDecodeRejectsWhatIsNotATrace() {
        XCTAssertThrowsError(try TraceEvent.decode(Data("{\"events\":[]}".utf8))) {
            XCTAssertTrue("\($0)".hasPrefix("[trace]"), "\($0)")
        }
        XCTAssertThrowsError(try TraceEvent.decode(Data("[{\"name\":\"x\",\"ph\":\"X\"}]".utf8))) {
            XCTAssertTrue("\($0)".contains("no \"ts\""), "\($0)")
        }
    }

    func testRecorderWritesAFileAndMeasuresSpans() throws {
        let trace = TraceRecorder()
        let value = trace.measure("work", stream: "compute") { () -> Int in
            Thread.sleep(forTimeInterval: 0.01)
            return 7
        }
        XCTAssertEqual(value, 7)
        let folder = scratchFolder("trace")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/run.json"
        try trace.write(to: path)
        let events = try TraceEvent.decode(try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(events.count, 1)
        XCTAssertEqual(events[0].name, "work")
        XCTAssertGreaterThanOrEqual(events[0].duration, 10_000, "µs")
        XCTAssertLessThan(events[0].duration, 5_000_000)
        XCTAssertEqual(entries(folder), ["run.json"], "no temporary file left behind")
    }
}
