// `offload train` on several MPI ranks (Open MPI's mpirun, ranks oversubscribed on this machine): N ranks
// with --batch B against one process with --batch N·B, runs repeated, ZeRO 0 against 1, resume on other
// rank counts, mismatched ranks and a dying rank. The tiny built-in shape keeps each run under a second.
import Foundation
import Formats
import XCTest

final class DataParallelTests: XCTestCase {
    static let data = CLI.fixtures.appendingPathComponent("smollm2/hamlet_excerpt.txt").path
    static let common = ["train", "--config", "tiny", "--data", data, "--seq-len", "32", "--threads", "1", "--lr", "1e-3"]
    var dir: URL!

    override func setUpWithError() throws {
        guard DataParallelTests.mpirun != nil else {
            XCTFail("mpirun not found on PATH: scripts/setup.sh installs Open MPI (openmpi-bin)")
            throw CocoaError(.fileNoSuchFile)
        }
        dir = try CLI.tempDir()
    }
    override func tearDown() { if let dir { try? FileManager.default.removeItem(at: dir) } }

    static var mpirun: String? {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/mpirun" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs `mpirun` with `spec` (e.g. ["-np", "2", binary, args...]); root may run it in this sandbox.
    @discardableResult
    func mpi(_ spec: [String], timeout: Double = 120, onStart: ((Process) -> Void)? = nil,
             file: StaticString = #filePath, line: UInt = #line) throws -> CommandResult {
        try tool(DataParallelTests.mpirun!, ["--oversubscribe"] + spec, environment: DataParallelTests.rootMayRun,
                 timeout: timeout, onStart: onStart, file: file, line: line)
    }

    /// mpirun refuses root unless told; this sandbox runs the tests as root.
    static var rootMayRun: [String: String] {
        ProcessInfo.processInfo.environment.merging(["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"]) { $1 }
    }

    /// Runs `executable` with stdout and stderr together in both fields of the result (through a file, so
    /// a chatty run cannot fill a pipe); ends it after `timeout` seconds.
    func tool(_ executable: String, _ args: [String], environment: [String: String]? = nil, timeout: Double = 120,
              onStart: ((Process) -> Void)? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> CommandResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        if let environment { p.environment = environment }
        let out = dir.appendingPathComponent("run-\(UUID().uuidString).out")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        let h = try FileHandle(forWritingTo: out)
        p.standardOutput = h; p.standardError = h
        try p.run()
        onStart?(p)
        let t0 = Date()
        while p.isRunning && Date().timeIntervalSince(t0) < timeout { usleep(20_000) }
        if p.isRunning { p.terminate(); XCTFail("\(executable) still running after \(timeout) s", file: file, line: line) }
        p.waitUntilExit()
        try h.close()
        let text = try String(contentsOf: out, encoding: .utf8)
        return CommandResult(status: p.terminationStatus, stdout: text, stderr: text)
    }

    /// `train` on `ranks` ranks (1: a plain process) with `args`; fails the test on a non-zero exit.
    @discardableResult
    func train(ranks: Int, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CommandResult {
        let r = ranks == 1 ? try CLI.run(DataParallelTests.common + args)
            : try mpi(["-np", "\(ranks)", CLI.binary] + DataParallelTests.common + args)
        XCTAssertEqual(r.status, 0, "\(ranks) ranks \(args): \(r.stderr)", file: file, line: line)
        return r
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// (loss, grad_norm) of every line of a --log file.
    func steps(_ log: String) throws -> [(loss: Double, norm: Double)] {
        try String(contentsOfFile: path(log), encoding: .utf8).split(separator: "\n").map { line in
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return ((o["loss"] as! NSNumber).doubleValue, (o["grad_norm"] as! NSNumber).doubleValue)
        }
    }

    /// Every weight of a checkpoint, by name.
    func weights(_ checkpoint: String) throws -> [String: [Float]] {
        let f = try SafetensorsFile(path: path(checkpoint) + "/model.safetensors")
        var out: [String: [Float]] = [:]
        for t in f.tensors { out[t.name] = Array(try f.data(t.name).bytes.bindMemory(to: Float.self)) }
        return out
    }

    /// ‖a − b‖ / ‖a‖ over every weight of two checkpoints.
    func relativeDifference(_ a: String, _ b: String) throws -> Double {
        let x = try weights(a), y = try weights(b)
        XCTAssertEqual(Set(x.keys), Set(y.keys))
        var diff = 0.0, norm = 0.0
        for (name, u) in x {
            for (p, q) in zip(u, y[name]!) { diff += Double(p - q) * Double(p - q); norm += Double(p) * Double(p) }
        }
        return (diff / norm).squareRoot()
    }

    func bytes(_ checkpoint: String, _ file: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path(checkpoint) + "/" + file)) }

    func testRanksGiveOneProcessesResults() throws {
        try train(ranks: 1, ["--batch", "4", "--steps", "5", "--log", path("one.jsonl"), "--save", path("one")])
        let two = try train(ranks: 2, ["--batch", "2", "--steps", "5", "--log", path("two.jsonl"), "--save", path("two")])
        try train(ranks: 4, ["--batch", "1", "--steps", "5", "--zero", "1", "--log", path("four.jsonl"), "--save", path("four")])
        let one = try steps("one.jsonl")
        for log in ["two.jsonl", "four.jsonl"] {
            let s = try steps(log)
            XCTAssertEqual(s.count, 5, log)
            for (a, b) in zip(one, s) {
                XCTAssertEqual(b.loss, a.loss, accuracy: 1e-6 * abs(a.loss), log)
                XCTAssertEqual(b.norm, a.norm, accuracy: 1e-5 * a.norm, log)
            }
        }
        // One step moves the weights by far more than the ranks' rounding.
        try train(ranks: 1, ["--batch", "4", "--steps", "5", "--stop-after", "4", "--save", path("one4")])
        XCTAssertGreaterThan(try relativeDifference("one", "one4"), 1e-3)
        for c in ["two", "four"] { XCTAssertLessThan(try relativeDifference("one", c), 1e-6, c) }
        // Rank 0 alone prints; the log has every rank's peak memory.
        XCTAssertEqual(two.stdout.components(separatedBy: "saved step 5").count, 2, two.stdout)
        let last = try String(contentsOfFile: path("two.jsonl"), encoding: .utf8).split(separator: "\n").last!
        let o = try JSONSerialization.jsonObject(with: Data(last.utf8)) as! [String: Any]
        XCTAssertEqual((o["rank_peak_bytes"] as? [Int])?.count, 2, String(last))
        XCTAssertEqual(o["tokens"] as? Int, 4 * 32, "tokens of every rank")
        // What a rank sends per step: an all-reduce's 2·(N−1)/N of the parameters (and a few bytes of losses).
        let parameters = Double(two.stdout.components(separatedBy: "tiny: ").last!.split(separator: " ").first!)!
        let sent = try XCTUnwrap(o["communicated_bytes"] as? Int)
        XCTAssertEqual(Double(sent), 2 * 0.5 * 4 * parameters, accuracy: 0.02 * 4 * parameters)
    }

    /// Fine-tuning examples train on completions only, so ranks hold different numbers of targets: each
    /// rank's gradient is weighted by its share. LoRA adapters on SmolLM2's frozen Q4_1 base, ZeRO 1.
    func testLoRAOnMaskedExamplesWeighsRanksByTheirTargets() throws {
        let model = CLI.smolLM2
        guard FileManager.default.fileExists(atPath: model) else { XCTFail("\(model) missing: run scripts/fetch-assets.sh"); return }
        let args = ["train", "--model", model, "--data", CLI.fixtures.appendingPathComponent("finetune/train.jsonl").path,
                    "--seq-len", "32", "--steps", "3", "--threads", "1", "--lora-rank", "4", "--lora-targets", "q,v,down"]
        let one = try CLI.run(args + ["--batch", "2", "--log", path("one.jsonl"), "--save", path("one")])
        XCTAssertEqual(one.status, 0, one.stderr)
        let two = try mpi(["-np", "2", CLI.binary] + args + ["--batch", "1", "--zero", "1", "--log", path("two.jsonl"),
                                                             "--save", path("two")])
        XCTAssertEqual(two.status, 0, two.stderr)
        for (a, b) in zip(try steps("one.jsonl"), try steps("two.jsonl")) {
            XCTAssertEqual(b.loss, a.loss, accuracy: 1e-6 * abs(a.loss))
            XCTAssertEqual(b.norm, a.norm, accuracy: 1e-5 * a.norm)
        }
        XCTAssertEqual(try steps("two.jsonl").count, 3)
        // The adapters agree (peft's file in each checkpoint).
        let x = try SafetensorsFile(path: path("one") + "/adapter_model.safetensors")
        let y = try SafetensorsFile(path: path("two") + "/adapter_model.safetensors")
        var diff = 0.0, norm = 0.0
        for t in x.tensors {
            let u = try x.data(t.name).bytes.bindMemory(to: Float.self), v = try y.data(t.name).bytes.bindMemory(to: Float.self)
            for (p, q) in zip(u, v) { diff += Double(p - q) * Double(p - q); norm += Double(p) * Double(p) }
        }
        XCTAssertLessThan((diff / norm).squareRoot(), 1e-6)
    }

    func testZerothOrderRanksExchangeOnlyTheirLosses() throws {
        let zo = ["--optimizer", "zo-sgd", "--steps", "5"]
        try train(ranks: 1, zo + ["--batch", "4", "--log", path("one.jsonl"), "--save", path("one")])
        try train(ranks: 2, zo + ["--batch", "2", "--log", path("two.jsonl"), "--save", path("two")])
        try train(ranks: 2, zo + ["--batch", "2", "--log", path("again.jsonl"), "--save", path("again")])
        // g = (L₊ − L₋) / 2ε magnifies the fp32 losses' last bit (4.8e-7 at 5.5) by 1/2ε = 500: so g agrees
        // to 1e-3 and the weights to 2e-5, not to the 1e-6 of a backward pass.
        for (a, b) in zip(try steps("one.jsonl"), try steps("two.jsonl")) {
            XCTAssertEqual(b.loss, a.loss, accuracy: 1e-6 * abs(a.loss))
            XCTAssertEqual(b.norm, a.norm, accuracy: 1e-3)
        }
        XCTAssertLessThan(try relativeDifference("one", "two"), 2e-5)
        XCTAssertEqual(try bytes("two", "model.safetensors"), try bytes("again", "model.safetensors"))
        try train(ranks: 1, zo + ["--batch", "4", "--stop-after", "4", "--save", path("one4")])
        XCTAssertGreaterThan(try relativeDifference("one", "one4"), 1e-5, "zo-sgd moved nothing")
    }

    func testRunsRepeatBitForBitAndZeroStagesAgree() throws {
        for (name, zero) in [("a", "0"), ("b", "0"), ("c", "1")] {
            try train(ranks: 2, ["--batch", "2", "--steps", "4", "--zero", zero, "--log", path(name + ".jsonl"), "--save", path(name)])
        }
        for name in ["b", "c"] {
            XCTAssertEqual(try bytes("a", "model.safetensors"), try bytes(name, "model.safetensors"), name)
            XCTAssertEqual(try bytes("a", "optimizer.safetensors"), try bytes(name, "optimizer.safetensors"), name)
            XCTAssertEqual(try steps("a.jsonl").map(\.loss), try steps(name + ".jsonl").map(\.loss), name)
            XCTAssertEqual(try steps("a.jsonl").map(\.norm), try steps(name + ".jsonl").map(\.norm), name)
        }
        // A larger shape: ZeRO 1's state (13 MiB a rank) reaches rank 0's checkpoint in several rounds.
        for (name, zero) in [("s0", "0"), ("s1", "1")] {
            let r = try mpi(["-np", "2", CLI.binary, "train", "--config", "small", "--data", DataParallelTests.data,
                             "--seq-len", "32", "--threads", "1", "--batch", "2", "--steps", "2", "--zero", zero, "--save", path(name)])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        XCTAssertEqual(try bytes("s0", "optimizer.safetensors"), try bytes("s1", "optimizer.safetensors"))
        XCTAssertEqual(try bytes("s0", "model.safetensors"), try bytes("s1", "model.safetensors"))
        // With a RAM budget (the planned executor, parameters in memory) and clipping: the same bits as in memory.
        try train(ranks: 2, ["--batch", "2", "--steps", "4", "--grad-clip", "0.5", "--save", path("clip")])
        try train(ranks: 2, ["--batch", "2", "--steps", "4", "--grad-clip", "0.5", "--zero", "1", "--budget", "4MB",
                             "--strategy", "recompute", "--save", path("clip-budget")])
        XCTAssertEqual(try bytes("clip", "model.safetensors"), try bytes("clip-budget", "model.safetensors"))
        XCTAssertNotEqual(try bytes("a", "model.safetensors"), try bytes("clip", "model.safetensors"), "clipping changed nothing")
    }

    func testResumeOnAnotherNumberOfRanks() throws {
        try train(ranks: 2, ["--batch", "2", "--steps", "5", "--zero", "1", "--save", path("whole")])
        try train(ranks: 2, ["--batch", "2", "--steps", "5", "--zero", "1", "--stop-after", "3", "--save", path("part")])
        // The same ranks, the other stage: bit for bit.
        try FileManager.default.copyItem(atPath: path("part"), toPath: path("part2"))
        try train(ranks: 2, ["--resume", path("part2")])
        XCTAssertEqual(try bytes("whole", "model.safetensors"), try bytes("part2", "model.safetensors"))
        XCTAssertEqual(try bytes("whole", "optimizer.safetensors"), try bytes("part2", "optimizer.safetensors"))
        // One process (global batch 4) and four ranks (1 each, ZeRO 1 resharding the state) continue it.
        try FileManager.default.copyItem(atPath: path("part"), toPath: path("part1"))
        try train(ranks: 1, ["--resume", path("part1")])
        try train(ranks: 4, ["--resume", path("part"), "--zero", "1"])
        XCTAssertLessThan(try relativeDifference("whole", "part1"), 1e-6)
        XCTAssertLessThan(try relativeDifference("whole", "part"), 1e-6)
        // A global batch that does not divide is refused by name.
        try train(ranks: 2, ["--batch", "3", "--steps", "2", "--save", path("three")])
        let r = try mpi(["-np", "4", CLI.binary, "train", "--resume", path("three"), "--data", DataParallelTests.data, "--steps", "3"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("global batch of 6 windows does not divide among 4 ranks"), r.stderr)
    }

    /// `profile --collectives` adds the ranks' measured exchange rate to a profile; `plan --ranks` then predicts
    /// what each rank holds and sends, and the run sends what the plan says.
    func testProfileMeasuresCollectivesAndPlanPredictsWhatARankSends() throws {
        let hw = path("hw.json")
        try #"{"name": "t", "gemmFlops": 1e11, "memoryBandwidth": 1e10, "diskReadBandwidth": 1e9, "diskWriteBandwidth": 1e9, "hostLinkBandwidth": 1e10}"#
            .write(toFile: hw, atomically: true, encoding: .utf8)
        let m = try mpi(["-np", "2", CLI.binary, "profile", "--collectives", "--quick", "--out", hw])
        XCTAssertEqual(m.status, 0, m.stderr)
        let profile = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: hw))) as! [String: Any]
        let c = try XCTUnwrap(profile["collectives"] as? [String: Any], "\(profile)")
        XCTAssertEqual(c["ranks"] as? Int, 2)
        XCTAssertGreaterThan((c["bytes_per_second"] as? Double) ?? 0, 1e6)
        XCTAssertEqual(profile["gemmFlops"] as? Double, 1e11, "the rest of the profile is kept")

        let plan = try CLI.run(["plan", "--config", "tiny", "--mode", "train", "--batch", "2", "--seq-len", "32", "--ranks", "2",
                                "--zero", "1", "--hardware", hw, "--json"])
        XCTAssertEqual(plan.status, 0, plan.stderr)
        let r = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as? [String: Any])?["ranks"] as? [String: Any])
        let whole = try XCTUnwrap(r["wholeStateBytes"] as? Int), mine = try XCTUnwrap(r["stateBytesPerRank"] as? Int)
        XCTAssertGreaterThanOrEqual(mine, whole / 2)
        XCTAssertLessThan(mine, whole * 3 / 5, "ZeRO 1 holds about half the state on each of 2 ranks")
        XCTAssertNotNil(r["communicationSeconds"] as? Double)
        XCTAssertEqual(r["stepSeconds"] as! Double, (r["computeSeconds"] as! Double) + (r["communicationSeconds"] as! Double), accuracy: 1e-12)
        let predicted = try XCTUnwrap(r["communicatedBytesPerStep"] as? Int)
        try train(ranks: 2, ["--batch", "2", "--steps", "2", "--zero", "1", "--log", path("z1.jsonl")])
        let last = try String(contentsOfFile: path("z1.jsonl"), encoding: .utf8).split(separator: "\n").last!
        let sent = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(last.utf8)) as! [String: Any])["communicated_bytes"] as? Int)
        XCTAssertEqual(Double(sent), Double(predicted), accuracy: 0.03 * Double(predicted))
        // Without the measurement, plan says how to make it.
        let bare = try CLI.run(["plan", "--config", "tiny", "--mode", "train", "--batch", "2", "--seq-len", "32", "--ranks", "2"])
        XCTAssertTrue(bare.stdout.contains("offload profile --collectives"), bare.stdout)
    }

    /// Two "hosts": network namespaces of this machine joined by a veth pair, the ranks launched into them
    /// by an agent script (as ssh would), their collectives over TCP across the link. The ranks' sums are
    /// in rank order whatever carries the bytes, so the run equals the shared-memory run bit for bit.
    func testTwoHostsOverATCPLinkGiveTheSameBits() throws {
        let tag = String(ProcessInfo.processInfo.processIdentifier % 100_000), net = "10.231.\(Int(tag)! % 250)"
        let (a, b) = ("ofa\(tag)", "ofb\(tag)")
        let ipTool = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "ip"
        func ip(_ args: [String], environment: [String: String]? = nil) throws -> CommandResult {
            try tool(ipTool, args, environment: environment)
        }
        defer { _ = try? ip(["netns", "del", a]); _ = try? ip(["netns", "del", b]) }
        for args in [["netns", "add", a], ["netns", "add", b], ["link", "add", "v\(a)", "type", "veth", "peer", "name", "v\(b)"],
                     ["link", "set", "v\(a)", "netns", a], ["link", "set", "v\(b)", "netns", b],
                     ["-n", a, "addr", "add", "\(net).1/24", "dev", "v\(a)"], ["-n", b, "addr", "add", "\(net).2/24", "dev", "v\(b)"],
                     ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"],
                     ["-n", a, "link", "set", "v\(a)", "up"], ["-n", b, "link", "set", "v\(b)", "up"]] {
            let r = try ip(args)
            XCTAssertEqual(r.status, 0, "ip \(args.joined(separator: " ")): \(r.stderr) (the test needs root and network namespaces)")
            if r.status != 0 { return }
        }
        let agent = path("agent.sh"), hosts = path("hosts")
        try """
        #!/bin/sh
        # mpirun's launcher for the two namespace hosts: "agent HOST COMMAND..." runs COMMAND in HOST's namespace.
        host=$1; shift
        case "$host" in \(net).1) ns=\(a) ;; \(net).2) ns=\(b) ;; *) echo "agent: unknown host $host" >&2; exit 1 ;; esac
        exec ip netns exec "$ns" /bin/sh -c "$*"

        """.write(toFile: agent, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: agent)
        try "\(net).1 slots=1\n\(net).2 slots=1\n".write(toFile: hosts, atomically: true, encoding: .utf8)
        func transmitted() throws -> Int {
            Int(try ip(["netns", "exec", a, "cat", "/sys/class/net/v\(a)/statistics/tx_bytes"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
        let before = try transmitted()
        let run = try ip(["netns", "exec", a, DataParallelTests.mpirun!, "--hostfile", hosts, "-np", "2",
                          "--mca", "plm_rsh_agent", agent, "--mca", "btl", "tcp,self",
                          "--mca", "btl_tcp_if_include", "\(net).0/24", "--mca", "oob_tcp_if_include", "\(net).0/24", CLI.binary]
                         + DataParallelTests.common + ["--batch", "2", "--steps", "3", "--zero", "1", "--save", path("tcp"),
                                                       "--log", path("tcp.jsonl")], environment: DataParallelTests.rootMayRun)
        XCTAssertEqual(run.status, 0, run.stdout + run.stderr)
        // Rank 0's share of the exchange left through the link.
        let sent = try steps("tcp.jsonl").count * (try String(contentsOfFile: path("tcp.jsonl"), encoding: .utf8)
            .split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["communicated_bytes"] as? Int }.last ?? 0)
        XCTAssertGreaterThan(sent, 0)
        XCTAssertGreaterThanOrEqual(try transmitted() - before, sent, "the collectives did not cross the veth link")
        try train(ranks: 2, ["--batch", "2", "--steps", "3", "--zero", "1", "--save", path("shm")])
        XCTAssertEqual(try bytes("tcp", "model.safetensors"), try bytes("shm", "model.safetensors"))
        XCTAssertEqual(try bytes("tcp", "optimizer.safetensors"), try bytes("shm", "optimizer.safetensors"))
    }

    func testMismatchedRanksAndBadStagesAreRefused() throws {
        let args = DataParallelTests.common + ["--batch", "2", "--steps", "3"]
        let r = try mpi(["-np", "1", CLI.binary] + args + [":", "-np", "1", CLI.binary] + args + ["--weight-decay", "0.1"],
                        timeout: 60)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("rank 1 has other training options (flags) than rank 0"), r.stderr)
        let z = try mpi(["-np", "2", CLI.binary] + args + ["--zero", "2"], timeout: 60)
        XCTAssertNotEqual(z.status, 0)
        XCTAssertTrue(z.stderr.contains("--zero 2 is not built yet"), z.stderr)
        // --ranks without mpirun on PATH names what to install.
        let bare = try tool(CLI.binary, args + ["--ranks", "2"], environment: ["PATH": "/nonexistent"])
        XCTAssertNotEqual(bare.status, 0)
        XCTAssertTrue(bare.stderr.contains("apt-get install openmpi-bin"), bare.stderr)
    }

    func testRanksOptionStartsMPIRun() throws {
        let r = try tool(CLI.binary, DataParallelTests.common + ["--batch", "2", "--steps", "3", "--ranks", "2", "--save", path("r")],
                         environment: DataParallelTests.rootMayRun)
        XCTAssertEqual(r.status, 0, r.stderr)
        try train(ranks: 2, ["--batch", "2", "--steps", "3", "--save", path("m")])
        XCTAssertEqual(try bytes("r", "model.safetensors"), try bytes("m", "model.safetensors"))
    }

    func testARankThatDiesEndsTheJob() throws {
        let t0 = Date()
        let r = try mpi(["-np", "2", CLI.binary] + DataParallelTests.common + ["--batch", "2", "--steps", "100000000"],
                        timeout: 60) { _ in
            // Rank 1, once it runs steps: killed.
            var victim: Int32?
            let deadline = Date().addingTimeInterval(30)
            while victim == nil && Date() < deadline {
                usleep(200_000)
                for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
                    guard let n = Int32(pid),
                          let env = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ")),
                          let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")),
                          String(decoding: cmd, as: UTF8.self).contains("100000000"),
                          String(decoding: env, as: UTF8.self).split(separator: "\0").contains("OMPI_COMM_WORLD_RANK=1")
                    else { continue }
                    victim = n
                }
            }
            usleep(500_000)
            if let victim { kill(victim, SIGKILL) } else { XCTFail("rank 1 not found") }
        }
        XCTAssertNotEqual(r.status, 0)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 45, "the job outlived its rank")
        XCTAssertTrue(r.stderr.contains("rank 1"), r.stderr)
    }
}
