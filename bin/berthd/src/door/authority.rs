//! Every `:authority` a real gRPC client sends on a unix socket, accepted.
//!
//! A unix socket has no authority, and clients disagree on what to send for
//! one: grpc-go sends `localhost`, grpc-core (Python, Ruby, C++) the socket
//! path percent-encoded (`run%2Fberth%2Fberth.sock`), grpc-java the bare
//! path. h2, under tonic, answers any value that is not a valid URI
//! authority with RST_STREAM PROTOCOL_ERROR, so those clients could not
//! make a single call.
//!
//! [`Authorities`] sits between the socket and h2 and reads what the client
//! sends as HTTP/2 frames: every header block (HEADERS and its
//! CONTINUATIONs) is decoded and written anew, with an authority that is
//! not valid replaced by `localhost`; every other frame passes through
//! untouched. Blocks are written anew as literals that never touch the
//! HPACK dynamic table, so h2's decoder and the client's encoder can never
//! disagree about it, whatever the client indexed. Bytes that are not
//! HTTP/2 pass through as they are, for h2 to refuse.

use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may have: rewritten blocks
/// are cut to it, so they fit whatever h2 announced.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (h2 would refuse
/// it anyway; this bounds what a client can make berthd hold).
const MAX_BLOCK: usize = 1 << 20;
/// What an authority that h2 would refuse becomes.
const LOCALHOST: &[u8] = b"localhost";

enum State {
    /// Bytes of the client preface still to come.
    Preface(usize),
    /// At a frame boundary.
    FrameHeader,
    /// Inside a frame that passes through: bytes left.
    Payload(usize),
    /// Not HTTP/2: everything passes through.
    Raw,
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A client connection whose header blocks carry authorities h2 accepts.
pub struct Authorities<IO> {
    io: IO,
    state: State,
    /// Read from the client, not yet looked at.
    raw: BytesMut,
    /// Looked at, for h2 to read.
    ready: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    block: Option<Block>,
    eof: bool,
    /// Whether a replacement was logged on this connection already.
    logged: bool,
}

impl<IO> Authorities<IO> {
    pub fn new(io: IO) -> Self {
        Authorities {
            io,
            state: State::Preface(PREFACE.len()),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            decoder: loona_hpack::Decoder::new(),
            block: None,
            eof: false,
            logged: false,
        }
    }

    /// Moves what can be decided from `raw` to `ready`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Raw => {
                    self.pass(self.raw.len());
                    return Ok(());
                }
                State::Preface(left) => {
                    let n = left.min(self.raw.len());
                    let offset = PREFACE.len() - left;
                    if self.raw[..n] != PREFACE[offset..offset + n] {
                        self.state = State::Raw;
                        continue;
                    }
                    self.pass(n);
                    if n < left {
                        self.state = State::Preface(left - n);
                        return Ok(());
                    }
                    self.state = State::FrameHeader;
                }
                State::Payload(left) => {
                    let n = left.min(self.raw.len());
                    self.pass(n);
                    if n < left {
                        self.state = State::Payload(left - n);
                        return Ok(());
                    }
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if self.raw.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]);
                    let len = len as usize;
                    let kind = self.raw[3];
                    let in_block =
                        kind == HEADERS || (kind == CONTINUATION && self.block.is_some());
                    if !in_block {
                        self.pass(FRAME_HEADER);
                        self.state = State::Payload(len);
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(invalid("a header frame larger than berthd accepts"));
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        self.raw.reserve(FRAME_HEADER + len - self.raw.len());
                        return Ok(());
                    }
                    let header = self.raw.split_to(FRAME_HEADER);
                    let payload = self.raw.split_to(len);
                    let flags = header[4];
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                    self.header_frame(kind, flags, stream, &payload)?;
                }
            }
        }
    }

    fn pass(&mut self, n: usize) {
        self.ready.extend_from_slice(&self.raw.split_to(n));
    }

    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        if kind == HEADERS {
            let mut rest = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                pad = *rest
                    .first()
                    .ok_or_else(|| invalid("a padded frame without padding"))?
                    as usize;
                rest = &rest[1..];
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let p: [u8; 5] = rest
                    .get(..5)
                    .and_then(|p| p.try_into().ok())
                    .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
                priority = Some(p);
                rest = &rest[5..];
            }
            let end = rest
                .len()
                .checked_sub(pad)
                .ok_or_else(|| invalid("padding longer than its frame"))?;
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: rest[..end].to_vec(),
            });
        } else if let Some(block) = self.block.as_mut() {
            if block.fragment.len() + payload.len() > MAX_BLOCK {
                return Err(invalid("a header block larger than berthd accepts"));
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.rewrite(block)?;
            }
        }
        Ok(())
    }

    /// Decodes a whole block and writes it anew into `ready`.
    fn rewrite(&mut self, block: Block) -> io::Result<()> {
        let mut fields = Vec::new();
        let mut replaced = None;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                    replaced = Some(String::from_utf8_lossy(&value).into_owned());
                    fields.push((name.into_owned(), LOCALHOST.to_vec()));
                } else {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| invalid(&format!("a header block that does not decode: {e:?}")))?;
        if let Some(was) = replaced {
            if !self.logged {
                self.logged = true;
                tracing::debug!(authority = %was, "a client's :authority taken as localhost");
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            // Literal header field without indexing, new name (RFC 7541
            // 6.2.2): the dynamic table is left alone.
            encoded.push(0);
            string_literal(&mut encoded, name);
            string_literal(&mut encoded, value);
        }
        self.frames(&block, &encoded);
        Ok(())
    }

    /// Frames `encoded` as one HEADERS and as many CONTINUATIONs as needed.
    fn frames(&mut self, block: &Block, encoded: &[u8]) {
        let first_room = MAX_FRAME - block.priority.map_or(0, |p| p.len());
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = more;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, block.stream, &[chunk]);
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = (len as u32).to_be_bytes();
        self.ready.put_slice(&len[1..]);
        self.ready.put_u8(kind);
        self.ready.put_u8(flags);
        self.ready.put_u32(stream);
        for p in parts {
            self.ready.put_slice(p);
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("http/2 client: {what}"))
}

/// An HPACK string literal, not Huffman-coded: a 7-bit prefix length, then
/// the bytes.
fn string_literal(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1); `high` holds
/// the bits above the prefix in the first byte.
fn integer(out: &mut Vec<u8>, mut v: usize, n: u8, high: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

impl<IO: AsyncRead + Unpin> AsyncRead for Authorities<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // Whatever is left is a cut-off frame: h2 sees it and
                    // then the end.
                    this.eof = true;
                    let left = this.raw.split();
                    this.ready.extend_from_slice(&left);
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    if let Err(e) = this.process() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Authorities<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `input` in `step`-byte pieces and reads all that comes out.
    async fn through(input: Vec<u8>, step: usize) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 22);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(step.max(1)) {
                client.write_all(piece).await?;
            }
            client.shutdown().await
        });
        let mut out = Vec::new();
        let read = Authorities::new(server).read_to_end(&mut out).await;
        writer.await.expect("writer")?;
        read.map(|_| out)
    }

    /// Splits the bytes after the preface into frames.
    fn frames_of(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            (
                "user-agent",
                "grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)",
            ),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut loona_hpack::Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    #[tokio::test]
    async fn authorities_h2_refuses_become_localhost_and_the_rest_passes() {
        let mut enc = loona_hpack::Encoder::new();
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        // Stream 1: grpc-core's percent-encoded socket path, padded.
        let block = encode(&mut enc, &request("run%2Fberth%2Fberth.sock"));
        let mut padded = vec![3];
        padded.extend_from_slice(&block);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &padded));
        input.extend(&data);
        // Stream 3: a bare path with priority, split over a CONTINUATION;
        // the client's encoder now refers to its dynamic table.
        let block = encode(&mut enc, &request("/run/berth/berth.sock"));
        let (a, b) = block.split_at(block.len() / 2);
        let mut prio = vec![0, 0, 0, 0, 15];
        prio.extend_from_slice(a);
        input.extend(frame(HEADERS, PRIORITY, 3, &prio));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        // Stream 5: grpc-go's localhost, indexed entirely.
        let block = encode(&mut enc, &request("localhost"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &block));

        for step in [1, 7, 4096] {
            let out = through(input.clone(), step).await.expect("through");
            let frames = frames_of(&out);
            assert_eq!(frames[0], (0x4, 0, 0, vec![]), "settings pass");
            let mut dec = loona_hpack::Decoder::new();
            let headers: Vec<_> = frames.iter().filter(|f| f.0 == HEADERS).collect();
            assert_eq!(headers.len(), 3, "step {step}");
            for (i, (stream, want)) in [(1, "localhost"), (3, "localhost"), (5, "localhost")]
                .into_iter()
                .enumerate()
            {
                let (_, flags, s, payload) = headers[i];
                assert_eq!(*s, stream);
                assert_eq!(flags & END_HEADERS, END_HEADERS);
                assert_eq!(flags & PADDED, 0);
                let payload = if flags & PRIORITY != 0 {
                    assert_eq!(payload[..5], [0, 0, 0, 0, 15]);
                    &payload[5..]
                } else {
                    &payload[..]
                };
                let fields = dec.decode(payload).expect("decodes");
                assert_eq!(fields, request(want), "stream {stream}");
                assert_eq!(flags & END_STREAM != 0, stream == 5);
            }
            assert!(frames.contains(&(0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0])));
        }
    }

    #[tokio::test]
    async fn large_blocks_are_cut_to_the_smallest_frame_size() {
        let mut fields = request("a b");
        fields.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block =
            loona_hpack::Encoder::new().encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block[..10_000]));
        input.extend(frame(CONTINUATION, 0, 1, &block[10_000..20_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[20_000..]));
        let frames = frames_of(&through(input, 3000).await.expect("through"));
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames[0].0, HEADERS);
        assert!(frames[1..].iter().all(|f| f.0 == CONTINUATION));
        assert_eq!(frames.last().expect("last").1, END_HEADERS);
        let whole: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let decoded = loona_hpack::Decoder::new().decode(&whole).expect("decodes");
        assert_eq!(decoded[3], (b":authority".to_vec(), LOCALHOST.to_vec()));
        assert_eq!(decoded[7].1.len(), 40_000);
    }

    #[tokio::test]
    async fn what_is_not_http2_or_not_decodable_is_left_to_h2() {
        let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(junk.clone(), 5).await.expect("raw"), junk);

        let mut input = PREFACE.to_vec();
        // An index no table has.
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0x7f]));
        let err = through(input, 64).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
        assert!(through(input, 64).await.is_err(), "padding past the end");

        // A cut-off frame is handed on as it is.
        let mut input = PREFACE.to_vec();
        let cut = frame(HEADERS, END_HEADERS, 1, &[0x82, 0x86]);
        input.extend_from_slice(&cut[..10]);
        let out = through(input.clone(), 3).await.expect("cut");
        assert_eq!(out, input);
    }

    #[test]
    fn integers_use_their_prefix() {
        let mut out = Vec::new();
        integer(&mut out, 10, 5, 0);
        assert_eq!(out, [10]);
        out.clear();
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
