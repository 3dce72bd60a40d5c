//! QMP over a unix socket: qapi's typed commands and replies on our own
//! tolerant transport.
//!
//! qapi 0.15's stream reader decodes every message into its QEMU 9.1 schema
//! and dies on the first event or enum value it does not know (QEMU 10.0
//! sends such events), after which every command fails. So the transport
//! here reads lines as raw JSON: a reply is matched to its command by `id`
//! and only then decoded into the command's `Ok` type; events are passed on
//! as raw JSON to whoever subscribed. An unknown or malformed message is
//! written to the transcript and skipped, never fatal. After `quit`, QEMU
//! resets the socket: that is the expected end, not an error.
//!
//! Every message in both directions goes to a transcript file in the run
//! directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Default deadline for one command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to QEMU over QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the qmp socket {path} within {after:?}")]
    Connect {
        path: String,
        after: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("qmp handshake failed: {0}")]
    Handshake(String),
    #[error("qmp connection closed (qemu exited?) while waiting for `{command}`")]
    Disconnected { command: String },
    #[error("qmp command `{command}` got no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("qmp command `{command}` failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("cannot decode the reply to `{command}` (reply: {reply})")]
    Decode {
        command: String,
        reply: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("qmp i/o while sending `{command}`")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no qmp event `{event}` within {after:?}")]
    EventTimeout { event: String, after: Duration },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A QMP connection.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Value>,
    transcript: Arc<Transcript>,
    closed: Arc<AtomicBool>,
    /// QEMU's version as the greeting states it.
    pub greeting: Value,
}

/// The transcript file, with times relative to QEMU start.
pub(crate) struct Transcript {
    file: Mutex<File>,
    started: Instant,
}

impl Transcript {
    pub fn create(path: &Path, started: Instant) -> std::io::Result<Transcript> {
        Ok(Transcript {
            file: Mutex::new(File::create(path)?),
            started,
        })
    }

    fn log(&self, dir: &str, text: &str) {
        let t = self.started.elapsed();
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            f,
            "[{:>5}.{:06}] {dir} {}",
            t.as_secs(),
            t.subsec_micros(),
            text.trim_end()
        );
    }
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket, up to `timeout`),
    /// reads the greeting and negotiates capabilities.
    pub(crate) async fn connect(
        path: &Path,
        timeout: Duration,
        transcript: Transcript,
        qemu_alive: impl Fn() -> bool,
    ) -> Result<Qmp, QmpError> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    if started.elapsed() >= timeout || !qemu_alive() {
                        return Err(QmpError::Connect {
                            path: path.display().to_string(),
                            after: started.elapsed(),
                            source: e,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let transcript = Arc::new(transcript);
        let left = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let greeting = match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                transcript.log("<-", &l);
                serde_json::from_str::<Value>(&l)
                    .map_err(|e| QmpError::Handshake(format!("bad greeting {l:?}: {e}")))?
            }
            Ok(Ok(None)) => {
                return Err(QmpError::Handshake(
                    "socket closed before the greeting".into(),
                ))
            }
            Ok(Err(e)) => return Err(QmpError::Handshake(format!("reading the greeting: {e}"))),
            Err(_) => return Err(QmpError::Handshake(format!("no greeting within {left:?}"))),
        };
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Handshake(format!(
                "unexpected greeting {greeting}"
            )));
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(1024);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_loop(
            lines,
            Arc::clone(&pending),
            events.clone(),
            Arc::clone(&transcript),
            Arc::clone(&closed),
        ));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events,
            transcript,
            closed,
            greeting,
        };
        qmp.execute(&qapi::qmp::qmp_capabilities { enable: None })
            .await?;
        Ok(qmp)
    }

    /// Runs a typed command with [`COMMAND_TIMEOUT`].
    pub async fn execute<C: qapi::Command>(&self, cmd: &C) -> Result<C::Ok, QmpError> {
        self.execute_timeout(cmd, COMMAND_TIMEOUT).await
    }

    /// Runs a typed command; the reply is decoded into the command's type.
    pub async fn execute_timeout<C: qapi::Command>(
        &self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Ok, QmpError> {
        let args = serde_json::to_value(cmd).map_err(|e| QmpError::Decode {
            command: C::NAME.into(),
            reply: String::new(),
            source: e,
        })?;
        let ret = self.execute_raw_timeout(C::NAME, args, timeout).await?;
        serde_json::from_value::<C::Ok>(ret.clone()).map_err(|e| QmpError::Decode {
            command: C::NAME.into(),
            reply: ret.to_string(),
            source: e,
        })
    }

    /// Runs a command by name with JSON arguments and returns the raw
    /// `return` value: for commands whose qapi reply type lags behind QEMU.
    pub async fn execute_raw(&self, name: &str, args: Value) -> Result<Value, QmpError> {
        self.execute_raw_timeout(name, args, COMMAND_TIMEOUT).await
    }

    pub async fn execute_raw_timeout(
        &self,
        name: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = serde_json::json!({ "execute": name, "id": id });
        if !args.is_null() && args.as_object().is_none_or(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            self.forget(id);
            return Err(QmpError::Disconnected {
                command: name.into(),
            });
        }
        let line = format!("{msg}\n");
        self.transcript.log("->", &line);
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = w.write_all(line.as_bytes()).await {
                self.forget(id);
                return Err(if is_disconnect(&e) {
                    QmpError::Disconnected {
                        command: name.into(),
                    }
                } else {
                    QmpError::Io {
                        command: name.into(),
                        source: e,
                    }
                });
            }
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => {
                return Err(QmpError::Disconnected {
                    command: name.into(),
                })
            }
            Err(_) => {
                self.forget(id);
                return Err(QmpError::Timeout {
                    command: name.into(),
                    after: timeout,
                });
            }
        };
        if let Some(err) = reply.get("error") {
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(QmpError::Command {
                command: name.into(),
                class: s("class"),
                desc: s("desc"),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Subscribes to events from now on (raw JSON: `{"event": NAME, ...}`).
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// Waits on `rx` for event `name` whose JSON satisfies `pred`.
    /// Subscribe before the action that causes the event.
    pub async fn wait_event(
        rx: &mut broadcast::Receiver<Value>,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let fut = async {
            loop {
                match rx.recv().await {
                    Ok(ev)
                        if ev.get("event").and_then(Value::as_str) == Some(name) && pred(&ev) =>
                    {
                        return Ok(ev)
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(QmpError::Disconnected {
                            command: format!("event {name}"),
                        })
                    }
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(QmpError::EventTimeout {
                    event: name.into(),
                    after: timeout,
                })
            })
    }

    /// Asks QEMU to exit. A reset connection is the normal outcome.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(&qapi::qmp::quit {}).await {
            Ok(_) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The connection has ended (QEMU exited or reset it).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset | BrokenPipe | UnexpectedEof | NotConnected
    )
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<Value>,
    transcript: Arc<Transcript>,
    closed: Arc<AtomicBool>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                transcript.log("--", "connection closed");
                break;
            }
            Err(e) => {
                transcript.log("--", &format!("connection ended: {e}"));
                break;
            }
        };
        transcript.log("<-", &line);
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                transcript.log("--", &format!("skipped undecodable line: {e}"));
                continue;
            }
        };
        if msg.get("event").is_some() {
            // No subscriber is fine.
            let _ = events.send(msg);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            transcript.log("--", "skipped a message without id");
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(msg);
        }
    }
    closed.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiter with "disconnected".
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake QEMU that sends a greeting, an event newer than qapi's schema,
    /// garbage, and replies out of order.
    #[tokio::test]
    async fn unknown_events_and_noise_do_not_break_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let caps: Value = serde_json::from_str(&r.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(caps["execute"], "qmp_capabilities");
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes())
                .await
                .unwrap();
            let a: Value = serde_json::from_str(&r.next_line().await.unwrap().unwrap()).unwrap();
            let b: Value = serde_json::from_str(&r.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(
                b"{\"event\": \"NETDEV_VHOST_USER_CONNECTED\", \"data\": {\"x\": 1}}\nnot json\n",
            )
            .await
            .unwrap();
            // Replies in reverse order of arrival.
            for cmd in [b, a] {
                let reply = if cmd["execute"] == "query-status" {
                    format!(
                        "{{\"return\": {{\"status\": \"running\", \"running\": true, \"singlestep\": false}}, \"id\": {}}}\n",
                        cmd["id"]
                    )
                } else {
                    format!(
                        "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"nope\"}}, \"id\": {}}}\n",
                        cmd["id"]
                    )
                };
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            // Then vanish, as QEMU does after quit.
            let mut rest = Vec::new();
            let _ = r.get_mut().read_to_end(&mut rest).await;
        });
        let transcript = Transcript::create(&dir.path().join("qmp.log"), Instant::now()).unwrap();
        let qmp = Qmp::connect(&sock, Duration::from_secs(5), transcript, || true)
            .await
            .unwrap();
        let mut events = qmp.subscribe();
        let (status, bad) = tokio::join!(
            qmp.execute(&qapi::qmp::query_status {}),
            qmp.execute_raw("no-such-command", Value::Null)
        );
        assert!(status.unwrap().running);
        assert!(matches!(bad, Err(QmpError::Command { ref desc, .. }) if desc == "nope"));
        let ev = Qmp::wait_event(
            &mut events,
            "NETDEV_VHOST_USER_CONNECTED",
            |_| true,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(ev["data"]["x"], 1);
        server.abort();
        let log = std::fs::read_to_string(dir.path().join("qmp.log")).unwrap();
        assert!(log.contains("skipped undecodable line"), "{log}");
    }
}
