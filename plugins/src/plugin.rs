//! The [`Plugin`] trait: every hook a method with a no-op default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::data::{
    DnsAnswer, DnsQuery, Event, Exec, ExecEnded, ExecOutput, Flow, FlowBytes, FsAccess, FsIo,
    HttpRequest, Lifecycle, SandboxInfo,
};
use crate::hook::Interests;

/// A plugin's answer on a decision hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Decision {
    /// Let it through (with whatever the plugin changed in what it was given).
    Continue,
    /// Refuse it; later plugins are not asked.
    Deny {
        /// Why, in words; the guest or the caller sees it.
        reason: String,
    },
}

impl Decision {
    /// A denial with `reason`.
    pub fn deny(reason: impl Into<String>) -> Self {
        Decision::Deny {
            reason: reason.into(),
        }
    }

    /// Whether this is a denial.
    pub fn is_deny(&self) -> bool {
        matches!(self, Decision::Deny { .. })
    }
}

/// Limits a plugin asks the sandbox to enforce. With several plugins, the tightest applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Bytes per second the sandbox's network moves each way (frames between the guest and
    /// the network stack, headers included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes_per_sec: Option<u64>,
}

impl Limits {
    /// The tighter of `self` and `other`, field by field.
    pub fn tightest(self, other: Limits) -> Limits {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            net_bytes_per_sec: min(self.net_bytes_per_sec, other.net_bytes_per_sec),
        }
    }
}

/// What a sandbox does with a decision hook when its plugin cannot answer (it timed out,
/// crashed, or gave up restarting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Deny (the default for decision hooks: a broken guard must not open the door).
    #[default]
    Closed,
    /// Let it through.
    Open,
}

/// A plugin. Every hook has a no-op default; a plugin implements the ones it names in
/// [`Plugin::interests`], and is called only on those.
///
/// Hooks are called from the sandbox's own threads (the exec path, the network stack, the
/// filesystem server), several at once: keep them short, and never block on the guest. A panic
/// in a hook is caught; the decision then follows [`Plugin::failure_policy`].
pub trait Plugin: Send + Sync {
    /// A short name, for logs and events.
    fn name(&self) -> &str;

    /// The hooks this plugin wants.
    fn interests(&self) -> Interests;

    /// What a decision hook answers when this plugin fails.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::Closed
    }

    /// The longest a decision may take before [`Plugin::failure_policy`] applies (enforced for
    /// out-of-process plugins; an in-process hook runs to its end).
    fn timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Limits the sandbox enforces itself for this plugin, where asking a plugin per packet
    /// would cost too much (read once, when the sandbox starts).
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// A step in the sandbox's life.
    fn lifecycle(&self, _sandbox: &SandboxInfo, _step: &Lifecycle) {}

    /// A command is about to start; `exec` may be changed.
    fn before_exec(&self, _exec: &mut Exec) -> Decision {
        Decision::Continue
    }

    /// A command wrote output.
    fn exec_output(&self, _output: &ExecOutput) {}

    /// A command ended.
    fn exec_ended(&self, _ended: &ExecEnded) {}

    /// A filesystem operation of the guest.
    fn fs_access(&self, _access: &FsAccess) -> Decision {
        Decision::Continue
    }

    /// A change the guest made to a filesystem.
    fn fs_change(&self, _change: &FsAccess) {}

    /// The guest reads a file: set `read.data` to answer the read (the file is not read), or
    /// deny it (`EACCES`).
    fn fs_read(&self, _read: &mut FsIo) -> Decision {
        Decision::Continue
    }

    /// The guest writes a file: replace `write.data` to change what is written, or deny it
    /// (`EACCES`).
    fn fs_write(&self, _write: &mut FsIo) -> Decision {
        Decision::Continue
    }

    /// A new flow of the guest.
    fn flow(&self, _flow: &Flow) -> Decision {
        Decision::Continue
    }

    /// A DNS query of the guest.
    fn dns_query(&self, _query: &DnsQuery) -> Decision {
        Decision::Continue
    }

    /// What a DNS query got.
    fn dns_answer(&self, _answer: &DnsAnswer) {}

    /// An HTTP request on an inspected connection; its headers may be changed.
    fn http_request(&self, _request: &mut HttpRequest) -> Decision {
        Decision::Continue
    }

    /// Bytes a flow moved, when it closed.
    fn flow_bytes(&self, _bytes: &FlowBytes) {}

    /// An event between the guest and the host.
    fn event(&self, _event: &Event) {}

    /// The sandbox is going away: release what the plugin holds (an out-of-process plugin's
    /// process is stopped here).
    fn shutdown(&self) {}
}

/// Something about a plugin the sandbox reports (as a sandbox event and in its log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// A decision hook did not answer in time; its failure policy decided.
    TimedOut {
        /// The plugin.
        plugin: String,
        /// The hook.
        hook: String,
        /// What was decided instead (`deny` or `continue`).
        decided: String,
    },
    /// The plugin failed (crashed, panicked, broke the protocol); it will be restarted, or
    /// its failure policy decides meanwhile.
    Failed {
        /// The plugin.
        plugin: String,
        /// What happened.
        reason: String,
    },
    /// An out-of-process plugin was started again after failing.
    Restarted {
        /// The plugin.
        plugin: String,
        /// How many times it has been restarted.
        restarts: u32,
    },
    /// The plugin kept failing and is no longer restarted: its failure policy decides from now
    /// on.
    GaveUp {
        /// The plugin.
        plugin: String,
        /// The last failure.
        reason: String,
    },
    /// The plugin emitted an event.
    Event {
        /// The plugin.
        plugin: String,
        /// The event's topic.
        topic: String,
        /// Its payload.
        data: serde_json::Value,
    },
    /// Notifications the plugin was too slow to take were dropped.
    Dropped {
        /// The plugin.
        plugin: String,
        /// How many, since the last such notice.
        count: u64,
    },
}

/// Where [`Notice`]s go.
pub type NoticeSink = std::sync::Arc<dyn Fn(Notice) + Send + Sync>;
