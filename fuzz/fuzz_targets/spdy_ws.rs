//! Streaming framing. The first byte picks the mode:
//! - 0..=127: the rest is a SPDY/3.1 byte stream from a client
//!   (`streaming::spdy::Decoder`, header blocks decompressed with SPDY's
//!   dictionary and a session-long zlib context); every frame decoded is
//!   re-encoded (`Encoder`) and must decode to itself;
//! - 128..=191: the rest is a header block, deflated here with the SPDY
//!   dictionary and sent as a SYN_STREAM, so the name/value parser gets
//!   well-compressed arbitrary blocks;
//! - 192..=255: the rest is a WebSocket message for the Kubernetes channel
//!   framing (`streaming::ws::Framing::decode`; binary or text, base64 or
//!   not, v5 close signal or not, from the low bits), decoded data
//!   re-encoded on its channel must decode to itself.
#![no_main]

use bytes::{BufMut, BytesMut};
use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::fuzz_target;
use nodelet::streaming::spdy::{self, Decoder, Encoder, Limits};
use nodelet::streaming::ws::{Decoded, Framing, CLOSE_SIGNAL};
use tokio_tungstenite::tungstenite::protocol::Message;

fn spdy_stream(mut buf: BytesMut) {
    let mut dec = Decoder::new(Limits::default());
    let mut enc = Encoder::new();
    let mut dec2 = Decoder::new(Limits::default());
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let mut out = BytesMut::new();
                if enc.encode(&frame, &mut out).is_ok() {
                    let again = dec2
                        .decode(&mut out)
                        .expect("own encoding decodes")
                        .expect("whole frame");
                    assert_eq!(again, frame);
                    assert!(out.is_empty());
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fn header_block(raw: &[u8]) {
    let mut deflate = Compress::new(Compression::default(), true);
    deflate.set_dictionary(spdy::DICTIONARY).expect("dictionary");
    let mut block = Vec::with_capacity(raw.len() * 2 + 128);
    deflate
        .compress_vec(raw, &mut block, FlushCompress::Sync)
        .expect("deflate");
    let mut payload = BytesMut::new();
    payload.put_u32(1);
    payload.put_u32(0);
    payload.put_u16(0);
    payload.put_slice(&block);
    let mut buf = BytesMut::new();
    buf.put_u16(0x8000 | spdy::VERSION);
    buf.put_u16(spdy::TYPE_SYN_STREAM);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    spdy_stream(buf);
}

fn websocket(mode: u8, data: &[u8]) {
    let framing = Framing {
        base64: mode & 1 != 0,
        close_signal: mode & 2 != 0,
    };
    let msg = if mode & 4 != 0 {
        Message::text(String::from_utf8_lossy(data).into_owned())
    } else {
        Message::binary(data.to_vec())
    };
    if let Ok(Decoded::Data(channel, payload)) = framing.decode(msg) {
        if !(framing.close_signal && channel == CLOSE_SIGNAL) {
            let again = framing.decode(framing.encode(channel, &payload));
            assert_eq!(again, Ok(Decoded::Data(channel, payload)));
        }
    }
    // Every channel number encodes without panicking.
    if let Some(&channel) = data.first() {
        let _ = framing.encode(channel, &data[1..]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0..=127 => spdy_stream(BytesMut::from(rest)),
        128..=191 => header_block(rest),
        _ => websocket(mode, rest),
    }
});
