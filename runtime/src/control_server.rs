//! The runtime's end of the control socket ([`msbvm_sdk::control::server`]), each request
//! handed to the supervisor loop as an [`Event::Control`] with a channel for the answer.

use std::os::unix::net::UnixListener;
use std::sync::mpsc::{self, Sender};

use msbvm_sdk::control::server;
use msbvm_sdk::control::{ControlRequest, ControlResponse};

use super::Event;

/// Serves `listener` until the process ends.
pub fn spawn(listener: UnixListener, events: Sender<Event>) -> std::io::Result<()> {
    server::spawn(
        listener,
        || super::confine::thread_started("control"),
        move |request| forward(&events, request),
    )
}

/// Hands `request` to the supervisor and waits for its answer; `None` once the supervisor
/// is gone.
fn forward(events: &Sender<Event>, request: ControlRequest) -> Option<ControlResponse> {
    let (tx, rx) = mpsc::channel();
    events.send(Event::Control(request, tx)).ok()?;
    Some(rx.recv().unwrap_or_else(|_| ControlResponse::Error {
        message: "the runtime ended without answering".into(),
    }))
}
