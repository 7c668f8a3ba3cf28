//! The daemon side of the control socket.
//!
//! Each connection is its own task; it never touches the node. It forwards requests to the
//! datapath task over a bounded channel and waits for the answer on a oneshot, so a slow
//! or stuck client only ever blocks its own task, never the packets.

use crate::control::{EventRecord, Request, Response, MAX_REQUEST_LINE};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

/// Control connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// A request for the datapath task.
#[derive(Debug)]
pub enum Ctl {
    /// A one-shot request and where its answer goes.
    Call(Request, oneshot::Sender<Response>),
    /// Start following: the answer carries the recent events, the receiver every new one
    /// (taken in the same datapath step, so nothing falls between the two).
    Follow(oneshot::Sender<(Response, broadcast::Receiver<Arc<EventRecord>>)>),
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A live daemon answers on the socket already.
    #[error("another esplab daemon is already listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("control socket {}: exists and is not a socket (remove it or set control.socket)", .0.display())]
    NotASocket(PathBuf),
    /// An OS error.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The socket file; removed on drop.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the control socket: creates its directory, replaces a stale socket file (one that
/// nobody answers on), and makes it 0600 right after `bind` (the socket can clear SAs).
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::AlreadyRunning(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Ok(_) => return Err(ControlError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    let guard = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok((listener, guard))
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: UnixListener, ctl: mpsc::Sender<Ctl>, node: String) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            // Out of descriptors and the like: try again shortly rather than spin.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctl = ctl.clone();
        let node = node.clone();
        tokio::spawn(async move {
            // Errors here are one client's broken connection: nothing to report.
            let _ = connection(stream, ctl, &node).await;
            drop(permit);
        });
    }
}

async fn write_line<T: serde::Serialize>(w: &mut OwnedWriteHalf, v: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn connection(stream: UnixStream, ctl: mpsc::Sender<Ctl>, node: &str) -> io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut rd)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let msg = if line.len() > MAX_REQUEST_LINE {
                "request line too long"
            } else {
                "request not terminated by a newline"
            };
            write_line(&mut wr, &Response::error(node, msg)).await?;
            return Ok(());
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "bad request: {e} (expected e.g. {{\"cmd\":\"show-sa\"}}; commands: show-sa, show-counters, show-events, follow-events, clear-sa, clear-counters)"
                );
                write_line(&mut wr, &Response::error(node, msg)).await?;
                continue;
            }
        };
        if req == Request::FollowEvents {
            let (tx, rx) = oneshot::channel();
            if ctl.send(Ctl::Follow(tx)).await.is_err() {
                return Ok(());
            }
            let Ok((first, feed)) = rx.await else {
                return Ok(());
            };
            write_line(&mut wr, &first).await?;
            return follow(rd, wr, feed, node).await;
        }
        let (tx, rx) = oneshot::channel();
        if ctl.send(Ctl::Call(req, tx)).await.is_err() {
            return Ok(());
        }
        let Ok(resp) = rx.await else {
            return Ok(());
        };
        write_line(&mut wr, &resp).await?;
    }
}

/// Streams events until the client hangs up or the daemon stops.
async fn follow(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    mut feed: broadcast::Receiver<Arc<EventRecord>>,
    node: &str,
) -> io::Result<()> {
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            ev = feed.recv() => match ev {
                Ok(ev) => write_line(&mut wr, &*ev).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let time = crate::clock::rfc3339_millis(std::time::SystemTime::now());
                    let mut r = EventRecord::new(
                        time,
                        node,
                        "events-lost",
                        format!("{n} events were not sent to this follower: it fell behind"),
                    );
                    r.count = Some(n);
                    write_line(&mut wr, &r).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Anything the client sends now is ignored; end of stream means it left.
            n = rd.read(&mut scratch) => if n? == 0 { return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("esplab-srv-{}-{name}", std::process::id()))
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_refuses_live_one() {
        let dir = tmp("bind");
        let path = dir.join("sub/x.sock");
        let (l, guard) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Live: refused.
        assert!(matches!(bind(&path), Err(ControlError::AlreadyRunning(_))));
        // Stale (listener closed, file left behind): replaced.
        drop(l);
        std::mem::forget(guard);
        let (_l, guard) = bind(&path).unwrap();
        drop(guard);
        assert!(!path.exists());
        // Not a socket: refused.
        std::fs::write(&path, "x").unwrap();
        assert!(matches!(bind(&path), Err(ControlError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn requests_reach_the_datapath_and_bad_ones_are_answered() {
        let dir = tmp("serve");
        let path = dir.join("s.sock");
        let (listener, _guard) = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, tx, "t".into()));
        // A fake datapath answering show-counters.
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if let Ctl::Call(req, reply) = c {
                    let mut r = Response::ok("t");
                    r.error = Some(format!("{req:?}"));
                    let _ = reply.send(r);
                }
            }
        });
        let p = path.clone();
        let (a, b) = tokio::task::spawn_blocking(move || {
            let mut c = crate::control::Client::connect(&p).unwrap();
            let a = c.call(&Request::ShowCounters).unwrap();
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            use std::io::{BufRead, Write};
            s.write_all(b"{\"cmd\":\"reboot\"}\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line).unwrap();
            (a, line)
        })
        .await
        .unwrap();
        assert_eq!(a.error.as_deref(), Some("ShowCounters"));
        assert!(
            b.contains("\"ok\":false") && b.contains("bad request"),
            "{b}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
