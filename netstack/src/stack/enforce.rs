//! A policy change reaches open flows: every guest-initiated TCP and UDP flow is checked again
//! under the new policy, and the ones it denies end at once.

use std::net::SocketAddrV4;

use smoltcp::socket::tcp;

use crate::events::Transport;
use crate::policy::{Policy, Verdict};
use crate::state::{Shared, TcpEntry};

/// Why an open flow must end under `policy`, with the deciding rule; `None` keeps it.
fn must_end(
    shared: &Shared,
    policy: &Policy,
    transport: Transport,
    dst: SocketAddrV4,
    names: &[String],
    inspected: bool,
) -> Option<(Option<String>, String)> {
    let flow = shared.flow_info(transport, dst);
    let names = || {
        let mut all = names.to_vec();
        all.extend(shared.pins.names(flow.dst.ip()));
        all
    };
    match policy.check_flow_named(&flow, names) {
        Verdict::Deny { rule, reason } => {
            Some((rule, format!("ended by a policy change: {reason}")))
        }
        Verdict::Allow { .. }
            if transport == Transport::Tcp
                && !inspected
                && policy.wants_http_inspection(dst.port()) =>
        {
            Some((
                None,
                format!(
                    "ended by a policy change: HTTP rules now apply to port {}, and this \
                     connection was opened uninspected",
                    dst.port()
                ),
            ))
        }
        Verdict::Allow { .. } => None,
    }
}

/// The flows of `flows` (key, destination, pinned names, inspected) that must end under
/// `policy`, each with why.
fn to_end<'a, K>(
    shared: &Shared,
    policy: &Policy,
    transport: Transport,
    flows: impl Iterator<Item = (K, SocketAddrV4, &'a [String], bool)>,
) -> Vec<(K, (Option<String>, String))> {
    flows
        .filter_map(|(key, dst, names, inspected)| {
            must_end(shared, policy, transport, dst, names, inspected).map(|why| (key, why))
        })
        .collect()
}

/// Ends every open flow the policy now in force denies.
pub(crate) fn end_denied_flows(shared: &Shared) {
    let policy = shared.policy.load_full();
    let mut ended = Vec::new();
    {
        let mut st = shared.stack.borrow_mut();
        let st = &mut *st;
        let tcp_ends = to_end(
            shared,
            &policy,
            Transport::Tcp,
            st.policed
                .iter()
                .map(|(key, flow)| (*key, key.remote, &flow.names[..], flow.inspected)),
        );
        for (key, why) in tcp_ends {
            st.policed.remove(&key);
            match st.tcp.get(&key) {
                // The flow's task sees the reset socket, resets the host side and cleans up.
                Some(TcpEntry::Active(handle)) => {
                    st.sockets.get_mut::<tcp::Socket>(*handle).abort()
                }
                Some(TcpEntry::Connecting { .. }) => {
                    if let Some(TcpEntry::Connecting { syn }) = st.tcp.remove(&key) {
                        st.send_rst(key, &syn);
                    }
                }
                None => continue,
            }
            ended.push((Transport::Tcp, key.remote, why));
        }
        // UDP flows count as inspected: HTTP rules never end them.
        let udp_ends = to_end(
            shared,
            &policy,
            Transport::Udp,
            st.udp
                .iter()
                .map(|(key, flow)| (*key, key.remote, &flow.names[..], true)),
        );
        for (key, why) in udp_ends {
            if let Some(flow) = st.udp.remove(&key) {
                flow.end();
                ended.push((Transport::Udp, key.remote, why));
            }
        }
        // UDP flows still waiting for the plugins: their datagrams are dropped, and the
        // decision, when it comes, finds nothing to open.
        let no_names: &[String] = &[];
        let pending_ends = to_end(
            shared,
            &policy,
            Transport::Udp,
            st.udp_pending
                .keys()
                .map(|key| (*key, key.remote, no_names, true)),
        );
        for (key, why) in pending_ends {
            st.udp_pending.remove(&key);
            ended.push((Transport::Udp, key.remote, why));
        }
        st.poll();
        shared.sync_flow_stats(st);
    }
    for (transport, dst, (rule, reason)) in ended {
        shared.deny(transport, dst, rule, reason);
    }
    shared.wake.notify_one();
}
