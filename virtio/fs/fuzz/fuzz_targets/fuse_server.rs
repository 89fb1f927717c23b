//! FUSE requests from a hostile guest kernel through msbvm's `Server` into
//! `MemoryFs`: the server must answer every request (or refuse it) without
//! panicking, and the backend must stay bounded.
//!
//! Input: a sequence of records. The session always starts with a valid
//! INIT so every later opcode is reachable. Each record is a tag byte:
//! tag & 1 == 0: a raw request: u16 length, then that many bytes as the
//! whole request (header included); tag & 1 == 1: a well-formed header
//! around fuzzed arguments: opcode byte, node id byte (0..=15, the inodes
//! the tree has), u16 argument length, then the arguments.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_fs::abi::{self, opcode};
use msbvm_fs::{MemoryFs, Server, ServerOptions};

/// The INIT every session begins with: 7.41, 128 KiB readahead, all flags offered.
fn init_request() -> Vec<u8> {
    let mut args = Vec::new();
    for word in [7u32, 41, 128 << 10, u32::MAX] {
        args.extend_from_slice(&word.to_le_bytes());
    }
    args.extend_from_slice(&[0; 48]);
    abi::request(opcode::INIT, 1, 0, &args)
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

fn u16_at(data: &mut &[u8]) -> Option<usize> {
    take(data, 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
}

fuzz_target!(|data: &[u8]| {
    let fs = MemoryFs::with_byte_limit(1 << 20);
    let _ = fs.add_file("dir/file", b"hello", 0o644);
    let _ = fs.add_symlink("link", "dir/file");
    let server = Server::new(fs, ServerOptions::default());
    let mut reply = Vec::new();
    server
        .handle(&init_request(), &mut reply)
        .expect("INIT has a header");
    let mut data = data;
    let mut unique = 2u64;
    for _ in 0..64 {
        let Some(tag) = take(&mut data, 1).map(|b| b[0]) else {
            break;
        };
        let request = if tag & 1 == 0 {
            let Some(len) = u16_at(&mut data) else { break };
            let n = len.min(data.len());
            let Some(raw) = take(&mut data, n) else {
                break;
            };
            raw.to_vec()
        } else {
            let Some(head) = take(&mut data, 2) else {
                break;
            };
            let Some(len) = u16_at(&mut data) else { break };
            let n = len.min(data.len());
            let args = take(&mut data, n).unwrap_or(&[]);
            abi::request(u32::from(head[0]), unique, u64::from(head[1] & 15), args)
        };
        unique += 1;
        let _ = server.handle(&request, &mut reply);
        if let Some(h) = abi::OutHeader::parse(&reply) {
            assert_eq!(h.len as usize, reply.len(), "reply length field");
        }
    }
});
