//! TEMPORARY stand-ins until pith-kernels gains the weighted quantizers and block grids.
#![allow(dead_code, unused_variables)]
use pith_kernels::GgmlType;
pub fn quantize_row_weighted(ty: GgmlType, src: &[f32], imp: &[f32], dst: &mut [u8]) {
    pith_kernels::quantize_row(ty, src, dst)
}
pub fn block_grid(ty: GgmlType, block: &[u8], scale: &mut [f32], offset: &mut [f32]) -> (i32, i32) {
    unimplemented!("block_grid")
}
pub fn set_block_codes(ty: GgmlType, block: &mut [u8], codes: &[i32]) {
    unimplemented!("set_block_codes")
}
