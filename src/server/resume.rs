//! Session manager for `/mcp` (2025-era sessions): rmcp's in-memory one, with each request's
//! event stream kept here so that a broken stream can be resumed with `Last-Event-ID` for
//! `--resume-window` (while it runs and after it has finished) and no longer.
//!
//! Each request's events are pumped out of rmcp as they come into a log of that request's own
//! (at most `max_tokens` progress events and the result), so neither a slow reader nor a
//! vanished one ever holds up the session, or the engine behind it. Readers of the log are the
//! POST's response and any resumption. When the last reader goes before the end, the request
//! gets the window to be resumed; then it is cancelled (`notifications/cancelled`), which frees
//! its engine slot. A finished log is dropped after the window.
//!
//! `Last-Event-ID` names the last event the client received (the SSE spec): replay starts after
//! it. rmcp's own replay (still used for the standalone GET stream) starts with it, so that one
//! is made exclusive here too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, RequestId, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError, SessionError,
};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use tokio::sync::{mpsc, watch};

/// A request's stream: the session, and the number rmcp gives the HTTP request (the part of
/// each event id after the slash, `index/stream`).
type StreamKey = (SessionId, u64);

pub struct ResumableSessions {
    sessions: Arc<LocalSessionManager>,
    window: Duration,
    logs: Arc<Mutex<HashMap<StreamKey, Arc<Log>>>>,
    activity: Arc<Mutex<HashMap<SessionId, Activity>>>,
}

/// When a session was last used, and how many of its requests are still answering: what
/// [`ResumableSessions::close_idlest`] judges by.
struct Activity {
    last: Instant,
    running: usize,
}

/// One request's events so far, for every reader now and later.
struct Log {
    session: SessionId,
    request: Option<RequestId>,
    written: watch::Sender<Written>,
    readers: AtomicUsize,
    /// Counts attachments, so that a reader that comes and goes again restarts the window.
    attached: AtomicU64,
}

#[derive(Default)]
struct Written {
    events: Vec<ServerSseMessage>,
    /// rmcp closed the stream: the result was sent, or the request was cancelled.
    done: bool,
}

impl ResumableSessions {
    pub fn new(sessions: LocalSessionManager, window: Duration) -> Self {
        Self {
            sessions: Arc::new(sessions),
            window,
            logs: Arc::default(),
            activity: Arc::default(),
        }
    }

    /// 2025-era sessions open now.
    pub async fn open(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }

    /// Closes the least recently used session that has been idle for at least `min_idle` and
    /// has no request running; false if there is none.
    pub async fn close_idlest(&self, min_idle: Duration) -> bool {
        let open = self.sessions.sessions.read().await;
        let idlest = {
            let mut activity = lock(&self.activity);
            // Sessions rmcp closed on its own (idle timeout) leave here too.
            activity.retain(|id, _| open.contains_key(id));
            activity
                .iter()
                .filter(|(_, a)| a.running == 0 && a.last.elapsed() >= min_idle)
                .min_by_key(|(_, a)| a.last)
                .map(|(id, _)| id.clone())
        };
        drop(open);
        let Some(id) = idlest else { return false };
        tracing::info!(session = %id, "closing the least recently used idle session to make room (--max-sessions)");
        self.close_session(&id).await.is_ok()
    }

    /// Copies rmcp's stream into `log` as fast as rmcp writes it; keeps the log findable by
    /// `Last-Event-ID` until the window after its end.
    fn pump(&self, log: Arc<Log>, events: impl Stream<Item = ServerSseMessage> + Send + 'static) {
        let logs = self.logs.clone();
        let activity = self.activity.clone();
        let window = self.window;
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut key = None;
            while let Some(event) = events.next().await {
                if key.is_none()
                    && let Some(stream) = event.event_id.as_deref().and_then(stream_of)
                {
                    let k = (log.session.clone(), stream);
                    lock(&logs).insert(k.clone(), log.clone());
                    key = Some(k);
                }
                log.written.send_modify(|w| w.events.push(event));
            }
            log.written.send_modify(|w| w.done = true);
            touch(&activity, &log.session, -1);
            tokio::time::sleep(window).await;
            if let Some(key) = key {
                let mut logs = lock(&logs);
                if logs.get(&key).is_some_and(|l| Arc::ptr_eq(l, &log)) {
                    logs.remove(&key);
                }
            }
        });
    }

    /// A reader of `log` from event `from` on, as the body of an SSE response.
    fn read(
        &self,
        log: Arc<Log>,
        from: usize,
    ) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
        let (tx, mut rx) = mpsc::channel(16);
        log.readers.fetch_add(1, SeqCst);
        log.attached.fetch_add(1, SeqCst);
        let sessions = self.sessions.clone();
        let window = self.window;
        tokio::spawn(async move {
            let finished = forward(&log, from, &tx).await;
            if log.readers.fetch_sub(1, SeqCst) == 1 && !finished {
                abandon_after(window, log, sessions).await;
            }
        });
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a use of session `id`: `running` requests start (+1) or end (-1).
fn touch(activity: &Mutex<HashMap<SessionId, Activity>>, id: &SessionId, running: isize) {
    let mut activity = lock(activity);
    let entry = activity.entry(id.clone()).or_insert(Activity {
        last: Instant::now(),
        running: 0,
    });
    entry.last = Instant::now();
    entry.running = entry.running.saturating_add_signed(running);
}

/// The stream number in a request stream's event id (`index/stream`); `None` for the standalone
/// stream's plain `index`.
fn stream_of(event_id: &str) -> Option<u64> {
    event_id.split_once('/')?.1.parse().ok()
}

/// Sends the log's events from `next` on to `tx` until the end (`true`) or until the reader
/// goes (`false`).
async fn forward(log: &Log, mut next: usize, tx: &mpsc::Sender<ServerSseMessage>) -> bool {
    let mut written = log.written.subscribe();
    loop {
        let (fresh, done) = {
            let w = written.borrow_and_update();
            (w.events.get(next..).unwrap_or_default().to_vec(), w.done)
        };
        for event in fresh {
            if tx.send(event).await.is_err() {
                return false;
            }
            next += 1;
        }
        if done {
            return true;
        }
        tokio::select! {
            changed = written.changed() => if changed.is_err() { return true },
            () = tx.closed() => return false,
        }
    }
}

/// Waits out the resume window of a log that lost its last reader; cancels its request if no
/// reader came back and it is still running.
async fn abandon_after(window: Duration, log: Arc<Log>, sessions: Arc<LocalSessionManager>) {
    let attached = log.attached.load(SeqCst);
    tokio::time::sleep(window).await;
    let resumed = log.readers.load(SeqCst) > 0 || log.attached.load(SeqCst) != attached;
    if resumed || log.written.borrow().done {
        return;
    }
    let Some(request) = &log.request else { return };
    tracing::info!(
        session = %log.session,
        %request,
        "cancelling a request whose stream broke {}s ago and was not resumed (--resume-window)",
        window.as_secs_f64()
    );
    let cancel = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": request, "reason": "stream broken and not resumed within --resume-window" },
    });
    let sent = match serde_json::from_value::<ClientJsonRpcMessage>(cancel) {
        Ok(cancel) => sessions
            .accept_message(&log.session, cancel)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        // The session itself is gone, and its requests with it.
        tracing::debug!("cancelling an abandoned request: {e}");
    }
}

/// Replay of rmcp's cache from the event named in `Last-Event-ID`, without that event.
fn after(
    replay: impl Stream<Item = ServerSseMessage> + Send + Sync + 'static,
    last_event_id: String,
) -> impl Stream<Item = ServerSseMessage> + Send + Sync + 'static {
    let mut first = true;
    replay.filter(move |event| {
        let delivered = first && event.event_id.as_deref() == Some(last_event_id.as_str());
        first = false;
        futures::future::ready(!delivered)
    })
}

impl SessionManager for ResumableSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let (id, transport) = self.sessions.create_session().await?;
        touch(&self.activity, &id, 0);
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        touch(&self.activity, id, 0);
        self.sessions.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.sessions.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        lock(&self.logs).retain(|(session, _), _| session != id);
        lock(&self.activity).remove(id);
        self.sessions.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let request = match &message {
            ClientJsonRpcMessage::Request(r) => Some(r.id.clone()),
            _ => None,
        };
        let events = self.sessions.create_stream(id, message).await?;
        touch(&self.activity, id, 1);
        let log = Arc::new(Log {
            session: id.clone(),
            request,
            written: watch::Sender::new(Written::default()),
            readers: AtomicUsize::new(0),
            attached: AtomicU64::new(0),
        });
        let reader = self.read(log.clone(), 0);
        self.pump(log, events);
        Ok(reader)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        touch(&self.activity, id, 0);
        self.sessions.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.sessions.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let Some(stream) = stream_of(&last_event_id) else {
            let replay = self.sessions.resume(id, last_event_id.clone()).await?;
            return Ok(after(replay, last_event_id).left_stream());
        };
        let log = lock(&self.logs).get(&(id.clone(), stream)).cloned();
        // Past the window, or never this session's: rmcp answers an empty stream, which ends an
        // EventSource's retries.
        let log = log.ok_or(SessionError::ChannelClosed(Some(stream)))?;
        let from = {
            let written = log.written.borrow();
            let position = written
                .events
                .iter()
                .position(|e| e.event_id.as_deref() == Some(last_event_id.as_str()));
            position.ok_or(SessionError::InvalidEventId)? + 1
        };
        Ok(self.read(log, from).right_stream())
    }
}
