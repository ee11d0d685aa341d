//! Generates the C header from src/lib.rs into OUT_DIR/pith.h; tests/header.rs checks that
//! the committed include/pith.h is the same (`PITH_BLESS=1 cargo test -p pith-ffi --test
//! header` rewrites it).
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("targets/ffi/cbindgen.toml");
    match cbindgen::Builder::new().with_crate(&dir).with_config(config).generate() {
        Ok(b) => {
            b.write_to_file(out.join("pith.h"));
        }
        Err(e) => panic!("cbindgen: {e}"),
    }
}
