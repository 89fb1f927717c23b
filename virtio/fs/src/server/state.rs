//! What a [`Server`] saves for a VM snapshot: the outcome of the FUSE INIT
//! negotiation (so the restored server answers the guest's requests
//! without a new INIT, which the guest kernel will not send) and its
//! backend's [`FsState`].
//!
//! Encoding: one version byte, then the [`ServerState`] in postcard. The
//! bytes come from a snapshot file, so decoding refuses anything else:
//! another version, bytes that do not decode, trailing bytes, a minor
//! version INIT could not have negotiated, or an [`FsState`] that fails
//! [`FsState::check`].

use std::io;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::Server;
use crate::abi;
use crate::filesystem::FileSystem;
use crate::saved_state::FsState;

/// Version of the encoding; bumped on any change to [`ServerState`].
pub const STATE_VERSION: u8 = 1;

/// A server's saved state: the INIT negotiation and the backend's
/// [`FsState`]. Encoded as one [`STATE_VERSION`] byte and postcard;
/// [`ServerState::decode`] refuses anything a server could not have saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    /// A FUSE session was up: INIT answered and no reset since.
    pub initialized: bool,
    /// The negotiated minor version (0 without a session).
    pub minor: u32,
    /// The backend's inodes and handles.
    pub fs: FsState,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl ServerState {
    /// The version byte and the postcard encoding.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![STATE_VERSION];
        out.extend(postcard::to_stdvec(self).map_err(io::Error::other)?);
        Ok(out)
    }

    /// Decodes [`Self::encode`]'s bytes, refusing anything a server could
    /// not have saved.
    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        let (&version, body) = bytes
            .split_first()
            .ok_or_else(|| invalid("empty virtio-fs state"))?;
        if version != STATE_VERSION {
            return Err(invalid(format!(
                "virtio-fs state version {version}, this build reads {STATE_VERSION}"
            )));
        }
        let (state, rest): (Self, _) = postcard::take_from_bytes(body)
            .map_err(|e| invalid(format!("virtio-fs state does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!(
                "{} bytes after the virtio-fs state",
                rest.len()
            )));
        }
        let minor_ok = if state.initialized {
            (abi::MIN_MINOR_VERSION..=abi::KERNEL_MINOR_VERSION).contains(&state.minor)
        } else {
            state.minor == 0
        };
        if !minor_ok {
            return Err(invalid(format!(
                "virtio-fs state has FUSE minor version {}",
                state.minor
            )));
        }
        state.fs.check()?;
        Ok(state)
    }
}

impl<F: FileSystem> Server<F> {
    /// The state a fresh server over a fresh backend needs to carry on
    /// this session (see [`ServerState`]); fails when the backend
    /// cannot be saved. The guest must be paused: no request runs.
    pub fn save_state(&self) -> io::Result<Vec<u8>> {
        ServerState {
            initialized: self.initialized.load(Ordering::Acquire),
            minor: self.minor.load(Ordering::Acquire),
            fs: self.fs.save_state()?,
        }
        .encode()
    }

    /// Carries on the session [`Self::save_state`] saved, in this fresh
    /// server (no INIT answered yet) over a fresh backend: the backend
    /// restores its inodes and handles, and requests are then answered
    /// with the saved negotiation, no INIT needed.
    pub fn restore_state(&self, bytes: &[u8]) -> io::Result<()> {
        let state = ServerState::decode(bytes)?;
        if self.initialized.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the FUSE server already has a session; restore needs a fresh one",
            ));
        }
        if state.initialized {
            self.fs.init()?;
        }
        self.fs.restore_state(&state.fs)?;
        self.minor.store(state.minor, Ordering::Release);
        self.initialized.store(state.initialized, Ordering::Release);
        Ok(())
    }
}
