//! The plugins' network decisions: `net.flow` on every new flow the policy allowed, `net.dns`
//! on every query the policy allowed, `net.http` on every inspected request the policy
//! allowed (a plugin may change its headers); and their observations, from the events the
//! stack reports: `net.bytes` when a flow closes, `net.dns_answer` for every query.
//!
//! A decision can wait on an out-of-process plugin up to its timeout, and the stack runs every
//! flow on one thread, so decisions go to an [`Offload`] and the flow waits for its answer
//! while the rest of the stack moves on. Nothing is offloaded for a hook no plugin asked for:
//! [`PluginGate::wants`] is one branch.

use std::net::SocketAddr;
use std::sync::Arc;

use msbvm_plugins::data::{
    DnsAnswer, DnsQuery, Flow, FlowBytes, HttpRequest, Transport as PluginTransport,
};
use msbvm_plugins::{Chain, Decision, Hook, Offload};

use crate::events::{NetEvent, Transport};

/// The rule named in the events of what a plugin denied.
pub const PLUGIN_RULE: &str = "plugins";

/// A sandbox's plugins, as the network stack asks them.
pub struct PluginGate {
    chain: Arc<Chain>,
    /// Present when a plugin asked for a network decision.
    offload: Option<Offload>,
}

impl std::fmt::Debug for PluginGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginGate")
            .field("plugins", &self.chain.names())
            .field("decides", &self.offload.is_some())
            .finish()
    }
}

impl PluginGate {
    /// Asks `chain` (starting its decision threads only if a plugin wants a network decision).
    pub fn new(chain: Arc<Chain>) -> std::io::Result<PluginGate> {
        let decides = [Hook::Flow, Hook::Dns, Hook::Http]
            .into_iter()
            .any(|hook| chain.wants(hook));
        let offload = match decides {
            true => Some(Offload::start(chain.clone(), "msbvm-net-plugins")?),
            false => None,
        };
        Ok(PluginGate { chain, offload })
    }

    /// No plugins.
    pub fn none() -> PluginGate {
        PluginGate {
            chain: Arc::new(Chain::empty()),
            offload: None,
        }
    }

    /// Whether a plugin asked for `hook`.
    pub fn wants(&self, hook: Hook) -> bool {
        self.offload.is_some() && self.chain.wants(hook)
    }

    /// `net.flow`: `Err(reason)` when a plugin denies the flow to `dst` (looked up as `host`).
    pub async fn flow(
        &self,
        transport: Transport,
        dst: SocketAddr,
        host: Option<String>,
    ) -> Result<(), String> {
        let flow = Flow {
            transport: transport.into(),
            dst,
            host,
        };
        self.decide(flow, |chain, flow| chain.flow(flow))
            .await
            .map(drop)
    }

    /// Hands the plugins that asked what `event` shows (a closed flow's bytes, a DNS answer).
    /// Called with every event the stack reports, so the plugins hear what its event sink
    /// hears (events over the per-kind rate limit are not reported to either).
    pub fn observe(&self, event: &NetEvent) {
        let chain = &self.chain;
        match event {
            NetEvent::FlowClosed {
                transport,
                dst,
                bytes_up,
                bytes_down,
            } if chain.wants(Hook::Bytes) => chain.flow_bytes(&FlowBytes {
                transport: (*transport).into(),
                dst: *dst,
                bytes_up: *bytes_up,
                bytes_down: *bytes_down,
            }),
            NetEvent::DnsQuery {
                name,
                qtype,
                allowed,
                answers,
                ..
            } if chain.wants(Hook::DnsAnswer) => chain.dns_answer(&DnsAnswer {
                name: name.clone(),
                qtype: qtype.clone(),
                allowed: *allowed,
                answers: answers.clone(),
            }),
            _ => {}
        }
    }

    /// `net.dns`: `Err(reason)` when a plugin denies the query.
    pub async fn dns(&self, name: &str, qtype: &str) -> Result<(), String> {
        let query = DnsQuery {
            name: name.to_owned(),
            qtype: qtype.to_owned(),
        };
        self.decide(query, |chain, query| chain.dns_query(query))
            .await
            .map(drop)
    }

    /// `net.http`: the request as the plugins left it, or `Err(reason)` when one denies it.
    pub async fn http(&self, request: HttpRequest) -> Result<HttpRequest, String> {
        self.decide(request, |chain, request| chain.http_request(request))
            .await
    }

    async fn decide<T: Send + 'static>(
        &self,
        mut value: T,
        ask: fn(&Chain, &mut T) -> Decision,
    ) -> Result<T, String> {
        let Some(offload) = &self.offload else {
            return Ok(value);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        offload
            .submit(move |chain| {
                let decision = ask(chain, &mut value);
                let _ = tx.send((value, decision));
            })
            .map_err(|busy| busy.to_string())?;
        match rx.await {
            Ok((value, Decision::Continue)) => Ok(value),
            Ok((_, Decision::Deny { reason })) => Err(reason),
            Err(_) => Err("the plugin decision was lost".into()),
        }
    }
}

impl From<Transport> for PluginTransport {
    fn from(transport: Transport) -> Self {
        match transport {
            Transport::Tcp => PluginTransport::Tcp,
            Transport::Udp => PluginTransport::Udp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_plugins::{Interests, Plugin};

    struct Guard;

    impl Plugin for Guard {
        fn name(&self) -> &str {
            "guard"
        }
        fn interests(&self) -> Interests {
            Interests::NONE.with(Hook::Flow).with(Hook::Http)
        }
        fn flow(&self, flow: &Flow) -> Decision {
            match flow.host.as_deref() {
                Some("blocked.test") => Decision::deny("not that host"),
                _ => Decision::Continue,
            }
        }
        fn http_request(&self, request: &mut HttpRequest) -> Decision {
            request.headers.push(("x-seen".into(), "1".into()));
            Decision::Continue
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn decisions_come_back_without_blocking_and_changes_travel_with_them() {
        let gate = PluginGate::new(Arc::new(Chain::new(
            vec![Arc::new(Guard)],
            Arc::new(|_| {}),
        )))
        .unwrap();
        assert!(gate.wants(Hook::Flow) && gate.wants(Hook::Http) && !gate.wants(Hook::Dns));
        let dst: SocketAddr = ([192, 0, 2, 1], 443).into();
        assert_eq!(
            gate.flow(Transport::Tcp, dst, Some("blocked.test".into()))
                .await,
            Err("not that host".into())
        );
        assert_eq!(gate.flow(Transport::Tcp, dst, None).await, Ok(()));
        // Nobody asked for DNS: it is not asked.
        assert_eq!(gate.dns("example.com", "A").await, Ok(()));
        let request = gate.http(HttpRequest::default()).await.unwrap();
        assert_eq!(request.headers, vec![("x-seen".into(), "1".into())]);
    }

    #[test]
    fn no_plugin_starts_no_thread() {
        assert!(PluginGate::none().offload.is_none());
        let gate = PluginGate::new(Arc::new(Chain::empty())).unwrap();
        assert!(gate.offload.is_none() && !gate.wants(Hook::Flow));
    }
}
