//! The client side of the tonic row: the same measurements as ringbell's, through
//! `ringbell_bench_peers::grpc` (its module docs say how tonic is used). Each stream is
//! one server-streaming `Items` call; cancelling is dropping its `ItemStream`, which
//! resets the HTTP/2 stream; the handler's noted instant comes back from the unary
//! `LastCancel` call, which is also the unary call timed here.

use std::path::Path;
use std::time::{Duration, Instant};

use ringbell_bench_peers::grpc::{GrpcClient, ItemStream};

use super::{monotonic_ns, percentile_us, wait_for_socket, StreamedFigures, StreamedPlan};
use crate::error::CliError;

async fn connect(path: &Path) -> Result<GrpcClient, CliError> {
    wait_for_socket(path).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match GrpcClient::connect(path).await {
            Ok(client) => return Ok(client),
            // The socket file exists a moment before the server accepts on it.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => return Err(CliError::new(format!("connecting over gRPC: {error}"))),
        }
    }
}

async fn start(client: &mut GrpcClient, count: u32) -> Result<ItemStream, CliError> {
    client
        .items(count)
        .await
        .map_err(|status| CliError::new(format!("starting a gRPC stream: {status}")))
}

async fn drain(mut stream: ItemStream) -> Result<u64, CliError> {
    let mut items = 0;
    while let Some(item) = stream.next().await {
        item.map_err(|status| CliError::new(format!("a gRPC item: {status}")))?;
        items += 1;
    }
    Ok(items)
}

/// A rate counts only what arrived; this says so when a stream ended short.
fn expect_items(got: u64, asked: u64) -> Result<u64, CliError> {
    if got == asked {
        Ok(got)
    } else {
        Err(CliError::new(format!(
            "the gRPC streams brought {got} items of the {asked} asked for"
        )))
    }
}

async fn last_cancel(client: &mut GrpcClient) -> Result<u64, CliError> {
    client
        .last_cancel()
        .await
        .map_err(|status| CliError::new(format!("a unary gRPC call: {status}")))
}

pub(super) async fn measure(path: &Path, plan: StreamedPlan) -> Result<StreamedFigures, CliError> {
    let mut client = connect(path).await?;
    let mut first_items = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        let mut stream = start(&mut client, 1).await?;
        stream.next().await;
        first_items.push(started.elapsed().as_nanos() as u64);
        drain(stream).await?;
    }
    let mut unary = Vec::new();
    for _ in 0..plan.first_item_calls {
        let started = Instant::now();
        last_cancel(&mut client).await?;
        unary.push(started.elapsed().as_nanos() as u64);
    }
    let started = Instant::now();
    let stream = start(&mut client, plan.items).await?;
    let items = expect_items(drain(stream).await?, plan.items.into())?;
    let items_per_second = items as f64 / started.elapsed().as_secs_f64();

    // One connection per stream, as the other transports have.
    let mut clients = Vec::new();
    for _ in 0..plan.concurrent {
        clients.push(connect(path).await?);
    }
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for concurrent in &mut clients {
        let stream = start(concurrent, plan.concurrent_items).await?;
        streams.spawn_local(drain(stream));
    }
    let mut total = 0;
    while let Some(items) = streams.join_next().await {
        total += items.map_err(|error| CliError::new(error.to_string()))??;
    }
    let elapsed = started.elapsed();
    let total = expect_items(
        total,
        u64::from(plan.concurrent) * u64::from(plan.concurrent_items),
    )?;
    let concurrent_items_per_second = total as f64 / elapsed.as_secs_f64();

    let mut busy = tokio::task::JoinSet::new();
    for busy_client in clients.iter_mut().take(plan.busy_streams as usize) {
        let mut stream = start(busy_client, 0).await?;
        busy.spawn_local(async move { while let Some(Ok(_)) = stream.next().await {} });
    }
    let mut cancels = Vec::new();
    for _ in 0..plan.cancels {
        let mut stream = start(&mut client, 0).await?;
        stream.next().await;
        let cancelled_at = monotonic_ns();
        drop(stream);
        let observed = loop {
            let observed = last_cancel(&mut client).await?;
            if observed >= cancelled_at {
                break observed;
            }
            tokio::task::yield_now().await;
        };
        cancels.push(observed - cancelled_at);
    }
    busy.abort_all();
    Ok(StreamedFigures {
        items_per_second,
        first_item_p50_us: percentile_us(&mut first_items, 0.5),
        unary_p50_us: percentile_us(&mut unary, 0.5),
        concurrent_items_per_second,
        cancel_p50_us: percentile_us(&mut cancels, 0.5),
        cancel_p99_us: percentile_us(&mut cancels, 0.99),
    })
}
