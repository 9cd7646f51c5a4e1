// `offload train --budget` end to end: the budgeted run prints its plan, logs the
// same losses and gradient norms bit for bit as the in-memory run, saves the same
// weights, stays under its budget and writes a trace with compute and transfer spans.
import Foundation
import XCTest

final class ExecutorCommandTests: OffloadCommandTestCase {
    let run = ["train", "--config", "small", "--seed", "7", "--data", "text.txt", "--batch", "2", "--seq-len", "64",
               "--lr", "3e-3", "--threads", "2", "--steps", "3", "--grad-clip", "1"]

    func testBudgetedRunMatchesTheInMemoryRun() throws {
        let plain = try offload(run + ["--log", "plain.jsonl", "--save", "plain"])
        XCTAssertEqual(plain.status, 0, plain.err)
        let budget = 80_000_000
        let budgeted = try offload(run + ["--log", "budget.jsonl", "--save", "budget", "--budget", "\(budget)",
                                          "--strategy", "offload", "--disk", work, "--trace", "trace.json"])
        XCTAssertEqual(budgeted.status, 0, budgeted.err)
        XCTAssertTrue(budgeted.err.contains("* offload ") && budgeted.err.contains("plan: offload, predicted step"), budgeted.err)
        for (a, b) in zip(try logLines("plain.jsonl"), try logLines("budget.jsonl")) {
            XCTAssertEqual(a["loss"] as? Double, b["loss"] as? Double, "loss at step \(a["step"] ?? "?")")
            XCTAssertEqual(a["grad_norm"] as? Double, b["grad_norm"] as? Double, "grad norm at step \(a["step"] ?? "?")")
        }
        XCTAssertEqual(try logLines("budget.jsonl").count, 3)
        // The saved weights and optimizer state are the same bytes.
        let files = try FileManager.default.contentsOfDirectory(atPath: work + "/plain").filter { !$0.hasSuffix(".json") }
        XCTAssertFalse(files.isEmpty)
        for f in files {
            XCTAssertEqual(FileManager.default.contents(atPath: work + "/plain/" + f),
                           FileManager.default.contents(atPath: work + "/budget/" + f), "checkpoint file \(f) differs")
        }
        // Every step line reports a measured peak within the budget and disk traffic.
        let steps = budgeted.out.split(separator: "\n").filter { $0.hasPrefix("step ") }
        XCTAssertEqual(steps.count, 3, budgeted.out)
        for line in steps {
            XCTAssertTrue(line.contains("pred") && line.contains("disk r/w"), String(line))
            XCTAssertFalse(line.contains("disk r/w 0 B/0 B"), "offload moved nothing: \(line)")
        }
        // The process's peak resident memory stays within the budget plus a fixed overhead
        // (Swift runtime, code, data: ~35 MiB for a --config model; a mapped GGUF adds its size).
        let hwm = try XCTUnwrap(budgeted.err.split(separator: "\n").first { $0.contains("VmHWM") }, budgeted.err)
        let overhead = try XCTUnwrap(hwm.range(of: #"\+ ([\d.]+) MiB outside"#, options: .regularExpression).map { r in
            Double(hwm[r].dropFirst(2).split(separator: " ")[0]) }, String(hwm))
        XCTAssertLessThan(try XCTUnwrap(overhead), 64, "process overhead over the budget: \(hwm)")
        // The trace has compute spans and transfer spans on their own streams.
        let trace = try String(contentsOfFile: work + "/trace.json", encoding: .utf8)
        XCTAssertTrue(trace.contains("\"backward 3\"") || trace.contains("\"backward 2\""), "no backward span")
        XCTAssertTrue(trace.contains("\"write act.1."), "no write span")
        XCTAssertTrue(trace.contains("\"read act.1."), "no read span")
    }

    /// Weights, gradients and AdamW state streamed from disk: the same log values and checkpoint bytes.
    func testStreamedRunMatchesTheInMemoryRun() throws {
        let noClip = run + ["--grad-clip", "0"]
        let plain = try offload(noClip + ["--log", "plain.jsonl", "--save", "plain"])
        XCTAssertEqual(plain.status, 0, plain.err)
        let budget = 24_000_000
        let streamed = try offload(noClip + ["--log", "stream.jsonl", "--save", "stream", "--budget", "\(budget)", "--disk", work])
        XCTAssertEqual(streamed.status, 0, streamed.err)
        XCTAssertTrue(streamed.err.contains("+stream: parameters, gradients and AdamW state on"), streamed.err)
        let a = try logLines("plain.jsonl"), b = try logLines("stream.jsonl")
        XCTAssertEqual(b.count, 3)
        for (x, y) in zip(a, b) {
            XCTAssertEqual(x["loss"] as? Double, y["loss"] as? Double, "loss at step \(x["step"] ?? "?")")
            XCTAssertEqual(x["grad_norm"] as? Double, y["grad_norm"] as? Double, "grad norm at step \(x["step"] ?? "?")")
        }
        for f in ["model.safetensors", "optimizer.safetensors"] {
            let x = FileManager.default.contents(atPath: work + "/plain/" + f)
            XCTAssertNotNil(x, f)
            XCTAssertEqual(x, FileManager.default.contents(atPath: work + "/stream/" + f), "checkpoint file \(f) differs")
        }
        // Every step line: a measured peak within the budget, and disk traffic.
        func bytes(_ text: Substring) -> Double {
            let parts = text.split(separator: " ")
            let units: [String: Double] = ["B": 1, "KiB": 1024, "MiB": 1_048_576, "GiB": 1_073_741_824]
            let unit = units[String(parts[1])] ?? .nan
            return (Double(parts[0]) ?? .nan) * unit
        }
        let steps = streamed.out.split(separator: "\n").filter { $0.hasPrefix("step ") }
        XCTAssertEqual(steps.count, 3, streamed.out)
        for line in steps {
            let m = try XCTUnwrap(line.firstMatch(of: /peak ([\d.]+ \w+) \(budget ([\d.]+ \w+)\)/), String(line))
            XCTAssertLessThanOrEqual(bytes(m.1), bytes(m.2), String(line))
            XCTAssertLessThanOrEqual(bytes(m.2), Double(budget) + 5243, String(line))  // printed to 0.01 MiB
            XCTAssertTrue(line.contains("disk r/w") && !line.contains("disk r/w 0 B"), String(line))
        }
        // The in-memory run resumes the streamed run's checkpoint (and the other way round) bit for bit.
        let more = try offload(["train", "--resume", "stream", "--data", "text.txt", "--threads", "2", "--steps", "4",
                                "--save", "stream4", "--log", "s4.jsonl"])
        XCTAssertEqual(more.status, 0, more.err)
        let more2 = try offload(["train", "--resume", "plain", "--data", "text.txt", "--threads", "2", "--steps", "4",
                                 "--save", "plain4", "--log", "p4.jsonl", "--budget", "\(budget)", "--disk", work])
        XCTAssertEqual(more2.status, 0, more2.err)
        XCTAssertEqual(FileManager.default.contents(atPath: work + "/stream4/model.safetensors"),
                       FileManager.default.contents(atPath: work + "/plain4/model.safetensors"))
    }

    func testStreamedRunRecomputesWhenAsked() throws {
        // Below the parameters' size, --strategy recompute streams them and recomputes every block
        // instead of offloading its activations: the same losses as the in-memory run.
        let noClip = run + ["--grad-clip", "0"]
        let plain = try offload(noClip + ["--log", "plain.jsonl"])
        XCTAssertEqual(plain.status, 0, plain.err)
        for strategy in ["recompute", "offload"] {
            let r = try offload(noClip + ["--log", "\(strategy).jsonl", "--budget", "24000000", "--disk", work, "--strategy", strategy])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertTrue(r.err.contains(strategy == "recompute" ? "every block recomputed" : "activations to disk and back"), r.err)
            let a = try logLines("plain.jsonl"), b = try logLines("\(strategy).jsonl")
            XCTAssertEqual(b.count, 3)
            for (x, y) in zip(a, b) {
                XCTAssertEqual(x["loss"] as? Double, y["loss"] as? Double, "\(strategy): loss at step \(x["step"] ?? "?")")
            }
        }
    }

    func testTooSmallABudgetSaysWhatItNeeds() throws {
        // Parameters that do not fit are streamed: that needs a spill folder, and a budget of at least one block's step.
        let r = try offload(run + ["--budget", "1MB"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("weights, gradients and optimizer state") && r.err.contains("do not fit"), r.err)
        XCTAssertTrue(r.err.contains("--disk DIR"), r.err)
        let d = try offload(run + ["--budget", "1MB", "--disk", work, "--grad-clip", "0"])
        XCTAssertNotEqual(d.status, 0)
        XCTAssertTrue(d.err.contains("is below the") && d.err.contains("a streamed step needs at batch 2 × 64"), d.err)
        // Clipping needs every gradient before any update: refused when streaming, with the reason.
        let c = try offload(run + ["--budget", "30MB", "--disk", work])
        XCTAssertNotEqual(c.status, 0)
        XCTAssertTrue(c.err.contains("--grad-clip needs every gradient before any update"), c.err)
        // A budget that holds the state but not the activations is planned as before.
        let k = try offload(run + ["--budget", "1MB", "--strategy", "keep"])
        XCTAssertNotEqual(k.status, 0)
        XCTAssertTrue(k.err.contains("with the activations of keep do not fit"), k.err)
        XCTAssertTrue(k.err.contains("the smallest budget that runs is"), k.err)
    }

    func testBudgetFlagsNeedABudget() throws {
        let r = try offload(run + ["--strategy", "rotor"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("give --budget too"), r.err)
    }
}
