// `offload plan` against the runs it plans: for a grid of budgets from below the smallest to
// everything in memory, `plan` accepts a budget exactly when `train` / `generate` run under it,
// its predicted peak equals the measured one within 2%, and every run gives the unconstrained
// run's results bit for bit.
import Foundation
import Tensors
import XCTest

final class PlanAgreesWithRunTests: XCTestCase {
    /// This machine's profile (`offload profile --quick`), measured once: the streamed step's peak depends
    /// on when writes complete, so its prediction uses the disk's and the cores' measured rates.
    static let hardware: String? = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("offload-plan-hw-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let out = dir.appendingPathComponent("hardware.json").path
        guard let r = try? CLI.run(["profile", "--quick", "--disk", dir.path, "--out", out]), r.status == 0 else { return nil }
        return out
    }()

    func json(_ text: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not JSON: \(text.prefix(300))")
    }

    /// Losses of every step from a --log file.
    func losses(_ path: String) throws -> [Double] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap((try json(String($0)))["loss"] as? Double)
        }
    }

    func measuredPeak(_ stderr: String) -> Int? {
        guard let r = stderr.range(of: #"measured compute peak [^(]*\((\d+) bytes\)"#, options: .regularExpression) else { return nil }
        return Int(stderr[r].split(separator: "(").last!.split(separator: " ").first!)
    }

    func checkTraining(batch: Int, seqLen: Int, strategy: String?) throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("data.txt").path
        try String(repeating: "To be, or not to be, that is the question. ", count: 600).write(toFile: text, atomically: true, encoding: .utf8)
        let hw = try XCTUnwrap(Self.hardware, "offload profile --quick failed")
        let shape = ["--config", "small", "--batch", "\(batch)", "--seq-len", "\(seqLen)", "--hardware", hw]
        let train = ["train"] + shape + ["--data", text, "--steps", "2", "--lr", "1e-3", "--threads", "2"]
        let free = dir.appendingPathComponent("free.jsonl").path
        let r0 = try CLI.run(train.filter { $0 != "--hardware" && $0 != hw } + ["--log", free])
        XCTAssertEqual(r0.status, 0, r0.stderr)
        let reference = try losses(free)
        let probe = try CLI.run(["plan", "--mode", "train", "--json", "--disk", dir.path] + shape
                                + (strategy.map { ["--strategy", $0] } ?? []))
        XCTAssertEqual(probe.status, 0, probe.stderr)
        let minimum = try XCTUnwrap(try json(probe.stdout)["minimumBudget"] as? Int)
        let everything = try XCTUnwrap((try json(probe.stdout)["strategies"] as? [[String: Any]])?
            .compactMap { $0["budgetedPeakBytes"] as? Int }.max())
        let state = try XCTUnwrap(try json(probe.stdout)["stateBytes"] as? Int)   // weights, gradients, m and v
        // Below the smallest, the smallest, the largest that streams, and between up to everything in memory.
        let budgets = [minimum - 4096, minimum] + [minimum + (everything - minimum) / 4, state - 4096, everything]
            .filter { $0 > minimum }
        var ran = 0
        for budget in budgets {
            let spill = dir.appendingPathComponent("spill-\(budget)").path
            try FileManager.default.createDirectory(atPath: spill, withIntermediateDirectories: true)
            let s = strategy.map { ["--strategy", $0] } ?? []
            let plan = try CLI.run(["plan", "--mode", "train", "--json", "--budget", "\(budget)", "--disk", spill] + shape + s)
            let log = dir.appendingPathComponent("run-\(budget).jsonl").path
            let run = try CLI.run(train + ["--budget", "\(budget)", "--disk", spill, "--log", log] + s)
            let what = "batch \(batch), budget \(budget) (minimum \(minimum)), strategy \(strategy ?? "auto")"
            XCTAssertEqual(plan.status == 0, run.status == 0, "\(what): plan says \(plan.status == 0 ? "fits" : "no"), train "
                           + "\(run.status == 0 ? "ran" : "refused"):\n\(plan.stderr)\n\(run.stderr.suffix(600))")
            XCTAssertEqual(plan.status == 0, budget >= minimum, "\(what): \(plan.stderr)")
            guard plan.status == 0, run.status == 0 else {
                XCTAssertTrue(run.stderr.contains("\(minimum) bytes"), "\(what): the refusal names the smallest budget: \(run.stderr)")
                continue
            }
            ran += 1
            let p = try json(plan.stdout)
            let chosen = try XCTUnwrap(p["chosen"] as? String)
            let row = try XCTUnwrap((p["strategies"] as? [[String: Any]])?.first { $0["name"] as? String == chosen })
            let predicted = try XCTUnwrap(row["budgetedPeakBytes"] as? Int)
            let measured = try XCTUnwrap(measuredPeak(run.stderr), run.stderr)
            XCTAssertLessThanOrEqual(measured, budget, what)
            // The simulator's peak of the plan's schedule, with what the executor holds outside it: within 2%
            // (streamed, the executor does the schedule's allocations and frees in the simulation's order
            // in a tier capped at its peak: equal unless the disk lags the profile's pace).
            XCTAssertEqual(Double(measured), Double(predicted), accuracy: 0.02 * Double(predicted),
                           "\(what), \(chosen): predicted peak \(predicted), measured \(measured)")
            XCTAssertTrue(run.stderr.contains("* \(chosen)"), "\(what): train prints the plan row it runs:\n\(run.stderr)")
            XCTAssertEqual(try losses(log), reference, "\(what), \(chosen): losses differ from the unconstrained run")
        }
        XCTAssertGreaterThanOrEqual(ran, budgets.count - 1)
    }

    func testTrainingPlanAgreesWithTheRunB4() throws { try checkTraining(batch: 4, seqLen: 256, strategy: nil) }
    func testTrainingPlanAgreesWithTheRunB16() throws { try checkTraining(batch: 16, seqLen: 256, strategy: nil) }
    func testStreamedRecomputingPlanAgreesWithTheRun() throws { try checkTraining(batch: 4, seqLen: 256, strategy: "recompute+stream") }
    func testStreamedOffloadingPlanAgreesWithTheRun() throws { try checkTraining(batch: 4, seqLen: 256, strategy: "offload+stream") }
    func testRecomputeWithParametersInMemoryOrStreamedAgreesWithTheRun() throws {
        try checkTraining(batch: 4, seqLen: 256, strategy: "recompute")
    }

    func testGenerationPlanAgreesWithTheRun() throws {
        let model = CLI.smolLM2
        guard FileManager.default.fileExists(atPath: model) else { XCTFail("missing \(model): run scripts/fetch-assets.sh"); return }
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let promptTokens = 12, maxTokens = 20
        let gen = ["generate", "--model", model, "--prompt-tokens", "\(promptTokens)", "--max-tokens", "\(maxTokens)",
                   "--temperature", "0", "--seed", "3", "--ignore-eos", "--json", "--threads", "2"]
        let free = try CLI.run(gen)
        XCTAssertEqual(free.status, 0, free.stderr)
        let tokens = try XCTUnwrap(try json(free.stdout)["tokens"] as? [Int])
        let shape = ["plan", "--mode", "generate", "--model", model, "--seq-len", "\(promptTokens + maxTokens)",
                     "--prompt-tokens", "\(promptTokens)", "--json"]
        let probe = try json(try CLI.run(shape + ["--budget", "1GB"]).stdout)
        let minimum = try XCTUnwrap(probe["minimumBudget"] as? Int)
        for budget in [minimum - 4096, minimum, minimum + (8 << 20), 40 << 20, 1 << 30] {
            let plan = try CLI.run(shape + ["--budget", "\(budget)", "--disk", dir.path])
            let run = try CLI.run(gen + ["--budget", "\(budget)", "--disk", dir.path])
            let what = "budget \(budget) (minimum \(minimum))"
            XCTAssertEqual(plan.status == 0, run.status == 0, "\(what):\n\(plan.stdout)\n\(run.stderr.suffix(600))")
            XCTAssertEqual(plan.status == 0, budget >= minimum, what)
            guard plan.status == 0, run.status == 0 else {
                XCTAssertTrue(run.stderr.contains("\(minimum) bytes"), "\(what): the refusal names the minimum: \(run.stderr)")
                continue
            }
            let predicted = try XCTUnwrap(try json(plan.stdout)["budgetedPeakBytes"] as? Int)
            let out = try json(run.stdout)
            let measured = try XCTUnwrap((out["streaming"] as? [String: Any])?["peak_compute_bytes"] as? Int)
            XCTAssertLessThanOrEqual(measured, budget, what)
            XCTAssertEqual(Double(measured), Double(predicted), accuracy: 0.02 * Double(predicted), "\(what): peak")
            XCTAssertEqual(out["tokens"] as? [Int], tokens, "\(what): tokens differ from the unbudgeted run")
        }
    }

    /// `generate --prompts` against `plan --mode generate --prompts N`: the same feasibility, the same
    /// smallest budget, the same block size, the peak within 2%, and the outputs of the unbudgeted run
    /// (at the smallest budgets a block is one sequence whose KV heads go to disk).
    func testBlockSchedulePlanAgreesWithTheRun() throws {
        let model = CLI.smolLM2
        guard FileManager.default.fileExists(atPath: model) else { XCTFail("missing \(model): run scripts/fetch-assets.sh"); return }
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("prompts.txt")
        try String(repeating: "The tide came in and\n", count: 4).write(to: file, atomically: true, encoding: .utf8)
        let maxTokens = 8
        let gen = ["generate", "--model", model, "--prompts", file.path, "--max-tokens", "\(maxTokens)",
                   "--temperature", "0", "--ignore-eos", "--threads", "2"]
        let free = try CLI.run(gen)
        XCTAssertEqual(free.status, 0, free.stderr)
        let first = try json(String(free.stdout.split(separator: "\n")[0]))
        let promptTokens = try XCTUnwrap(first["prompt_tokens"] as? Int)
        let shape = ["plan", "--mode", "generate", "--model", model, "--prompts", "4", "--prompt-tokens", "\(promptTokens)",
                     "--seq-len", "\(promptTokens + maxTokens)", "--json", "--disk", dir.path]
        let minimum = try XCTUnwrap(try json(try CLI.run(shape + ["--budget", "1GB"]).stdout)["minimumBudget"] as? Int)
        var blockSizes = Set<Int>()
        for budget in [minimum - 4096, minimum, minimum + (512 << 10), 8 << 20, 40 << 20] {
            let plan = try CLI.run(shape + ["--budget", "\(budget)"])
            let run = try CLI.run(gen + ["--budget", "\(budget)", "--disk", dir.path, "--json"])
            let what = "budget \(budget) (minimum \(minimum))"
            let p = try json(plan.stdout)
            XCTAssertEqual(p["fits"] as? Bool, run.status == 0, "\(what):\n\(plan.stdout)\n\(run.stderr.suffix(600))")
            XCTAssertEqual(run.status == 0, budget >= minimum, what)
            guard run.status == 0 else {
                XCTAssertTrue(run.stderr.contains("\(minimum) bytes"), "\(what): the refusal names the minimum: \(run.stderr)")
                continue
            }
            let summary = try json(String(run.stderr.split(separator: "\n").last ?? ""))
            let measured = try XCTUnwrap((summary["streaming"] as? [String: Any])?["peak_compute_bytes"] as? Int)
            let predicted = try XCTUnwrap(p["budgetedPeakBytes"] as? Int)
            XCTAssertLessThanOrEqual(measured, budget, what)
            XCTAssertEqual(Double(measured), Double(predicted), accuracy: 0.02 * Double(predicted), "\(what): peak")
            XCTAssertEqual(summary["block_size"] as? Int, p["blockSize"] as? Int, "\(what): block size")
            blockSizes.insert(summary["block_size"] as? Int ?? 0)
            XCTAssertEqual(run.stdout, free.stdout, "\(what): outputs differ from the unbudgeted run")
        }
        XCTAssertEqual(blockSizes, [1, 4], "the grid covers blocks of one sequence (KV on disk) and of all four")
    }
}

extension PlanAgreesWithRunTests {
    /// `plan --mode train` shows how the least budget and the step grow with the sequence length: on the
    /// tiny 8,192-position model the least budget about doubles with T (attention's memory is linear in
    /// T: no T × T scores), the predicted step grows, and each row's budget is what that length's own
    /// `plan` reports.
    func testTrainGrowthTableIsLinearInTheSequence() throws {
        let model = CLI.cache + "/models/tiny/long"
        guard FileManager.default.fileExists(atPath: model + "/model.safetensors") else {
            return XCTFail("missing \(model): run scripts/test.sh, or python3 scripts/make-tiny-models.py")
        }
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let shape = ["plan", "--model", model, "--mode", "train", "--disk", dir.path, "--budget", "64MB"]
        let r = try CLI.run(shape + ["--seq-len", "8192", "--json", "--svg", dir.appendingPathComponent("p.svg").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let rows = try XCTUnwrap(try json(r.stdout)["growth"] as? [[String: Any]], r.stdout)
        XCTAssertEqual(rows.compactMap { $0["seqLen"] as? Int }, [512, 1024, 2048, 4096, 8192])
        let least = rows.compactMap { $0["minimumBudget"] as? Int }, steps = rows.compactMap { $0["stepSeconds"] as? Double }
        XCTAssertEqual(least.count, 5)
        XCTAssertEqual(steps.count, 5, "64MB runs every length: \(rows)")
        for i in 1..<least.count {
            let ratio = Double(least[i]) / Double(least[i - 1])
            XCTAssertGreaterThan(ratio, 1.2, "the least budget grows with T: \(least)")
            XCTAssertLessThan(ratio, 2.3, "the least budget at most about doubles when T doubles: \(least)")
            XCTAssertGreaterThan(steps[i], steps[i - 1], "the step grows with T: \(steps)")
        }
        let at4096 = try CLI.run(shape + ["--seq-len", "4096", "--json"])
        XCTAssertEqual(at4096.status, 0, at4096.stderr)
        XCTAssertEqual(try json(at4096.stdout)["minimumBudget"] as? Int, least[3], "the row agrees with plan at 4096")
        let svg = try String(contentsOf: dir.appendingPathComponent("p.svg"), encoding: .utf8)
        XCTAssertTrue(svg.contains("by sequence length"), "the SVG has the growth chart")
        let table = try CLI.run(shape + ["--seq-len", "8192"])
        XCTAssertTrue(table.stdout.contains("how it grows with the sequence length"), table.stdout)
    }
}
