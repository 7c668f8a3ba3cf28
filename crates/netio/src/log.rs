//! The daemon's log: timestamped lines on stderr and, if configured, in `log.file`.

use crate::clock::rfc3339_millis;
use crate::control::log_line;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

/// Writes `TIME esplab[NODE]: MESSAGE` lines.
#[derive(Debug)]
pub struct Logger {
    node: String,
    file: Option<File>,
}

/// Opens a file for appending, creating it (mode 0640: logs name addresses and SPIs).
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Logger {
    /// A logger for `node`, also appending to `file` when given.
    pub fn new(node: &str, file: Option<&Path>) -> io::Result<Self> {
        Ok(Self {
            node: node.to_string(),
            file: file.map(open_append).transpose()?,
        })
    }

    /// The node name in the lines.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Logs `msg` stamped now.
    pub fn line(&mut self, msg: &str) {
        self.line_at(&rfc3339_millis(SystemTime::now()), msg);
    }

    /// Logs `msg` stamped `time` (RFC 3339).
    pub fn line_at(&mut self, time: &str, msg: &str) {
        let mut l = log_line(time, &self.node, msg);
        l.push('\n');
        // One write per line so concurrent writers to the same file do not interleave
        // inside a line (O_APPEND). A log that cannot be written must not stop the datapath.
        let _ = io::stderr().lock().write_all(l.as_bytes());
        if let Some(f) = &mut self.file {
            let _ = f.write_all(l.as_bytes());
        }
    }
}
