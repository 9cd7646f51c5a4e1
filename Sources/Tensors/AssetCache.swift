// Where the fetched assets (models, vocabularies, llama.cpp's source) live: the one
// resolution of the cache folder, the same as scripts/fetch-assets.sh makes it.
import Foundation

public enum AssetCache {
    /// `$OFFLOAD_CACHE`, else `$HOME/.cache/offload`. `HOME` comes first, as in the scripts:
    /// a CI system or container that sets it elsewhere than the password file's home directory
    /// (what `NSHomeDirectory()` reads) finds the assets where the scripts put them.
    public static var directory: String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["OFFLOAD_CACHE"], !dir.isEmpty { return dir }
        let home = env["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.cache/offload"
    }

    /// SmolLM2-135M-Instruct in Q4_1, the real model every parity test and the main job use.
    public static var smolLM2: String { directory + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
}
