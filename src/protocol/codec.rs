//! Length-prefixed MessagePack frames.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of MessagePack
//! (rmp-serde). The length is checked against the limit before any buffer is reserved for the
//! payload, so an oversize header costs nothing. A well-framed payload that does not decode is
//! reported as an item (`Err(MalformedFrame)`) rather than a stream error: the frame boundary
//! is intact, so the connection can answer it and carry on. Only an oversize header or an I/O
//! failure ends the stream.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// The default largest payload, in bytes.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// A stream-ending framing failure.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame header announced more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// An outgoing message could not be encoded.
    #[error("could not encode a frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// A complete frame whose payload was not a valid message.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct MalformedFrame(#[from] pub rmp_serde::decode::Error);

/// A codec that reads `In` messages and writes `Out` messages.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_frame: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec accepting payloads up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame, _types: PhantomData }
    }
}

impl<In, Out> FrameCodec<In, Out> {
    /// Whether [`Decoder::decode`] would give something for `src` now (a frame, or the error
    /// of one too large) without reading more.
    pub fn ready(&self, src: &[u8]) -> bool {
        let Some(header) = src.get(..HEADER_LEN) else {
            return false;
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        len > self.max_frame || src.len() >= HEADER_LEN + len
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = Result<In, MalformedFrame>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max_frame {
            return Err(CodecError::TooLarge { len, max: self.max_frame });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len);
        Ok(Some(decode_payload(&payload)))
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_into(&item, dst)
    }
}

/// Encodes `msg` as one complete frame (header included), ready to be written or shared.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::with_capacity(64);
    encode_into(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// Appends `msg` as one complete frame to `dst`.
pub fn encode_into<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    let mut writer = dst.writer();
    if let Err(e) = rmp_serde::encode::write(&mut writer, msg) {
        writer.into_inner().truncate(start);
        return Err(e.into());
    }
    let dst = writer.into_inner();
    let len = (dst.len() - start - HEADER_LEN) as u32;
    dst[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes one payload (without its header).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, MalformedFrame> {
    Ok(rmp_serde::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    type ServerSide = FrameCodec<ClientMessage, ServerMessage>;

    fn hello() -> ClientMessage {
        ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, agent: "test".into() })
    }

    #[test]
    fn frame_round_trips() {
        let frame = encode_frame(&hello()).unwrap();
        let mut buf = BytesMut::from(&frame[..]);
        let got = ServerSide::default().decode(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(got, hello());
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_frames_wait_for_more_bytes() {
        let frame = encode_frame(&hello()).unwrap();
        let mut codec = ServerSide::default();
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
        }
    }

    #[test]
    fn two_frames_in_one_read_decode_in_order() {
        let mut buf = BytesMut::new();
        encode_into(&hello(), &mut buf).unwrap();
        let req = ClientMessage::Request { id: 7, body: Request::List };
        encode_into(&req, &mut buf).unwrap();
        let mut codec = ServerSide::default();
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), hello());
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), req);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversize_header_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = ServerSide::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { len, max: 1024 } if len == u32::MAX as usize));
        assert!(buf.capacity() < 1024, "no room reserved for the announced payload");
    }

    #[test]
    fn garbage_payload_is_an_item_not_a_stream_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xc1, 0xff, 0x00]); // 0xc1 is never valid MessagePack
        let after = ClientMessage::Request { id: 1, body: Request::Logout };
        encode_into(&after, &mut buf).unwrap();
        let mut codec = ServerSide::default();
        assert!(codec.decode(&mut buf).unwrap().unwrap().is_err());
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().unwrap(), after);
    }

    #[test]
    fn a_valid_value_of_the_wrong_type_is_malformed() {
        let frame = encode_frame(&"just a string").unwrap();
        let mut buf = BytesMut::from(&frame[..]);
        assert!(ServerSide::default().decode(&mut buf).unwrap().unwrap().is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut codec = ServerSide::new(256);
            // Keep decoding until the codec wants more bytes or fails; it must never panic
            // and must always make progress.
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn random_payloads_in_valid_frames_never_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut buf = BytesMut::new();
            buf.put_u32(payload.len() as u32);
            buf.put_slice(&payload);
            let item = ServerSide::default().decode(&mut buf).unwrap();
            proptest::prop_assert!(item.is_some());
            proptest::prop_assert!(buf.is_empty());
        }
    }
}
