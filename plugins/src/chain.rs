//! [`Chain`]: the plugins of one sandbox, composed in the order they were given.
//!
//! - Decision hooks ask each interested plugin in order; the first denial wins and later
//!   plugins are not asked. A plugin that changes what it was given (an exec's argv, a
//!   request's headers) hands the changed value to the next one, so each sees the result of
//!   the ones before it; plugins never see each other.
//! - Notifications go to every interested plugin, in order.
//! - A hook only reaches plugins that asked for it ([`Chain::wants`] is what hot paths check
//!   first, so a hook nobody asked for costs one branch).
//! - A panicking in-process hook is caught: a decision then follows the plugin's
//!   [`FailurePolicy`], a notification is dropped, and a [`Notice::Failed`] says so.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::data::{
    DnsAnswer, DnsQuery, Event, Exec, ExecEnded, ExecOutput, Flow, FlowBytes, FsAccess, FsIo,
    HttpRequest, Lifecycle, SandboxInfo,
};
use crate::hook::{Hook, Interests};
use crate::plugin::{Decision, FailurePolicy, Limits, Notice, NoticeSink, Plugin};

/// The plugins of one sandbox. Cheap to share (`Arc`); every method takes `&self`.
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
    /// For each hook (by its index in [`Hook::ALL`]), the plugins that asked for it.
    by_hook: Vec<Vec<usize>>,
    notices: NoticeSink,
    panics: AtomicU64,
}

impl Chain {
    /// Composes `plugins` in this order; `notices` gets what happens to them.
    pub fn new(plugins: Vec<Arc<dyn Plugin>>, notices: NoticeSink) -> Self {
        let by_hook = Hook::ALL
            .iter()
            .map(|hook| {
                plugins
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.interests().contains(*hook))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        Chain {
            plugins,
            by_hook,
            notices,
            panics: AtomicU64::new(0),
        }
    }

    /// A chain with no plugins.
    pub fn empty() -> Self {
        Chain::new(Vec::new(), Arc::new(|_| {}))
    }

    /// The tightest of the limits the plugins ask for.
    pub fn limits(&self) -> Limits {
        self.plugins
            .iter()
            .fold(Limits::default(), |all, p| all.tightest(p.limits()))
    }

    /// Whether any plugin asked for `hook`.
    #[inline]
    pub fn wants(&self, hook: Hook) -> bool {
        !self.by_hook[index(hook)].is_empty()
    }

    /// The hooks some plugin asked for.
    pub fn interests(&self) -> Interests {
        Hook::ALL.into_iter().filter(|h| self.wants(*h)).collect()
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| p.name().to_string()).collect()
    }

    /// Whether there are no plugins.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    fn interested(&self, hook: Hook) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.by_hook[index(hook)].iter().map(|&i| &self.plugins[i])
    }

    /// Asks each interested plugin in order; `ask` calls one. The first denial wins.
    fn decide(&self, hook: Hook, mut ask: impl FnMut(&dyn Plugin) -> Decision) -> Decision {
        for plugin in self.interested(hook) {
            let decision = match catch_unwind(AssertUnwindSafe(|| ask(plugin.as_ref()))) {
                Ok(d) => d,
                Err(panic) => self.panicked(plugin.as_ref(), hook, panic, true),
            };
            if decision.is_deny() {
                return decision;
            }
        }
        Decision::Continue
    }

    /// Tells each interested plugin, in order.
    fn notify(&self, hook: Hook, tell: impl Fn(&dyn Plugin)) {
        for plugin in self.interested(hook) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| tell(plugin.as_ref()))) {
                self.panicked(plugin.as_ref(), hook, panic, false);
            }
        }
    }

    /// Reports a panic (the first and every 1000th after it, so a plugin that always panics
    /// cannot flood the sandbox's events) and returns what its failure policy decides.
    fn panicked(
        &self,
        plugin: &dyn Plugin,
        hook: Hook,
        panic: Box<dyn std::any::Any + Send>,
        decision: bool,
    ) -> Decision {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let n = self.panics.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(plugin = plugin.name(), %hook, "plugin panicked: {what}");
            (self.notices)(Notice::Failed {
                plugin: plugin.name().to_string(),
                reason: format!("panicked in {hook}: {what}"),
            });
        }
        match (decision, plugin.failure_policy()) {
            (true, FailurePolicy::Closed) => Decision::deny(format!(
                "plugin {} failed on {hook} (it fails closed)",
                plugin.name()
            )),
            _ => Decision::Continue,
        }
    }

    /// [`Hook::Lifecycle`].
    pub fn lifecycle(&self, sandbox: &SandboxInfo, step: &Lifecycle) {
        self.notify(Hook::Lifecycle, |p| p.lifecycle(sandbox, step));
    }

    /// [`Hook::ExecBefore`]: `exec` as the last plugin left it.
    pub fn before_exec(&self, exec: &mut Exec) -> Decision {
        self.decide(Hook::ExecBefore, |p| p.before_exec(exec))
    }

    /// [`Hook::ExecOutput`].
    pub fn exec_output(&self, output: &ExecOutput) {
        self.notify(Hook::ExecOutput, |p| p.exec_output(output));
    }

    /// [`Hook::ExecAfter`].
    pub fn exec_ended(&self, ended: &ExecEnded) {
        self.notify(Hook::ExecAfter, |p| p.exec_ended(ended));
    }

    /// [`Hook::Fs`].
    pub fn fs_access(&self, access: &FsAccess) -> Decision {
        self.decide(Hook::Fs, |p| p.fs_access(access))
    }

    /// [`Hook::FsChange`].
    pub fn fs_change(&self, change: &FsAccess) {
        self.notify(Hook::FsChange, |p| p.fs_change(change));
    }

    /// [`Hook::FsRead`]: `read` as the last plugin left it (the first that sets its data
    /// answers; later plugins see the answer).
    pub fn fs_read(&self, read: &mut FsIo) -> Decision {
        self.decide(Hook::FsRead, |p| p.fs_read(read))
    }

    /// [`Hook::FsWrite`]: `write` as the last plugin left it.
    pub fn fs_write(&self, write: &mut FsIo) -> Decision {
        self.decide(Hook::FsWrite, |p| p.fs_write(write))
    }

    /// [`Hook::Flow`].
    pub fn flow(&self, flow: &Flow) -> Decision {
        self.decide(Hook::Flow, |p| p.flow(flow))
    }

    /// [`Hook::Dns`].
    pub fn dns_query(&self, query: &DnsQuery) -> Decision {
        self.decide(Hook::Dns, |p| p.dns_query(query))
    }

    /// [`Hook::DnsAnswer`].
    pub fn dns_answer(&self, answer: &DnsAnswer) {
        self.notify(Hook::DnsAnswer, |p| p.dns_answer(answer));
    }

    /// [`Hook::Http`]: `request` as the last plugin left it.
    pub fn http_request(&self, request: &mut HttpRequest) -> Decision {
        self.decide(Hook::Http, |p| p.http_request(request))
    }

    /// [`Hook::Bytes`].
    pub fn flow_bytes(&self, bytes: &FlowBytes) {
        self.notify(Hook::Bytes, |p| p.flow_bytes(bytes));
    }

    /// [`Hook::Event`].
    pub fn event(&self, event: &Event) {
        self.notify(Hook::Event, |p| p.event(event));
    }

    /// Stops every plugin (out-of-process ones end their process).
    pub fn shutdown(&self) {
        for plugin in &self.plugins {
            let _ = catch_unwind(AssertUnwindSafe(|| plugin.shutdown()));
        }
    }
}

fn index(hook: Hook) -> usize {
    Hook::ALL.iter().position(|h| *h == hook).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A plugin that records what it saw, and does what it was built to.
    struct Probe {
        name: &'static str,
        interests: Interests,
        seen: Arc<Mutex<Vec<String>>>,
        deny_argv0: Option<&'static str>,
        push_arg: Option<&'static str>,
        panics: bool,
        policy: FailurePolicy,
    }

    impl Probe {
        fn new(name: &'static str, seen: &Arc<Mutex<Vec<String>>>, hooks: &[Hook]) -> Self {
            Probe {
                name,
                interests: hooks.iter().copied().collect(),
                seen: seen.clone(),
                deny_argv0: None,
                push_arg: None,
                panics: false,
                policy: FailurePolicy::Closed,
            }
        }
    }

    impl Plugin for Probe {
        fn name(&self) -> &str {
            self.name
        }
        fn interests(&self) -> Interests {
            self.interests
        }
        fn failure_policy(&self) -> FailurePolicy {
            self.policy
        }
        fn before_exec(&self, exec: &mut Exec) -> Decision {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}: {}", self.name, exec.argv.join(" ")));
            if self.panics {
                panic!("boom");
            }
            if let Some(arg) = self.push_arg {
                exec.argv.push(arg.into());
            }
            match self.deny_argv0 {
                Some(a) if exec.argv[0] == a => Decision::deny(format!("{} says no", self.name)),
                _ => Decision::Continue,
            }
        }
        fn flow_bytes(&self, b: &FlowBytes) {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}: {}", self.name, b.bytes_up));
        }
    }

    fn notices() -> (NoticeSink, Arc<Mutex<Vec<Notice>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        (Arc::new(move |n| sink.lock().unwrap().push(n)), got)
    }

    fn exec(argv: &[&str]) -> Exec {
        Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Exec::default()
        }
    }

    #[test]
    fn rewrites_apply_in_order_and_the_first_denial_wins() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut a = Probe::new("a", &seen, &[Hook::ExecBefore]);
        a.push_arg = Some("--from-a");
        let mut b = Probe::new("b", &seen, &[Hook::ExecBefore]);
        b.deny_argv0 = Some("rm");
        let c = Probe::new("c", &seen, &[Hook::ExecBefore]);
        let (sink, _) = notices();
        let chain = Chain::new(vec![Arc::new(a), Arc::new(b), Arc::new(c)], sink);

        let mut ok = exec(&["ls"]);
        assert_eq!(chain.before_exec(&mut ok), Decision::Continue);
        assert_eq!(ok.argv, ["ls", "--from-a"]);
        let mut bad = exec(&["rm", "-rf", "/"]);
        assert_eq!(chain.before_exec(&mut bad), Decision::deny("b says no"));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "a: ls",
                "b: ls --from-a",
                "c: ls --from-a",
                "a: rm -rf /",
                "b: rm -rf / --from-a",
            ],
            "b sees a's rewrite, c sees b's result, nobody after a denial is asked"
        );
    }

    #[test]
    fn hooks_reach_only_the_plugins_that_asked() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let flows = Probe::new("flows", &seen, &[Hook::Bytes]);
        let execs = Probe::new("execs", &seen, &[Hook::ExecBefore]);
        let (sink, _) = notices();
        let chain = Chain::new(vec![Arc::new(flows), Arc::new(execs)], sink);
        assert!(chain.wants(Hook::Bytes) && chain.wants(Hook::ExecBefore));
        assert!(!chain.wants(Hook::Fs) && !chain.wants(Hook::Flow));
        chain.before_exec(&mut exec(&["true"]));
        chain.flow_bytes(&FlowBytes {
            transport: crate::data::Transport::Tcp,
            dst: "10.0.0.1:80".parse().unwrap(),
            bytes_up: 7,
            bytes_down: 0,
        });
        assert_eq!(*seen.lock().unwrap(), ["execs: true", "flows: 7"]);
        assert!(!Chain::empty().wants(Hook::ExecBefore));
    }

    #[test]
    fn a_panicking_plugin_follows_its_failure_policy_and_is_reported() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut closed = Probe::new("closed", &seen, &[Hook::ExecBefore]);
        closed.panics = true;
        let mut open = Probe::new("open", &seen, &[Hook::ExecBefore]);
        open.panics = true;
        open.policy = FailurePolicy::Open;
        let (sink, got) = notices();

        let chain = Chain::new(vec![Arc::new(open)], sink.clone());
        assert_eq!(chain.before_exec(&mut exec(&["x"])), Decision::Continue);
        let chain = Chain::new(vec![Arc::new(closed)], sink);
        let d = chain.before_exec(&mut exec(&["x"]));
        assert!(
            matches!(&d, Decision::Deny { reason } if reason.contains("closed")),
            "{d:?}"
        );
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Notice::Failed { plugin, reason }
            if plugin == "closed" && reason.contains("boom")));
    }
}
