//! The committed header is what cbindgen generates from the current source.
//! `PITH_BLESS=1 cargo test -p pith-ffi --test header` rewrites it.

#[test]
fn committed_header_is_current() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/pith.h"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/pith.h");
    if std::env::var_os("PITH_BLESS").is_some() {
        std::fs::write(path, generated).expect("write include/pith.h");
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "targets/ffi/include/pith.h is stale: regenerate it with `PITH_BLESS=1 cargo test -p pith-ffi --test header` \
         (or `bash targets/ffi/test.sh --bless`) and commit it"
    );
}
