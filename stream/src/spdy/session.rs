//! A SPDY/3.1 session: many streams over one connection. One task reads
//! frames and hands each stream's data to it, one task writes (header
//! blocks are compressed in the order they go out). A stream the peer
//! opens is answered with SYN_REPLY before it is handed over, so the
//! peer's data never precedes the reply it waits for.
//!
//! There is no flow control: Kubernetes' SPDY library neither sends
//! WINDOW_UPDATE nor honours it, so windows are ignored both ways and a
//! stream's unread data stops the reader once its queue is full.

use super::frame::{self, header, rst, Codec, Frame, Headers, FLAG_FIN};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

/// Frames of data queued per stream before the reader waits.
const STREAM_QUEUE: usize = 16;

/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 64;

/// Streams open at once on one session; more are refused.
pub const MAX_STREAMS: usize = 1024;

/// The largest data frame written: a larger send is cut.
pub const MAX_DATA_FRAME: usize = 128 * 1024;

/// Which side of the connection this is: the client opens odd streams,
/// the server even ones (it opens none here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SessionError {
    #[error("the SPDY session is closed")]
    Closed,
    #[error("the peer reset stream {0} (status {1})")]
    Reset(u32, u32),
    #[error("stream {0} is already finished")]
    Finished(u32),
}

struct Slot {
    /// Where the peer's data goes; dropped at the peer's FIN.
    data: Option<mpsc::Sender<Bytes>>,
    /// For a stream this side opened: the peer's SYN_REPLY.
    reply: Option<oneshot::Sender<Result<Headers, SessionError>>>,
    /// This side sent FIN (or reset).
    local_done: bool,
    /// The peer sent FIN (or reset).
    remote_done: bool,
    /// The peer reset it: sends fail.
    reset: Option<u32>,
}

struct Shared {
    out: mpsc::Sender<Frame>,
    /// Held from taking a stream id to queueing its SYN_STREAM: streams go
    /// out in the order of their ids, as the peer requires.
    opening: tokio::sync::Mutex<()>,
    slots: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    closed_notify: Notify,
    /// The highest stream the peer opened (for GOAWAY).
    last_peer: AtomicU32,
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            let mut slots = self.slots();
            for (_, slot) in slots.drain() {
                if let Some(reply) = slot.reply {
                    let _ = reply.send(Err(SessionError::Closed));
                }
            }
            self.closed_notify.notify_waiters();
        }
    }

    /// Forgets a stream both sides are done with.
    fn settle(&self, id: u32) {
        let mut slots = self.slots();
        if slots
            .get(&id)
            .is_some_and(|s| s.local_done && s.remote_done)
        {
            slots.remove(&id);
        }
    }
}

/// One SPDY session. Dropping it ends it (GOAWAY once what is queued is
/// out).
pub struct Session {
    shared: Arc<Shared>,
    incoming: mpsc::Receiver<Stream>,
}

/// The receiving half of a stream and its headers.
pub struct Stream {
    pub id: u32,
    /// The headers it was opened with (or, for one this side opened, the
    /// peer's reply).
    pub headers: Headers,
    rx: mpsc::Receiver<Bytes>,
    tx: StreamSender,
}

/// The sending half of a stream: cheap to clone; sends FIN when the last
/// clone is dropped.
#[derive(Clone)]
pub struct StreamSender {
    inner: Arc<SenderInner>,
}

struct SenderInner {
    id: u32,
    shared: Arc<Shared>,
}

impl Drop for SenderInner {
    fn drop(&mut self) {
        let fin = {
            let mut slots = self.shared.slots();
            match slots.get_mut(&self.id) {
                Some(s) if !s.local_done => {
                    s.local_done = true;
                    true
                }
                _ => false,
            }
        };
        if fin {
            let frame = Frame::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            };
            // A full queue must not lose the FIN: it waits its turn.
            if let Err(mpsc::error::TrySendError::Full(frame)) = self.shared.out.try_send(frame) {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let out = self.shared.out.clone();
                    rt.spawn(async move {
                        let _ = out.send(frame).await;
                    });
                }
            }
            self.shared.settle(self.id);
        }
    }
}

impl Session {
    /// Starts a session over `io` (after the HTTP upgrade).
    pub fn new<IO>(io: IO, role: Role) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(WRITE_QUEUE);
        let shared = Arc::new(Shared {
            out,
            opening: tokio::sync::Mutex::new(()),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(match role {
                Role::Client => 1,
                Role::Server => 2,
            }),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            last_peer: AtomicU32::new(0),
        });
        let (incoming_tx, incoming) = mpsc::channel(64);
        // One codec per direction would also do; the contexts are
        // independent, so each task owns its half of one.
        tokio::spawn(write_loop(write, out_rx, shared.clone()));
        tokio::spawn(read_loop(read, role, shared.clone(), incoming_tx));
        Session { shared, incoming }
    }

    /// The next stream the peer opened, already answered; `None` once the
    /// session is over.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Opens a stream with `headers` and waits for the peer's reply.
    pub async fn open(&self, headers: Headers) -> Result<Stream, SessionError> {
        let opening = self.shared.opening.lock().await;
        let id = self.shared.next_id.fetch_add(2, Ordering::SeqCst);
        let (data_tx, rx) = mpsc::channel(STREAM_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(SessionError::Closed);
            }
            self.shared.slots().insert(
                id,
                Slot {
                    data: Some(data_tx),
                    reply: Some(reply_tx),
                    local_done: false,
                    remote_done: false,
                    reset: None,
                },
            );
        }
        let syn = Frame::SynStream {
            stream: id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers,
        };
        self.shared
            .out
            .send(syn)
            .await
            .map_err(|_| SessionError::Closed)?;
        drop(opening);
        let reply = reply_rx.await.map_err(|_| SessionError::Closed)??;
        Ok(Stream {
            id,
            headers: reply,
            rx,
            tx: StreamSender::new(id, self.shared.clone()),
        })
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Waits until the connection is gone.
    pub async fn closed(&self) {
        closed(&self.shared).await
    }

    /// A handle that can wait for the end and close the session.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            shared: self.shared.clone(),
        }
    }

    /// Says GOAWAY; the connection ends once what is queued is written.
    pub async fn go_away(&self) {
        self.handle().go_away().await
    }
}

impl Drop for Session {
    /// A session let go of is over: GOAWAY, after what is queued.
    fn drop(&mut self) {
        let away = Frame::GoAway {
            last_good: self.shared.last_peer.load(Ordering::SeqCst),
            status: frame::goaway::OK,
        };
        if let Err(mpsc::error::TrySendError::Full(away)) = self.shared.out.try_send(away) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let out = self.shared.out.clone();
                rt.spawn(async move {
                    let _ = out.send(away).await;
                });
            }
        }
    }
}

/// Waits for the end of a session and can end it, apart from the
/// [`Session`] that accepts streams.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
}

impl SessionHandle {
    pub async fn closed(&self) {
        closed(&self.shared).await
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Sends GOAWAY and ends the session (the writer shuts the connection
    /// once GOAWAY is out).
    pub async fn go_away(&self) {
        let last_good = self.shared.last_peer.load(Ordering::SeqCst);
        let _ = self
            .shared
            .out
            .send(Frame::GoAway {
                last_good,
                status: frame::goaway::OK,
            })
            .await;
    }
}

async fn closed(shared: &Shared) {
    loop {
        let wait = shared.closed_notify.notified();
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        wait.await;
    }
}

impl StreamSender {
    fn new(id: u32, shared: Arc<Shared>) -> StreamSender {
        StreamSender {
            inner: Arc::new(SenderInner { id, shared }),
        }
    }

    pub fn id(&self) -> u32 {
        self.inner.id
    }

    fn check(&self) -> Result<(), SessionError> {
        let id = self.inner.id;
        match self.inner.shared.slots().get(&id) {
            None => Err(SessionError::Closed),
            Some(s) if s.reset.is_some() => {
                Err(SessionError::Reset(id, s.reset.unwrap_or_default()))
            }
            Some(s) if s.local_done => Err(SessionError::Finished(id)),
            Some(_) => Ok(()),
        }
    }

    /// Sends `data`, cut into frames of at most [`MAX_DATA_FRAME`].
    pub async fn send(&self, mut data: Bytes) -> Result<(), SessionError> {
        while !data.is_empty() {
            self.check()?;
            let piece = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.inner
                .shared
                .out
                .send(Frame::Data {
                    stream: self.inner.id,
                    fin: false,
                    data: piece,
                })
                .await
                .map_err(|_| SessionError::Closed)?;
        }
        Ok(())
    }

    /// Half-closes: this side sends no more (FIN).
    pub async fn finish(&self) -> Result<(), SessionError> {
        let id = self.inner.id;
        {
            let mut slots = self.inner.shared.slots();
            match slots.get_mut(&id) {
                Some(s) if !s.local_done => s.local_done = true,
                _ => return Ok(()),
            }
        }
        let sent = self
            .inner
            .shared
            .out
            .send(Frame::Data {
                stream: id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
        self.inner.shared.settle(id);
        sent.map_err(|_| SessionError::Closed)
    }

    /// Ends the stream both ways (RST_STREAM with `status`).
    pub async fn reset(&self, status: u32) {
        let id = self.inner.id;
        self.inner.shared.slots().remove(&id);
        let _ = self
            .inner
            .shared
            .out
            .send(Frame::RstStream { stream: id, status })
            .await;
    }
}

impl Stream {
    /// The stream's next piece of data; `None` once the peer finished
    /// it, reset it, or the session ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Reads everything until the peer finishes, at most `limit` bytes
    /// (the rest is dropped).
    pub async fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(b) = self.recv().await {
            let room = limit.saturating_sub(all.len());
            all.extend_from_slice(&b[..b.len().min(room)]);
        }
        all
    }

    pub fn sender(&self) -> StreamSender {
        self.tx.clone()
    }

    /// Parts the halves: data from the peer, and the sender.
    pub fn split(self) -> (mpsc::Receiver<Bytes>, StreamSender) {
        (self.rx, self.tx)
    }

    /// The value of one of its headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub async fn send(&self, data: Bytes) -> Result<(), SessionError> {
        self.tx.send(data).await
    }

    pub async fn finish(&self) -> Result<(), SessionError> {
        self.tx.finish().await
    }
}

/// DATA payloads at least this large are written from their own buffers
/// (a vectored write) instead of being copied after their header.
const WRITE_IN_PLACE: usize = 8 * 1024;

async fn write_loop<W: AsyncWrite>(
    write: W,
    mut frames: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
) {
    tokio::pin!(write);
    let mut codec = Codec::new();
    let mut small = BytesMut::with_capacity(64 * 1024);
    let mut parts: Vec<Bytes> = Vec::new();
    let mut going_away = false;
    'out: while let Some(first) = frames.recv().await {
        let mut next = Some(first);
        let mut queued = 0;
        // Everything queued goes out in one write.
        while let Some(f) = next.take() {
            going_away |= matches!(f, Frame::GoAway { .. });
            let encoded = match f {
                Frame::Data { stream, fin, data } if data.len() >= WRITE_IN_PLACE => {
                    queued += data.len();
                    Codec::encode_data_header(stream, fin, data.len(), &mut small).map(|()| {
                        parts.push(small.split().freeze());
                        parts.push(data);
                    })
                }
                other => codec.encode(&other, &mut small),
            };
            if let Err(e) = encoded {
                tracing::debug!(error = %e, "SPDY: a frame that cannot be written");
            }
            if going_away || queued + small.len() >= 512 * 1024 || parts.len() >= 64 {
                break;
            }
            next = frames.try_recv().ok();
        }
        if !small.is_empty() {
            parts.push(small.split().freeze());
        }
        if write_all_parts(&mut write, &mut parts).await.is_err() || write.flush().await.is_err() {
            break 'out;
        }
        if going_away {
            break;
        }
    }
    let _ = write.shutdown().await;
    shared.close();
}

/// Writes every part, in order, with as few system calls as it takes.
async fn write_all_parts<W: AsyncWrite + ?Sized>(
    write: &mut std::pin::Pin<&mut W>,
    parts: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    loop {
        while parts.get(first).is_some_and(|p| p.is_empty()) {
            first += 1;
        }
        if first >= parts.len() {
            break;
        }
        let slices: Vec<std::io::IoSlice<'_>> = parts[first..]
            .iter()
            .take(64)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut n = write.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(part) = parts.get_mut(first) else {
                break;
            };
            let take = n.min(part.len());
            part.advance(take);
            n -= take;
            if part.is_empty() {
                first += 1;
            }
        }
    }
    parts.clear();
    Ok(())
}

async fn read_loop<R: AsyncRead>(
    read: R,
    role: Role,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
) {
    tokio::pin!(read);
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => {
                    if handle(f, role, &shared, &incoming).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY: a bad frame ends the session");
                    let _ = shared
                        .out
                        .send(Frame::GoAway {
                            last_good: shared.last_peer.load(Ordering::SeqCst),
                            status: frame::goaway::PROTOCOL_ERROR,
                        })
                        .await;
                    break 'read;
                }
            }
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    shared.close();
}

/// Handles one frame from the peer; an error ends the session.
async fn handle(
    f: Frame,
    role: Role,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<Stream>,
) -> Result<(), ()> {
    let send = |f: Frame| async { shared.out.send(f).await.map_err(|_| ()) };
    match f {
        Frame::SynStream {
            stream: id,
            flags,
            headers,
            ..
        } => {
            let peer_parity = match role {
                Role::Server => 1,
                Role::Client => 0,
            };
            if id % 2 != peer_parity || id <= shared.last_peer.load(Ordering::SeqCst) {
                return send(Frame::RstStream {
                    stream: id,
                    status: rst::PROTOCOL_ERROR,
                })
                .await;
            }
            shared.last_peer.store(id, Ordering::SeqCst);
            let (data_tx, rx) = mpsc::channel(STREAM_QUEUE);
            let refused = {
                let mut slots = shared.slots();
                let full = slots.len() >= MAX_STREAMS;
                if !full {
                    let fin = flags & FLAG_FIN != 0;
                    slots.insert(
                        id,
                        Slot {
                            data: (!fin).then_some(data_tx),
                            reply: None,
                            local_done: flags & frame::FLAG_UNIDIRECTIONAL != 0,
                            remote_done: fin,
                            reset: None,
                        },
                    );
                }
                full
            };
            if refused {
                return send(Frame::RstStream {
                    stream: id,
                    status: rst::REFUSED_STREAM,
                })
                .await;
            }
            send(Frame::SynReply {
                stream: id,
                fin: false,
                headers: Vec::new(),
            })
            .await?;
            let stream = Stream {
                id,
                headers,
                rx,
                tx: StreamSender::new(id, shared.clone()),
            };
            if incoming.send(stream).await.is_err() {
                // Nobody accepts streams any more: the stream's sender
                // was dropped with it, which finished it.
            }
            Ok(())
        }
        Frame::SynReply {
            stream: id,
            fin,
            headers,
        } => {
            let mut slots = shared.slots();
            if let Some(slot) = slots.get_mut(&id) {
                if let Some(reply) = slot.reply.take() {
                    let _ = reply.send(Ok(headers));
                }
                if fin {
                    slot.data = None;
                    slot.remote_done = true;
                }
            }
            drop(slots);
            if fin {
                shared.settle(id);
            }
            Ok(())
        }
        Frame::Data {
            stream: id,
            fin,
            data,
        } => {
            let target = {
                let slots = shared.slots();
                match slots.get(&id) {
                    Some(s) => s.data.clone(),
                    None => {
                        drop(slots);
                        // Data for a stream already gone (reset here, or
                        // never opened): ignored, as the peer may not have
                        // seen the reset yet.
                        return Ok(());
                    }
                }
            };
            if let Some(tx) = target {
                if !data.is_empty() {
                    // The stream's reader may be gone: its data is dropped.
                    let _ = tx.send(data).await;
                }
            }
            if fin {
                if let Some(s) = shared.slots().get_mut(&id) {
                    s.data = None;
                    s.remote_done = true;
                }
                shared.settle(id);
            }
            Ok(())
        }
        Frame::RstStream { stream: id, status } => {
            let mut slots = shared.slots();
            if let Some(mut slot) = slots.remove(&id) {
                if let Some(reply) = slot.reply.take() {
                    let _ = reply.send(Err(SessionError::Reset(id, status)));
                }
                // Kept, reset, so that sends fail with the reason.
                slot.data = None;
                slot.reset = Some(status);
                slot.local_done = true;
                slot.remote_done = true;
                slots.insert(id, slot);
                drop(slots);
                // Forgotten shortly: a reset stream's sender fails from
                // now on; the entry goes when its sender drops.
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    shared.slots().remove(&id);
                });
            }
            Ok(())
        }
        Frame::Ping { id } => {
            let ours = match role {
                Role::Client => 1,
                Role::Server => 0,
            };
            if id % 2 != ours {
                send(Frame::Ping { id }).await?;
            }
            Ok(())
        }
        Frame::GoAway { .. } => Err(()),
        Frame::Headers { .. }
        | Frame::Settings { .. }
        | Frame::WindowUpdate { .. }
        | Frame::Unknown { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A SYN_STREAM for `stream`, encoded as a raw peer sends it.
    fn syn(codec: &mut Codec, stream: u32) -> BytesMut {
        let mut out = BytesMut::new();
        codec
            .encode(
                &Frame::SynStream {
                    stream,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![],
                },
                &mut out,
            )
            .expect("encode");
        out
    }

    fn pair() -> (Session, Session) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Session::new(a, Role::Client), Session::new(b, Role::Server))
    }

    /// A writer that takes at most 5 bytes a call, from any slices.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut left = 5;
            for b in bufs {
                let n = b.len().min(left);
                self.0.extend_from_slice(&b[..n]);
                left -= n;
            }
            std::task::Poll::Ready(Ok(5 - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn parts_written_a_few_bytes_at_a_time_arrive_whole_and_in_order() {
        let mut parts: Vec<Bytes> = ["ab", "", "cdefghij", "k", "lmnopqrstuvwxyz", ""]
            .into_iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let mut w = Trickle(Vec::new());
        let mut pinned = std::pin::Pin::new(&mut w);
        write_all_parts(&mut pinned, &mut parts)
            .await
            .expect("written");
        assert_eq!(w.0, b"abcdefghijklmnopqrstuvwxyz");
        assert!(parts.is_empty());
    }

    #[tokio::test]
    async fn streams_carry_data_both_ways_and_half_close() {
        let (client, mut server) = pair();
        let opening = tokio::spawn(async move {
            let s = client.open(h(&[("streamType", "stdin")])).await;
            (client, s)
        });
        let mut at_server = server.accept().await.expect("a stream");
        assert_eq!(at_server.header("streamtype"), Some("stdin"));
        assert_eq!(at_server.id, 1);
        let (client, at_client) = opening.await.expect("join");
        let mut at_client = at_client.expect("opened");
        at_client
            .send(Bytes::from(vec![7u8; 100_000]))
            .await
            .expect("send");
        at_client.finish().await.expect("fin");
        let got = at_server.read_to_end(1 << 20).await;
        assert_eq!(got.len(), 100_000);
        // The other way still works after the client's FIN.
        at_server
            .send(Bytes::from_static(b"back"))
            .await
            .expect("send");
        at_server.finish().await.expect("fin");
        assert_eq!(at_client.read_to_end(64).await, b"back");
        // A second stream gets the next odd id.
        let second = tokio::spawn(async move { client.open(vec![]).await.map(|s| s.id) });
        let s2 = server.accept().await.expect("second");
        assert_eq!(s2.id, 3);
        assert_eq!(second.await.expect("join"), Ok(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn streams_opened_at_once_reach_the_peer_in_id_order() {
        let (client, mut server) = pair();
        let client = Arc::new(client);
        let opens: Vec<_> = (0..500)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.open(vec![]).await.map(|s| s.id) })
            })
            .collect();
        let mut ids = Vec::new();
        for _ in 0..500 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), server.accept());
            let s = next.await.unwrap_or_else(|_| {
                let gap = ids.windows(2).find(|w| w[1] != w[0] + 2);
                panic!(
                    "stream {} of 500 never came; first gap {gap:?}; first {:?}",
                    ids.len() + 1,
                    &ids[..5]
                )
            });
            ids.push(s.expect("stream").id);
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            ids, sorted,
            "the server saw ids out of order (and refused some)"
        );
        for o in opens {
            assert!(o.await.expect("join").is_ok());
        }
    }

    #[tokio::test]
    async fn pings_are_answered_and_resets_end_a_stream() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut server = Session::new(b, Role::Server);
        let (mut read, mut write) = tokio::io::split(a);
        let mut codec = Codec::new();
        let mut out = BytesMut::new();
        for f in [
            Frame::Ping { id: 1 },
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: vec![],
            },
            Frame::RstStream {
                stream: 1,
                status: rst::CANCEL,
            },
        ] {
            codec.encode(&f, &mut out).expect("encode");
        }
        write.write_all(&out).await.expect("write");
        let mut stream = server.accept().await.expect("stream");
        assert_eq!(stream.recv().await, None, "a reset stream ends");
        // What the server wrote: the ping echoed, then the reply.
        let mut got = Vec::new();
        let mut buf = BytesMut::new();
        while got.len() < 2 {
            read.read_buf(&mut buf).await.expect("read");
            while let Some(f) = codec.decode(&mut buf).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got[0], Frame::Ping { id: 1 });
        assert!(matches!(got[1], Frame::SynReply { stream: 1, .. }));
        let sent = stream.send(Bytes::from_static(b"x")).await;
        assert!(matches!(
            sent,
            Err(SessionError::Reset(1, rst::CANCEL)) | Err(SessionError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_bad_stream_id_is_refused_and_garbage_ends_the_session() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = Session::new(b, Role::Server);
        let (mut read, mut write) = tokio::io::split(a);
        let mut codec = Codec::new();
        // An even id is the server's to use.
        write.write_all(&syn(&mut codec, 2)).await.expect("write");
        let mut buf = BytesMut::new();
        let f = loop {
            read.read_buf(&mut buf).await.expect("read");
            if let Some(f) = codec.decode(&mut buf).expect("decode") {
                break f;
            }
        };
        assert_eq!(
            f,
            Frame::RstStream {
                stream: 2,
                status: rst::PROTOCOL_ERROR
            }
        );
        write
            .write_all(&[0x80, 9, 0, 1, 0, 0, 0, 0])
            .await
            .expect("write");
        tokio::time::timeout(std::time::Duration::from_secs(5), server.closed())
            .await
            .expect("the session ends");
    }

    #[tokio::test]
    async fn a_sender_dropped_while_the_queue_is_full_still_says_fin() {
        let (a, b) = tokio::io::duplex(1024);
        let mut server = Session::new(b, Role::Server);
        let (mut read, mut write) = tokio::io::split(a);
        let mut codec = Codec::new();
        write.write_all(&syn(&mut codec, 1)).await.expect("write");
        let stream = server.accept().await.expect("stream");
        // Nobody reads the server's output: its queue fills.
        let sender = stream.sender();
        loop {
            let send = sender.send(Bytes::from(vec![0u8; 1024]));
            if tokio::time::timeout(std::time::Duration::from_millis(50), send)
                .await
                .is_err()
            {
                break;
            }
        }
        drop(sender);
        drop(stream);
        // Read everything: the FIN must come.
        let mut buf = BytesMut::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            while let Some(f) = codec.decode(&mut buf).expect("decode") {
                if matches!(
                    f,
                    Frame::Data {
                        stream: 1,
                        fin: true,
                        ..
                    }
                ) {
                    return;
                }
            }
            let n = tokio::time::timeout_at(deadline, read.read_buf(&mut buf))
                .await
                .expect("the FIN before the deadline")
                .expect("read");
            assert!(n > 0, "the connection ended without the FIN");
        }
    }

    #[tokio::test]
    async fn the_end_of_the_connection_ends_every_stream() {
        let (client, mut server) = pair();
        let opening = tokio::spawn(async move {
            let s = client.open(vec![]).await;
            (client, s)
        });
        let mut s = server.accept().await.expect("stream");
        let (client, _c) = opening.await.expect("join");
        drop(client);
        drop(_c);
        // The client's sender dropped: FIN.
        assert_eq!(s.recv().await, None);
    }
}
