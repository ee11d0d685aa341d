//! Puts memory.x where cortex-m-rt's link.x finds it, and rebuilds when the model or the
//! generation settings (environment variables read by `env!`/`option_env!`) change.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    for v in [
        "PITH_FIRMWARE_MODEL",
        "PITH_FIRMWARE_PROMPT",
        "PITH_FIRMWARE_N",
        "PITH_FIRMWARE_TEMP_MILLI",
        "PITH_FIRMWARE_SEED",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if let Some(m) = std::env::var_os("PITH_FIRMWARE_MODEL") {
        println!("cargo:rerun-if-changed={}", PathBuf::from(m).display());
    }
}
