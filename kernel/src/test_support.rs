//! Helpers shared by this crate's unit tests.

use std::sync::Mutex;

/// Serialises tests that change process-wide environment variables.
pub(crate) static ENV_LOCK: Mutex<()> = Mutex::new(());
