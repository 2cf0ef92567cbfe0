//! A server-side SPDY/3.1 session over any byte stream: frames in, streams
//! out.
//!
//! One reader (frames → per-stream channels) and one writer (an mpsc of
//! frames → the socket, which owns the header compressor) run beside the
//! session's handler in the same task, so ending the handler or dropping
//! the session stops everything: no task is left behind.
//!
//! Every SYN_STREAM from the client is answered with a SYN_REPLY at once
//! (Go's spdystream drops data for a stream not yet replied to). Flow
//! control windows are neither sent nor enforced: spdystream, the client
//! Kubernetes tools use, ignores WINDOW_UPDATE and never sends one, so
//! enforcing windows would stall every transfer at 64 KiB. Backpressure is
//! TCP's: a stream whose consumer is slow stops the reader.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Decoder, Encoder, Frame, Headers, Limits, SpdyError};

/// Data frames written at most this large (Go clients read any size).
const MAX_WRITE_FRAME: usize = 64 << 10;
/// Streams a client may have open at once.
const MAX_STREAMS: usize = 1024;
/// Data frames queued per stream before the reader waits for its consumer.
const STREAM_QUEUE: usize = 16;

/// What the writer is asked to send.
enum Out {
    Frame(Frame),
}

/// A stream the client opened.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// Data from the client; `None` once it finished (FIN) or reset.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl IncomingStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        Frame::header(&self.headers, name)
    }
}

/// Our half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamWriter {
    /// Queue `data` (split into frames); false once the session is gone.
    pub async fn write(&self, mut data: Bytes) -> bool {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_WRITE_FRAME));
            let frame = Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            };
            if self.out.send(Out::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-close: FIN on an empty data frame.
    pub async fn close(&self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                flags: spdy::FLAG_FIN,
                data: Bytes::new(),
            }))
            .await;
    }

    /// Abort the stream.
    pub async fn reset(&self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status: spdy::RST_CANCEL,
            }))
            .await;
    }
}

/// The handler's view of a session.
pub struct Session {
    pub incoming: mpsc::Receiver<IncomingStream>,
}

/// How a session ended, for the log.
#[derive(Debug)]
pub enum End {
    /// The handler finished.
    Done,
    /// The client hung up or sent GOAWAY.
    ClientGone,
    Protocol(SpdyError),
    /// Writing to the client failed or stalled past the write timeout.
    Write(std::io::Error),
}

/// Serve one SPDY session on `io` with `handler`; returns when the handler
/// is done (then GOAWAY and a flush), or at once when the client goes or
/// breaks the protocol (the handler is dropped mid-way, which releases all
/// it holds).
pub async fn serve<IO, F, Fut>(io: IO, limits: Limits, write_timeout: Duration, handler: F) -> End
where
    IO: AsyncRead + AsyncWrite + Send,
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = ()>,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Out>(256);
    let (new_tx, new_rx) = mpsc::channel::<IncomingStream>(64);
    let goaway = out_tx.clone();
    let reader = read_loop(rd, limits, out_tx, new_tx);
    let writer = write_loop(wr, out_rx, write_timeout);
    // Boxed so both can be dropped before the final flush: the writer ends
    // only once every sender they hold is gone.
    let mut reader = Box::pin(reader);
    let mut handler = Box::pin(handler(Session { incoming: new_rx }));
    tokio::pin!(writer);
    let end = tokio::select! {
        () = &mut handler => End::Done,
        r = &mut reader => match r {
            Ok(()) => End::ClientGone,
            Err(ReadEnd::Protocol(e)) => {
                let status = spdy::GOAWAY_PROTOCOL_ERROR;
                let _ = goaway.try_send(Out::Frame(Frame::GoAway { last_good_stream_id: 0, status }));
                End::Protocol(e)
            }
            Err(ReadEnd::Io) => End::ClientGone,
        },
        r = &mut writer => return End::Write(r.err().unwrap_or_else(|| std::io::Error::other("writer ended"))),
    };
    if matches!(end, End::Done) {
        let _ = goaway
            .send(Out::Frame(Frame::GoAway {
                last_good_stream_id: 0,
                status: spdy::GOAWAY_OK,
            }))
            .await;
    }
    // Everything that can still queue frames is dropped here, so the writer
    // drains what is queued and stops.
    drop(reader);
    drop(handler);
    drop(goaway);
    let drained = async {
        let _ = (&mut writer).await;
    };
    let _ = tokio::time::timeout(write_timeout.min(Duration::from_secs(5)), drained).await;
    end
}

enum ReadEnd {
    Protocol(SpdyError),
    Io,
}

async fn read_loop<R: AsyncRead>(
    rd: R,
    limits: Limits,
    out: mpsc::Sender<Out>,
    new_streams: mpsc::Sender<IncomingStream>,
) -> Result<(), ReadEnd> {
    tokio::pin!(rd);
    let mut dec = Decoder::new(limits);
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    loop {
        while let Some(frame) = dec.decode(&mut buf).map_err(ReadEnd::Protocol)? {
            match frame {
                Frame::SynStream {
                    stream_id,
                    flags,
                    headers,
                    ..
                } => {
                    // Client streams are odd and increasing (spec §2.3.2).
                    if stream_id % 2 == 0 || stream_id <= last_id {
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: spdy::RST_PROTOCOL_ERROR,
                            }))
                            .await;
                        continue;
                    }
                    last_id = stream_id;
                    streams.retain(|_, tx| !tx.is_closed());
                    if streams.len() >= MAX_STREAMS {
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: spdy::RST_REFUSED_STREAM,
                            }))
                            .await;
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                    if flags & spdy::FLAG_FIN == 0 {
                        streams.insert(stream_id, tx);
                    }
                    let stream = IncomingStream {
                        id: stream_id,
                        headers,
                        data: rx,
                        writer: StreamWriter {
                            id: stream_id,
                            out: out.clone(),
                        },
                    };
                    let _ = out
                        .send(Out::Frame(Frame::SynReply {
                            stream_id,
                            flags: 0,
                            headers: Vec::new(),
                        }))
                        .await;
                    if let Err(mpsc::error::TrySendError::Full(s)) = new_streams.try_send(stream) {
                        // The handler is not taking streams: refuse, never
                        // queue without bound.
                        streams.remove(&s.id);
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id: s.id,
                                status: spdy::RST_REFUSED_STREAM,
                            }))
                            .await;
                    }
                }
                Frame::Data { stream_id, flags, data } => {
                    if let Some(tx) = streams.get(&stream_id) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            streams.remove(&stream_id);
                        }
                    }
                    if flags & spdy::FLAG_FIN != 0 {
                        streams.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    streams.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    // Answer the client's pings (odd ids); ours would be even.
                    if id % 2 == 1 {
                        let _ = out.send(Out::Frame(Frame::Ping { id })).await;
                    }
                }
                Frame::GoAway { .. } => return Ok(()),
                Frame::SynReply { .. }
                | Frame::Headers { .. }
                | Frame::Settings { .. }
                | Frame::WindowUpdate { .. }
                | Frame::Unknown { .. } => {}
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(_) => return Err(ReadEnd::Io),
        }
    }
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>, stall: Duration) -> std::io::Result<()> {
    tokio::pin!(wr);
    let mut enc = Encoder::new();
    let mut buf = BytesMut::with_capacity(128 << 10);
    let encode = |enc: &mut Encoder, buf: &mut BytesMut, out: Out| -> std::io::Result<()> {
        let Out::Frame(f) = out;
        enc.encode(&f, buf).map_err(std::io::Error::other)
    };
    while let Some(first) = rx.recv().await {
        encode(&mut enc, &mut buf, first)?;
        // Batch what is already queued into one write.
        while buf.len() < (256 << 10) {
            match rx.try_recv() {
                Ok(more) => encode(&mut enc, &mut buf, more)?,
                Err(_) => break,
            }
        }
        match tokio::time::timeout(stall, wr.write_all(&buf)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the client read nothing for {} s", stall.as_secs()),
                ))
            }
        }
        buf.clear();
    }
    let _ = tokio::time::timeout(stall, async {
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    })
    .await;
    Ok(())
}
