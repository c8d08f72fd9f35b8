//! tonic (gRPC) over a Unix socket: the server and the client of `ringbell bench`'s
//! streamed-call rows, beside ringbell's `serve_calls` and a framed tokio `UnixStream`.
//!
//! Used as tonic's documentation shows: the server is `Server::builder().add_service(..)`
//! with `serve_with_incoming` on a `UnixListenerStream`; the client an `Endpoint` whose
//! `connect_with_connector` runs a `tower::service_fn` that connects a tokio `UnixStream`
//! and wraps it in hyper-util's `TokioIo` (the URI it is given is a placeholder: the
//! connector ignores it). A server-streaming handler spawns a task that sends the items
//! into a bounded `mpsc` channel whose `ReceiverStream` is the response, as tonic's
//! streaming examples do.
//!
//! The service is written by hand, not generated. tonic's generated code needs
//! `tonic-prost-build`, which runs `protoc`, a binary a fresh machine does not have (and
//! `protoc-bin-vendored` would ship one per platform); tonic-build's `manual` builder
//! avoids protoc but still generates code in a build script. The glue for two methods is
//! small: the messages are `#[derive(prost::Message)]` structs, the server a
//! `tower::Service` that routes on the path to `tonic::server::Grpc::server_streaming` or
//! `unary`, and the client calls `tonic::client::Grpc` with the same paths, all with
//! `tonic_prost::ProstCodec`. On the wire it is exactly what generated code would send
//! for this `.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package ringbell.bench;
//! message ItemsRequest { uint32 count = 1; }  // 0: until the client cancels
//! message Item { bytes payload = 1; }
//! message LastCancelRequest {}
//! message LastCancelReply { uint64 monotonic_ns = 1; }
//! service Streamed {
//!   rpc Items(ItemsRequest) returns (stream Item);
//!   rpc LastCancel(LastCancelRequest) returns (LastCancelReply);
//! }
//! ```
//!
//! **Cancel notice.** tonic gives a server-streaming handler no cancel callback. When the
//! client drops its `Streaming`, its HTTP/2 stream is reset (`RST_STREAM`); the server's
//! connection then drops the response body, hence the `ReceiverStream`, so the channel
//! closes and the producing task's next (or pending) `send` fails. That failed send is
//! where the handler notes CLOCK_MONOTONIC: the instant it learns that the client went
//! away, which `LastCancel` reports.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Bytes;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// How tonic is used, for the report.
pub const HOW: &str = "tonic 0.14 (gRPC, HTTP/2 by hyper) over a Unix socket, default \
     server and channel settings: Server::serve_with_incoming(UnixListenerStream), \
     Endpoint::connect_with_connector(a UnixStream in TokioIo); hand-written prost \
     messages and service glue (no protoc); a streaming handler's task sends into an mpsc \
     channel of 128 whose ReceiverStream is the response, and notes the cancel when a send \
     fails; one connection (channel) per stream";

const SERVICE: &str = "ringbell.bench.Streamed";
const ITEMS: &str = "/ringbell.bench.Streamed/Items";
const LAST_CANCEL: &str = "/ringbell.bench.Streamed/LastCancel";

/// Items a streaming handler may queue ahead of the connection: the capacity of tonic's
/// own streaming example.
const CHANNEL_CAPACITY: usize = 128;

/// Asks for `count` items; 0 asks for items until the client cancels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemsRequest {
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// One streamed item. `Bytes`, so that the server sends one shared buffer without a copy
/// per item (prost's `bytes = "bytes"`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LastCancelRequest {}

/// The CLOCK_MONOTONIC instant, in nanoseconds, at which a handler last saw a client go
/// away (0: never).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LastCancelReply {
    #[prost(uint64, tag = "1")]
    pub monotonic_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the bench reads in its own process.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Serves the `Streamed` service on a Unix socket at `path` (replacing a stale file) until
/// the listener fails; the items are `item_size` bytes. Runs on the caller's runtime
/// (the bench's server child uses a current-thread one, as for the other transports).
///
/// # Errors
///
/// Binding the socket, or the server failing.
pub async fn serve(path: &Path, item_size: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let service = StreamedService {
        state: Arc::new(State {
            item: Bytes::from(vec![0xa5; item_size]),
            last_cancel_ns: AtomicU64::new(0),
        }),
    };
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .map_err(io::Error::other)
}

struct State {
    item: Bytes,
    last_cancel_ns: AtomicU64,
}

/// What generated code would call `StreamedServer`: routes each call by its path.
#[derive(Clone)]
struct StreamedService {
    state: Arc<State>,
}

impl NamedService for StreamedService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for StreamedService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            // One `Grpc` per method: its codec is typed by the method's messages.
            Ok(match request.uri().path() {
                ITEMS => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .server_streaming(Items(state), request)
                        .await
                }
                LAST_CANCEL => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .unary(LastCancel(state), request)
                        .await
                }
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            })
        })
    }
}

struct Items(Arc<State>);

impl ServerStreamingService<ItemsRequest> for Items {
    type Response = Item;
    type ResponseStream = ReceiverStream<Result<Item, Status>>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<ItemsRequest>) -> Self::Future {
        let count = request.into_inner().count;
        let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CAPACITY);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            while count == 0 || sent < count {
                let item = Item {
                    payload: state.item.clone(),
                };
                // The failed send is tonic's notice that the client went away.
                if sender.send(Ok(item)).await.is_err() {
                    state
                        .last_cancel_ns
                        .store(monotonic_ns(), Ordering::Relaxed);
                    return;
                }
                sent += 1;
            }
        });
        ready(Ok(Response::new(ReceiverStream::new(receiver))))
    }
}

struct LastCancel(Arc<State>);

impl UnaryService<LastCancelRequest> for LastCancel {
    type Response = LastCancelReply;
    type Future = Ready<Result<Response<LastCancelReply>, Status>>;

    fn call(&mut self, _: Request<LastCancelRequest>) -> Self::Future {
        ready(Ok(Response::new(LastCancelReply {
            monotonic_ns: self.0.last_cancel_ns.load(Ordering::Relaxed),
        })))
    }
}

/// A client of the `Streamed` service: one channel, hence one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl GrpcClient {
    /// Connects to the server on the Unix socket at `path`.
    ///
    /// # Errors
    ///
    /// The socket's connect, or the HTTP/2 handshake, failing.
    pub async fn connect(path: &Path) -> io::Result<GrpcClient> {
        let path = path.to_owned();
        let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = UnixStream::connect(path).await?;
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(io::Error::other)?;
        Ok(GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|error| Status::unavailable(format!("the channel is not ready: {error}")))
    }

    /// Starts a server-streaming call for `count` items (0: until dropped).
    ///
    /// # Errors
    ///
    /// The call's status, if the server refused it.
    pub async fn items(&mut self, count: u32) -> Result<ItemStream, Status> {
        self.ready().await?;
        let response: Response<tonic::Streaming<Item>> = self
            .grpc
            .server_streaming(
                Request::new(ItemsRequest { count }),
                PathAndQuery::from_static(ITEMS),
                ProstCodec::default(),
            )
            .await?;
        Ok(ItemStream {
            inner: response.into_inner(),
        })
    }

    /// A unary call: the CLOCK_MONOTONIC instant of the last cancel the server saw.
    ///
    /// # Errors
    ///
    /// The call's status.
    pub async fn last_cancel(&mut self) -> Result<u64, Status> {
        self.ready().await?;
        let reply: Response<LastCancelReply> = self
            .grpc
            .unary(
                Request::new(LastCancelRequest {}),
                PathAndQuery::from_static(LAST_CANCEL),
                ProstCodec::default(),
            )
            .await?;
        Ok(reply.into_inner().monotonic_ns)
    }
}

/// The items of one call; dropping it cancels the call.
#[derive(Debug)]
pub struct ItemStream {
    inner: tonic::Streaming<Item>,
}

impl ItemStream {
    /// The next item's length, `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<usize, Status>> {
        self.inner
            .message()
            .await
            .transpose()
            .map(|item| item.map(|item| item.payload.len()))
    }
}
