// `offload train` and `offload export` end to end: the built binary is run as a
// user would, and its log, checkpoint and messages are checked.
import Foundation
import Tensors
import XCTest

final class TrainCommandTests: OffloadCommandTestCase {
    let common = ["train", "--config", "tiny", "--seed", "7", "--data", "text.txt", "--batch", "2", "--seq-len", "32",
                  "--lr", "3e-3", "--threads", "2", "--shuffle", "3", "--grad-clip", "1", "--schedule", "cosine", "--warmup", "1"]

    func testLogAndResumeAreBitIdentical() throws {
        let a = try offload(common + ["--steps", "4", "--log", "a.jsonl", "--save", "runA"])
        XCTAssertEqual(a.status, 0, a.err)
        XCTAssertTrue(a.out.contains("step 4/4"), a.out)   // plain lines when not a terminal
        XCTAssertFalse(a.out.contains("\r"))
        let la = try logLines("a.jsonl")
        XCTAssertEqual(la.count, 4)
        for key in ["step", "loss", "grad_norm", "lr", "tokens", "seconds", "tokens_per_second"] {
            XCTAssertNotNil(la[0][key], key)
        }
        XCTAssertEqual(la[0]["tokens"] as? Int, 64)

        // The same 4-step run stopped after step 2 (as a time-boxed job would be), then resumed.
        let first = try offload(common + ["--steps", "4", "--stop-after", "2", "--save", "runB", "--log", "b.jsonl"])
        XCTAssertEqual(first.status, 0, first.err)
        let r = try offload(["train", "--resume", "runB", "--data", "text.txt", "--threads", "2", "--steps", "4",
                             "--log", "b.jsonl"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("resuming at step 2"), r.err)
        let lb = try logLines("b.jsonl")
        XCTAssertEqual(lb.map { $0["step"] as? Int }, [1, 2, 3, 4])
        // Losses printed from the same Float bits print identically.
        XCTAssertEqual(la.map { "\($0["loss"]!)" }, lb.map { "\($0["loss"]!)" })
        let ma = try Data(contentsOf: URL(fileURLWithPath: work + "/runA/model.safetensors"))
        let mb = try Data(contentsOf: URL(fileURLWithPath: work + "/runB/model.safetensors"))
        XCTAssertEqual(ma, mb, "weights after 4 steps differ")

        // Export the result.
        let e = try offload(["export", "--checkpoint", "runA", "--out", "tiny.gguf", "--type", "q8_0"])
        XCTAssertEqual(e.status, 0, e.err)
        let gguf = try Data(contentsOf: URL(fileURLWithPath: work + "/tiny.gguf"))
        XCTAssertEqual(Array(gguf.prefix(4)), Array("GGUF".utf8))
    }

    func testNonFiniteLossNamesTheStepAndKeepsTheCheckpoint() throws {
        let r = try offload(["train", "--config", "tiny", "--data", "text.txt", "--batch", "2", "--seq-len", "32",
                             "--optimizer", "sgd", "--momentum", "0", "--lr", "1e30", "--steps", "5",
                             "--save", "run", "--save-every", "1", "--threads", "1"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("step 2: the "), r.err)
        XCTAssertTrue(r.err.contains("not a finite number"), r.err)
        XCTAssertTrue(r.err.contains("the last checkpoint (step 1) in run is kept"), r.err)
        let info = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/run/trainer.json"))) as! [String: Any]
        XCTAssertEqual(info["step"] as? Int, 1)
    }

    func testResumeRefusesAnotherModelOrACorruptedFolder() throws {
        XCTAssertEqual(try offload(common + ["--steps", "1", "--save", "run"]).status, 0)
        let other = try offload(["train", "--config", "small", "--resume", "run", "--data", "text.txt", "--steps", "2"])
        XCTAssertNotEqual(other.status, 0)
        XCTAssertTrue(other.err.contains("holds model 'tiny'"), other.err)
        let path = work + "/run/optimizer.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count / 2] ^= 1
        try bytes.write(to: URL(fileURLWithPath: path))
        let corrupt = try offload(["train", "--resume", "run", "--data", "text.txt", "--steps", "2"])
        XCTAssertNotEqual(corrupt.status, 0)
        XCTAssertTrue(corrupt.err.contains("corrupted"), corrupt.err)
        let missing = try offload(["train", "--resume", "nothing-here", "--data", "text.txt", "--steps", "2"])
        XCTAssertTrue(missing.err.contains("no such checkpoint folder"), missing.err)
    }

    func testBadData() throws {
        try "".write(toFile: work + "/empty.txt", atomically: true, encoding: .utf8)
        let e = try offload(["train", "--config", "tiny", "--data", "empty.txt", "--steps", "1"])
        XCTAssertTrue(e.err.contains("empty"), e.err)
        try "short text".write(toFile: work + "/short.txt", atomically: true, encoding: .utf8)
        let s = try offload(["train", "--config", "tiny", "--data", "short.txt", "--seq-len", "32", "--steps", "1"])
        XCTAssertTrue(s.err.contains("shorter than one training window"), s.err)
        try "1 2 3 999 4 5 6 7 8 9".write(toFile: work + "/ids.txt", atomically: true, encoding: .utf8)
        let o = try offload(["train", "--config", "tiny", "--tokens", "ids.txt", "--seq-len", "4", "--steps", "1"])
        XCTAssertTrue(o.err.contains("token id 999 at position 3"), o.err)
    }
    /// Fine-tuning on JSONL examples with a validation loss every step, as a user runs it; and the
    /// mistakes a user makes get one line naming the flag or the file and line.
    func testFineTuningFromJSONLWithValidation() throws {
        let model = AssetCache.directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: model) else { XCTFail("\(model) not found: run scripts/fetch-assets.sh"); return }
        let rows = [#"{"prompt": "Q: What colour is the sky?\nA:", "completion": " Blue, on a clear day."}"#,
                    #"{"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}]}"#]
        try (rows + rows + rows).joined(separator: "\n").write(toFile: work + "/ft.jsonl", atomically: true, encoding: .utf8)
        let r = try offload(["train", "--model", model, "--data", "ft.jsonl", "--eval-data", "ft.jsonl", "--eval-every", "1",
                             "--batch", "2", "--seq-len", "16", "--steps", "2", "--threads", "2", "--log", "ft-log.jsonl"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("tokens trained on"), r.err)
        XCTAssertTrue(r.err.contains("s of validation)"), "the training rate leaves the validation passes out: \(r.err)")
        let lines = try logLines("ft-log.jsonl")
        XCTAssertEqual(lines.count, 2)
        for l in lines { XCTAssertTrue((l["eval_loss"] as? Double)?.isFinite == true, "\(l)") }
        XCTAssertTrue(r.out.contains("eval "), r.out)

        try (rows[0] + "\n{\"prompt\": \"no completion\"}").write(toFile: work + "/bad.jsonl", atomically: true, encoding: .utf8)
        let bad = try offload(["train", "--model", model, "--data", "bad.jsonl", "--steps", "1"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("bad.jsonl:2: expected {\"prompt\", \"completion\"}"), bad.err)
        let noTokenizer = try offload(["train", "--config", "tiny", "--data", "ft.jsonl", "--steps", "1"])
        XCTAssertTrue(noTokenizer.err.contains("need a model with a tokenizer"), noTokenizer.err)
        let every = try offload(["train", "--config", "tiny", "--data", "text.txt", "--eval-every", "5", "--steps", "1"])
        XCTAssertTrue(every.err.contains("--eval-every needs --eval-data"), every.err)

        // Under a budget that keeps the parameters in memory the validation pass runs through the executor
        // (one block's activations at a time, within the budget): the same losses and validation losses
        // bit for bit. Where the plan streams the parameters it is refused by name.
        let tiny = ["train", "--config", "tiny", "--seed", "3", "--data", "text.txt", "--eval-data", "text.txt",
                    "--eval-every", "1", "--batch", "2", "--seq-len", "32", "--threads", "2", "--steps", "3"]
        XCTAssertEqual(try offload(tiny + ["--log", "plain.jsonl"]).status, 0)
        for (i, strategy) in ["recompute", "keep"].enumerated() {
            let b = try offload(tiny + ["--log", "budget\(i).jsonl", "--budget", "3MB", "--strategy", strategy])
            XCTAssertEqual(b.status, 0, b.err)
            for key in ["loss", "eval_loss"] {
                XCTAssertEqual(try logLines("plain.jsonl").map { "\($0[key]!)" }, try logLines("budget\(i).jsonl").map { "\($0[key]!)" },
                               "\(strategy): \(key)")
            }
        }
        let streamed = try offload(tiny + ["--budget", "1MB", "--disk", "spill", "--strategy", "stream"])
        XCTAssertNotEqual(streamed.status, 0)
        XCTAssertTrue(streamed.err.contains("--eval-data is not supported when the parameters are streamed"), streamed.err)
    }
    /// zo-sgd (MeZO): two forward passes a step, resumed bit for bit (z comes back from the step number);
    /// its options are refused where they do not apply.
    func testZerothOrderResumesBitIdenticallyAndRefusesWhatDoesNotApply() throws {
        let zo = ["train", "--config", "tiny", "--seed", "7", "--data", "text.txt", "--batch", "2", "--seq-len", "32",
                  "--lr", "1e-3", "--threads", "2", "--optimizer", "zo-sgd", "--zo-eps", "1e-2", "--zo-seed", "5"]
        XCTAssertEqual(try offload(zo + ["--steps", "4", "--log", "whole.jsonl"]).status, 0)
        XCTAssertEqual(try offload(zo + ["--steps", "4", "--stop-after", "2", "--save", "half", "--log", "half.jsonl"]).status, 0)
        let r = try offload(["train", "--resume", "half", "--data", "text.txt", "--threads", "2", "--steps", "4", "--log", "half.jsonl"])
        XCTAssertEqual(r.status, 0, r.err)
        let whole = try logLines("whole.jsonl"), half = try logLines("half.jsonl")
        XCTAssertEqual(whole.count, 4); XCTAssertEqual(half.count, 4)
        for (a, b) in zip(whole, half) {
            XCTAssertEqual(a["loss"] as? Double, b["loss"] as? Double)
            XCTAssertEqual(a["grad_norm"] as? Double, b["grad_norm"] as? Double)
        }
        XCTAssertNotEqual(whole[0]["loss"] as? Double, whole[3]["loss"] as? Double)
        let other = try offload(zo.dropLast(2) + ["--zo-seed", "6", "--steps", "1", "--log", "other.jsonl"])
        XCTAssertEqual(other.status, 0, other.err)
        XCTAssertNotEqual(try logLines("other.jsonl")[0]["grad_norm"] as? Double, whole[0]["grad_norm"] as? Double,
                          "another seed draws another z")

        let eps = try offload(["train", "--config", "tiny", "--data", "text.txt", "--zo-eps", "1e-3", "--steps", "1"])
        XCTAssertTrue(eps.err.contains("--zo-eps and --zo-seed apply to --optimizer zo-sgd only"), eps.err)
        let adamOptions = try offload(zo + ["--momentum", "0.5", "--eps", "1e-6", "--steps", "1"])
        XCTAssertTrue(adamOptions.err.contains("--momentum, --eps do not apply to --optimizer zo-sgd"), adamOptions.err)
        let acc = try offload(zo + ["--accumulate", "2", "--steps", "1"])
        XCTAssertTrue(acc.err.contains("zo-sgd takes one batch per step"), acc.err)
        let budget = try offload(zo + ["--budget", "64MB", "--steps", "1"])
        XCTAssertTrue(budget.err.contains("zo-sgd is not supported with --budget"), budget.err)
    }

    /// 8-bit AdamW end to end: resume is bit-identical (codes and scales round-trip through the checkpoint as U8
    /// and F32), a --budget run gives the same losses, and the plan counts a quarter of AdamW's state.
    func testAdamW8bitResumesAndRunsUnderABudgetBitIdentically() throws {
        let eight = common + ["--optimizer", "adamw8bit", "--weight-decay", "0.1"]
        let a = try offload(eight + ["--steps", "4", "--log", "a.jsonl", "--save", "runA"])
        XCTAssertEqual(a.status, 0, a.err)
        let first = try offload(eight + ["--steps", "4", "--stop-after", "2", "--save", "runB", "--log", "b.jsonl"])
        XCTAssertEqual(first.status, 0, first.err)
        let r = try offload(["train", "--resume", "runB", "--data", "text.txt", "--threads", "2", "--steps", "4", "--log", "b.jsonl"])
        XCTAssertEqual(r.status, 0, r.err)
        let la = try logLines("a.jsonl"), lb = try logLines("b.jsonl")
        XCTAssertEqual(la.map { "\($0["loss"]!)" }, lb.map { "\($0["loss"]!)" })
        for file in ["model.safetensors", "optimizer.safetensors"] {
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: work + "/runA/" + file)),
                           try Data(contentsOf: URL(fileURLWithPath: work + "/runB/" + file)), "\(file) after 4 steps differs")
        }
        // What the checkpoint holds: codes and scales for whole blocks of at least 4096 weights, fp32 m and v otherwise.
        let state = try Data(contentsOf: URL(fileURLWithPath: work + "/runA/optimizer.safetensors"))
        let headerLength = Int(state.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: state.subdata(in: 8..<8 + headerLength)) as! [String: [String: Any]]
        XCTAssertEqual(header["token_embd.weight.m.codes"]?["dtype"] as? String, "U8")
        XCTAssertEqual(header["token_embd.weight.m.codes"]?["shape"] as? [Int], [256, 64])
        XCTAssertEqual(header["token_embd.weight.v.scales"]?["shape"] as? [Int], [64])
        XCTAssertEqual(header["blk.0.attn_k.weight.m"]?["dtype"] as? String, "F32")
        XCTAssertNil(header["token_embd.weight.m"])
        let adamw = try offload(common + ["--steps", "4", "--log", "c.jsonl"])
        XCTAssertEqual(adamw.status, 0, adamw.err)
        XCTAssertNotEqual(try logLines("c.jsonl")[3]["loss"] as? Double, la[3]["loss"] as? Double, "8-bit moments change the run")

        // Under a budget (parameters in memory, activations planned): the same losses bit for bit.
        let budgeted = try offload(eight + ["--steps", "4", "--log", "d.jsonl", "--budget", "3MB", "--strategy", "recompute"])
        XCTAssertEqual(budgeted.status, 0, budgeted.err)
        XCTAssertEqual(la.map { "\($0["loss"]!)" }, try logLines("d.jsonl").map { "\($0["loss"]!)" })

        // The plan counts the optimizer's real state, and streaming (AdamW only) is refused by name.
        func stateBytes(_ optimizer: String) throws -> Int {
            let p = try offload(["plan", "--config", "tiny", "--batch", "2", "--seq-len", "32", "--optimizer", optimizer, "--json"])
            XCTAssertEqual(p.status, 0, p.err)
            return (try JSONSerialization.jsonObject(with: Data(p.out.utf8)) as! [String: Any])["stateBytes"] as! Int
        }
        let full = try stateBytes("adamw"), small = try stateBytes("adamw8bit")
        XCTAssertLessThan(small, full)
        XCTAssertGreaterThan(full - small, 6 * 16384, "the embedding's m and v take 2 bytes a weight, not 8")
        let streamed = try offload(eight + ["--steps", "1", "--budget", "1MB", "--disk", "spill", "--strategy", "stream"])
        XCTAssertNotEqual(streamed.status, 0)
        XCTAssertTrue(streamed.err.contains("AdamW only"), streamed.err)
    }
}
