//! [`AuditLog`]: a record of what the guest read, wrote, created, removed
//! and renamed, with paths, offsets and lengths.
//!
//! Records go to a callback or, as one JSON object per line, to any
//! `Write` sink (a file, a pipe to the SDK). Each record is taken after the
//! operation, so it carries the outcome; a denied operation is recorded with
//! the denying errno when the audit hook sits before the denying one.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use super::op::{Hook, Op, OpKind};

/// One audited operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// `"read"`, `"write"`, `"create"`, `"mkdir"`, `"mknod"`, `"symlink"`,
    /// `"link"`, `"unlink"`, `"rmdir"`, `"rename"`, `"truncate"`.
    pub op: &'static str,
    /// Guest path (lossy UTF-8), or `"?"` when the inode's path is unknown.
    pub path: String,
    /// Rename's or link's new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_path: Option<String>,
    /// Byte offset of a read or write; new size of a truncate.
    pub offset: u64,
    /// Bytes read or written (what actually moved), 0 for other operations.
    pub length: u64,
    /// 0, or the errno the operation failed with.
    pub errno: i32,
    /// Guest uid of the caller.
    pub uid: u32,
    /// Guest pid of the caller.
    pub pid: u32,
}

type Sink = Box<dyn FnMut(&AuditRecord) + Send>;

/// The audit hook. See the module docs.
pub struct AuditLog {
    sink: Mutex<Sink>,
}

fn lossy(p: Option<&Path>) -> String {
    p.map_or_else(|| "?".to_string(), |p| p.to_string_lossy().into_owned())
}

impl AuditLog {
    /// Calls `f` for every record (under a lock: records arrive one at a time).
    pub fn with_callback(f: impl FnMut(&AuditRecord) + Send + 'static) -> Self {
        Self {
            sink: Mutex::new(Box::new(f)),
        }
    }

    /// Writes every record to `out` as one line of JSON. A failing sink is
    /// logged once per failure and never fails the guest's operation.
    pub fn to_writer(mut out: impl Write + Send + 'static) -> Self {
        Self::with_callback(move |r| {
            let line = serde_json::to_string(r).unwrap_or_default();
            if let Err(e) = writeln!(out, "{line}") {
                tracing::warn!("audit log: cannot write record: {e}");
            }
        })
    }
}

impl Hook for AuditLog {
    fn after(&self, op: &Op<'_>, result: Result<u64, i32>) {
        let name = match op.kind {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Create => "create",
            OpKind::Mkdir => "mkdir",
            OpKind::Mknod => "mknod",
            OpKind::Symlink => "symlink",
            OpKind::Link => "link",
            OpKind::Unlink => "unlink",
            OpKind::Rmdir => "rmdir",
            OpKind::Rename => "rename",
            OpKind::Setattr if op.setattr.is_some_and(|s| s.size.is_some()) => "truncate",
            _ => return,
        };
        let record = AuditRecord {
            op: name,
            path: lossy(op.path.as_deref()),
            new_path: op.new_path.as_deref().map(|p| lossy(Some(p))),
            offset: match op.kind {
                OpKind::Setattr => op.size,
                _ => op.offset,
            },
            length: result.unwrap_or(0),
            errno: result.err().unwrap_or(0),
            uid: op.ctx.uid,
            pid: op.ctx.pid,
        };
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        sink(&record);
    }
}
