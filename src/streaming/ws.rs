//! WebSocket sessions with the Kubernetes channel framing.
//!
//! Every message carries one channel: binary messages start with the
//! channel number (`channel.k8s.io`, `v4.`, `v5.`), text messages of the
//! `base64.` variants start with the channel as an ASCII digit followed by
//! base64. Remote command channels: 0 stdin, 1 stdout, 2 stderr, 3 error,
//! 4 resize; `v5.channel.k8s.io` adds the close signal `[255, channel]`
//! (the client's stdin ended). Port-forward uses two channels per port
//! (data `2i`, error `2i+1`) whose first server message is the port, u16
//! little-endian.
//!
//! As in `spdy_session`, reading, writing and the handler share one task:
//! ending the handler or the client going away releases everything.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message};
use tokio_tungstenite::WebSocketStream;

/// The v5 close signal's channel byte.
pub const CLOSE_SIGNAL: u8 = 255;
/// Messages larger than this (or frames) close the connection.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Output chunks are at most this large (before base64).
const MAX_CHUNK: usize = 64 << 10;

/// One decoded client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(u8, Bytes),
    /// v5: the client closed its side of a channel.
    Close(u8),
    /// Control frames and empty messages.
    Nothing,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("text message on a binary channel protocol")]
    TextOnBinary,
    #[error("binary message on a base64 channel protocol")]
    BinaryOnText,
    #[error("invalid channel {0:?}")]
    BadChannel(u8),
    #[error("invalid base64 payload")]
    Base64,
    #[error("malformed close signal")]
    BadClose,
}

/// How a negotiated protocol frames channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub base64: bool,
    pub close_signal: bool,
}

impl Framing {
    /// How many channels the framing can address: one ASCII digit with
    /// base64, one byte without (255 being the close signal in v5).
    pub fn channels(&self) -> usize {
        match (self.base64, self.close_signal) {
            (true, _) => 10,
            (false, true) => 255,
            (false, false) => 256,
        }
    }

    /// Frame `data` for `channel`, which must be below `channels()` (a
    /// larger one is written wrapped, never a panic).
    pub fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        } else {
            let mut b = BytesMut::with_capacity(1 + data.len());
            b.put_u8(channel);
            b.put_slice(data);
            Message::binary(b.freeze())
        }
    }

    pub fn decode(&self, msg: Message) -> Result<Decoded, WsError> {
        match msg {
            Message::Binary(b) => {
                if self.base64 {
                    return Err(WsError::BinaryOnText);
                }
                let Some(&channel) = b.first() else {
                    return Ok(Decoded::Nothing);
                };
                if channel == CLOSE_SIGNAL && self.close_signal {
                    return match b.len() {
                        2 => Ok(Decoded::Close(b[1])),
                        _ => Err(WsError::BadClose),
                    };
                }
                Ok(Decoded::Data(channel, b.slice(1..)))
            }
            Message::Text(t) => {
                if !self.base64 {
                    return Err(WsError::TextOnBinary);
                }
                let s = t.as_bytes();
                let Some(&c) = s.first() else {
                    return Ok(Decoded::Nothing);
                };
                if !c.is_ascii_digit() {
                    return Err(WsError::BadChannel(c));
                }
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&s[1..])
                    .map_err(|_| WsError::Base64)?;
                Ok(Decoded::Data(c - b'0', Bytes::from(data)))
            }
            _ => Ok(Decoded::Nothing),
        }
    }
}

/// The server's side of one channel.
#[derive(Clone)]
pub struct ChannelWriter {
    channel: u8,
    framing: Framing,
    out: mpsc::Sender<Message>,
}

impl ChannelWriter {
    pub async fn write(&self, mut data: Bytes) -> bool {
        loop {
            let chunk = data.split_to(data.len().min(MAX_CHUNK));
            if self.out.send(self.framing.encode(self.channel, &chunk)).await.is_err() {
                return false;
            }
            if data.is_empty() {
                return true;
            }
        }
    }
}

/// The handler's view of a WebSocket session: a receiver per readable
/// channel, a writer per channel.
pub struct Session {
    pub readers: Vec<Option<mpsc::Receiver<Bytes>>>,
    out: mpsc::Sender<Message>,
    pub framing: Framing,
}

impl Session {
    pub fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            channel,
            framing: self.framing,
            out: self.out.clone(),
        }
    }

    /// Close the connection with a status (sent after everything queued).
    pub async fn close(&self, code: u16, reason: &str) {
        let _ = self
            .out
            .send(Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.to_string().into(),
            })))
            .await;
    }
}

#[derive(Debug)]
pub enum End {
    Done,
    ClientGone,
    Protocol(String),
    Write(String),
}

/// Serve one channel session: `readable[i]` says whether channel `i`
/// accepts data from the client.
pub async fn serve<IO, F, Fut>(
    ws: WebSocketStream<IO>,
    framing: Framing,
    readable: &[bool],
    write_timeout: Duration,
    handler: F,
) -> End
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = ()>,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
    let mut senders: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut readers = Vec::new();
    for &r in readable {
        if r {
            let (tx, rx) = mpsc::channel(16);
            senders.push(Some(tx));
            readers.push(Some(rx));
        } else {
            senders.push(None);
            readers.push(None);
        }
    }
    let closer = out_tx.clone();
    let reader = async move {
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => return End::Protocol(e.to_string()),
            };
            if msg.is_close() {
                return End::ClientGone;
            }
            match framing.decode(msg) {
                Ok(Decoded::Data(ch, data)) => {
                    // Data for a channel that takes none is ignored, as
                    // the kubelet does.
                    if let Some(Some(tx)) = senders.get(usize::from(ch)) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            senders[usize::from(ch)] = None;
                        }
                    }
                }
                Ok(Decoded::Close(ch)) => {
                    if let Some(slot) = senders.get_mut(usize::from(ch)) {
                        *slot = None;
                    }
                }
                Ok(Decoded::Nothing) => {}
                Err(e) => return End::Protocol(e.to_string()),
            }
        }
        End::ClientGone
    };
    let writer = async move {
        while let Some(msg) = out_rx.recv().await {
            let close = msg.is_close();
            match tokio::time::timeout(write_timeout, sink.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return End::Write(e.to_string()),
                Err(_) => return End::Write(format!("the client read nothing for {} s", write_timeout.as_secs())),
            }
            if close {
                break;
            }
        }
        let _ = tokio::time::timeout(write_timeout, sink.close()).await;
        End::Done
    };
    let mut reader = Box::pin(reader);
    let mut handler = Box::pin(handler(Session {
        readers,
        out: out_tx,
        framing,
    }));
    tokio::pin!(writer);
    let end = tokio::select! {
        () = &mut handler => End::Done,
        e = &mut reader => e,
        e = &mut writer => return e,
    };
    match &end {
        End::Done => {
            let _ = closer
                .send(Message::Close(Some(CloseFrame {
                    code: 1000.into(),
                    reason: "".into(),
                })))
                .await;
        }
        End::Protocol(why) => {
            let _ = closer.try_send(Message::Close(Some(CloseFrame {
                code: 1002.into(),
                reason: why.chars().take(120).collect::<String>().into(),
            })));
        }
        _ => {}
    }
    drop(reader);
    drop(handler);
    drop(closer);
    let _ = tokio::time::timeout(write_timeout.min(Duration::from_secs(5)), &mut writer).await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINARY: Framing = Framing {
        base64: false,
        close_signal: false,
    };
    const V5: Framing = Framing {
        base64: false,
        close_signal: true,
    };
    const B64: Framing = Framing {
        base64: true,
        close_signal: false,
    };

    #[test]
    fn binary_channels() {
        let m = BINARY.encode(1, b"out");
        assert_eq!(m, Message::binary(Bytes::from_static(b"\x01out")));
        assert_eq!(
            BINARY.decode(Message::binary(Bytes::from_static(b"\x00in"))),
            Ok(Decoded::Data(0, Bytes::from_static(b"in")))
        );
        assert_eq!(BINARY.decode(Message::binary(Bytes::new())), Ok(Decoded::Nothing));
        // Without v5, 255 is just a channel number nobody reads.
        assert_eq!(
            BINARY.decode(Message::binary(Bytes::from_static(b"\xff\x00"))),
            Ok(Decoded::Data(255, Bytes::from_static(b"\x00")))
        );
        assert_eq!(BINARY.decode(Message::text("0aGk=")), Err(WsError::TextOnBinary));
    }

    #[test]
    fn v5_close_signal() {
        assert_eq!(
            V5.decode(Message::binary(Bytes::from_static(b"\xff\x00"))),
            Ok(Decoded::Close(0))
        );
        assert_eq!(
            V5.decode(Message::binary(Bytes::from_static(b"\xff"))),
            Err(WsError::BadClose)
        );
        assert_eq!(
            V5.decode(Message::binary(Bytes::from_static(b"\xff\x00\x01"))),
            Err(WsError::BadClose)
        );
    }

    /// Found by fuzzing (fuzz/ spdy_ws): a base64 channel past 207
    /// overflowed `b'0' + channel` (a panic in debug builds); port-forward
    /// asks for channel 2n+1 for its n-th port.
    #[test]
    fn any_channel_number_encodes_without_panic() {
        for framing in [BINARY, V5, B64] {
            for channel in 0..=u8::MAX {
                let _ = framing.encode(channel, b"x");
            }
        }
        assert_eq!((B64.channels(), V5.channels(), BINARY.channels()), (10, 255, 256));
    }

    #[test]
    fn base64_channels() {
        assert_eq!(B64.encode(1, b"hi"), Message::text("1aGk="));
        assert_eq!(B64.encode(3, b""), Message::text("3"));
        assert_eq!(
            B64.decode(Message::text("0aGk=")),
            Ok(Decoded::Data(0, Bytes::from_static(b"hi")))
        );
        assert_eq!(B64.decode(Message::text("0!!")), Err(WsError::Base64));
        assert_eq!(B64.decode(Message::text("xaGk=")), Err(WsError::BadChannel(b'x')));
        assert_eq!(
            B64.decode(Message::binary(Bytes::from_static(b"\x00a"))),
            Err(WsError::BinaryOnText)
        );
        assert_eq!(B64.decode(Message::Ping(Bytes::new())), Ok(Decoded::Nothing));
    }

    #[test]
    fn port_prefix_is_little_endian() {
        let m = BINARY.encode(0, &8080u16.to_le_bytes());
        assert_eq!(m, Message::binary(Bytes::from_static(&[0, 0x90, 0x1f])));
    }
}
