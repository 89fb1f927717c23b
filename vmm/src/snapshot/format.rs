//! The state file's framing: `MSBVMSNP`, the format version, the payload's
//! length and CRC-32, then the payload (a postcard-encoded
//! [`VmSnapshot`]).
//!
//! Everything is checked before the payload is decoded, and decoding is
//! bounded by the length, so a truncated, corrupted or foreign file is an
//! error naming what is wrong, never a panic or a huge allocation.

use std::path::Path;

use super::{Error, VmSnapshot};

/// The first eight bytes of every state file.
pub const MAGIC: &[u8; 8] = b"MSBVMSNP";
/// The format this build writes and reads. Bump it whenever [`VmSnapshot`]
/// or any state blob inside it changes shape.
pub const FORMAT_VERSION: u32 = 1;
/// No msbvm state file is larger (vCPU state is a few KiB each, at most 254).
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// Magic, version, length, checksum.
const FRAME_BYTES: usize = 8 + 4 + 8 + 4;

/// The state file's bytes for `state`.
pub fn encode(state: &VmSnapshot) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    let payload = postcard::to_allocvec(state).expect("postcard encodes plain structs");
    let mut out = Vec::with_capacity(FRAME_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Checks and decodes a state file read from `path` (named in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<VmSnapshot, Error> {
    let corrupt = |why: String| Error::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(Error::NotASnapshot(path.to_path_buf()));
    }
    if bytes.len() < FRAME_BYTES {
        return Err(corrupt(format!("truncated at {} bytes", bytes.len())));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Error::Format {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
    let payload = &bytes[FRAME_BYTES..];
    if payload.len() as u64 != len {
        return Err(corrupt(format!(
            "the payload is {} bytes; the header says {len}",
            payload.len()
        )));
    }
    let (recorded, actual) = (u32_at(20), crc32fast::hash(payload));
    if recorded != actual {
        return Err(corrupt(format!(
            "checksum {actual:#010x} does not match the recorded {recorded:#010x}"
        )));
    }
    let (state, rest) = postcard::take_from_bytes(payload)
        .map_err(|e| corrupt(format!("the payload does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "{} bytes follow the state in the payload",
            rest.len()
        )));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{DeviceState, Header, MemoryLayout};

    pub(crate) fn sample() -> VmSnapshot {
        VmSnapshot {
            header: Header {
                msbvm_version: env!("CARGO_PKG_VERSION").into(),
                created_unix_ms: 1_700_000_000_000,
                kernel_sha256: Some("ab".repeat(32)),
                host_cpu: "GenuineIntel family 6 model 85".into(),
                vcpus: 2,
                memory_mib: 256,
                memory: MemoryLayout {
                    regions: vec![(0, 256 << 20)],
                    file_len: 256 << 20,
                    data_pages: 1234,
                    crc32: 0xdead_beef,
                },
            },
            vm: vec![1, 2, 3],
            vcpus: vec![vec![4; 100], vec![5; 100]],
            devices: vec![DeviceState {
                name: "virtio-vsock".into(),
                state: vec![9; 10],
            }],
        }
    }

    fn path() -> &'static Path {
        Path::new("/s/vm.state")
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s), path()).unwrap(), s);
    }

    #[test]
    fn each_kind_of_damage_has_its_error() {
        let good = encode(&sample());
        let err = |bytes: &[u8]| decode(bytes, path()).unwrap_err().to_string();

        assert!(err(b"ELF\x7f....").contains("not an msbvm snapshot"));
        assert!(err(&good[..10]).contains("truncated"));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(err(&v2).contains("format 2 is not readable"));
        assert!(err(&good[..good.len() - 1]).contains("header says"));
        // A payload with bytes after the state, correctly framed.
        let mut payload = postcard::to_allocvec(&sample()).unwrap();
        payload.push(0);
        let mut long = good[..8 + 4].to_vec();
        long.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        long.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        long.extend_from_slice(&payload);
        assert!(err(&long).contains("1 bytes follow the state"));
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(err(&flipped).contains("checksum"));
    }

    proptest::proptest! {
        /// Any bytes after the magic are an error or a snapshot, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes, path());
        }

        /// Any single flipped bit of a valid file is caught.
        #[test]
        fn a_flipped_bit_is_caught(bit in 0usize..8 * 400) {
            let mut bytes = encode(&sample());
            let bit = bit % (8 * bytes.len());
            bytes[bit / 8] ^= 1 << (bit % 8);
            proptest::prop_assert!(decode(&bytes, path()).is_err());
        }
    }
}
