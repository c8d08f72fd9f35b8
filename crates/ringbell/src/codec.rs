//! Typed messages (cargo feature `codec`): any `serde` type, encoded with postcard, a
//! compact, stable, non-self-describing format. Both sides must agree on the types.
//!
//! A message that does not decode as the expected type is an [`Error::Codec`] for that
//! message only: decoding never panics, and never allocates more than the message's own
//! length allows (postcard reads lengths from the input, which is bounded by
//! `max_message_size`).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::conn::Connection;
use crate::error::Error;

/// Encodes `value` as one message.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|error| Error::Codec {
        detail: error.to_string(),
    })
}

/// Decodes one message as a `T`; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|error| Error::Codec {
        detail: error.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(Error::Codec {
            detail: format!("{} bytes left over after the value", rest.len()),
        });
    }
    Ok(value)
}

impl Connection {
    /// Sends `value` as one message.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if it cannot be encoded, otherwise as [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use ringbell::{ClientConfig, Connection};
    /// # let mut conn = Connection::connect("/tmp/app.sock", ClientConfig::default())?;
    /// conn.send_value(&("open", 42u32))?;
    /// let mut buf = Vec::new();
    /// let (status, size): (String, u64) = conn.recv_value(&mut buf, None)?;
    /// # Ok::<(), ringbell::Error>(())
    /// ```
    pub fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = encode(value)?;
        self.send(&bytes)
    }

    /// Receives the next message and decodes it as a `T`, using `buf` for the bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the message does not decode as a `T` (the message is consumed;
    /// the connection goes on), otherwise as [`recv`](Self::recv).
    pub fn recv_value<T: DeserializeOwned>(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<T, Error> {
        self.recv(buf, timeout)?;
        decode(buf)
    }
}

#[cfg(feature = "tokio")]
impl crate::tokio::AsyncConnection {
    /// Sends `value` as one message.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if it cannot be encoded, otherwise as [`send`](Self::send).
    pub async fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let bytes = encode(value)?;
        self.send(&bytes).await
    }

    /// Receives the next message and decodes it as a `T`, using `buf` for the bytes.
    /// Cancellation-safe, like [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the message does not decode as a `T` (the connection goes on),
    /// otherwise as [`recv`](Self::recv).
    pub async fn recv_value<T: DeserializeOwned>(&mut self, buf: &mut Vec<u8>) -> Result<T, Error> {
        self.recv(buf).await?;
        decode(buf)
    }
}

#[cfg(feature = "tokio")]
impl crate::tokio::Client {
    /// [`call`](Self::call) with typed request and response.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the request cannot be encoded or the reply does not decode as a
    /// `Resp`, otherwise as [`call`](Self::call).
    pub async fn call_value<Req, Resp>(&self, request: &Req) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let reply = self.call(&encode(request)?).await?;
        decode(&reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_round_trip() {
        let value = (String::from("open"), 42u32, vec![1u8, 2, 3], Some(-7i64));
        let bytes = encode(&value).unwrap();
        assert_eq!(
            decode::<(String, u32, Vec<u8>, Option<i64>)>(&bytes).unwrap(),
            value
        );
    }

    #[test]
    fn wrong_type_and_trailing_bytes_are_codec_errors() {
        let bytes = encode(&(1u8, 2u8)).unwrap();
        assert!(matches!(
            decode::<String>(&[200, 1]),
            Err(Error::Codec { .. })
        ));
        assert!(matches!(decode::<u8>(&bytes), Err(Error::Codec { .. })));
    }

    proptest! {
        /// Arbitrary bytes decode to a value or a codec error; never a panic or a huge
        /// allocation (a claimed length beyond the input fails).
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<(String, Vec<u64>, Option<(u32, String)>)>(&bytes);
            let _ = decode::<Vec<Vec<u8>>>(&bytes);
        }
    }
}
