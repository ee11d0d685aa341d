#![allow(dead_code)]
pub mod tiny;
