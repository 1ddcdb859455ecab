//! SPDY/3.1 frames, without I/O: [`Codec::decode`] takes whole frames off
//! the front of a buffer, [`Codec::encode`] appends one. Header blocks are
//! zlib streams primed with SPDY/3's dictionary, one per direction, each
//! block ending in a sync flush, so the codec holds both contexts and must
//! see every frame of its direction, in order.

use super::dictionary::dictionary;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;

/// Flags: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM flag: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// Control frame types.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Bytes in every frame's header.
pub const HEADER_LEN: usize = 8;

/// The largest payload a frame's 24-bit length can name.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// The largest header block accepted, compressed or not: a peer cannot
/// make the decompressor grow without bound.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// A header block: lowercase names, values (several joined by NUL).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (names are compared case-blind).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// Entries: (flags, id, value).
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame of a type this codec does not know: skipped, as
    /// the protocol asks.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("{what}: {len} bytes is too short")]
    Short { what: &'static str, len: usize },
    #[error("a header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("a header block that does not decompress: {0}")]
    Compression(String),
    #[error("a malformed header block: {0}")]
    HeaderBlock(&'static str),
    #[error("a payload of {0} bytes does not fit a frame")]
    TooLarge(usize),
    #[error("stream id 0 on a frame that needs a stream")]
    StreamZero,
}

/// Both zlib contexts of one session.
pub struct Codec {
    deflate: Compress,
    inflate: Decompress,
    inflate_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

const STREAM_MASK: u32 = 0x7fff_ffff;

impl Codec {
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream.
        let _ = deflate.set_dictionary(dictionary());
        Codec {
            deflate,
            inflate: Decompress::new(true),
            inflate_primed: false,
        }
    }

    /// Takes one whole frame off the front of `buf`, or answers `None`
    /// when it does not hold one yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(HEADER_LEN);
        let mut body = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & STREAM_MASK;
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, what: &'static str| {
            if len < n {
                Err(FrameError::Short { what, len })
            } else {
                Ok(())
            }
        };
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            kind::SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                let stream = body.get_u32() & STREAM_MASK;
                let associated = body.get_u32() & STREAM_MASK;
                let priority = body.get_u8() >> 5;
                let _slot = body.get_u8();
                nonzero(stream)?;
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    flags,
                    headers: self.inflate_headers(&body)?,
                }
            }
            kind::SYN_REPLY => {
                need(4, "SYN_REPLY")?;
                let stream = body.get_u32() & STREAM_MASK;
                nonzero(stream)?;
                Frame::SynReply {
                    stream,
                    fin,
                    headers: self.inflate_headers(&body)?,
                }
            }
            kind::HEADERS => {
                need(4, "HEADERS")?;
                let stream = body.get_u32() & STREAM_MASK;
                nonzero(stream)?;
                Frame::Headers {
                    stream,
                    fin,
                    headers: self.inflate_headers(&body)?,
                }
            }
            kind::RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream {
                    stream: body.get_u32() & STREAM_MASK,
                    status: body.get_u32(),
                }
            }
            kind::SETTINGS => {
                need(4, "SETTINGS")?;
                let count = body.get_u32() as usize;
                if body.remaining() < count.saturating_mul(8) {
                    return Err(FrameError::Short {
                        what: "SETTINGS entries",
                        len,
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = body.get_u32();
                        ((word >> 24) as u8, word & 0x00ff_ffff, body.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            kind::PING => {
                need(4, "PING")?;
                Frame::Ping { id: body.get_u32() }
            }
            kind::GOAWAY => {
                need(4, "GOAWAY")?;
                let last_good = body.get_u32() & STREAM_MASK;
                // SPDY/2 peers leave the status out.
                let status = if body.remaining() >= 4 {
                    body.get_u32()
                } else {
                    goaway::OK
                };
                Frame::GoAway { last_good, status }
            }
            kind::WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream: body.get_u32() & STREAM_MASK,
                    delta: body.get_u32() & STREAM_MASK,
                }
            }
            other => Frame::Unknown { kind: other },
        };
        Ok(Some(frame))
    }

    /// Appends the 8-byte header of a DATA frame carrying `len` bytes;
    /// its payload is written after it as it is.
    pub fn encode_data_header(
        stream: u32,
        fin: bool,
        len: usize,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let len = fit(len)?;
        out.reserve(HEADER_LEN);
        out.put_u32(stream & STREAM_MASK);
        out.put_u32(u32::from(flag(fin)) << 24 | len);
        Ok(())
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data { stream, fin, data } => {
                Codec::encode_data_header(*stream, *fin, data.len(), out)?;
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                let block = self.deflate_headers(headers)?;
                let mut body = BytesMut::with_capacity(10 + block.len());
                body.put_u32(stream & STREAM_MASK);
                body.put_u32(associated & STREAM_MASK);
                body.put_u8((priority & 0x07) << 5);
                body.put_u8(0);
                body.extend_from_slice(&block);
                control(out, kind::SYN_STREAM, *flags, &body)?;
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            }
            | Frame::Headers {
                stream,
                fin,
                headers,
            } => {
                let block = self.deflate_headers(headers)?;
                let mut body = BytesMut::with_capacity(4 + block.len());
                body.put_u32(stream & STREAM_MASK);
                body.extend_from_slice(&block);
                let k = if matches!(frame, Frame::SynReply { .. }) {
                    kind::SYN_REPLY
                } else {
                    kind::HEADERS
                };
                control(out, k, flag(*fin), &body)?;
            }
            Frame::RstStream { stream, status } => control(
                out,
                kind::RST_STREAM,
                0,
                &words(&[stream & STREAM_MASK, *status]),
            )?,
            Frame::Settings { entries } => {
                let mut body = BytesMut::with_capacity(4 + 8 * entries.len());
                body.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    body.put_u32(u32::from(*flags) << 24 | (id & 0x00ff_ffff));
                    body.put_u32(*value);
                }
                control(out, kind::SETTINGS, 0, &body)?;
            }
            Frame::Ping { id } => control(out, kind::PING, 0, &words(&[*id]))?,
            Frame::GoAway { last_good, status } => control(
                out,
                kind::GOAWAY,
                0,
                &words(&[last_good & STREAM_MASK, *status]),
            )?,
            Frame::WindowUpdate { stream, delta } => control(
                out,
                kind::WINDOW_UPDATE,
                0,
                &words(&[stream & STREAM_MASK, delta & STREAM_MASK]),
            )?,
            Frame::Unknown { kind } => control(out, *kind, 0, &[])?,
        }
        Ok(())
    }

    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut plain = Vec::with_capacity(64);
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for part in [name.to_ascii_lowercase().as_bytes(), value.as_bytes()] {
                plain.extend_from_slice(&(part.len() as u32).to_be_bytes());
                plain.extend_from_slice(part);
            }
        }
        if plain.len() > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderBlockTooLarge);
        }
        let mut out = Vec::with_capacity(plain.len() / 2 + 64);
        let mut input: &[u8] = &plain;
        loop {
            out.reserve(plain.len() + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let used = (self.deflate.total_in() - before) as usize;
            input = input.get(used..).unwrap_or_default();
            // Done when all input is in and the flush fit the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        if block.len() > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderBlockTooLarge);
        }
        let mut plain = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if plain.len() == plain.capacity() {
                if plain.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlockTooLarge);
                }
                plain.reserve(plain.len().max(256));
            }
            let before = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = input.get(used..).unwrap_or_default();
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if input.is_empty() && plain.len() < plain.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() && !self.inflate_primed => {
                    self.inflate_primed = true;
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| FrameError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
        }
        parse_block(&plain)
    }
}

fn nonzero(stream: u32) -> Result<(), FrameError> {
    if stream == 0 {
        Err(FrameError::StreamZero)
    } else {
        Ok(())
    }
}

fn flag(fin: bool) -> u8 {
    if fin {
        FLAG_FIN
    } else {
        0
    }
}

fn fit(len: usize) -> Result<u32, FrameError> {
    if len > MAX_PAYLOAD {
        Err(FrameError::TooLarge(len))
    } else {
        Ok(len as u32)
    }
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, body: &[u8]) -> Result<(), FrameError> {
    let len = fit(body.len())?;
    out.reserve(HEADER_LEN + body.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(u32::from(flags) << 24 | len);
    out.extend_from_slice(body);
    Ok(())
}

fn parse_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    let take_u32 = |b: &mut &[u8]| -> Result<usize, FrameError> {
        if b.len() < 4 {
            return Err(FrameError::HeaderBlock("cut short"));
        }
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        *b = &b[4..];
        Ok(n)
    };
    let take_str = |b: &mut &[u8]| -> Result<String, FrameError> {
        let n = take_u32(b)?;
        if b.len() < n {
            return Err(FrameError::HeaderBlock("cut short"));
        }
        let (s, rest) = b.split_at(n);
        *b = rest;
        String::from_utf8(s.to_vec()).map_err(|_| FrameError::HeaderBlock("not UTF-8"))
    };
    let count = take_u32(&mut b)?;
    // Each pair takes at least 8 bytes: a count cannot promise more.
    if count > b.len() / 8 {
        return Err(FrameError::HeaderBlock("more pairs than bytes"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut b)?;
        if name.is_empty() {
            return Err(FrameError::HeaderBlock("an empty name"));
        }
        let value = take_str(&mut b)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
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

    /// Every frame survives encode then decode, header blocks included,
    /// over one pair of contexts (each block depends on those before).
    #[test]
    fn frames_round_trip_in_order() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdin"), ("port", "80")]),
            },
            Frame::SynReply {
                stream: 3,
                fin: false,
                headers: vec![],
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 2 },
            Frame::GoAway {
                last_good: 3,
                status: goaway::OK,
            },
            Frame::Headers {
                stream: 1,
                fin: true,
                headers: h(&[("a", "b\0c")]),
            },
            Frame::WindowUpdate {
                stream: 1,
                delta: 4096,
            },
        ];
        let (mut tx, mut rx) = (Codec::new(), Codec::new());
        let mut wire = BytesMut::new();
        for f in &frames {
            tx.encode(f, &mut wire).expect("encode");
        }
        // Fed a byte at a time: no frame appears before it is whole.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            if let Some(f) = rx.decode(&mut buf).expect("decode") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn layouts_are_spdy3s() {
        let mut c = Codec::new();
        let mut out = BytesMut::new();
        c.encode(&Frame::Ping { id: 7 }, &mut out).expect("ping");
        assert_eq!(&out[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        c.encode(
            &Frame::Data {
                stream: 5,
                fin: true,
                data: Bytes::from_static(b"ab"),
            },
            &mut out,
        )
        .expect("data");
        assert_eq!(&out[..], &[0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
        // A header block starts with a zlib header naming SPDY/3's
        // dictionary (FDICT set, DICTID = its Adler-32).
        out.clear();
        c.encode(
            &Frame::SynReply {
                stream: 1,
                fin: false,
                headers: vec![],
            },
            &mut out,
        )
        .expect("reply");
        let block = &out[12..];
        assert_eq!(block[1] & 0x20, 0x20, "FDICT");
        assert_eq!(&block[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut c = Codec::new();
        // Version 2.
        let mut b = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(c.decode(&mut b), Err(FrameError::Version(2)));
        // A PING too short.
        let mut b = BytesMut::from(&[0x80, 3, 0, 6, 0, 0, 0, 2, 0, 1][..]);
        assert!(matches!(c.decode(&mut b), Err(FrameError::Short { .. })));
        // A header block that is not zlib.
        let mut b = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(matches!(c.decode(&mut b), Err(FrameError::Compression(_))));
        // SYN_STREAM on stream 0.
        let mut b = BytesMut::from(&[0x80, 3, 0, 1, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(c.decode(&mut b), Err(FrameError::StreamZero));
        // An unknown control frame is skipped whole.
        let mut b = BytesMut::from(
            &[
                0x80, 3, 0, 0x42, 0, 0, 0, 2, 9, 9, 0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1,
            ][..],
        );
        let mut c = Codec::new();
        assert_eq!(c.decode(&mut b), Ok(Some(Frame::Unknown { kind: 0x42 })));
        assert_eq!(c.decode(&mut b), Ok(Some(Frame::Ping { id: 1 })));
    }

    #[test]
    fn a_block_promising_more_pairs_than_it_holds_is_refused() {
        let mut plain = Vec::new();
        plain.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_block(&plain),
            Err(FrameError::HeaderBlock(_))
        ));
        // A name cut short.
        let mut plain = vec![0, 0, 0, 1, 0, 0, 0, 9, b'a'];
        plain.extend_from_slice(&[0; 8]);
        assert!(parse_block(&plain).is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let mut tx = Codec::new();
        let big = "x".repeat(MAX_HEADER_BLOCK);
        // The sender refuses to build it...
        assert_eq!(
            tx.deflate_headers(&h(&[("a", &big)])),
            Err(FrameError::HeaderBlockTooLarge)
        );
        // ...and a receiver refuses one that inflates past the limit.
        let mut z = Compress::new(Compression::best(), true);
        let _ = z.set_dictionary(dictionary());
        let mut plain = Vec::new();
        plain.extend_from_slice(&1u32.to_be_bytes());
        plain.extend_from_slice(&1u32.to_be_bytes());
        plain.push(b'a');
        plain.extend_from_slice(&((4 * MAX_HEADER_BLOCK) as u32).to_be_bytes());
        plain.extend(std::iter::repeat_n(b'x', 4 * MAX_HEADER_BLOCK));
        let mut block = Vec::with_capacity(plain.len());
        z.compress_vec(&plain, &mut block, FlushCompress::Sync)
            .expect("compress");
        let mut rx = Codec::new();
        assert_eq!(
            rx.inflate_headers(&block),
            Err(FrameError::HeaderBlockTooLarge)
        );
    }
}
