//! Micro-benchmarks of the ring and its framing, in one thread, through
//! `ringbell::bench_api` (the crate's own `Producer` and `Consumer` over heap memory, with
//! every check a connection makes).
//!
//! `cargo bench -p ringbell --bench ring`; what each group measures, and figures, are in
//! `docs/MICROBENCHMARKS.md`. Round trips between two spinning sides are not here: they
//! need two idle cores, and with one of them busy the figure measures the scheduler (see
//! that file). `ringbell demo` measures them across processes, on pinned cores, beside
//! its baselines (README, "Figures").

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringbell::bench_api::{decode_frame_header, encode_frame_header, FrameKind, HeapRing};

/// The ring size of the ring benchmarks: 128 KiB, the default `ServerConfig` capacity.
const RING_CAPACITY: usize = 128 << 10;

/// Encoding and decoding one 16-byte frame header, the fixed cost of every frame.
fn frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        b.iter(|| {
            encode_frame_header(
                black_box(64),
                black_box(FrameKind::Message),
                black_box(0x0123_4567_89ab_cdef),
            )
        })
    });
    let header = encode_frame_header(64, FrameKind::Message, 0x0123_4567_89ab_cdef);
    group.bench_function("decode", |b| {
        b.iter(|| decode_frame_header(black_box(&header)).expect("a valid header"))
    });
    group.finish();
}

/// One message pushed and popped at once, so the ring never holds more than one frame: the
/// cost of the ring itself per message (framing, index checks, both copies), with the
/// cache lines all hot in this core. The ring wraps every `capacity / frame` iterations,
/// so the padding at its end is paid too, in proportion.
fn ring_push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_push_pop");
    for size in [0usize, 64, 1 << 10, 16 << 10] {
        // Zero bytes per second says nothing; count messages for the empty payload.
        group.throughput(match size {
            0 => Throughput::Elements(1),
            _ => Throughput::Bytes(size as u64),
        });
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut ring = HeapRing::new(RING_CAPACITY);
        let mut out = Vec::with_capacity(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut correlation = 0u64;
            b.iter(|| {
                correlation += 1;
                assert!(ring.push(black_box(payload), correlation));
                ring.pop_into(black_box(&mut out))
                    .expect("the message just pushed")
            })
        });
    }
    group.finish();
}

/// 64-byte messages pushed until the ring is full, then all popped: streaming, where the
/// producer runs ahead and the consumer hands space back lazily (once an eighth of the
/// ring is free, and when it runs dry). One iteration is one message, so the rate is
/// exact although how many messages fill the ring depends on where the fill starts.
fn ring_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_batch");
    group.throughput(Throughput::Elements(1));
    let payload = [0x5a_u8; 64];
    let mut ring = HeapRing::new(RING_CAPACITY);
    let mut out = Vec::with_capacity(payload.len());
    group.bench_function("64", |b| {
        b.iter_custom(|messages| {
            let start = Instant::now();
            let mut remaining = messages;
            while remaining > 0 {
                let mut pushed = 0;
                while pushed < remaining && ring.push(black_box(&payload), pushed) {
                    pushed += 1;
                }
                for _ in 0..pushed {
                    ring.pop_into(black_box(&mut out))
                        .expect("a message pushed in this batch");
                }
                // Runs the ring dry, which hands the last space back, as a receiver does
                // before it waits.
                assert_eq!(ring.pop_into(&mut out), None);
                remaining -= pushed;
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, frame_header, ring_push_pop, ring_batch);
criterion_main!(benches);
