// Traces: what ran on which stream and when, and how many bytes each tier held,
// in Chrome's trace-event JSON so Perfetto or chrome://tracing draws it.
// The executor records measured traces with TraceRecorder; the planner's
// simulator builds predicted ones from the same TraceEvent values and writes
// them with the same encoder, so the two can be drawn side by side.
//
// The format, as written by `TraceEvent.encode`:
//
//   {"displayTimeUnit":"ms","traceEvents":[
//     {"name":"thread_name","ph":"M","pid":1,"tid":1,"args":{"name":"compute"}},  one per stream
//     {"name":"matmul blk.0","cat":"compute","ph":"X","ts":12.000,"dur":340.500,"pid":1,"tid":1,"args":{"bytes":4096}},
//     {"name":"alloc blk.0.ffn","cat":"memory","ph":"i","s":"t","ts":10.000,"pid":1,"tid":4,"args":{"bytes":8192}},
//     {"name":"compute bytes","cat":"memory","ph":"C","ts":10.000,"pid":1,"tid":4,"args":{"bytes":8192}}
//   ]}
//
// * `TraceEvent.Phase.span` ("X"): a complete span; `start` and `duration` in µs.
// * `.instant` ("i"): a point in time (allocations and frees).
// * `.counter` ("C"): a value over time; one track per name ("compute bytes",
//   "disk bytes" ...), the value in `args`.
// * `stream` becomes the thread (tid) in order of first appearance, named by a
//   "thread_name" metadata event. Streams used here: "compute", "read",
//   "write", "memory"; the read and write streams carry one span per transfer.
// * Times are microseconds from the start of the run (the recorder's creation).
import CPlatform
import Foundation
import Tensors

/// One event of a trace: a span on a stream, an instant, or a counter value.
public struct TraceEvent: Sendable, Equatable {
    public enum Phase: String, Sendable {
        case span = "X"
        case instant = "i"
        case counter = "C"
    }

    public var phase: Phase
    /// What happened: "matmul blk.3.ffn_up", "read blk.3.ffn_up", "compute bytes".
    public var name: String
    /// The stream (lane) it happened on: "compute", "read", "write", "memory".
    public var stream: String
    /// Microseconds from the start of the run.
    public var start: Double
    /// Microseconds; spans only (0 for instants and counters).
    public var duration: Double
    /// Numbers attached to the event: `bytes` for transfers and allocations, the
    /// counter's value(s) for counters.
    public var args: [String: Double]

    public init(phase: Phase, name: String, stream: String, start: Double, duration: Double = 0,
                args: [String: Double] = [:]) {
        self.phase = phase; self.name = name; self.stream = stream
        self.start = start; self.duration = duration; self.args = args
    }

    public static func span(_ name: String, stream: String, start: Double, duration: Double,
                            args: [String: Double] = [:]) -> TraceEvent {
        TraceEvent(phase: .span, name: name, stream: stream, start: start, duration: duration, args: args)
    }

    public static func counter(_ name: String, at start: Double, value: Double) -> TraceEvent {
        TraceEvent(phase: .counter, name: name, stream: "memory", start: start, args: ["bytes": value])
    }

    /// The end of a span (its start for other events).
    public var end: Double { start + duration }
}

extension TraceEvent {
    /// Chrome trace-event JSON for `events`, in the order given.
    public static func encode(_ events: [TraceEvent], processName: String = "offload") -> String {
        var tids: [String: Int] = [:]
        var order: [String] = []
        for e in events where tids[e.stream] == nil {
            order.append(e.stream)
            tids[e.stream] = order.count
        }
        var out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
        out += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"args\":{\"name\":\(jsonQuoted(processName))}}"
        for (i, s) in order.enumerated() {
            out += ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":\(i + 1),\"args\":{\"name\":\(jsonQuoted(s))}}"
            out += ",\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":\(i + 1),\"args\":{\"sort_index\":\(i + 1)}}"
        }
        for e in events {
            out += ",\n{\"name\":\(jsonQuoted(e.name)),\"cat\":\(jsonQuoted(e.stream)),\"ph\":\"\(e.phase.rawValue)\""
            if e.phase == .instant { out += ",\"s\":\"t\"" }
            out += ",\"ts\":\(jsonNumber(e.start))"
            if e.phase == .span { out += ",\"dur\":\(jsonNumber(e.duration))" }
            out += ",\"pid\":1,\"tid\":\(tids[e.stream]!)"
            if !e.args.isEmpty {
                out += ",\"args\":{"
                out += e.args.keys.sorted().map { "\(jsonQuoted($0)):\(jsonNumber(e.args[$0]!))" }.joined(separator: ",")
                out += "}"
            }
            out += "}"
        }
        out += "\n]}\n"
        return out
    }

    /// Parses Chrome trace-event JSON (an object with `traceEvents`, or a bare
    /// array) back into events; metadata events name the streams and are dropped.
    public static func decode(_ data: Data) throws -> [TraceEvent] {
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: data) } catch {
            throw OffloadError("[trace] not JSON: \(error.localizedDescription)")
        }
        let list: [Any]
        if let object = root as? [String: Any], let events = object["traceEvents"] as? [Any] {
            list = events
        } else if let array = root as? [Any] {
            list = array
        } else {
            throw OffloadError("[trace] expected an object with \"traceEvents\" or an array of events")
        }
        var names: [Int: String] = [:]
        for case let e as [String: Any] in list where (e["ph"] as? String) == "M" && (e["name"] as? String) == "thread_name" {
            if let tid = e["tid"] as? Int, let args = e["args"] as? [String: Any], let n = args["name"] as? String {
                names[tid] = n
            }
        }
        var events: [TraceEvent] = []
        for (index, item) in list.enumerated() {
            guard let e = item as? [String: Any] else { throw OffloadError("[trace] event \(index) is not an object") }
            guard let ph = e["ph"] as? String else { throw OffloadError("[trace] event \(index) has no \"ph\"") }
            if ph == "M" { continue }
            guard let phase = Phase(rawValue: ph) else { throw OffloadError("[trace] event \(index): unknown phase \"\(ph)\"") }
            guard let ts = (e["ts"] as? NSNumber)?.doubleValue else { throw OffloadError("[trace] event \(index) has no \"ts\"") }
            let tid = e["tid"] as? Int ?? 0
            let stream = names[tid] ?? (e["cat"] as? String) ?? String(tid)
            var args: [String: Double] = [:]
            if let a = e["args"] as? [String: Any] {
                for (k, v) in a { if let n = v as? NSNumber { args[k] = n.doubleValue } }
            }
            events.append(TraceEvent(phase: phase, name: e["name"] as? String ?? "", stream: stream, start: ts,
                                     duration: (e["dur"] as? NSNumber)?.doubleValue ?? 0, args: args))
        }
        return events
    }
}

private func jsonNumber(_ x: Double) -> String {
    guard x.isFinite else { return "0" }
    if x == x.rounded(), abs(x) < 1e15 { return String(Int64(x)) }
    return String(format: "%.3f", x)
}


/// Collects trace events from any thread.
///
/// Off by default: components hold an optional recorder and skip all work when
/// it is nil, so an untraced run pays one nil check per event site.
public final class TraceRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var buffer: [TraceEvent] = []
    private let origin: UInt64

    public init() {
        origin = cs_monotonic_ns()
        buffer.reserveCapacity(4096)
    }

    /// Microseconds since this recorder was created.
    public func now() -> Double { Double(cs_monotonic_ns() &- origin) / 1000 }

    public func record(_ event: TraceEvent) {
        lock.lock(); buffer.append(event); lock.unlock()
    }

    /// Records a span from `start` (a value of `now()`) to now.
    public func span(_ name: String, stream: String, since start: Double, args: [String: Double] = [:]) {
        record(.span(name, stream: stream, start: start, duration: max(0, now() - start), args: args))
    }

    /// Runs `body` and records it as a span.
    public func measure<T>(_ name: String, stream: String = "compute", args: [String: Double] = [:],
                           _ body: () throws -> T) rethrows -> T {
        let start = now()
        defer { span(name, stream: stream, since: start, args: args) }
        return try body()
    }

    /// The events so far, in the order they were recorded.
    public var events: [TraceEvent] {
        lock.lock(); defer { lock.unlock() }
        return buffer
    }

    /// Writes the events as Chrome trace JSON to `path` (through a temporary name,
    /// so a reader never sees half a trace).
    public func write(to path: String, processName: String = "offload") throws {
        let text = TraceEvent.encode(events.sorted { $0.start < $1.start }, processName: processName)
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp")
        do {
            try Data(text.utf8).write(to: tmp)
            guard rename(tmp.path, url.path) == 0 else { throw OffloadError(String(cString: strerror(errno))) }
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw OffloadError("[trace] cannot write \(path): \(error.localizedDescription)")
        }
    }
}
