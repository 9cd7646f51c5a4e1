// OpenBLAS chooses its kernels once, when it loads, from the CPUs it knows. It
// takes recent AVX-512 parts it does not know (AMD Zen 4/5) for Haswell and runs
// AVX2 kernels at half the speed (measured here: 119 vs 225 GFLOP/s for the
// shapes of a transformer block). The only switch is OPENBLAS_CORETYPE, read at
// load time, so the command re-executes itself once with it set.
//
// An OPENBLAS_CORETYPE already set to an AVX2 family on an AVX-512 CPU is a
// workaround for that misdetection (machines set it for every program), not a
// wish for slower kernels: it is replaced too (prefill 800 vs 1,300-1,440 tok/s
// here), unless OFFLOAD_KEEP_OPENBLAS_CORETYPE=1.

import CBLAS
import CKernels
import Foundation

public enum BLASSetup {
    /// The kernel family OpenBLAS is using ("Haswell", "SkylakeX", ...).
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// Re-executes this process with OPENBLAS_CORETYPE=SkylakeX when the CPU has
    /// AVX-512 and OpenBLAS runs AVX2 kernels. Returns (without doing anything)
    /// when the variable already says SkylakeX (this process is that re-execution,
    /// or OpenBLAS was built without it), OFFLOAD_KEEP_OPENBLAS_CORETYPE=1, the
    /// CPU lacks AVX-512, or exec fails.
    public static func reexecWithAVX512KernelsIfUseful() {
        func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        guard env("OPENBLAS_CORETYPE") != "SkylakeX", env("OFFLOAD_KEEP_OPENBLAS_CORETYPE") != "1",
              ck_simd_best() == 2, ["haswell", "zen"].contains(coreName.lowercased()) else { return }
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
    }
}
