//! Saved virtio-fs state from a damaged or forged snapshot file through
//! `ServerState::decode` and `Server::restore_state`: decoding must refuse
//! bad bytes without panicking, what decodes must encode back to the same
//! state, and restoring it into a fresh server over a (read-only)
//! passthrough backend must not panic whatever paths and ids it names.
//!
//! Input: the bytes of a saved state, version byte included.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msbvm_fs::server::ServerState;
use msbvm_fs::{PassthroughConfig, PassthroughFs, Server, ServerOptions};

/// A small share the restored paths may or may not name.
fn share() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("msbvm-fs-state-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).expect("share");
        std::fs::write(dir.join("a/f"), b"data").expect("share file");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(state) = ServerState::decode(data) else {
        return;
    };
    let bytes = state.encode().expect("a decoded state encodes");
    assert_eq!(ServerState::decode(&bytes).expect("round trip"), state);
    let config = PassthroughConfig {
        read_only: true,
        ..PassthroughConfig::default()
    };
    let Ok(fs) = PassthroughFs::new(share(), config) else {
        return;
    };
    let server = Server::new(fs, ServerOptions::default());
    let _ = server.restore_state(data);
});
