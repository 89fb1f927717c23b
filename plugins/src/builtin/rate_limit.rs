//! `rate-limit`: commands per minute, new connections per second and network bytes per second,
//! per sandbox.
//!
//! Configuration (comma-separated, each optional): `execs=N` commands per minute (default
//! 60); `conns=N` new connections (TCP or UDP flows) per second, none by default; `bytes=N`
//! network bytes per second each way, none by default (`K`, `M`, `G` suffixes are powers of
//! 1024). Commands and connections over their limit are denied until the window has room.
//! Bytes are not denied but slowed: the plugin hands the rate to the sandbox
//! ([`Plugin::limits`]), whose network stack paces frames to it, because deciding per packet
//! through a plugin would cost more than the traffic.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pairs;
use crate::data::{Exec, Flow};
use crate::hook::{Hook, Interests};
use crate::plugin::{Decision, Limits, Plugin};

/// `rate-limit`'s settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Commands per minute.
    pub execs_per_minute: u32,
    /// New connections per second, when limited.
    pub conns_per_sec: Option<u32>,
    /// Network bytes per second each way, when limited.
    pub bytes_per_sec: Option<u64>,
}

impl Config {
    /// Parses `execs=N,conns=N,bytes=N[K|M|G]`.
    pub fn parse(config: Option<&str>) -> Result<Config, String> {
        let mut c = Config {
            execs_per_minute: 60,
            conns_per_sec: None,
            bytes_per_sec: None,
        };
        let count = |k: &str, v: &str| {
            v.parse()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| format!("rate-limit: {k}={v:?} is not 1 to 1000000"))
        };
        for (k, v) in pairs("rate-limit", config, &["execs", "conns", "bytes"])? {
            match k {
                "execs" => c.execs_per_minute = count(k, v)?,
                "conns" => c.conns_per_sec = Some(count(k, v)?),
                "bytes" => c.bytes_per_sec = Some(bytes(v)?),
                _ => unreachable!("pairs() admits only known keys"),
            }
        }
        Ok(c)
    }
}

/// `N`, `NK`, `NM` or `NG` bytes (powers of 1024), at least 1 KiB: less could not move one
/// full-size frame a second.
fn bytes(v: &str) -> Result<u64, String> {
    let bad = || format!("rate-limit: bytes={v:?} is not a rate of at least 1K (like 512K or 10M)");
    let (digits, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_uppercase()),
        _ => (v, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift)
        .filter(|b| *b >= 1024)
        .ok_or_else(bad)
}

/// The times of what a window admitted.
struct Window {
    span: Duration,
    most: usize,
    recent: Mutex<VecDeque<Instant>>,
}

impl Window {
    fn new(span: Duration, most: usize) -> Self {
        Window {
            span,
            most,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts one at `now`; false (and not counted) when the window is full.
    fn admit(&self, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.span)
        {
            recent.pop_front();
        }
        if recent.len() >= self.most {
            return false;
        }
        recent.push_back(now);
        true
    }
}

/// The `rate-limit` plugin.
pub struct RateLimit {
    config: Config,
    execs: Window,
    conns: Option<Window>,
}

impl RateLimit {
    /// A limiter with nothing counted yet.
    pub fn new(config: Config) -> Self {
        RateLimit {
            execs: Window::new(Duration::from_secs(60), config.execs_per_minute as usize),
            conns: config
                .conns_per_sec
                .map(|n| Window::new(Duration::from_secs(1), n as usize)),
            config,
        }
    }

    fn admit_exec(&self, now: Instant) -> Decision {
        match self.execs.admit(now) {
            true => Decision::Continue,
            false => Decision::deny(format!(
                "rate limit: at most {} commands per minute",
                self.config.execs_per_minute
            )),
        }
    }

    fn admit_flow(&self, now: Instant) -> Decision {
        match &self.conns {
            Some(window) if !window.admit(now) => Decision::deny(format!(
                "rate limit: at most {} new connections per second",
                window.most
            )),
            _ => Decision::Continue,
        }
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &str {
        "rate-limit"
    }

    fn interests(&self) -> Interests {
        let execs = Interests::NONE.with(Hook::ExecBefore);
        match self.conns {
            Some(_) => execs.with(Hook::Flow),
            None => execs,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            net_bytes_per_sec: self.config.bytes_per_sec,
        }
    }

    fn before_exec(&self, _exec: &mut Exec) -> Decision {
        self.admit_exec(Instant::now())
    }

    fn flow(&self, _flow: &Flow) -> Decision {
        self.admit_flow(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_admits_n_per_minute() {
        let limit = RateLimit::new(Config::parse(Some("execs=2")).unwrap());
        let t = Instant::now();
        assert_eq!(limit.admit_exec(t), Decision::Continue);
        assert_eq!(
            limit.admit_exec(t + Duration::from_secs(1)),
            Decision::Continue
        );
        assert!(limit.admit_exec(t + Duration::from_secs(2)).is_deny());
        assert!(limit.admit_exec(t + Duration::from_secs(59)).is_deny());
        assert_eq!(
            limit.admit_exec(t + Duration::from_secs(60)),
            Decision::Continue
        );
    }

    #[test]
    fn connections_are_counted_per_second_and_only_when_limited() {
        let free = RateLimit::new(Config::parse(None).unwrap());
        assert!(!free.interests().contains(Hook::Flow));
        assert_eq!(free.limits(), Limits::default());
        let limit = RateLimit::new(Config::parse(Some("conns=2,bytes=64K")).unwrap());
        assert!(limit.interests().contains(Hook::Flow));
        assert_eq!(limit.limits().net_bytes_per_sec, Some(64 * 1024));
        let t = Instant::now();
        assert_eq!(limit.admit_flow(t), Decision::Continue);
        assert_eq!(limit.admit_flow(t), Decision::Continue);
        assert!(limit.admit_flow(t + Duration::from_millis(500)).is_deny());
        assert_eq!(
            limit.admit_flow(t + Duration::from_secs(1)),
            Decision::Continue
        );
    }

    #[test]
    fn settings_are_checked() {
        let c = Config::parse(None).unwrap();
        assert_eq!(
            (c.execs_per_minute, c.conns_per_sec, c.bytes_per_sec),
            (60, None, None)
        );
        for (text, bytes) in [
            ("1024", 1024),
            ("1k", 1024),
            ("10M", 10 << 20),
            ("2G", 2 << 30),
        ] {
            let c = Config::parse(Some(&format!("bytes={text}"))).unwrap();
            assert_eq!(c.bytes_per_sec, Some(bytes), "{text}");
        }
        for bad in [
            "execs=0",
            "execs=ten",
            "conns=0",
            "bytes=100",
            "bytes=1T",
            "bytes=M",
            "bytes=99999999999G",
        ] {
            assert!(Config::parse(Some(bad)).is_err(), "{bad}");
        }
        let e = Config::parse(Some("connections=5")).unwrap_err();
        assert!(e.contains("connections"), "{e}");
    }
}
