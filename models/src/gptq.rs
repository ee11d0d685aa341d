//! Error-compensating quantization (GPTQ-style).
