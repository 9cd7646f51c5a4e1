// `offload train --budget` under faults, end to end: a run SIGKILLed mid-step or
// mid-save resumes from its last checkpoint to the same bits as a run never
// interrupted, and a spill folder that fills stops the run with one line while
// the last checkpoint stays whole. Not the disk store's own fault tests
// (MemoryTests/DiskStoreTests, SpillCleanupTests).
import Foundation
import Tensors
import XCTest

final class TrainFaultTests: OffloadCommandTestCase {
    let train = ["train", "--config", "small", "--seed", "7", "--data", "text.txt", "--batch", "2", "--seq-len", "64",
                 "--lr", "3e-3", "--threads", "2", "--steps", "6", "--grad-clip", "1"]
    /// What a resume repeats: data, threads and length come from the command line, the rest from the checkpoint.
    let resumeArgs = ["--data", "text.txt", "--threads", "2", "--steps", "6"]
    let steps = 6
    /// The spill root of every configuration: a folder of its own, apart from the checkpoints.
    var spill: String { work + "/spill" }
    /// The budgeted configurations under test, each the flags it adds to `offload train`.
    /// Append one line per further strategy.
    var budgetArgs: [[String]] {
        [["--budget", "80000000", "--strategy", "offload", "--disk", spill],
         // Parameters streamed: updates as gradients complete, so no clipping.
         ["--budget", "24MB", "--strategy", "stream", "--disk", spill, "--grad-clip", "0"]]
    }

    // MARK: kill and resume

    enum KillPoint: String, CaseIterable {
        /// While step 3 computes: its checkpoint of step 2 is in place.
        case duringAStep
        /// As soon as the second log line appears: usually while that step's checkpoint is being written.
        case atALogLine
    }

    func testKilledRunResumesToTheUninterruptedRunsBits() throws {
        for (c, extra) in budgetArgs.enumerated() {
            let full = try offload(train + extra + ["--save", "full\(c)", "--log", "full\(c).jsonl"])
            XCTAssertEqual(full.status, 0, full.err)
            let reference = try logLines("full\(c).jsonl")
            XCTAssertEqual(reference.compactMap { $0["step"] as? Int }, Array(1...steps))
            let stepSeconds = reference.compactMap { $0["seconds"] as? Double }.sorted()[steps / 2]
            for point in KillPoint.allCases {
                try killAndResume(config: c, extra: extra, at: point, stepSeconds: stepSeconds, reference: reference)
            }
        }
    }

    func killAndResume(config c: Int, extra: [String], at point: KillPoint, stepSeconds: Double,
                       reference: [[String: Any]]) throws {
        let what = "configuration \(c) \(extra.joined(separator: " ")), killed \(point)"
        let run = "run\(c)\(point)", log = "\(run).jsonl"
        let p = try start(train + extra + ["--save", run, "--save-every", "1", "--log", log])
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning && Date() < deadline {
            let lines = completeLines(log)
            if point == .atALogLine && lines >= 2 { break }
            if point == .duringAStep && lines >= 2 && checkpointStep(run) == lines {
                Thread.sleep(forTimeInterval: stepSeconds / 3)
                break
            }
            usleep(500)
        }
        guard p.isRunning else {
            return XCTFail("\(what): the run ended (status \(p.terminationStatus)) before it could be killed; "
                           + "\(completeLines(log)) log lines")
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal, what)
        XCTAssertEqual(p.terminationStatus, SIGKILL, what)

        // What the kill left: n logged steps, a checkpoint of step n - 1 or n, the dead run's spill folder.
        let logged = completeLines(log)
        let saved = try XCTUnwrap(checkpointStep(run), "\(what): no checkpoint in \(run)")
        XCTAssertGreaterThanOrEqual(logged, 2, what)
        guard saved < steps, logged < steps else { return XCTFail("\(what): killed after the last step") }
        XCTAssertTrue(saved == logged || saved == logged - 1,
                      "\(what): \(logged) steps were logged but the checkpoint holds step \(saved); "
                      + "only the step in progress at the last save may be lost")
        let staleSpill = spillFolders()
        XCTAssertEqual(staleSpill, ["offload-spill-\(p.processIdentifier)-1"], "\(what): SIGKILL leaves the spill folder")
        // A save killed part-way leaves its temporary folder; make sure there is one to clean up.
        let tmp = work + "/.\(run).tmp-\(p.processIdentifier)"
        if !FileManager.default.fileExists(atPath: tmp) {
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: false)
            try Data(count: 4096).write(to: URL(fileURLWithPath: tmp + "/model.safetensors"))
        }

        let resumed = try offload(["train", "--resume", run, "--log", log] + resumeArgs + extra)
        XCTAssertEqual(resumed.status, 0, "\(what): \(resumed.err)")
        XCTAssertTrue(resumed.err.contains("resuming at step \(saved)"), "\(what): \(resumed.err)")
        if extra.contains("--disk") {
            XCTAssertTrue(resumed.err.contains("removed stale spill folder \(spill)/\(staleSpill.first ?? "?")"),
                          "\(what): \(resumed.err)")
            XCTAssertEqual(spillFolders(), [], "\(what): a spill folder outlived the resumed run")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp), "\(what): the killed save's \(tmp) is still there")

        // The log: the killed run's lines (at least every checkpointed step), then steps saved+1...6 from the resume.
        let lines = try logLines(log)
        let appended = lines.suffix(steps - saved).compactMap { $0["step"] as? Int }
        XCTAssertEqual(appended, Array(saved + 1...steps), "\(what): steps the resume logged")
        let before = lines.dropLast(steps - saved).compactMap { $0["step"] as? Int }
        XCTAssertTrue(before.count >= saved && before == Array(1..<before.count + 1),
                      "\(what): lines before the resume: \(before), checkpoint at step \(saved)")
        // Every logged step has the uninterrupted run's loss and gradient norm, bit for bit.
        for line in lines {
            let step = try XCTUnwrap(line["step"] as? Int)
            guard (1...steps).contains(step) else { XCTFail("\(what): logged step \(step)"); continue }
            XCTAssertEqual(line["loss"] as? Double, reference[step - 1]["loss"] as? Double, "\(what): loss at step \(step)")
            XCTAssertEqual(line["grad_norm"] as? Double, reference[step - 1]["grad_norm"] as? Double,
                           "\(what): grad norm at step \(step)")
        }
        // And the final weights, optimizer state and trainer state are the same bytes.
        XCTAssertEqual(checkpointStep(run), steps, what)
        for file in ["model.safetensors", "optimizer.safetensors", "trainer.json"] {
            let a = FileManager.default.contents(atPath: "\(work)/full\(c)/\(file)")
            XCTAssertNotNil(a, file)
            XCTAssertEqual(a, FileManager.default.contents(atPath: "\(work)/\(run)/\(file)"), "\(what): \(file) differs")
        }
    }

    // MARK: a full spill folder

    /// A spill folder needs the same bytes every step (the schedule is fixed) and claims them in the
    /// first step a process runs, so a folder too small for the run shows on the first step after a
    /// start or a resume: here step 3 of 6, resumed from a checkpoint of step 2.
    func testFullSpillFolderStopsTheRunAndKeepsTheLastCheckpoint() throws {
        let limited = try offload(train + ["--disk-limit", "4MB"])
        XCTAssertNotEqual(limited.status, 0)
        XCTAssertTrue(limited.err.contains("give --disk too"), limited.err)
        for (c, extra) in budgetArgs.enumerated() where extra.contains("--disk") {
            let what = "configuration \(c) \(extra.joined(separator: " "))"
            let full = try offload(train + extra + ["--log", "full\(c).jsonl"])
            XCTAssertEqual(full.status, 0, full.err)
            let reference = try logLines("full\(c).jsonl")
            // Limits: too small for one step, and enough. Activation offload spills 8.5 MiB per step; a
            // streamed run holds its store (the plan line says how many bytes) and, while a unit is
            // rewritten, its new copy too: 1.5 MB above the store fits the small units, not a block's.
            var (tooSmall, enough, failing) = (4_000_000, 9 << 20, "act.")
            if extra.contains("stream") {
                let stored = try XCTUnwrap(full.err.range(of: #"\((\d+) bytes\) written to the store"#, options: .regularExpression)
                    .flatMap { Int(full.err[$0].dropFirst().split(separator: " ")[0]) }, full.err)
                (tooSmall, enough, failing) = (stored + 1_500_000, stored + (32 << 20), "")
            }

            let run = "run\(c)", log = "\(run).jsonl"
            let first = try offload(train + extra + ["--save", run, "--save-every", "1", "--stop-after", "2", "--log", log])
            XCTAssertEqual(first.status, 0, "\(what): \(first.err)")
            let files = ["model.safetensors", "optimizer.safetensors", "trainer.json"]
            let checkpoint = files.map { FileManager.default.contents(atPath: "\(work)/\(run)/\($0)") }
            XCTAssertEqual(checkpointStep(run), 2, what)

            let stopped = try offload(["train", "--resume", run, "--log", log, "--disk-limit", "\(tooSmall)"] + resumeArgs + extra)
            XCTAssertEqual(stopped.status, 1, "\(what): an error exit, not a crash: \(stopped.err)")
            let errors = stopped.err.split(separator: "\n").filter { $0.hasPrefix("error:") }
            XCTAssertEqual(errors.count, 1, "\(what): \(stopped.err)")
            let error = String(errors.first ?? "")
            XCTAssertTrue(error.hasPrefix("error: [disk] cannot place \(failing)"), error)
            XCTAssertTrue(error.contains("in spill folder \(spill)/offload-spill-"), "names the folder: \(error)")
            XCTAssertTrue(error.contains("it is full: its limit is \(formatBytes(tooSmall)) (\(tooSmall) bytes)"), error)
            XCTAssertFalse(stopped.out.contains("step 3/6"), "\(what): step 3 reported done: \(stopped.out)")
            XCTAssertEqual(try logLines(log).count, 2, "\(what): the failed step was logged")
            XCTAssertEqual(spillFolders(), [], "\(what): the spill folder outlived the failed run")
            XCTAssertEqual(checkpointStep(run), 2, what)
            for (file, bytes) in zip(files, checkpoint) {
                XCTAssertNotNil(bytes, file)
                XCTAssertEqual(FileManager.default.contents(atPath: "\(work)/\(run)/\(file)"), bytes,
                               "\(what): checkpoint file \(file) changed")
            }

            // The checkpoint resumes, under a limit that holds what the plan spills, to the uninterrupted run's bits.
            let resumed = try offload(["train", "--resume", run, "--log", log, "--disk-limit", "\(enough)"] + resumeArgs + extra)
            XCTAssertEqual(resumed.status, 0, "\(what): \(resumed.err)")
            XCTAssertTrue(resumed.err.contains("resuming at step 2"), resumed.err)
            let lines = try logLines(log)
            XCTAssertEqual(lines.compactMap { $0["step"] as? Int }, Array(1...steps), what)
            for (a, b) in zip(reference, lines) {
                XCTAssertEqual(a["loss"] as? Double, b["loss"] as? Double, "\(what): loss at step \(a["step"] ?? "?")")
                XCTAssertEqual(a["grad_norm"] as? Double, b["grad_norm"] as? Double,
                               "\(what): grad norm at step \(a["step"] ?? "?")")
            }
            XCTAssertEqual(spillFolders(), [], what)
        }
    }

    // MARK: helpers

    /// Starts `offload` in the work folder without waiting; its output goes to files there.
    func start(_ args: [String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: work)
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// Newline-terminated lines of a file in the work folder (0 when it does not exist yet).
    func completeLines(_ file: String) -> Int {
        (FileManager.default.contents(atPath: work + "/" + file) ?? Data()).filter { $0 == UInt8(ascii: "\n") }.count
    }

    /// The step of the checkpoint in `dir` (trainer.json), nil when there is none.
    func checkpointStep(_ dir: String) -> Int? {
        guard let data = FileManager.default.contents(atPath: "\(work)/\(dir)/trainer.json"),
              let info = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return info["step"] as? Int
    }

    /// Spill folders in the spill root.
    func spillFolders() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: spill)) ?? []).filter { $0.hasPrefix("offload-spill-") }.sorted()
    }
}
