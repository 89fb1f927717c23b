//! The runtime's end of the control socket ([`msbvm_sdk::control::server`]), each request
//! handed to the supervisor loop as an [`Event::Control`] with a channel for the answer.

use std::os::unix::net::UnixListener;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use msbvm_sdk::control::server::{self, Answer};
use msbvm_sdk::control::{ControlRequest, ControlResponse};

use super::event_hub::{self, EventHub, RequestFailure};
use super::Event;

/// Serves `listener` until the process ends. Event requests are served on the connection's
/// own thread (they wait on the guest); the rest go to the supervisor.
pub fn spawn(
    listener: UnixListener,
    events: Sender<Event>,
    hub: Arc<EventHub>,
) -> std::io::Result<()> {
    server::spawn(
        listener,
        || super::confine::thread_started("control"),
        move |request| match request {
            ControlRequest::Events { types, follow } => Some(events_stream(&hub, types, follow)),
            ControlRequest::Emit(event) => {
                Some(answer(hub.to_guest(event).map(|()| ControlResponse::Done)))
            }
            ControlRequest::Request { event, timeout_ms } => Some(Answer::One(
                match hub.request(event, Duration::from_millis(timeout_ms)) {
                    Ok(reply) => ControlResponse::Event(reply),
                    Err(RequestFailure::Refused(message)) => ControlResponse::Error { message },
                    Err(RequestFailure::NoAnswer { id, waited }) => ControlResponse::NoAnswer {
                        id,
                        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    },
                },
            )),
            request => forward(&events, request).map(Answer::One),
        },
    )
}

fn answer(result: Result<ControlResponse, String>) -> Answer {
    Answer::One(result.unwrap_or_else(|message| ControlResponse::Error { message }))
}

/// A stream of guest events for one client.
fn events_stream(hub: &Arc<EventHub>, types: Vec<String>, follow: bool) -> Answer {
    let attached = hub.attach(types, follow);
    Answer::Stream(Box::new(move |client| {
        event_hub::serve_stream(attached, follow, client)
    }))
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
