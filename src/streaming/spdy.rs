//! SPDY/3.1 framing: the frames, their binary layout and the zlib header
//! compression with SPDY's fixed dictionary (draft-mbelshe-httpbis-spdy-00
//! §2.2–2.6; 3.1 only adds session-level WINDOW_UPDATE on stream 0).
//!
//! No maintained SPDY crate exists; Kubernetes clients still default to
//! SPDY for exec/attach/port-forward, so this module implements exactly
//! what those clients (Go's `moby/spdystream`) send and accept. It is pure
//! (no I/O): `Encoder` turns frames into bytes, `Decoder` pulls frames out
//! of a buffer, each with its own compression context as the spec wants
//! (one per direction for the whole session).
//!
//! Control frame: `[1|version:15][type:16][flags:8][length:24][payload]`.
//! Data frame:    `[0|stream-id:31][flags:8][length:24][payload]`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FIN on data frames and on SYN_STREAM/SYN_REPLY/HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_INVALID_STREAM: u32 = 2;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_INTERNAL_ERROR: u32 = 6;
pub const RST_FRAME_TOO_LARGE: u32 = 11;

/// GOAWAY status codes.
pub const GOAWAY_OK: u32 = 0;
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;
pub const GOAWAY_INTERNAL_ERROR: u32 = 2;

/// Every frame starts with 8 bytes.
pub const HEADER_LEN: usize = 8;
/// The 24-bit length field's ceiling.
pub const MAX_LENGTH: usize = (1 << 24) - 1;

/// Header names (lower case, as SPDY requires) and values; a value holding
/// several values separates them with NUL.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits.
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 3 bits, 0 is the highest.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this version does not define: the spec
    /// says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

impl Frame {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// The peer broke the framing rules; the session must end (GOAWAY
    /// PROTOCOL_ERROR).
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY frame of {len} bytes is larger than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("SPDY header compression: {0}")]
    Compression(String),
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

/// Limits a decoder enforces so a hostile peer cannot make the daemon
/// allocate without bound.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest data frame payload accepted.
    pub max_data: usize,
    /// Largest control frame payload accepted (compressed header blocks
    /// included).
    pub max_control: usize,
    /// Largest header block once decompressed.
    pub max_header_block: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Go clients write at most 32 KiB per frame; 1 MiB leaves room
            // for others while bounding what one frame can cost.
            max_data: 1 << 20,
            max_control: 64 << 10,
            max_header_block: 256 << 10,
        }
    }
}

/// Serialises frames; owns the outgoing header compression context.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        let mut deflate = Compress::new(Compression::default(), true);
        // Before any data: the zlib header then carries the dictionary's
        // Adler-32 (FDICT), which is what peers' inflate expects.
        deflate
            .set_dictionary(DICTIONARY)
            .expect("setting a dictionary on a fresh deflate stream cannot fail");
        Encoder { deflate }
    }

    /// Append `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_LENGTH {
                    return Err(SpdyError::TooLarge {
                        len: data.len(),
                        max: MAX_LENGTH,
                    });
                }
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.put_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.compress_headers(headers)?;
                let mut p = BytesMut::with_capacity(10 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_to & 0x7fff_ffff);
                p.put_u8((priority & 0x07) << 5);
                p.put_u8(*slot);
                p.put_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &p)
            }
            // SYN_REPLY and HEADERS share a layout: stream id, header block.
            f @ (Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            }) => {
                let typ = if matches!(f, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.compress_headers(headers)?;
                let mut p = BytesMut::with_capacity(4 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_slice(&block);
                control(out, typ, *flags, &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = BytesMut::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for e in entries {
                    p.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                    p.put_u32(e.value);
                }
                control(out, TYPE_SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, TYPE_WINDOW_UPDATE, 0, &p)
            }
            Frame::Unknown { frame_type } => control(out, *frame_type, 0, &[]),
        }
    }

    /// The name/value block, compressed and sync-flushed so the peer can
    /// decode it from this frame alone (the context carries on).
    fn compress_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::with_capacity(64);
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start_in = self.deflate.total_in();
        loop {
            let consumed = (self.deflate.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(raw.len() + 64);
            }
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let consumed = (self.deflate.total_in() - start_in) as usize;
            // Done once all input is in and the flush left spare room
            // (a full buffer may hide more pending output).
            if consumed == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn control(out: &mut BytesMut, frame_type: u16, flags: u8, payload: &[u8]) -> Result<(), SpdyError> {
    if payload.len() > MAX_LENGTH {
        return Err(SpdyError::TooLarge {
            len: payload.len(),
            max: MAX_LENGTH,
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    out.put_slice(payload);
    Ok(())
}

/// Parses frames; owns the incoming header decompression context.
pub struct Decoder {
    inflate: Decompress,
    limits: Limits,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            inflate: Decompress::new(true),
            limits,
        }
    }

    /// Take one complete frame off the front of `buf`; `None` when more
    /// bytes are needed. Errors are fatal for the session.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        let is_control = first & 0x8000_0000 != 0;
        let max = if is_control {
            self.limits.max_control
        } else {
            self.limits.max_data
        };
        if len > max {
            return Err(SpdyError::TooLarge { len, max });
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        if !is_control {
            let stream_id = first & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(protocol("data frame on stream 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let frame_type = (first & 0xffff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        self.control(frame_type, flags, payload).map(Some)
    }

    fn control(&mut self, frame_type: u16, flags: u8, mut p: Bytes) -> Result<Frame, SpdyError> {
        let need = |p: &Bytes, n: usize, what: &str| -> Result<(), SpdyError> {
            if p.len() < n {
                Err(protocol(format!("{what} frame of {} bytes is too short", p.len())))
            } else {
                Ok(())
            }
        };
        let exact = |p: &Bytes, n: usize, what: &str| -> Result<(), SpdyError> {
            if p.len() != n {
                Err(protocol(format!("{what} frame must be {n} bytes, got {}", p.len())))
            } else {
                Ok(())
            }
        };
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                if stream_id == 0 {
                    return Err(protocol("SYN_STREAM with stream id 0"));
                }
                let headers = self.decompress_headers(&p)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&p, 4, "SYN_REPLY/HEADERS")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(protocol("SYN_REPLY/HEADERS with stream id 0"));
                }
                let headers = self.decompress_headers(&p)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                exact(&p, 8, "RST_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let status = p.get_u32();
                if stream_id == 0 {
                    return Err(protocol("RST_STREAM with stream id 0"));
                }
                Frame::RstStream { stream_id, status }
            }
            TYPE_SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let count = p.get_u32() as usize;
                if p.len() != count.saturating_mul(8) {
                    return Err(protocol(format!(
                        "SETTINGS frame announces {count} entries but carries {} bytes",
                        p.len()
                    )));
                }
                let entries = (0..count)
                    .map(|_| {
                        let w = p.get_u32();
                        Setting {
                            flags: (w >> 24) as u8,
                            id: w & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                exact(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                exact(&p, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                exact(&p, 8, "WINDOW_UPDATE")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let delta = p.get_u32() & 0x7fff_ffff;
                if delta == 0 {
                    return Err(protocol("WINDOW_UPDATE with a zero delta"));
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            other => Frame::Unknown { frame_type: other },
        })
    }

    fn decompress_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut raw: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let start_in = self.inflate.total_in();
        loop {
            let consumed = (self.inflate.total_in() - start_in) as usize;
            if raw.capacity() - raw.len() < 256 {
                if raw.len() >= self.limits.max_header_block {
                    return Err(SpdyError::TooLarge {
                        len: raw.len(),
                        max: self.limits.max_header_block,
                    });
                }
                raw.reserve(raw.len().max(1024));
            }
            let before_out = raw.len();
            let before_in = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(&block[consumed..], &mut raw, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(protocol("header compression stream ended")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Compression(format!("dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
            let consumed = (self.inflate.total_in() - start_in) as usize;
            if consumed == block.len() && raw.len() < raw.capacity() {
                break;
            }
            if consumed == block.len() && raw.len() == before_out {
                break;
            }
            if self.inflate.total_in() == before_in && raw.len() == before_out && raw.len() < raw.capacity() {
                return Err(SpdyError::Compression("header block does not decompress".into()));
            }
        }
        if raw.len() > self.limits.max_header_block {
            return Err(SpdyError::TooLarge {
                len: raw.len(),
                max: self.limits.max_header_block,
            });
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(mut raw: &[u8]) -> Result<Headers, SpdyError> {
    let take_u32 = |raw: &mut &[u8]| -> Result<usize, SpdyError> {
        if raw.len() < 4 {
            return Err(protocol("truncated header block"));
        }
        let v = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        *raw = &raw[4..];
        Ok(v)
    };
    let take_str = |raw: &mut &[u8], n: usize| -> Result<String, SpdyError> {
        if raw.len() < n {
            return Err(protocol("truncated header block"));
        }
        let s = std::str::from_utf8(&raw[..n])
            .map_err(|_| protocol("header name or value is not UTF-8"))?
            .to_string();
        *raw = &raw[n..];
        Ok(s)
    };
    let count = take_u32(&mut raw)?;
    // Each pair takes at least 8 bytes: reject impossible counts before
    // allocating for them.
    if count > raw.len() / 8 {
        return Err(protocol(format!("header block announces {count} pairs")));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take_u32(&mut raw)?;
        if n == 0 {
            return Err(protocol("empty header name"));
        }
        let name = take_str(&mut raw, n)?;
        let n = take_u32(&mut raw)?;
        let value = take_str(&mut raw, n)?;
        if headers
            .iter()
            .any(|(h, _): &(String, String)| h.eq_ignore_ascii_case(&name))
        {
            return Err(protocol(format!("duplicate header {name:?}")));
        }
        headers.push((name, value));
    }
    if !raw.is_empty() {
        return Err(protocol("trailing bytes after the header block"));
    }
    Ok(headers)
}

/// SPDY/3's zlib dictionary for header blocks (spec §2.6.10.1), 1423 bytes;
/// its Adler-32 is 0xe3c6a7c2 (checked in the tests).
#[rustfmt::skip]
pub const DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\x00\
    \x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\x00\
    \x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\
    \x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-con\
    trol\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\
    \x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-loca\
    tion\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\x00\
    \x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00\x00\x07expires\x00\x00\x00\
    \x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\x00\x00\
    \x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\
    \x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragm\
    a\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05rang\
    e\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02t\
    e\x00\x00\x00\x07trailer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\
    \x0auser-agent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10\
    www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\
    \x06200 OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06\
    public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin1001012012\
    02205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Au\
    thoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized4\
    03 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailab\
    leJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, \
    Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+\
    xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=\
    iso-8859-1,utf-,*,enq=0.";

#[cfg(test)]
mod tests {
    use super::*;

    // Generated once with CPython: zlib.compressobj(zdict=DICTIONARY), one
    // sync flush per block. Formatted by hand; not produced by this module.
    #[rustfmt::skip]
    const CPYTHON_BLOCK_1: &[u8] = &[
        0x78, 0xbb, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29, 0x4a, 0x4d,
        0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];
    #[rustfmt::skip]
    const CPYTHON_BLOCK_2: &[u8] = &[
        0x02, 0x65, 0x1c, 0x0c, 0x29, 0x60, 0x62, 0x4e, 0xc9, 0x07, 0x97, 0xd1, 0x9c, 0x45, 0x90, 0x28,
        0xcd, 0x04, 0x25, 0x75, 0x46, 0x03, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];

    fn roundtrip(frame: Frame) {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        enc.encode(&frame, &mut buf).unwrap();
        let got = dec.decode(&mut buf).unwrap().expect("a whole frame");
        assert_eq!(got, frame);
        assert!(buf.is_empty());
    }

    fn hdrs(kv: &[(&str, &str)]) -> Headers {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dictionary_is_the_specs() {
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &c in DICTIONARY.iter() {
            a = (a + u32::from(c)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options"));
        assert!(DICTIONARY.ends_with(b",enq=0."));
    }

    #[test]
    fn every_frame_type_round_trips() {
        roundtrip(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 7,
            slot: 0,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            headers: hdrs(&[("streamtype", "error"), ("port", "8080")]),
        });
        roundtrip(Frame::SynReply {
            stream_id: 3,
            flags: 0,
            headers: Vec::new(),
        });
        roundtrip(Frame::Headers {
            stream_id: 5,
            flags: FLAG_FIN,
            headers: hdrs(&[("a", "b\0c")]),
        });
        roundtrip(Frame::RstStream {
            stream_id: 7,
            status: RST_CANCEL,
        });
        roundtrip(Frame::Settings {
            flags: 1,
            entries: vec![
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
                Setting {
                    flags: 2,
                    id: 4,
                    value: 100,
                },
            ],
        });
        roundtrip(Frame::Ping { id: 2 });
        roundtrip(Frame::GoAway {
            last_good_stream_id: 9,
            status: GOAWAY_PROTOCOL_ERROR,
        });
        roundtrip(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        });
        roundtrip(Frame::Data {
            stream_id: 11,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hello"),
        });
        roundtrip(Frame::Data {
            stream_id: 13,
            flags: 0,
            data: Bytes::new(),
        });
    }

    /// The layouts of the spec, byte for byte.
    #[test]
    fn layouts_match_the_spec() {
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.encode(
            &Frame::Data {
                stream_id: 0x0102_0304,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ab"),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x01, 0x02, 0x03, 0x04, 0x01, 0, 0, 2, b'a', b'b']);
        out.clear();
        enc.encode(
            &Frame::RstStream {
                stream_id: 5,
                status: RST_REFUSED_STREAM,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 3]);
        out.clear();
        enc.encode(&Frame::Ping { id: 0xdead_beef }, &mut out).unwrap();
        assert_eq!(&out[..], &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
        out.clear();
        enc.encode(
            &Frame::GoAway {
                last_good_stream_id: 3,
                status: GOAWAY_INTERNAL_ERROR,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x80, 0x03, 0x00, 0x07, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 2]);
        out.clear();
        enc.encode(
            &Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x10000,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], &[0x80, 0x03, 0x00, 0x09, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, 0]);
        out.clear();
        enc.encode(
            &Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 0x100,
                }],
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            &out[..],
            &[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 12, 0, 0, 0, 1, 0x01, 0, 0, 7, 0, 0, 1, 0]
        );
        // SYN_STREAM: ids, priority in the top 3 bits, slot, then the
        // compressed block, which starts with a zlib header announcing a
        // preset dictionary (FDICT) with the dictionary's Adler-32.
        out.clear();
        enc.encode(
            &Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 5,
                slot: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "stdout")]),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(out[4], 0);
        let len = u32::from_be_bytes([0, out[5], out[6], out[7]]) as usize;
        assert_eq!(out.len(), 8 + len);
        assert_eq!(&out[8..16], &[0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(out[16], 5 << 5);
        assert_eq!(out[17], 0);
        let zlib = &out[18..];
        assert_eq!(zlib[0] & 0x0f, 8, "deflate");
        assert_ne!(zlib[1] & 0x20, 0, "FDICT set");
        assert_eq!(&zlib[2..6], &0xe3c6_a7c2u32.to_be_bytes());
    }

    /// A header block compressed by another implementation (CPython's
    /// zlib with the SPDY dictionary, Z_SYNC_FLUSH after each block)
    /// decodes, and the context carries over to the second block.
    #[test]
    fn header_blocks_from_another_zlib() {
        let mut dec = Decoder::new(Limits::default());
        for (block, want) in [
            (CPYTHON_BLOCK_1, hdrs(&[("streamtype", "error")])),
            (CPYTHON_BLOCK_2, hdrs(&[("streamtype", "stdout"), ("requestid", "0")])),
        ] {
            let mut buf = BytesMut::new();
            let mut p = vec![0, 0, 0, 3];
            p.extend_from_slice(block);
            control(&mut buf, TYPE_HEADERS, 0, &p).unwrap();
            match dec.decode(&mut buf).unwrap().unwrap() {
                Frame::Headers { stream_id, headers, .. } => {
                    assert_eq!(stream_id, 3);
                    assert_eq!(headers, want);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut enc = Encoder::new();
        let mut dec = Decoder::new(Limits::default());
        let mut all = BytesMut::new();
        enc.encode(
            &Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "stdin")]),
            },
            &mut all,
        )
        .unwrap();
        enc.encode(
            &Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"xyz"),
            },
            &mut all,
        )
        .unwrap();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[1], Frame::Data { data, .. } if &data[..] == b"xyz"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x80, 0x02, 0, 1, 0, 0, 0, 0], "version"),
            (vec![0x80, 0x03, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1], "RST_STREAM"),
            (vec![0x80, 0x03, 0, 6, 0, 0, 0, 2, 0, 0], "PING"),
            (vec![0x80, 0x03, 0, 1, 0, 0, 0, 2, 0, 0], "too short"),
            (vec![0x80, 0x03, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff], "SETTINGS"),
            (vec![0, 0, 0, 0, 0, 0, 0, 1, 0], "stream 0"),
            (vec![0x80, 0x03, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0], "zero delta"),
            // A SYN_STREAM whose header block is not zlib at all.
            (
                vec![0x80, 0x03, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                "compression",
            ),
        ];
        for (bytes, what) in cases {
            let mut dec = Decoder::new(Limits::default());
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(dec.decode(&mut buf).is_err(), "{what} must be refused");
        }
        // Oversize frames are refused from the header alone, before the
        // payload arrives.
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0x20, 0, 0][..]);
        assert!(matches!(dec.decode(&mut buf), Err(SpdyError::TooLarge { .. })));
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 1, 0, 0x10, 0, 0][..]);
        assert!(matches!(dec.decode(&mut buf), Err(SpdyError::TooLarge { .. })));
        // Unknown control frame types are ignored, as the spec says.
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 0x42, 0, 0, 0, 1, 7][..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Unknown { frame_type: 0x42 }));
    }

    #[test]
    fn header_block_rules() {
        let block = |pairs: &[(&[u8], &[u8])], count: u32| {
            let mut raw = Vec::new();
            raw.put_u32(count);
            for (n, v) in pairs {
                raw.put_u32(n.len() as u32);
                raw.put_slice(n);
                raw.put_u32(v.len() as u32);
                raw.put_slice(v);
            }
            raw
        };
        assert!(parse_header_block(&block(&[(b"a", b"1")], 1)).is_ok());
        assert!(parse_header_block(&block(&[(b"a", b"1")], 2)).is_err(), "count too big");
        assert!(parse_header_block(&block(&[(b"", b"1")], 1)).is_err(), "empty name");
        assert!(
            parse_header_block(&block(&[(b"a", b"1"), (b"A", b"2")], 2)).is_err(),
            "duplicate"
        );
        assert!(parse_header_block(&block(&[(b"a", b"\xff")], 1)).is_err(), "not UTF-8");
        let mut trailing = block(&[(b"a", b"1")], 1);
        trailing.push(0);
        assert!(parse_header_block(&trailing).is_err());
        assert!(parse_header_block(&[0, 0]).is_err());
    }

    #[test]
    fn decompression_bombs_are_capped() {
        // A 1 MiB header value compresses to a few KiB; the decoder must
        // refuse it by its decompressed size.
        let mut enc = Encoder::new();
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        enc.encode(
            &Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: hdrs(&[("x", &"a".repeat(1 << 20))]),
            },
            &mut buf,
        )
        .unwrap();
        assert!(buf.len() < 64 << 10, "{}", buf.len());
        assert!(matches!(dec.decode(&mut buf), Err(SpdyError::TooLarge { .. })));
    }
}
