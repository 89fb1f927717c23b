//! Arbitrary bytes as a `copy_out` archive, unpacked by the safe unpacker into a temporary
//! directory: it must never panic, never create anything outside the destination, and stay
//! within its limits.
#![no_main]

use std::ffi::OsStr;

use libfuzzer_sys::fuzz_target;
use msbvm_protocol::files::archive::{unpack_with, UnpackLimits};

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).expect("the destination");
    let limits = UnpackLimits {
        max_entries: 256,
        max_bytes: 1 << 20,
    };
    let root = (data.first() == Some(&b'r')).then_some(OsStr::new("renamed"));
    let _ = unpack_with(data, &dest, root, &limits);
    let around: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("listing")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(around, [OsStr::new("dest")], "something landed outside");
});
