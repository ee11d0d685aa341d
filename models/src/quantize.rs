//! dequantize / quantize.
