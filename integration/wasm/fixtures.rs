//! The WAT modules of `integration/wasm/` as tests and benchmarks use them
//! (included with `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

pub const DECODER: &str = include_str!("modbus-decoder.wat");
pub const FAULTS: &str = include_str!("faults.wat");

/// The Modbus decoder, reporting `version` as `"v"`.
pub fn decoder(version: u32) -> Vec<u8> {
    wat::parse_str(DECODER.replace(
        "(global $version i32 (i32.const 1))",
        &format!("(global $version i32 (i32.const {version}))"),
    ))
    .unwrap()
}

/// A register response for the decoder: unit 7, function 3, 10 bytes of
/// registers (sequence, temperature and humidity in tenths, alarm bit).
pub fn frame(seq: u32, temp_tenths: i16, hum_tenths: u16, alarm: bool) -> Vec<u8> {
    let mut f = vec![7, 3, 10];
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&temp_tenths.to_be_bytes());
    f.extend_from_slice(&hum_tenths.to_be_bytes());
    f.extend_from_slice(&u16::from(alarm).to_be_bytes());
    f
}
