//! Snapshot state files from anywhere (a snapshot directory is a file a user may be handed):
//! the framing, the checksum and the decoding either refuse the bytes with an error or yield a
//! snapshot that encodes to a file which decodes to the same snapshot; never a panic or an
//! unbounded allocation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_vmm::snapshot::format;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz/vm.state");
    // Half the inputs get a valid frame around them, so the payload decoder is reached.
    let framed;
    let bytes = if data.first().is_some_and(|b| b & 1 == 1) {
        framed = frame(&data[1..]);
        &framed[..]
    } else {
        data
    };
    if let Ok(state) = format::decode(bytes, path) {
        let again = format::decode(&format::encode(&state), path).expect("a re-encoded state decodes");
        assert_eq!(again, state, "a decoded state survives encoding");
    }
});

/// `payload` inside a correct frame (magic, version, length, CRC-32).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = format::MAGIC.to_vec();
    out.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// CRC-32 (IEEE), bit by bit: the fuzz crate needs no more than this.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
