//! The in-guest `msbvm`'s sandbox verbs: `create`, `exec`, `cp`, `ls`, `stop` and `rm` on
//! this sandbox's children, asked of the host's spawn service over vsock
//! ([`msbvm_protocol::spawn`]). The host decides: without a grant from the sandbox's creator
//! (`--allow-spawn`) nothing listens on the port and every verb says so at once.

use std::io::{Read, Write};

use msbvm_protocol::framing::{FrameReader, FrameWriter};
use msbvm_protocol::spawn::{ChildSpec, SpawnRequest, SpawnResponse, MAX_FILE_LEN, SPAWN_PORT};
use msbvm_protocol::{HOST_CID, PROTOCOL_VERSION};

use super::Failure;
use crate::agent::connection::Stream;
use crate::agent::vsock::VsockStream;

/// The sandbox verbs.
pub const VERBS: [&str; 6] = ["create", "exec", "cp", "ls", "stop", "rm"];

/// The usage lines of the sandbox verbs.
pub const USAGE: &str = "\
Children (sandboxes this one creates, if its creator allowed it with
--allow-spawn; named by their short names):

  msbvm create NAME [--image REF] [--cpus N] [--memory MIB] [-e K=V]...
               [--net-allow RULE]... [--net-deny RULE]... [--no-network]
               [--secret NAME]... [--allow-spawn N[,cpus=C][,memory=MiB]...]
      (allow rules, this sandbox's secrets and a grant of the child's own
       only as far as this sandbox's grant goes)
  msbvm exec NAME [-i] [--timeout SECS] -- CMD...   (-i: send stdin)
  msbvm cp SRC DST      (either side NAME:PATH; a local path or - otherwise)
  msbvm ls [--json]
  msbvm stop NAME
  msbvm rm NAME...
  msbvm events --of NAME [-f] [--type T]...   (a child's events, JSON lines)
  msbvm emit --to NAME TYPE [JSON]            (an event for a child's programs)
";

/// A connection to the spawn service.
pub struct Service<S: Stream> {
    reader: FrameReader<S>,
    writer: std::sync::Arc<FrameWriter<S>>,
}

impl Service<VsockStream> {
    /// Connects to the host's spawn service and exchanges hellos.
    pub fn connect() -> Result<Self, Failure> {
        let stream = VsockStream::connect(HOST_CID, SPAWN_PORT).map_err(|e| {
            Failure::new(
                1,
                format!(
                    "this sandbox may not create sandboxes ({e}): its creator did not allow it \
                     (msbvm run --allow-spawn N, SDK .allow_spawn(..))"
                ),
            )
        })?;
        Service::over(stream)
    }
}

impl<S: Stream> Service<S> {
    /// Speaks the protocol over `stream` (hello first).
    pub fn over(stream: S) -> Result<Self, Failure> {
        let reader = FrameReader::new(
            stream
                .try_clone()
                .map_err(|e| Failure::new(1, e.to_string()))?,
        );
        let mut service = Service {
            reader,
            writer: std::sync::Arc::new(FrameWriter::new(stream)),
        };
        match service.call(&SpawnRequest::Hello {
            version: PROTOCOL_VERSION,
        })? {
            SpawnResponse::Hello { .. } => Ok(service),
            other => Err(unexpected(&other)),
        }
    }

    /// The next message of a stream; `None` when the service closed it.
    pub fn next_message(&mut self) -> Result<Option<SpawnResponse>, Failure> {
        match self.reader.read_message::<SpawnResponse>() {
            Ok(Some(SpawnResponse::Error(message))) => Err(Failure::new(1, message)),
            Ok(other) => Ok(other),
            Err(e) => Err(Failure::new(
                1,
                format!("the host's spawn service failed: {e}"),
            )),
        }
    }

    /// Sends `request` and reads its answer; a [`SpawnResponse::Error`] is a failure.
    pub fn call(&mut self, request: &SpawnRequest) -> Result<SpawnResponse, Failure> {
        let lost = |e: msbvm_protocol::framing::FrameError| {
            Failure::new(1, format!("the host's spawn service failed: {e}"))
        };
        self.writer.send(request).map_err(lost)?;
        match self.reader.read_message::<SpawnResponse>().map_err(lost)? {
            Some(SpawnResponse::Error(message)) => Err(Failure::new(1, message)),
            Some(answer) => Ok(answer),
            None => Err(Failure::new(
                1,
                "the host's spawn service closed the connection",
            )),
        }
    }
}

impl<S: Stream + Send + 'static> Service<S> {
    /// Runs a command in a child, streaming: output is written as it comes, this
    /// process's stdin is sent as it is read (with `stdin`; otherwise the command's input
    /// is closed at once); returns the command's exit code.
    pub fn stream_exec(
        &mut self,
        name: String,
        argv: Vec<String>,
        stdin: bool,
        timeout_secs: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<i32, Failure> {
        let lost = |e: msbvm_protocol::framing::FrameError| {
            Failure::new(1, format!("the host's spawn service failed: {e}"))
        };
        self.writer
            .send(&SpawnRequest::ExecStream {
                name,
                argv,
                timeout_secs,
            })
            .map_err(lost)?;
        match self.reader.read_message::<SpawnResponse>().map_err(lost)? {
            Some(SpawnResponse::Started(_)) => {}
            Some(SpawnResponse::Error(message)) => return Err(Failure::new(1, message)),
            Some(other) => return Err(unexpected(&other)),
            None => {
                return Err(Failure::new(
                    1,
                    "the host's spawn service closed the connection",
                ))
            }
        }
        let writer = std::sync::Arc::clone(&self.writer);
        if stdin {
            // Input on its own thread, so output flows while it is read.
            std::thread::spawn(move || {
                let mut buf = vec![0u8; msbvm_protocol::MAX_CHUNK_LEN];
                let mut input = std::io::stdin().lock();
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer
                                .send(&SpawnRequest::Stdin(buf[..n].to_vec()))
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = writer.send(&SpawnRequest::CloseStdin);
            });
        } else {
            writer.send(&SpawnRequest::CloseStdin).map_err(lost)?;
        }
        let io = |e: std::io::Error| Failure::new(1, format!("writing the output: {e}"));
        loop {
            match self.reader.read_message::<SpawnResponse>().map_err(lost)? {
                Some(SpawnResponse::Stdout(data)) => out
                    .write_all(&data)
                    .and_then(|()| out.flush())
                    .map_err(io)?,
                Some(SpawnResponse::Stderr(data)) => {
                    let _ = std::io::stderr().write_all(&data);
                }
                Some(SpawnResponse::Exited { code, .. }) => return Ok(code),
                Some(SpawnResponse::Error(message)) => return Err(Failure::new(1, message)),
                Some(other) => return Err(unexpected(&other)),
                None => {
                    return Err(Failure::new(
                        1,
                        "the host's spawn service closed the connection before the command ended",
                    ))
                }
            }
        }
    }
}

fn unexpected(answer: &SpawnResponse) -> Failure {
    Failure::new(
        1,
        format!(
            "the host's spawn service answered {} unexpectedly",
            answer.kind()
        ),
    )
}

/// Parses a verb's arguments into the request(s) it makes; `Err` for bad usage.
pub fn parse(verb: &str, args: &[String]) -> Result<Plan, Failure> {
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<'_, String>, flag: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| Failure::usage(format!("{flag} needs a value")))
    };
    match verb {
        "create" => {
            let mut spec = ChildSpec::default();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--image" => spec.image = Some(value(&mut it, a)?),
                    "--cpus" => {
                        spec.cpus = Some(
                            value(&mut it, a)?
                                .parse()
                                .map_err(|_| Failure::usage("--cpus takes a number"))?,
                        )
                    }
                    "--memory" => {
                        spec.memory_mib = Some(
                            value(&mut it, a)?
                                .parse()
                                .map_err(|_| Failure::usage("--memory takes a number of MiB"))?,
                        )
                    }
                    "--net-allow" => spec.net_allow.push(value(&mut it, a)?.trim().to_string()),
                    "--net-deny" => spec.net_deny.push(value(&mut it, a)?.trim().to_string()),
                    "--no-network" => spec.no_network = true,
                    "--secret" => spec.secrets.push(value(&mut it, a)?),
                    "--allow-spawn" => spec.allow_spawn = Some(value(&mut it, a)?),
                    "-e" | "--env" => {
                        let kv = value(&mut it, a)?;
                        let (k, v) = kv
                            .split_once('=')
                            .ok_or_else(|| Failure::usage(format!("{a} takes K=V, not {kv:?}")))?;
                        spec.env.push((k.to_string(), v.to_string()));
                    }
                    flag if flag.starts_with('-') => {
                        return Err(Failure::usage(format!("unknown option {flag}")))
                    }
                    name if spec.name.is_empty() => spec.name = name.to_string(),
                    extra => return Err(Failure::usage(format!("unexpected {extra:?}"))),
                }
            }
            if spec.name.is_empty() {
                return Err(Failure::usage("create needs a NAME"));
            }
            Ok(Plan::Create(spec))
        }
        "exec" => {
            let (mut name, mut stdin, mut timeout) = (None, false, None);
            let mut argv = Vec::new();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--" => {
                        argv.extend(it.by_ref().cloned());
                        break;
                    }
                    "-i" | "--interactive" => stdin = true,
                    "--timeout" => {
                        timeout = Some(
                            value(&mut it, a)?
                                .parse()
                                .map_err(|_| Failure::usage("--timeout takes whole seconds"))?,
                        )
                    }
                    _ if name.is_none() => name = Some(a.clone()),
                    _ => {
                        argv.push(a.clone());
                        argv.extend(it.by_ref().cloned());
                        break;
                    }
                }
            }
            let name = name.ok_or_else(|| Failure::usage("exec needs a NAME"))?;
            if argv.is_empty() {
                return Err(Failure::usage("exec needs a command after NAME (and --)"));
            }
            Ok(Plan::Exec {
                name,
                argv,
                stdin,
                timeout,
            })
        }
        "cp" => match args {
            [src, dst] => Ok(Plan::Copy {
                from: Place::parse(src),
                to: Place::parse(dst),
            }),
            _ => Err(Failure::usage("cp takes SRC and DST")),
        },
        "ls" => Ok(Plan::List {
            json: args.iter().any(|a| a == "--json"),
        }),
        "stop" => match args {
            [name] => Ok(Plan::Each(vec![SpawnRequest::Stop { name: name.clone() }])),
            _ => Err(Failure::usage("stop takes one NAME")),
        },
        "rm" if !args.is_empty() => Ok(Plan::Each(
            args.iter()
                .map(|name| SpawnRequest::Remove { name: name.clone() })
                .collect(),
        )),
        "rm" => Err(Failure::usage("rm needs a NAME")),
        "child-events" => {
            let (mut name, mut types, mut follow) = (None, Vec::new(), false);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--of" => name = Some(value(&mut it, a)?),
                    "--type" | "-t" => types.push(value(&mut it, a)?),
                    "-f" | "--follow" => follow = true,
                    "--json" => {}
                    other => return Err(Failure::usage(format!("unexpected {other:?}"))),
                }
            }
            let name = name.ok_or_else(|| Failure::usage("--of needs a NAME"))?;
            Ok(Plan::Events {
                request: SpawnRequest::Events {
                    name,
                    types,
                    follow,
                },
            })
        }
        "child-emit" => match args {
            [_, name, kind, rest @ ..] if rest.len() <= 1 => {
                let data = rest.first().map_or("null", String::as_str);
                if serde_json::from_str::<serde_json::Value>(data).is_err() {
                    return Err(Failure::usage(format!(
                        "the event data is not JSON: {data}"
                    )));
                }
                Ok(Plan::Each(vec![SpawnRequest::Emit {
                    name: name.clone(),
                    kind: kind.clone(),
                    data: data.to_string(),
                }]))
            }
            _ => Err(Failure::usage("emit --to NAME TYPE [JSON]")),
        },
        other => Err(Failure::usage(format!("unknown command {other:?}"))),
    }
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    /// A path in a child.
    Child {
        /// The child.
        name: String,
        /// The path in it.
        path: String,
    },
    /// A path here (`-`: stdin or stdout).
    Local(String),
}

impl Place {
    fn parse(text: &str) -> Place {
        match text.split_once(':') {
            Some((name, path)) if !name.is_empty() && !name.contains('/') => Place::Child {
                name: name.into(),
                path: path.into(),
            },
            _ => Place::Local(text.into()),
        }
    }
}

/// What a verb does.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create a child.
    Create(ChildSpec),
    /// Run a command.
    Exec {
        /// The child.
        name: String,
        /// The command.
        argv: Vec<String>,
        /// Send this process's stdin.
        stdin: bool,
        /// Its timeout in seconds.
        timeout: Option<u64>,
    },
    /// Copy a file.
    Copy {
        /// From.
        from: Place,
        /// To.
        to: Place,
    },
    /// List the children.
    List {
        /// As JSON.
        json: bool,
    },
    /// Requests answered `Done` each.
    Each(Vec<SpawnRequest>),
    /// A child's events, printed as they come.
    Events {
        /// The [`SpawnRequest::Events`].
        request: SpawnRequest,
    },
}

fn read_local(path: &str) -> Result<Vec<u8>, Failure> {
    let mut data = Vec::new();
    let limit = MAX_FILE_LEN as u64 + 1;
    let read = if path == "-" {
        std::io::stdin().take(limit).read_to_end(&mut data)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut data))
    };
    read.map_err(|e| Failure::new(1, format!("reading {path}: {e}")))?;
    if data.len() > MAX_FILE_LEN {
        return Err(Failure::new(
            1,
            format!("{path} is larger than {MAX_FILE_LEN} bytes, the most one copy carries"),
        ));
    }
    Ok(data)
}

/// Carries out `plan` over `service`, writing output to `out`; returns the exit code.
pub fn execute<S: Stream + Send + 'static>(
    plan: Plan,
    service: &mut Service<S>,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    let io = |e: std::io::Error| Failure::new(1, format!("writing the output: {e}"));
    match plan {
        Plan::Create(spec) => {
            service.call(&SpawnRequest::Create(spec))?;
            Ok(0)
        }
        Plan::Exec {
            name,
            argv,
            stdin,
            timeout,
        } => service.stream_exec(name, argv, stdin, timeout, out),
        Plan::Copy { from, to } => {
            let data = match from {
                Place::Local(path) => read_local(&path)?,
                Place::Child { name, path } => {
                    match service.call(&SpawnRequest::ReadFile { name, path })? {
                        SpawnResponse::File(data) => data,
                        other => return Err(unexpected(&other)),
                    }
                }
            };
            match to {
                Place::Local(path) if path == "-" => out.write_all(&data).map_err(io)?,
                Place::Local(path) => std::fs::write(&path, &data)
                    .map_err(|e| Failure::new(1, format!("writing {path}: {e}")))?,
                Place::Child { name, path } => {
                    service.call(&SpawnRequest::WriteFile {
                        name,
                        path,
                        data,
                        mode: 0o644,
                    })?;
                }
            }
            Ok(0)
        }
        Plan::List { json } => match service.call(&SpawnRequest::List)? {
            SpawnResponse::Children(children) => {
                for c in children {
                    let line = if json {
                        serde_json::json!({
                            "name": c.name, "status": c.status, "cpus": c.cpus,
                            "memory_mib": c.memory_mib, "image": c.image,
                        })
                        .to_string()
                    } else {
                        format!(
                            "{}\t{}\t{} cpu\t{} MiB\t{}",
                            c.name, c.status, c.cpus, c.memory_mib, c.image
                        )
                    };
                    writeln!(out, "{line}").map_err(io)?;
                }
                Ok(0)
            }
            other => Err(unexpected(&other)),
        },
        Plan::Each(requests) => {
            for r in requests {
                service.call(&r)?;
            }
            Ok(0)
        }
        Plan::Events { request } => {
            let mut answer = service.call(&request)?;
            loop {
                match answer {
                    SpawnResponse::Event(line) => writeln!(out, "{line}")
                        .and_then(|()| out.flush())
                        .map_err(io)?,
                    SpawnResponse::Done => return Ok(0),
                    other => return Err(unexpected(&other)),
                }
                answer = match service.next_message()? {
                    Some(next) => next,
                    // The child ended: so did its events.
                    None => return Ok(0),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn verbs_parse() {
        let argv = [
            "n",
            "--net-allow",
            "host",
            "--net-deny",
            "x.test",
            "--no-network",
            "--allow-spawn",
            "1",
        ];
        match parse("create", &args(&argv)).unwrap() {
            Plan::Create(s) => {
                assert_eq!(
                    (s.net_allow, s.net_deny),
                    (vec!["host".into()], vec!["x.test".into()])
                );
                assert!(s.no_network);
                assert_eq!(s.allow_spawn.as_deref(), Some("1"));
            }
            _ => panic!("not a create"),
        }
        match parse("create", &args(&["w1", "--memory", "128", "-e", "A=b"])).unwrap() {
            Plan::Create(s) => {
                assert_eq!((s.name.as_str(), s.memory_mib), ("w1", Some(128)));
                assert_eq!(s.env, [("A".to_string(), "b".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse("exec", &args(&["w1", "-i", "--", "sh", "-c", "x"])).unwrap(),
            Plan::Exec {
                name: "w1".into(),
                argv: args(&["sh", "-c", "x"]),
                stdin: true,
                timeout: None
            }
        );
        assert_eq!(
            parse("cp", &args(&["a:/f", "/tmp/f"])).unwrap(),
            Plan::Copy {
                from: Place::Child {
                    name: "a".into(),
                    path: "/f".into()
                },
                to: Place::Local("/tmp/f".into())
            }
        );
        for (verb, bad) in [
            ("create", vec![]),
            ("create", vec!["--cpus", "x", "n"]),
            ("exec", vec!["w1"]),
            ("cp", vec!["a"]),
            ("stop", vec![]),
            ("rm", vec![]),
        ] {
            assert!(parse(verb, &args(&bad)).is_err(), "{verb} {bad:?}");
        }
    }

    #[test]
    fn a_fake_service_is_asked_in_order() {
        use std::os::unix::net::UnixStream;
        let (a, b) = UnixStream::pair().unwrap();
        let host = std::thread::spawn(move || {
            let mut r = FrameReader::new(b.try_clone().unwrap());
            let w = FrameWriter::new(b);
            let mut seen = Vec::new();
            while let Ok(Some(req)) = r.read_message::<SpawnRequest>() {
                let answer = match &req {
                    SpawnRequest::Hello { .. } => SpawnResponse::Hello {
                        version: PROTOCOL_VERSION,
                    },
                    SpawnRequest::ReadFile { .. } => SpawnResponse::File(b"data".to_vec()),
                    SpawnRequest::ExecStream { .. } => {
                        w.send(&SpawnResponse::Started(9)).unwrap();
                        // The command's input is closed first (no -i).
                        assert_eq!(
                            r.read_message::<SpawnRequest>().unwrap(),
                            Some(SpawnRequest::CloseStdin)
                        );
                        w.send(&SpawnResponse::Stdout(b"out-".to_vec())).unwrap();
                        w.send(&SpawnResponse::Stdout(b"put".to_vec())).unwrap();
                        SpawnResponse::Exited {
                            code: 3,
                            stdout: Vec::new(),
                            stderr: Vec::new(),
                            truncated: false,
                        }
                    }
                    SpawnRequest::Remove { name } if name == "gone" => {
                        SpawnResponse::Error("p has no child named \"gone\"".into())
                    }
                    _ => SpawnResponse::Done,
                };
                seen.push(req);
                w.send(&answer).unwrap();
            }
            seen
        });
        let mut service = Service::over(a).unwrap();
        let copy = parse("cp", &args(&["x:/a", "y:/b"])).unwrap();
        assert_eq!(execute(copy, &mut service, &mut Vec::new()).unwrap(), 0);
        let exec = parse("exec", &args(&["x", "--", "cmd"])).unwrap();
        let mut out = Vec::new();
        assert_eq!(execute(exec, &mut service, &mut out).unwrap(), 3);
        assert_eq!(out, b"out-put");
        let rm = parse("rm", &args(&["gone"])).unwrap();
        let e = execute(rm, &mut service, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("no child named"), "{}", e.message);
        drop(service);
        let seen = host.join().unwrap();
        assert_eq!(
            seen[2],
            SpawnRequest::WriteFile {
                name: "y".into(),
                path: "/b".into(),
                data: b"data".to_vec(),
                mode: 0o644
            }
        );
    }
}
