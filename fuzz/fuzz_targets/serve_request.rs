//! Arbitrary bytes as a `pith serve` request body: parsing, range checks, message building
//! and chat-template rendering never panic; every outcome is Ok or an OpenAI-style 4xx error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn template() -> &'static pith::chat::ChatTemplate {
    static T: OnceLock<pith::chat::ChatTemplate> = OnceLock::new();
    T.get_or_init(|| pith::chat::ChatTemplate::new(None, "<s>", "</s>").expect("ChatML compiles"))
}

fuzz_target!(|data: &[u8]| {
    for r in pith_serve::api::check_body(data, template()) {
        if let Err(e) = r {
            assert!(e.status.is_client_error(), "{e:?}");
            assert!(!e.message.is_empty());
            let _ = e.body().to_string();
        }
    }
});
