//! `--secret` and `--secret-file`: secrets whose values come from the caller's environment or
//! a file, never from the command line.
//!
//! Syntax: `NAME@HOST[,HOST...][:WHERE[,WHERE...]]` and
//! `NAME=PATH@HOST[,HOST...][:WHERE[,WHERE...]]`, where HOST is `api.example.com` or
//! `*.example.com` and WHERE lists exactly where the placeholder is replaced: `headers`
//! (the default when no WHERE is given), `query`, `body`.

use msbvm_sdk::secrets::Secret;
use msbvm_sdk::Error;

/// The places a secret is substituted, from a `:WHERE,...` suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Places {
    headers: bool,
    query: bool,
    body: bool,
}

fn bad(flag: &str, text: &str, why: &str) -> Error {
    Error::InvalidConfig(format!(
        "{flag} {text:?}: {why}; expected {}",
        match flag {
            "--secret" => "NAME@HOST[,HOST...][:headers,query,body]",
            _ => "NAME=PATH@HOST[,HOST...][:headers,query,body]",
        }
    ))
}

/// Splits `HOST[,HOST...][:WHERE,...]` into hosts and places.
fn hosts_and_places(flag: &str, text: &str, rest: &str) -> Result<(Vec<String>, Places), Error> {
    let (hosts, places) = match rest.split_once(':') {
        Some((hosts, places)) => (hosts, Some(places)),
        None => (rest, None),
    };
    let hosts: Vec<String> = hosts.split(',').map(str::to_string).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(bad(flag, text, "a host is empty"));
    }
    let places = match places {
        None => Places {
            headers: true,
            query: false,
            body: false,
        },
        Some(list) => {
            let mut p = Places {
                headers: false,
                query: false,
                body: false,
            };
            for word in list.split(',') {
                match word {
                    "headers" => p.headers = true,
                    "query" => p.query = true,
                    "body" => p.body = true,
                    other => {
                        return Err(bad(
                            flag,
                            text,
                            &format!("{other:?} is not headers, query or body"),
                        ))
                    }
                }
            }
            p
        }
    };
    Ok((hosts, places))
}

fn build(secret: Secret, hosts: Vec<String>, places: Places) -> Result<Secret, Error> {
    let secret = hosts
        .into_iter()
        .fold(secret, Secret::allow_host)
        .inject_headers(places.headers)
        .inject_query(places.query)
        .inject_body(places.body);
    secret.validate()?;
    Ok(secret)
}

/// Parses `--secret NAME@HOST...`; the value is the caller's environment variable NAME,
/// read through `lookup` (an error if unset).
pub fn parse_secret(
    text: &str,
    lookup: impl Fn(&str) -> Result<Secret, Error>,
) -> Result<Secret, Error> {
    let flag = "--secret";
    let (name, rest) = text
        .split_once('@')
        .ok_or_else(|| bad(flag, text, "no `@HOST`"))?;
    if name.contains('=') {
        return Err(bad(
            flag,
            text,
            "values never go on the command line: export NAME and give --secret NAME@HOST, \
             or use --secret-file NAME=PATH@HOST",
        ));
    }
    msbvm_sdk::secrets::validate_name(name)?;
    let (hosts, places) = hosts_and_places(flag, text, rest)?;
    build(lookup(name)?, hosts, places)
}

/// Parses `--secret-file NAME=PATH@HOST...`; the value is the file's contents, a trailing
/// newline (`\n` or `\r\n`) removed.
pub fn parse_secret_file(text: &str) -> Result<Secret, Error> {
    let flag = "--secret-file";
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| bad(flag, text, "no `=PATH`"))?;
    msbvm_sdk::secrets::validate_name(name)?;
    let (path, hosts) = rest
        .rsplit_once('@')
        .ok_or_else(|| bad(flag, text, "no `@HOST`"))?;
    if path.is_empty() {
        return Err(bad(flag, text, "the path is empty"));
    }
    let (hosts, places) = hosts_and_places(flag, text, hosts)?;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidConfig(format!("{flag} {name}: cannot read {path}: {e}")))?;
    if meta.len() > msbvm_sdk::secrets::MAX_VALUE_BYTES as u64 + 2 {
        return Err(Error::InvalidConfig(format!(
            "{flag} {name}: {path} is larger than a secret may be"
        )));
    }
    let contents = std::fs::read(path)
        .map_err(|e| Error::InvalidConfig(format!("{flag} {name}: cannot read {path}: {e}")))?;
    // Deliberately no detail from the decoder: it would quote the bytes.
    let mut value = String::from_utf8(contents)
        .map_err(|_| Error::InvalidConfig(format!("{flag} {name}: {path} is not UTF-8 text")))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    build(Secret::new(name, value), hosts, places)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "tok-SECRET-77e0";

    fn env(name: &str) -> Result<Secret, Error> {
        match name {
            "API_KEY" => Ok(Secret::new(name, VALUE)),
            _ => Err(Error::InvalidConfig(format!("{name} is not set"))),
        }
    }

    #[test]
    fn secret_from_env_with_hosts_and_places() {
        let s = parse_secret("API_KEY@api.example.com", env).unwrap();
        assert_eq!(s.hosts(), ["api.example.com"]);
        assert!(s.inject().headers && !s.inject().query && !s.inject().body);
        assert_eq!(s.expose_value(), VALUE);
        let s = parse_secret("API_KEY@a.example.com,*.example.org:query,body", env).unwrap();
        assert_eq!(s.hosts(), ["a.example.com", "*.example.org"]);
        assert!(!s.inject().headers && s.inject().query && s.inject().body);
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_values() {
        for bad in [
            "API_KEY",
            "API_KEY@",
            "API_KEY@a.com,",
            "API_KEY@a.com:cookies",
            "1BAD@a.com",
            "API_KEY@1.2.3.4",
        ] {
            assert!(parse_secret(bad, env).is_err(), "{bad}");
        }
        let e = parse_secret("UNSET_ONE@a.com", env).unwrap_err();
        assert!(e.to_string().contains("not set"), "{e}");
        let e = parse_secret("API_KEY=inline@a.com", env).unwrap_err();
        assert!(
            e.to_string().contains("never go on the command line"),
            "{e}"
        );
    }

    #[test]
    fn secret_file_trims_one_newline() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path().join("tok@en");
        std::fs::write(&path, format!("{VALUE}\r\n")).unwrap();
        let arg = format!("TOKEN={}@api.example.com:headers,body", path.display());
        let s = parse_secret_file(&arg).unwrap();
        assert_eq!((s.name(), s.expose_value()), ("TOKEN", VALUE));
        assert!(s.inject().headers && s.inject().body);
        let missing = format!("TOKEN={}/nope@a.com", tmp.path().display());
        assert!(parse_secret_file(&missing).is_err());
        assert!(parse_secret_file("TOKEN@a.com").is_err());
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let e = parse_secret_file(&arg).unwrap_err().to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
