//! One request through the engine: policy, Host/SNI, secrets, then upstream and back.
//!
//! On a connection where a secret is eligible (its upstream receives the value), responses
//! are masked after their content coding is undone: `Accept-Encoding` offers only what the
//! engine decodes, gzip and deflate responses reach the guest decoded, and other codings get
//! a `502` ([`super::encoding`]).

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};

use super::body::{EngineBody, Filter};
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::Ctx;
use crate::events::NetEvent;
use crate::http::{request_info, HttpInfo};
use crate::plugin_gate::PLUGIN_RULE;
use crate::policy::Verdict;
use encoding::{Codings, Decoder};
use msbvm_plugins::data::HttpRequest;
use msbvm_plugins::Hook;

// A child of this module so that the module list in `intercept/mod.rs` stays as it is.
pub(super) mod encoding;

/// Bodies up to this size are buffered when substitution changes their length, so that the
/// upstream still gets a `Content-Length` (some servers refuse chunked requests); larger ones
/// are streamed. Responses masked of secret values likewise.
pub(crate) const MAX_BUFFERED_BODY: u64 = 1024 * 1024;
/// Bytes all the buffered bodies of one guest connection may hold together (HTTP/2 streams
/// run at once); a body over what is left streams instead.
pub(crate) const BUFFER_BUDGET: usize = 4 * 1024 * 1024;

/// A share of the connection's buffer budget for a body of `len` bytes, if there is one.
fn buffer_share(ctx: &Ctx, len: Option<u64>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let len = u32::try_from(len.filter(|len| *len <= MAX_BUFFERED_BODY)?).ok()?;
    ctx.buffers.clone().try_acquire_many_owned(len.max(1)).ok()
}

/// Why the engine answers a request itself.
enum Refusal {
    Forbidden(String),
    BadRequest(String),
    BadGateway(String),
}

impl Refusal {
    fn response(self) -> Response<EngineBody> {
        let (status, text) = match self {
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, why),
            Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            Refusal::BadGateway(why) => (StatusCode::BAD_GATEWAY, why),
        };
        let body = format!("Blocked by the sandbox network policy: {text}\n");
        let body = match status {
            StatusCode::FORBIDDEN => body,
            _ => format!("{text}\n"),
        };
        let mut response = Response::new(EngineBody::full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

/// Serves one request of the guest; never fails (refusals are responses).
pub(super) async fn handle(
    ctx: Rc<Ctx>,
    req: Request<Incoming>,
) -> Result<Response<EngineBody>, Infallible> {
    let _busy = ctx.idle.busy();
    Ok(match route(&ctx, req).await {
        Ok(response) => response,
        Err(refusal) => refusal.response(),
    })
}

/// The checks every request passes before anything goes upstream; also the policy's rule that
/// allowed it.
fn admit(ctx: &Ctx, parts: &Parts) -> Result<(HttpInfo, Vec<bool>, Option<String>), Refusal> {
    if parts.method == Method::CONNECT {
        return Err(Refusal::Forbidden("CONNECT cannot be inspected".into()));
    }
    let host_header = parts.headers.get(HOST).and_then(|h| h.to_str().ok());
    let authority = parts.uri.authority().map(Authority::as_str).or(host_header);
    let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let info = request_info(parts.method.as_str(), target, authority)
        .ok_or_else(|| Refusal::BadRequest("request without a usable Host".into()))?;
    let verdict = ctx
        .shared
        .policy
        .load()
        .check_http(&info, &ctx.session.flow);
    let (rule, refusal) = match verdict {
        Verdict::Allow { rule } => (rule, None),
        Verdict::Deny { rule, reason } => (rule, Some(reason)),
    };
    if let Some(reason) = refusal {
        ctx.shared.emit(http_event(&info, false, rule));
        return Err(Refusal::Forbidden(reason));
    }
    if let Some(sni) = ctx.session.sni.as_deref() {
        if info.host != sni {
            ctx.shared.emit(NetEvent::HostMismatch {
                sni: sni.to_owned(),
                host: info.host.clone(),
            });
            return Err(Refusal::Forbidden(format!(
                "Host {} differs from the TLS server name {sni}",
                info.host
            )));
        }
    }
    let eligible = ctx
        .secrets
        .eligible(ctx.session.sni.as_deref(), ctx.session.pinned);
    if let Some(secret) = head_secret(ctx, parts, &eligible) {
        ctx.shared.emit(NetEvent::SecretBlocked {
            secret: ctx.secrets.name(secret).to_owned(),
            host: info.host.clone(),
        });
        return Err(Refusal::Forbidden(format!(
            "secret {} may not be sent to {}",
            ctx.secrets.name(secret),
            info.host
        )));
    }
    if ctx.session.sni.is_some() && !ctx.session.pinned {
        // The name was never resolved through the sandbox's DNS to this address (an address
        // typed in, or a guest-side hosts entry): policy decided on names it cannot trust.
        ctx.shared
            .emit(http_event(&info, false, Some(UNPINNED_RULE.into())));
        return Err(Refusal::Forbidden(format!(
            "{} was not resolved to this address through the sandbox's DNS",
            info.host
        )));
    }
    Ok((info, eligible, rule))
}

/// Asks the plugins about a request the policy allowed (`net.http`) and applies the headers
/// they leave. They see placeholders, never secret values (substitution comes later), and
/// cannot move the request: the Host that policy and the TLS server name were checked
/// against stays. Header values that are not UTF-8 reach plugins with replacement
/// characters, and go upstream that way if a plugin changes any header.
async fn ask_plugins(ctx: &Ctx, info: &HttpInfo, parts: &mut Parts) -> Result<(), Refusal> {
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let request = HttpRequest {
        method: info.method.clone(),
        host: info.host.clone(),
        path: info.path.clone(),
        headers: headers.clone(),
    };
    let request = match ctx.shared.plugins.http(request).await {
        Ok(request) => request,
        Err(reason) => {
            ctx.shared
                .emit(http_event(info, false, Some(PLUGIN_RULE.into())));
            return Err(Refusal::Forbidden(format!("denied by a plugin: {reason}")));
        }
    };
    if request.headers == headers {
        return Ok(());
    }
    let mut changed = HeaderMap::new();
    for (name, value) in request.headers {
        let bad =
            || Refusal::BadGateway(format!("a plugin set a header that is not valid: {name}"));
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(&value).map_err(|_| bad())?;
        changed.append(header, value);
    }
    changed.remove(HOST);
    if let Some(host) = parts.headers.get(HOST) {
        changed.insert(HOST, host.clone());
    }
    parts.headers = changed;
    Ok(())
}

/// The rule named in the event of a request on a connection whose server name is not pinned.
const UNPINNED_RULE: &str = "builtin: intercepted requests need a name the sandbox resolved";

fn http_event(info: &HttpInfo, allowed: bool, rule: Option<String>) -> NetEvent {
    NetEvent::HttpRequest {
        method: info.method.clone(),
        host: info.host.clone(),
        path: info.path.clone(),
        allowed,
        rule,
    }
}

/// The first secret whose placeholder the request line or a header carries where it may not.
fn head_secret(ctx: &Ctx, parts: &Parts, eligible: &[bool]) -> Option<usize> {
    let detector = ctx.secrets.detector(eligible);
    if detector.is_idle() {
        return None;
    }
    let line = format!("{} {}", parts.method, parts.uri);
    detector.scan_once(line.as_bytes()).or_else(|| {
        parts.headers.iter().find_map(|(name, value)| {
            detector
                .scan_once(name.as_str().as_bytes())
                .or_else(|| detector.scan_once(value.as_bytes()))
        })
    })
}

async fn route(ctx: &Rc<Ctx>, req: Request<Incoming>) -> Result<Response<EngineBody>, Refusal> {
    let upgrade = !ctx.guest_h2 && is_upgrade(req.headers());
    let (mut parts, body) = req.into_parts();
    if upgrade {
        super::websocket::prepare_upgrade(&mut parts.headers, !ctx.secrets.is_empty())
            .map_err(Refusal::Forbidden)?;
    }
    let (info, eligible, rule) = admit(ctx, &parts)?;
    if ctx.shared.plugins.wants(Hook::Http) {
        ask_plugins(ctx, &info, &mut parts).await?;
    }
    ctx.shared.emit(http_event(&info, true, rule));
    // The upstream receives a value, so it may echo one: its responses must come in a coding
    // the engine can undo, or the value would pass the masker compressed.
    let masking = eligible.iter().any(|e| *e);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if masking {
        encoding::restrict_accept_encoding(&mut parts.headers);
    }
    substitute_head(ctx, &mut parts, &eligible)?;
    let blocked = Rc::new(Cell::new(None));
    let body = request_body(ctx, &mut parts, body, &eligible, &info.host, &blocked).await?;
    let is_head = parts.method == Method::HEAD;
    let sent = ctx.upstream.send(Request::from_parts(parts, body)).await;
    if let Some(secret) = blocked.get() {
        return Err(Refusal::Forbidden(format!(
            "secret {} may not be sent to {}",
            ctx.secrets.name(secret),
            info.host
        )));
    }
    let (response, permit) = sent.map_err(|e| Refusal::BadGateway(e.to_string()))?;
    if upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The guest connection ends with this response; `serve` then joins the two IOs.
        *ctx.upgraded.borrow_mut() = ctx.upstream.take_upgraded();
        let (mut parts, _) = response.into_parts();
        mask_headers(ctx, &mut parts.headers);
        return Ok(Response::from_parts(parts, EngineBody::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    mask_headers(ctx, &mut parts.headers);
    let body = response_body(ctx, &mut parts, body, is_head, masking, &info.host).await?;
    Ok(Response::from_parts(parts, body.with_permit(permit)))
}

/// Substitutes eligible placeholders in the headers and the query, and puts the URI in
/// absolute form (scheme and authority) for the upstream.
fn substitute_head(ctx: &Ctx, parts: &mut Parts, eligible: &[bool]) -> Result<(), Refusal> {
    if eligible.iter().any(|e| *e) {
        let names: Vec<_> = parts.headers.keys().cloned().collect();
        for name in names {
            let values: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
            let mut changed = false;
            let mut out = Vec::with_capacity(values.len());
            for value in values {
                match ctx
                    .secrets
                    .substitute_header(name.as_str(), value.as_bytes(), eligible)
                {
                    Some(new) => {
                        changed = true;
                        out.push(HeaderValue::from_bytes(&new).map_err(|_| {
                            Refusal::BadRequest("a secret value cannot go in a header".into())
                        })?);
                    }
                    None => out.push(value),
                }
            }
            if changed {
                parts.headers.remove(&name);
                for value in out {
                    parts.headers.append(name.clone(), value);
                }
            }
        }
    }
    let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok());
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => host
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or_else(|| Refusal::BadRequest("bad Host".into()))?,
    };
    if parts.headers.get(HOST).is_none() {
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Refusal::BadRequest("bad authority".into()))?;
        parts.headers.insert(HOST, value);
    }
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(|q| {
        ctx.secrets
            .substitute_query(q, eligible)
            .unwrap_or_else(|| q.to_owned())
    });
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let scheme = if ctx.session.sni.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Refusal::BadRequest(format!("bad request target: {e}")))?;
    Ok(())
}

fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The request body as it goes upstream: scanned for placeholders that must not pass,
/// substituted where the secret opted in (buffered when small, so the length is exact).
async fn request_body(
    ctx: &Rc<Ctx>,
    parts: &mut Parts,
    body: Incoming,
    eligible: &[bool],
    host: &str,
    blocked: &Rc<Cell<Option<usize>>>,
) -> Result<EngineBody, Refusal> {
    if ctx.secrets.is_empty() || body.is_end_stream() {
        return Ok(EngineBody::stream(body, None));
    }
    let detector = ctx.secrets.detector(eligible);
    let replacer = ctx.secrets.body_substituter(eligible);
    let substituting = !replacer.is_empty();
    let on_block: Rc<dyn Fn(usize)> = {
        let ctx = ctx.clone();
        let host = host.to_owned();
        let blocked = blocked.clone();
        Rc::new(move |secret| {
            blocked.set(Some(secret));
            ctx.shared.emit(NetEvent::SecretBlocked {
                secret: ctx.secrets.name(secret).to_owned(),
                host: host.clone(),
            });
        })
    };
    let filter = Filter {
        detector: (!detector.is_idle()).then_some(detector),
        replacer,
        on_block: Some(on_block),
    };
    if !substituting {
        return Ok(EngineBody::stream(body, Some(filter)));
    }
    let Some(share) = buffer_share(ctx, content_length(&parts.headers)) else {
        // The length changes as it streams: chunked towards an HTTP/1.1 upstream.
        parts.headers.remove(CONTENT_LENGTH);
        return Ok(EngineBody::stream(body, Some(filter)));
    };
    let collected = EngineBody::stream(body, Some(filter)).collect().await;
    match (collected, blocked.get()) {
        (Ok(collected), None) => {
            let data: Bytes = collected.to_bytes();
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
            Ok(EngineBody::full(data).with_permit(Some(share)))
        }
        (_, Some(secret)) => Err(Refusal::Forbidden(format!(
            "secret {} may not be sent to {host}",
            ctx.secrets.name(secret)
        ))),
        (Err(e), None) => Err(Refusal::BadRequest(format!("request body: {e}"))),
    }
}

/// Replaces secret values an upstream echoed in its response headers by the placeholders.
fn mask_headers(ctx: &Ctx, headers: &mut hyper::HeaderMap) {
    if ctx.secrets.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        if let Some(masked) = ctx.secrets.mask_value(value.as_bytes()) {
            if let Ok(masked) = HeaderValue::from_bytes(&masked) {
                *value = masked;
            }
        }
    }
}

/// The response body for the guest, with secret values masked (buffered when small, so the
/// length stays exact). Where `masking` matters (a secret is eligible), a compressed body is
/// decoded first and one the engine cannot decode is refused.
async fn response_body(
    ctx: &Ctx,
    parts: &mut hyper::http::response::Parts,
    body: Incoming,
    is_head: bool,
    masking: bool,
    host: &str,
) -> Result<EngineBody, Refusal> {
    if ctx.secrets.is_empty() || is_head || body.is_end_stream() {
        return Ok(EngineBody::stream(body, None));
    }
    let filter = Filter {
        detector: None,
        replacer: ctx.secrets.value_masker(),
        on_block: None,
    };
    if masking {
        match encoding::response_codings(&parts.headers) {
            Codings::Identity => {}
            Codings::Unsupported(what) => {
                return Err(refuse_response(
                    ctx,
                    host,
                    format!("the upstream answered in {what}, which the sandbox cannot check for secret values"),
                ));
            }
            // The bytes are a slice of the coded stream, which cannot be decoded on its own.
            Codings::Decode(_) if parts.status == StatusCode::PARTIAL_CONTENT => {
                return Err(refuse_response(
                    ctx,
                    host,
                    "the upstream answered with a compressed partial response (206), which the sandbox cannot check for secret values".into(),
                ));
            }
            Codings::Decode(codings) => {
                let body = EngineBody::stream(body, Some(filter)).decoding(Decoder::new(&codings));
                return decoded_body(ctx, &mut parts.headers, body, host).await;
            }
        }
    }
    let headers = &mut parts.headers;
    if let Some(share) = buffer_share(ctx, content_length(headers)) {
        let collected = EngineBody::stream(body, Some(filter))
            .collect()
            .await
            .map_err(|e| Refusal::BadGateway(format!("upstream response body: {e}")))?;
        let data = collected.to_bytes();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        return Ok(EngineBody::full(data).with_permit(Some(share)));
    }
    headers.remove(CONTENT_LENGTH);
    Ok(EngineBody::stream(body, Some(filter)))
}

/// A decoded and masked response body. Buffered, with an exact `Content-Length`, while the
/// upstream declared a length within the buffering limits and the decoded bytes fit them too
/// (each decoded byte takes its share of the connection's budget); otherwise streamed from
/// where the buffer stopped. A streamed one is still read until its first bytes, so that a
/// body that is not what its coding says gets a `502` rather than a broken `200`.
async fn decoded_body(
    ctx: &Ctx,
    headers: &mut hyper::HeaderMap,
    mut body: EngineBody,
    host: &str,
) -> Result<EngineBody, Refusal> {
    let mut permits = Vec::new();
    let mut held = 0usize;
    if let Some(share) = buffer_share(ctx, content_length(headers)) {
        held = share.num_permits();
        permits.push(share);
    }
    encoding::decoded_headers(headers);
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refuse_response(ctx, host, e.to_string()))?;
        // Trailers of a buffered body are dropped, as for plain ones.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let want = buf.len() + data.len();
        if want > held {
            let more = (!permits.is_empty() && want as u64 <= MAX_BUFFERED_BODY)
                .then(|| u32::try_from(want - held).ok())
                .flatten()
                .and_then(|more| ctx.buffers.clone().try_acquire_many_owned(more).ok());
            let Some(more) = more else {
                buf.extend_from_slice(&data);
                headers.remove(CONTENT_LENGTH);
                return Ok(body.with_prefix(buf.freeze()).with_permits(permits));
            };
            held = want;
            permits.push(more);
        }
        buf.extend_from_slice(&data);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(buf.len()));
    Ok(EngineBody::full(buf.freeze()).with_permits(permits))
}

/// Refuses an upstream response the guest must not get as it is: a `502`, and an event.
fn refuse_response(ctx: &Ctx, host: &str, reason: String) -> Refusal {
    ctx.shared.emit(NetEvent::ResponseRefused {
        host: host.to_owned(),
        reason: reason.clone(),
    });
    Refusal::BadGateway(reason)
}
