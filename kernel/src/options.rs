//! The values of Kconfig options and the difference between a requested and a built one.
//!
//! A leaf below [`crate::config`] (which parses and compares them) and [`crate::error`] (whose
//! `ConfigMismatch` carries them), so that neither has to import the other.

use std::fmt;

/// The value of one Kconfig option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// `CONFIG_X=y`.
    Yes,
    /// `CONFIG_X=m`.
    Module,
    /// `# CONFIG_X is not set` (or `CONFIG_X=n`).
    No,
    /// Any other value, kept verbatim (integers, hex, quoted strings).
    Value(String),
}

impl OptionValue {
    /// Reads the right-hand side of `CONFIG_X=...`.
    pub(crate) fn parse(raw: &str) -> OptionValue {
        match raw {
            "y" => OptionValue::Yes,
            "m" => OptionValue::Module,
            "n" => OptionValue::No,
            other => OptionValue::Value(other.to_string()),
        }
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Yes => f.write_str("y"),
            OptionValue::Module => f.write_str("m"),
            OptionValue::No => f.write_str("n"),
            OptionValue::Value(v) => f.write_str(v),
        }
    }
}

/// An option whose final value differs from the requested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Option name, with the `CONFIG_` prefix.
    pub name: String,
    /// What the fragments asked for.
    pub wanted: OptionValue,
    /// What the expanded `.config` has; `None` when the option is not there at all, which
    /// happens when its dependencies are unmet (Kconfig then does not even show it).
    pub got: Option<OptionValue>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.got {
            Some(got) => write!(f, "{}: wanted {}, got {}", self.name, self.wanted, got),
            None => write!(
                f,
                "{}: wanted {}, but it is absent (its dependencies are not met)",
                self.name, self.wanted
            ),
        }
    }
}
