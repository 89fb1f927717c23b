//! Secrets: the guest holds only a random placeholder; the stack swaps it for the real value
//! inside intercepted requests to the hosts the secret is bound to, and blocks requests that
//! carry it anywhere else.
//!
//! [`SecretSet`] is what the interception engine (`crate::intercept`) works with: which
//! secrets a request is eligible for, detection of placeholders in every encoding a guest
//! could use to smuggle one out ([`scan`]), substitution into headers (`Authorization: Basic`
//! decoded and re-encoded), the query and bodies, and the reverse replacement of values echoed
//! in responses ([`replace`]).

mod replace;
mod scan;
mod set;

#[cfg(feature = "fuzzing")]
pub(crate) use replace::replace_all;
pub(crate) use replace::Replacer;
pub(crate) use scan::Scanner;
pub use set::host_matches;
pub(crate) use set::SecretSet;

/// One secret bound to hosts.
#[derive(Clone)]
pub struct Secret {
    /// Name (the guest's environment variable that holds the placeholder).
    pub name: String,
    /// The real value; never reaches the guest, logs, events or error messages.
    pub value: String,
    /// What the guest sees instead of the value (random per sandbox, at least 128 bits).
    pub placeholder: String,
    /// Hosts the value may be sent to (`HOST` or `*.SUFFIX`).
    pub hosts: Vec<String>,
    /// Where substitution happens in a request to a bound host.
    pub inject: Inject,
}

/// Parts of a request where a placeholder is replaced by the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inject {
    /// Header values, `Authorization: Basic` decoded and re-encoded included.
    pub headers: bool,
    /// The query string of the request target.
    pub query: bool,
    /// The body (HTTP/1 fixed-length and chunked, HTTP/2 DATA), lengths fixed up.
    pub body: bool,
}

impl Default for Inject {
    fn default() -> Self {
        Inject {
            headers: true,
            query: false,
            body: false,
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value and the placeholder stay out of logs and error messages.
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}
