//! The DNS server the guest talks to at the gateway address (10.0.2.2:53).
//!
//! For each guest query [`DnsServer::handle`]:
//!
//! 1. parses it (malformed: FORMERR if the header is readable, else no
//!    answer; responses and multi-question messages are not forwarded);
//! 2. answers `host.msbvm.internal` itself, with 10.0.2.254, when policy
//!    allows the `host` group, else NXDOMAIN;
//! 3. asks [`Policy::check_dns_name`]; a denied name gets NXDOMAIN;
//! 4. sends the question (not the guest's bytes) upstream with a fresh
//!    random id, over UDP, over TCP when truncated (SERVFAIL if no upstream
//!    answers, or when [`MAX_IN_FLIGHT`] queries are already waiting);
//! 5. rebinding protection: drops answer addresses outside `public` that no
//!    rule explicitly allows ([`Policy::allows_dns_answer`]). If that leaves
//!    no address although upstream sent some, the guest gets NXDOMAIN:
//!    programs then fail with "name not known", which says what happened,
//!    where REFUSED would make resolvers retry or report a server failure;
//! 6. pins every address it passes on to the queried name in the
//!    [`PinTable`], for DNS-name rules;
//! 7. reports one [`NetEvent::DnsQuery`].
//!
//! Only the question, the answer records and the SOA of a negative answer
//! reach the guest; other authority and additional records are dropped, as
//! they could carry addresses that skipped the filter.

mod upstream;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::sync::Semaphore;

pub use crate::pins::{
    PinTable, MAX_NAMES_PER_ADDRESS, MAX_PINNED_ADDRESSES, MAX_PIN_TTL, MIN_PIN_TTL,
};

use crate::events::NetEvent;
use crate::plugin_gate::PluginGate;
use crate::policy::{DomainPattern, Group, Policy, Verdict, HOST_ALIAS_IP, HOST_ALIAS_NAME};
use msbvm_plugins::Hook;
use std::sync::Arc;

/// Most upstream queries waiting at once; more get SERVFAIL at once, so a
/// guest cannot make us hold unbounded sockets and memory.
pub const MAX_IN_FLIGHT: usize = 64;

/// [`MAX_PIN_TTL`] in the unit of DNS TTLs.
const MAX_PIN_TTL_SECS: u32 = MAX_PIN_TTL.as_secs() as u32;

/// TTL of our own `host.msbvm.internal` answer.
const HOST_ALIAS_TTL: u32 = 60;

/// The largest UDP answer for a query without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;

/// Where the server forwards allowed queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// The host's resolvers, from `/etc/resolv.conf`.
    System,
    /// These servers, tried in order.
    Servers(Vec<SocketAddr>),
}

/// The guest's DNS server; share one per sandbox.
#[derive(Debug)]
pub struct DnsServer {
    servers: Vec<SocketAddr>,
    pins: PinTable,
    in_flight: Semaphore,
    /// Names bound to a secret: their answers keep only public addresses (and the host
    /// alias), whatever rules relaxed rebinding protection ([`DnsServer::with_secret_hosts`]).
    secret_hosts: Vec<DomainPattern>,
    /// The plugins asked about each query the policy allows.
    plugins: Arc<PluginGate>,
}

/// What became of one query, for the event.
struct Outcome {
    response: Message,
    allowed: bool,
    reason: Option<String>,
}

impl DnsServer {
    /// A server forwarding to `upstream` and pinning answers in `pins`.
    /// Fails when `Servers` is empty. A host without usable
    /// `/etc/resolv.conf` is not an error: the sandbox still starts, and each
    /// allowed query then gets SERVFAIL with the reason in its event.
    pub fn new(upstream: Upstream, pins: PinTable) -> io::Result<DnsServer> {
        let servers = match upstream {
            Upstream::System => upstream::system_servers().unwrap_or_else(|e| {
                tracing::warn!("no upstream DNS server for sandboxes: {e}");
                Vec::new()
            }),
            Upstream::Servers(servers) if servers.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no upstream DNS server given",
                ))
            }
            Upstream::Servers(servers) => servers,
        };
        Ok(DnsServer {
            servers,
            pins,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            secret_hosts: Vec::new(),
            plugins: Arc::new(PluginGate::none()),
        })
    }

    /// Asks `plugins` about every query the policy allows (`net.dns`); a denied name gets
    /// NXDOMAIN, as a name policy denies does.
    pub(crate) fn with_plugins(mut self, plugins: Arc<PluginGate>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Turns rebinding protection on for the hosts secrets are bound to (`HOST` or
    /// `*.SUFFIX`; others are ignored): an answer pointing such a name at a private,
    /// loopback, link-local or metadata address is dropped even where a rule allows the
    /// address, so a secret cannot be steered to an address the guest controls the meaning
    /// of. The host alias stays, as the user named it explicitly.
    pub fn with_secret_hosts<'a>(mut self, hosts: impl IntoIterator<Item = &'a str>) -> Self {
        self.secret_hosts = hosts
            .into_iter()
            .filter_map(|h| DomainPattern::parse(h).ok())
            .collect();
        self
    }

    /// Whether `ip` in an answer for `name` is dropped because `name` carries a secret.
    fn secret_rebinding(&self, name: &str, ip: IpAddr) -> bool {
        ip != IpAddr::V4(HOST_ALIAS_IP)
            && Group::of(ip) != Group::Public
            && self.secret_hosts.iter().any(|p| p.matches(name))
    }

    /// The upstream servers in use.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Answers one query that came over UDP; `None` means send nothing.
    /// Answers too big for the guest's UDP size come back truncated (TC
    /// set), and the guest retries over TCP ([`handle_tcp`](Self::handle_tcp)).
    pub async fn handle(
        &self,
        query: &[u8],
        policy: &Policy,
        events: &dyn Fn(NetEvent),
    ) -> Option<Vec<u8>> {
        self.answer(query, policy, events, true).await
    }

    /// Answers one query that came over TCP (without the length prefix).
    pub async fn handle_tcp(
        &self,
        query: &[u8],
        policy: &Policy,
        events: &dyn Fn(NetEvent),
    ) -> Option<Vec<u8>> {
        self.answer(query, policy, events, false).await
    }

    async fn answer(
        &self,
        bytes: &[u8],
        policy: &Policy,
        events: &dyn Fn(NetEvent),
        udp: bool,
    ) -> Option<Vec<u8>> {
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(_) => return format_error(bytes),
        };
        // Never answer answers: two servers could bounce them forever.
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(upstream::EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        if query.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return encode(response, None);
        }
        let [question] = query.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return encode(response, None);
        };
        response.add_query(question.clone());

        let name = question
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let qtype = question.query_type().to_string();
        let outcome = self
            .resolve(question, &name, &qtype, policy, response)
            .await;

        let answers: Vec<IpAddr> = outcome
            .response
            .answers
            .iter()
            .filter_map(address)
            .collect();
        events(NetEvent::DnsQuery {
            name,
            qtype,
            allowed: outcome.allowed,
            answers,
            reason: outcome.reason,
        });
        let limit = udp.then(|| {
            let offered = query
                .edns
                .as_ref()
                .map_or(0, |e| usize::from(e.max_payload()));
            offered.clamp(PLAIN_UDP_LIMIT, usize::from(upstream::EDNS_PAYLOAD))
        });
        encode(outcome.response, limit)
    }

    /// What the guest gets for `question` (about `name`), built on `response`: answered here
    /// (class, policy, host alias) or forwarded upstream and filtered.
    async fn resolve(
        &self,
        question: &Query,
        name: &str,
        qtype: &str,
        policy: &Policy,
        response: Message,
    ) -> Outcome {
        let response = match local_answer(question, name, policy, response) {
            ControlFlow::Continue(response) => response,
            ControlFlow::Break(answered) => return answered,
        };
        if self.plugins.wants(Hook::Dns) {
            if let Err(reason) = self.plugins.dns(name, qtype).await {
                return Outcome::denied(response, format!("denied by a plugin: {reason}"));
            }
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Outcome::failed(
                response,
                ResponseCode::ServFail,
                format!("more than {MAX_IN_FLIGHT} DNS queries in flight"),
            );
        };
        if self.servers.is_empty() {
            return Outcome::failed(
                response,
                ResponseCode::ServFail,
                "no upstream DNS server: the host's /etc/resolv.conf names none".into(),
            );
        }
        match upstream::resolve(&self.servers, question).await {
            Ok(answer) => self.filter_answer(name, policy, answer, response),
            Err(e) => Outcome::failed(
                response,
                ResponseCode::ServFail,
                format!("upstream DNS failed: {e}"),
            ),
        }
    }

    /// Copies the upstream `answer` into `response` without the addresses rebinding protection
    /// drops, and pins what is kept to `name`.
    fn filter_answer(
        &self,
        name: &str,
        policy: &Policy,
        answer: Message,
        mut response: Message,
    ) -> Outcome {
        response.metadata.response_code = answer.metadata.response_code;
        let mut blocked = Vec::new();
        let mut kept_addresses = 0;
        for mut record in answer.answers {
            // Beyond the pin's life a guest cache would outlive our pin.
            record.ttl = record.ttl.min(MAX_PIN_TTL_SECS);
            if let Some(ip) = address(&record) {
                if !policy.allows_dns_answer(name, ip) || self.secret_rebinding(name, ip) {
                    blocked.push(ip);
                    continue;
                }
                kept_addresses += 1;
            }
            response.add_answer(record);
        }
        // Negative answers keep their SOA so the guest caches them properly.
        let soa = answer
            .authorities
            .into_iter()
            .filter(|r| r.record_type() == RecordType::SOA);
        response.add_authorities(soa);

        if blocked.is_empty() {
            self.pin_answers(name, &response);
            return Outcome::allowed(response, None);
        }
        let reason = format!(
            "rebinding protection dropped {} (not public and no rule allows it)",
            blocked
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if kept_addresses == 0 {
            response.answers.clear();
            response.authorities.clear();
            return Outcome::denied(response, reason);
        }
        self.pin_answers(name, &response);
        Outcome::allowed(response, Some(reason))
    }

    /// Pins every address `response` answers to `name`, for its TTL.
    fn pin_answers(&self, name: &str, response: &Message) {
        for record in &response.answers {
            if let Some(ip) = address(record) {
                self.pins
                    .pin(ip, name, Duration::from_secs(u64::from(record.ttl)));
            }
        }
    }
}

impl Outcome {
    /// The query was answered (`reason` says what was changed, if anything).
    fn allowed(response: Message, reason: Option<String>) -> Outcome {
        Outcome {
            response,
            allowed: true,
            reason,
        }
    }

    /// The name is not for the guest: NXDOMAIN.
    fn denied(mut response: Message, reason: String) -> Outcome {
        response.metadata.response_code = ResponseCode::NXDomain;
        Outcome {
            response,
            allowed: false,
            reason: Some(reason),
        }
    }

    /// An allowed query that could not be answered: `code` says how.
    fn failed(mut response: Message, code: ResponseCode, reason: String) -> Outcome {
        response.metadata.response_code = code;
        Outcome::allowed(response, Some(reason))
    }
}

/// The answers given without asking upstream: a class we do not serve (REFUSED), a name policy
/// denies (NXDOMAIN) and the host alias. `Continue` hands `response` on for forwarding.
fn local_answer(
    question: &Query,
    name: &str,
    policy: &Policy,
    mut response: Message,
) -> ControlFlow<Outcome, Message> {
    if question.query_class() != DNSClass::IN {
        response.metadata.response_code = ResponseCode::Refused;
        return ControlFlow::Break(Outcome {
            response,
            allowed: false,
            reason: Some(format!("class {} not served", question.query_class())),
        });
    }
    if let Verdict::Deny { reason, .. } = policy.check_dns_name(name) {
        return ControlFlow::Break(Outcome::denied(response, reason));
    }
    if name != HOST_ALIAS_NAME {
        return ControlFlow::Continue(response);
    }
    response.metadata.authoritative = true;
    if question.query_type() == RecordType::A {
        let record = Record::from_rdata(
            question.name().clone(),
            HOST_ALIAS_TTL,
            RData::A(A(HOST_ALIAS_IP)),
        );
        response.add_answer(record);
    }
    ControlFlow::Break(Outcome::allowed(response, None))
}

/// The address an A or AAAA record carries.
fn address(record: &Record) -> Option<IpAddr> {
    match &record.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// FORMERR for a message we cannot parse, if its header is there to take
/// the id from; otherwise nothing (there is no one to answer).
fn format_error(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = bytes.get(..12)?;
    // QR set means it is a response; answering it could start a loop.
    if header[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// Encodes `response`; over `limit` bytes it drops the records and sets TC
/// so the guest asks again over TCP.
fn encode(mut response: Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    match limit {
        Some(limit) if bytes.len() > limit => {
            response.metadata.truncation = true;
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.to_vec().ok()
        }
        _ => Some(bytes),
    }
}

#[cfg(test)]
mod tests;
