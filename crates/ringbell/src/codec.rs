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
    postcard::to_allocvec(value).map_err(codec_error)
}

/// The encoded size of `value`: what [`encode_into`] writes.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    postcard::experimental::serialized_size(value).map_err(codec_error)
}

/// Encodes `value` into `buf`, which must be exactly [`encoded_len`] bytes: the message a
/// `send_with` writes straight into the ring.
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut [u8]) -> Result<(), Error> {
    let expected = buf.len();
    let written = postcard::to_slice(value, buf).map_err(codec_error)?.len();
    if written != expected {
        // A `Serialize` impl that writes something else the second time it runs.
        return Err(Error::Codec {
            detail: format!("the value encoded to {written} bytes after measuring {expected}"),
        });
    }
    Ok(())
}

fn codec_error(error: postcard::Error) -> Error {
    Error::Codec {
        detail: error.to_string(),
    }
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
    /// Sends `value` as one message. It is encoded straight into the ring
    /// ([`send_with`](Self::send_with)), after a first pass that measures it; only a value
    /// larger than one frame goes through a buffer.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if it cannot be encoded (nothing is sent), otherwise as
    /// [`send`](Self::send).
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
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let len = encoded_len(value)?;
        self.send_with(len, |buf| encode_into(value, buf))
    }

    /// Receives the next message and decodes it as a `T`, using `buf` for the bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the message does not decode as a `T` (the message is consumed;
    /// the connection goes on), otherwise as [`recv`](Self::recv).
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub fn recv_value<T: DeserializeOwned>(
        &mut self,
        buf: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<T, Error> {
        self.recv(buf, timeout)?;
        decode(buf)
    }
}

#[cfg(ringbell_async)]
impl crate::tokio::AsyncConnection {
    /// Sends `value` as one message, encoded straight into the ring as
    /// [`Connection::send_value`] does.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if it cannot be encoded (nothing is sent), otherwise as
    /// [`send`](Self::send).
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn send_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let len = encoded_len(value)?;
        self.send_with(len, |buf| encode_into(value, buf)).await
    }

    /// Receives the next message and decodes it as a `T`, using `buf` for the bytes.
    /// Cancellation-safe, like [`recv`](Self::recv).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the message does not decode as a `T` (the connection goes on),
    /// otherwise as [`recv`](Self::recv).
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn recv_value<T: DeserializeOwned>(&mut self, buf: &mut Vec<u8>) -> Result<T, Error> {
        self.recv(buf).await?;
        decode(buf)
    }
}

#[cfg(ringbell_async)]
impl crate::tokio::Client {
    /// [`call`](Self::call) with typed request and response.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the request cannot be encoded or the reply does not decode as a
    /// `Resp`, otherwise as [`call`](Self::call).
    ///
    /// # Examples
    ///
    /// A server of typed calls and its client; [`AsyncServer::serve_values`] is the
    /// server's side.
    ///
    /// [`AsyncServer::serve_values`]: crate::tokio::AsyncServer::serve_values
    ///
    /// ```
    /// use ringbell::tokio::{AsyncServer, Client};
    /// use ringbell::{ClientConfig, ServerConfig};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Complete { prefix: String, max: usize }
    ///
    /// #[derive(Serialize, Deserialize, Debug, PartialEq)]
    /// struct Completions(Vec<String>);
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ringbell::Error> {
    /// # let path = std::env::temp_dir().join(format!("ringbell-doc-{}.sock", std::process::id()));
    /// // The server: typed requests in, typed responses out.
    /// let server = AsyncServer::bind(&path, ServerConfig::default())?;
    /// tokio::spawn(server.serve_values(|request: Complete| async move {
    ///     let words = ["ring", "ringbell", "rings"];
    ///     let found = words.iter().filter(|word| word.starts_with(&request.prefix));
    ///     Ok::<_, String>(Completions(found.take(request.max).map(|w| w.to_string()).collect()))
    /// }));
    ///
    /// // The client.
    /// let client = Client::connect(&path, ClientConfig::default()).await?;
    /// let request = Complete { prefix: "ringb".into(), max: 5 };
    /// let reply: Completions = client.call_value(&request).await?;
    /// assert_eq!(reply, Completions(vec!["ringbell".into()]));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn call_value<Req, Resp>(&self, request: &Req) -> Result<Resp, Error>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let reply = self.call(&encode(request)?).await?;
        decode(&reply)
    }

    /// [`call_stream`](Self::call_stream) with a typed request; read the stream's typed
    /// items with [`ResponseStream::next_value`] and its typed reply with
    /// [`ResponseStream::reply_value`]. The server's side is [`Call::request_value`] and
    /// [`Call::send_value`].
    ///
    /// [`ResponseStream::next_value`]: crate::tokio::ResponseStream::next_value
    /// [`ResponseStream::reply_value`]: crate::tokio::ResponseStream::reply_value
    /// [`Call::request_value`]: crate::tokio::Call::request_value
    /// [`Call::send_value`]: crate::tokio::Call::send_value
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the request cannot be encoded, otherwise as
    /// [`call_stream`](Self::call_stream).
    ///
    /// # Examples
    ///
    /// ```
    /// use ringbell::tokio::{AsyncServer, Call, Client};
    /// use ringbell::{ClientConfig, ServerConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ringbell::Error> {
    /// # let path = std::env::temp_dir().join(format!("ringbell-doc-stream-{}.sock", std::process::id()));
    /// let server = AsyncServer::bind(&path, ServerConfig::default())?;
    /// tokio::spawn(server.serve_calls(|mut call: Call| async move {
    ///     let words: u32 = call.request_value()?;
    ///     for index in 0..words {
    ///         call.send_value(&format!("token {index}")).await?;
    ///     }
    ///     Ok::<_, ringbell::Error>(b"done".to_vec())
    /// }));
    ///
    /// let client = Client::connect(&path, ClientConfig::default()).await?;
    /// let mut stream = client.call_stream_value(&3u32).await?;
    /// let mut tokens: Vec<String> = Vec::new();
    /// while let Some(token) = stream.next_value().await {
    ///     tokens.push(token?);
    /// }
    /// assert_eq!(tokens, ["token 0", "token 1", "token 2"]);
    /// assert_eq!(stream.reply().await?, b"done");
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn call_stream_value<Req>(
        &self,
        request: &Req,
    ) -> Result<crate::tokio::ResponseStream, Error>
    where
        Req: Serialize + ?Sized,
    {
        self.call_stream(&encode(request)?).await
    }
}

#[cfg(ringbell_async)]
impl crate::tokio::ResponseStream {
    /// [`next`](Self::next), decoded as a `T`: `None` once the stream has ended (then
    /// [`reply_value`](Self::reply_value) gives its reply); an item that does not decode is
    /// an [`Error::Codec`] item, and the stream goes on.
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn next_value<T: DeserializeOwned>(&mut self) -> Option<Result<T, Error>> {
        let item = self.next().await?;
        Some(item.and_then(|bytes| decode(&bytes)))
    }

    /// [`reply`](Self::reply), decoded as a `T`.
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn reply_value<T: DeserializeOwned>(self) -> Result<T, Error> {
        decode(&self.reply().await?)
    }
}

/// The rest of a typed call on the server, once its request was decoded and handed to the
/// handler (`call`): awaits the handler and encodes its response. A request that did not
/// decode, a handler's error and a response that cannot be encoded all fail that call
/// alone, with an error reply that says which.
#[cfg(ringbell_async)]
async fn finish_typed_call<Resp, F, E>(call: Result<F, Error>) -> Result<Vec<u8>, String>
where
    Resp: Serialize,
    F: std::future::Future<Output = Result<Resp, E>>,
    E: std::fmt::Display,
{
    let pending = call.map_err(undecodable_request)?;
    let response = pending.await.map_err(|error| error.to_string())?;
    encode(&response).map_err(unencodable_response)
}

/// The error reply to a request that does not decode as the handler's type.
fn undecodable_request(error: Error) -> String {
    format!("the request does not decode: {error}")
}

/// The error reply for a response that cannot be encoded.
fn unencodable_response(error: Error) -> String {
    format!("the response does not encode: {error}")
}

#[cfg(ringbell_async)]
impl crate::tokio::AsyncServer {
    /// [`serve`](Self::serve) with typed requests and responses, the server's side of
    /// [`Client::call_value`](crate::tokio::Client::call_value) (whose example shows both).
    /// Each request is decoded as a `Req` and its handler's response encoded, with postcard.
    /// A request that does not decode as a `Req` fails its call with an
    /// [`Error::Handler`] that says so, as a handler's error does; the connection goes on.
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn serve_values<Req, Resp, H, F, E>(self, handler: H)
    where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        H: Fn(Req) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = Result<Resp, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.serve_values_until(handler, std::future::pending(), Duration::MAX)
            .await
    }

    /// [`serve_until`](Self::serve_until) (a graceful shutdown) with typed requests and
    /// responses, as [`serve_values`](Self::serve_values).
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub async fn serve_values_until<Req, Resp, H, F, E>(
        self,
        handler: H,
        shutdown: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) where
        Req: DeserializeOwned + 'static,
        Resp: Serialize + 'static,
        H: Fn(Req) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = Result<Resp, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        self.serve_until(
            move |bytes: Vec<u8>| finish_typed_call(decode::<Req>(&bytes).map(&handler)),
            shutdown,
            grace,
        )
        .await
    }
}

impl crate::Server {
    /// [`serve`](Self::serve) with typed requests and responses, for programs without an
    /// async runtime; its clients call it with
    /// [`Client::call_value`](crate::tokio::Client::call_value). A request that does not
    /// decode as a `Req` fails its call with an error reply that says so; the connection
    /// goes on. Never returns.
    ///
    /// ```no_run
    /// use ringbell::{Server, ServerConfig};
    ///
    /// let server = Server::bind("/tmp/app.sock", ServerConfig::default())?;
    /// server.serve_values(|(a, b): (u64, u64)| Ok::<_, String>(a + b));
    /// # Ok::<(), ringbell::Error>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
    pub fn serve_values<Req, Resp, H, E>(&self, handler: H) -> !
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        H: Fn(Req) -> Result<Resp, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        self.serve(move |bytes: Vec<u8>| {
            let request = decode::<Req>(&bytes).map_err(undecodable_request)?;
            let response = handler(request).map_err(|error| error.to_string())?;
            encode(&response).map_err(unencodable_response)
        })
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
