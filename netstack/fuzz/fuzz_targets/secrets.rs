//! Secret placeholders in request bytes: detection (raw, percent, base64, JSON-escaped) and
//! substitution, fed in arbitrary pieces, must agree with the one-shot forms and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::fuzzing::secrets_in_pieces;

fuzz_target!(|input: (u8, Vec<u8>, Vec<u8>)| {
    let (seed, cuts, data) = input;
    // Placeholders are long random tokens; the value is anything printable.
    let placeholder = format!("msbvm_placeholder_{:032x}", u128::from(seed) * 0x9e37_79b9);
    let value = format!("v{seed}/+=\"\\");
    secrets_in_pieces(&placeholder, &value, &data[..data.len().min(1 << 16)], &cuts);
});
