// swift-tools-version:6.1
// Offload: plan, simulate and execute memory placement for training and running
// Llama-family models beyond the memory that computes them.
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]
let cOptimize: [CSetting] = [.unsafeFlags(["-O3"])]

let package = Package(
    name: "Offload",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "offload", targets: ["offload"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // HTTP for `offload serve` (without the configuration-file and full-Foundation traits).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // C shims: what Swift cannot see on its own.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: cOptimize),
        .target(name: "CPlatform", path: "Sources/CPlatform"),

        .target(name: "Tensors", swiftSettings: optimize),
        .target(name: "Kernels", dependencies: ["Tensors", "CBLAS", "CKernels"], swiftSettings: optimize),
        .target(name: "Memory", dependencies: ["Tensors", "CPlatform"], swiftSettings: optimize),
        .target(name: "Formats", dependencies: ["Tensors", "Kernels"], swiftSettings: optimize),
        .target(name: "Models", dependencies: ["Tensors", "Kernels", "Formats"], swiftSettings: optimize),
        .target(name: "Planning", dependencies: ["Tensors", "Kernels", "Formats", "Models", "Memory"], swiftSettings: optimize),
        .target(name: "Runtime", dependencies: ["Tensors", "Kernels", "Formats", "Models", "Memory", "Planning",
                                                "CPlatform", "CKernels"],
                swiftSettings: optimize),
        .target(name: "Server", dependencies: ["Tensors", "Formats", "Models", "Runtime",
                                               .product(name: "Hummingbird", package: "hummingbird"),
                                               .product(name: "NIOCore", package: "swift-nio"),
                                               .product(name: "HTTPTypes", package: "swift-http-types"),
                                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: optimize),
        .executableTarget(name: "offload", dependencies: [
            "Tensors", "Kernels", "Formats", "Models", "Memory", "Planning", "Runtime", "Server",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: optimize),

        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "Tensors"]),
        .testTarget(name: "FormatsTests", dependencies: ["Formats", "Tensors", "Kernels"]),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "Formats", "Kernels", "Tensors", "Runtime", "CPlatform"]),
        .testTarget(name: "MemoryTests", dependencies: ["Memory", "Tensors"]),
        .testTarget(name: "PlanningTests", dependencies: ["Planning", "Models", "Memory"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "Models", "Formats", "Tensors", "Planning", "Memory", "CPlatform"]),
        .testTarget(name: "CLITests", dependencies: ["offload", "Formats", "Models", "Tensors"]),
    ]
)
