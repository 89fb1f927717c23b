//! The body type the engine hands to hyper on both sides: a guest or upstream body passed
//! through as it streams, optionally decoded ([`Decoder`], responses in gzip or deflate) and
//! through a [`Filter`] (placeholder detection, substitution or value masking with a carried
//! tail), or a complete buffer.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

use super::request::encoding::{Decoder, Step};
use crate::secrets::{Replacer, Scanner};

/// Errors of engine bodies, as hyper wants them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body carried a placeholder where its secret may not go.
#[derive(Debug, thiserror::Error)]
#[error("request body carries a secret placeholder")]
pub(crate) struct Blocked;

/// What happens to the bytes of a body on their way.
pub(crate) struct Filter {
    /// Placeholders that must not pass (request bodies).
    pub detector: Option<Scanner>,
    /// Substitution (requests) or masking (responses).
    pub replacer: Replacer,
    /// Called once with the secret's index when the detector fires.
    pub on_block: Option<Rc<dyn Fn(usize)>>,
}

impl Filter {
    fn push(&mut self, data: &[u8]) -> Result<Bytes, Blocked> {
        if let Some(detector) = self.detector.as_mut() {
            if let Some(secret) = detector.feed(data) {
                if let Some(on_block) = self.on_block.take() {
                    on_block(secret);
                }
                return Err(Blocked);
            }
        }
        Ok(Bytes::from(self.replacer.push(data)))
    }

    /// Checks trailers like a head: each name and value on its own.
    fn check_trailers(&mut self, trailers: &HeaderMap) -> Result<(), Blocked> {
        let Some(detector) = self.detector.as_ref() else {
            return Ok(());
        };
        let found = trailers.iter().find_map(|(name, value)| {
            detector
                .scan_once(name.as_str().as_bytes())
                .or_else(|| detector.scan_once(value.as_bytes()))
        });
        match found {
            Some(secret) => {
                if let Some(on_block) = self.on_block.take() {
                    on_block(secret);
                }
                Err(Blocked)
            }
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Bytes {
        Bytes::from(self.replacer.finish())
    }
}

/// A decoder and the trailers that came while it still had output to give.
struct Decoding {
    decoder: Decoder,
    trailers: Option<HeaderMap>,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
}

/// A request or response body of the engine.
pub(crate) struct EngineBody {
    inner: Inner,
    /// Undoes the response's content coding before the filter sees the bytes (boxed: most
    /// bodies have none, and they should stay as small as they were).
    decoding: Option<Box<Decoding>>,
    /// Bytes already through the filter, sent before anything else (what was read while
    /// deciding whether the body fits a buffer).
    prefix: Option<Bytes>,
    filter: Option<Filter>,
    /// Trailers held back while the filter's tail went out first.
    trailers: Option<HeaderMap>,
    /// The inner body ended (the filter's tail may still be due).
    inner_done: bool,
    done: bool,
    /// Keeps an upstream HTTP/1.1 connection counted as busy, and buffered bytes counted
    /// against the connection's budget, until the body is gone.
    permits: Vec<OwnedSemaphorePermit>,
}

impl EngineBody {
    fn of(inner: Inner) -> EngineBody {
        EngineBody {
            inner,
            decoding: None,
            prefix: None,
            filter: None,
            trailers: None,
            inner_done: false,
            done: false,
            permits: Vec::new(),
        }
    }

    /// No body.
    pub(crate) fn empty() -> EngineBody {
        EngineBody::of(Inner::Empty)
    }

    /// A complete body.
    pub(crate) fn full(data: impl Into<Bytes>) -> EngineBody {
        EngineBody::of(Inner::Full(Some(data.into())))
    }

    /// A streamed body, through `filter` if there is one.
    pub(crate) fn stream(body: Incoming, filter: Option<Filter>) -> EngineBody {
        EngineBody {
            filter,
            ..EngineBody::of(Inner::Incoming(body))
        }
    }

    /// Holds `permit` as long as the body lives.
    pub(crate) fn with_permit(mut self, permit: Option<OwnedSemaphorePermit>) -> EngineBody {
        self.permits.extend(permit);
        self
    }

    /// Holds `permits` as long as the body lives.
    pub(crate) fn with_permits(mut self, permits: Vec<OwnedSemaphorePermit>) -> EngineBody {
        self.permits.extend(permits);
        self
    }

    /// Decodes the streamed body with `decoder` before the filter sees it.
    pub(crate) fn decoding(mut self, decoder: Decoder) -> EngineBody {
        self.decoding = Some(Box::new(Decoding {
            decoder,
            trailers: None,
        }));
        self
    }

    /// Sends `prefix` (already filtered) before the rest of the body.
    pub(crate) fn with_prefix(mut self, prefix: Bytes) -> EngineBody {
        self.prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }

    fn data(&mut self, data: Bytes) -> Option<Result<Frame<Bytes>, BoxError>> {
        match self.filter.as_mut() {
            None => Some(Ok(Frame::data(data))),
            Some(filter) => match filter.push(&data) {
                Ok(out) if out.is_empty() => None,
                Ok(out) => Some(Ok(Frame::data(out))),
                Err(blocked) => {
                    self.done = true;
                    Some(Err(blocked.into()))
                }
            },
        }
    }

    /// The next frame of the inner body, decoded when there is a decoder.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(Decoding { decoder, trailers }) = self.decoding.as_deref_mut() else {
            return poll_inner(&mut self.inner, cx);
        };
        loop {
            match decoder.step() {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::End) => {
                    return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                Ok(Step::NeedInput) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "netstack: response cut");
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            match ready!(poll_inner(&mut self.inner, cx)) {
                None => decoder.end_input(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => decoder.push(data),
                    Err(frame) => {
                        *trailers = frame.into_trailers().ok();
                        decoder.end_input();
                    }
                },
            }
        }
    }

    /// The filter's held-back tail, if any is left.
    fn tail(&mut self) -> Option<Bytes> {
        let tail = self.filter.as_mut().map(Filter::finish)?;
        (!tail.is_empty()).then_some(tail)
    }
}

impl Body for EngineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.inner_done {
                this.done = true;
                if let Some(tail) = this.tail() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                if let Some(trailers) = this.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                continue;
            }
            let frame = match ready!(this.poll_source(cx)) {
                None => {
                    this.inner_done = true;
                    continue;
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => frame,
            };
            let frame = match frame.into_data() {
                Ok(data) => match this.data(data) {
                    Some(out) => out,
                    None => continue,
                },
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) if this.filter.is_some() => {
                        let checked = this.filter.as_mut().map(|f| f.check_trailers(&trailers));
                        if let Some(Err(blocked)) = checked {
                            this.done = true;
                            return Poll::Ready(Some(Err(blocked.into())));
                        }
                        // The tail belongs before the trailers.
                        this.trailers = Some(trailers);
                        this.inner_done = true;
                        continue;
                    }
                    Ok(trailers) => Ok(Frame::trailers(trailers)),
                    Err(_) => continue,
                },
            };
            return Poll::Ready(Some(frame));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            _ if self.done => true,
            _ if self.prefix.is_some() => false,
            Inner::Empty => true,
            Inner::Full(data) => data.is_none() && self.trailers.is_none(),
            Inner::Incoming(body) => {
                self.filter.is_none()
                    && self.decoding.is_none()
                    && self.trailers.is_none()
                    && body.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Incoming(body)
                if self.filter.is_none() && self.decoding.is_none() && self.prefix.is_none() =>
            {
                body.size_hint()
            }
            Inner::Incoming(_) => SizeHint::default(),
        }
    }
}

/// The next frame of `inner`, as it comes.
fn poll_inner(
    inner: &mut Inner,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Ready(match inner {
        Inner::Empty => None,
        Inner::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
        Inner::Incoming(body) => {
            ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(Into::into))
        }
    })
}
