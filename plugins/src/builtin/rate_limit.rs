//! `rate-limit`: at most N commands per minute per sandbox; more are denied until the
//! minute's window has room.
//!
//! Configuration: `execs=N` (per minute; default 60). Limits on new connections and bytes per
//! second need flow decisions in the network stack, which plugins do not reach yet: those
//! settings are refused, not ignored.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pairs;
use crate::data::Exec;
use crate::hook::{Hook, Interests};
use crate::plugin::{Decision, Plugin};

const WINDOW: Duration = Duration::from_secs(60);

/// `rate-limit`'s settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Commands per minute.
    pub execs_per_minute: u32,
}

impl Config {
    /// Parses `execs=N`.
    pub fn parse(config: Option<&str>) -> Result<Config, String> {
        let mut c = Config {
            execs_per_minute: 60,
        };
        for (k, v) in pairs("rate-limit", config, &["execs"])? {
            match k {
                "execs" => {
                    c.execs_per_minute = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1_000_000).contains(n))
                        .ok_or_else(|| format!("rate-limit: execs={v:?} is not 1 to 1000000"))?
                }
                _ => unreachable!("pairs() admits only known keys"),
            }
        }
        Ok(c)
    }
}

/// The `rate-limit` plugin.
pub struct RateLimit {
    config: Config,
    recent: Mutex<VecDeque<Instant>>,
}

impl RateLimit {
    /// A limiter with nothing counted yet.
    pub fn new(config: Config) -> Self {
        RateLimit {
            config,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    fn admit(&self, now: Instant) -> Decision {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= self.config.execs_per_minute as usize {
            return Decision::deny(format!(
                "rate limit: at most {} commands per minute",
                self.config.execs_per_minute
            ));
        }
        recent.push_back(now);
        Decision::Continue
    }
}

impl Plugin for RateLimit {
    fn name(&self) -> &str {
        "rate-limit"
    }

    fn interests(&self) -> Interests {
        Interests::NONE.with(Hook::ExecBefore)
    }

    fn before_exec(&self, _exec: &mut Exec) -> Decision {
        self.admit(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_admits_n_per_minute() {
        let limit = RateLimit::new(Config::parse(Some("execs=2")).unwrap());
        let t = Instant::now();
        assert_eq!(limit.admit(t), Decision::Continue);
        assert_eq!(limit.admit(t + Duration::from_secs(1)), Decision::Continue);
        assert!(limit.admit(t + Duration::from_secs(2)).is_deny());
        assert!(limit.admit(t + Duration::from_secs(59)).is_deny());
        assert_eq!(limit.admit(t + Duration::from_secs(60)), Decision::Continue);
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(Config::parse(None).unwrap().execs_per_minute, 60);
        assert!(Config::parse(Some("execs=0")).is_err());
        assert!(Config::parse(Some("execs=ten")).is_err());
        let e = Config::parse(Some("connections=5")).unwrap_err();
        assert!(e.contains("connections"), "{e}");
    }
}
