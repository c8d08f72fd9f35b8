//! What the stream pattern's processes agree on without telling each other: each
//! stream's request and cancel point, drawn from the seed ([`StreamSet::spec`]), each
//! item's bytes ([`expected_item`]), and the one line a client process reports
//! ([`StreamReport`]).

use super::StreamFault;

/// Items a stream may have in flight: small, so that a cancelled stream's handler is
/// still blocked in `send` when the cancel arrives, and must observe it.
pub(super) const WINDOW: u32 = 4;

/// The window, in bytes, that lets a stream of `item_size`-byte items have [`WINDOW`]
/// in flight (each item costs its size plus the protocol's overhead).
pub(super) fn window_bytes(item_size: u32) -> u32 {
    WINDOW * (item_size + ringbell::tokio::ITEM_OVERHEAD)
}

/// How a client process's report line begins.
pub(super) const REPORT_PREFIX: &str = "done ";

/// What every process needs to derive the same streams: the parent to know what to
/// expect, each client process to make and check its share.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamSet {
    pub(super) seed: u64,
    pub(super) item_size: u32,
    pub(super) fault: Option<StreamFault>,
}

/// One stream's request, and what its client does with it.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamSpec {
    pub(super) stream: u64,
    pub(super) count: u32,
    pub(super) item_size: u32,
    /// Drop the stream after this many items, if set.
    pub(super) cancel_after: Option<u32>,
}

impl StreamSet {
    /// Draws stream `stream`'s count and cancel point from the run's seed: the same seed
    /// gives the same streams and cancels, in whichever process.
    pub(super) fn spec(&self, stream: u64) -> StreamSpec {
        let mut random = mix(self.seed ^ mix(stream));
        let count = 16 + (random % 49) as u32;
        random = mix(random);
        // About a quarter cancelled, at a point that leaves more than a window of items
        // unsent, so that the handler is still sending when the cancel arrives.
        // The stream a fault targets is never cancelled, so the fault always shows.
        let faulted = self.fault.is_some() && stream == 0;
        // And not before its first item: a call cancelled before a handler takes it
        // never reaches one, so could not be observed.
        let cancel_after = (random.is_multiple_of(4) && !faulted)
            .then(|| 1 + (mix(random) % u64::from(count - WINDOW - 3)) as u32);
        StreamSpec {
            stream,
            count,
            item_size: self.item_size,
            cancel_after,
        }
    }
}

impl StreamSpec {
    /// The items its client verifies: all of them, or those before its cancel point.
    pub(super) fn items_to_verify(&self) -> u64 {
        u64::from(self.cancel_after.unwrap_or(self.count))
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut request = Vec::with_capacity(16);
        request.extend_from_slice(&self.stream.to_le_bytes());
        request.extend_from_slice(&self.count.to_le_bytes());
        request.extend_from_slice(&self.item_size.to_le_bytes());
        request
    }

    pub(super) fn decode(request: &[u8]) -> Option<(u64, u32, u32)> {
        if request.len() != 16 {
            return None;
        }
        let stream = u64::from_le_bytes(request[0..8].try_into().ok()?);
        let count = u32::from_le_bytes(request[8..12].try_into().ok()?);
        let item_size = u32::from_le_bytes(request[12..16].try_into().ok()?);
        (count <= 1 << 16 && item_size <= 1 << 16).then_some((stream, count, item_size))
    }
}

/// SplitMix64's finaliser: a cheap, well-spread hash of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Item `index` of stream `stream`: the stream id, the index, then a payload that
/// depends on both, so that a misrouted or shifted item cannot pass.
pub(super) fn expected_item(stream: u64, index: u32, item_size: u32) -> Vec<u8> {
    let mut item = Vec::with_capacity(12 + item_size as usize);
    item.extend_from_slice(&stream.to_le_bytes());
    item.extend_from_slice(&index.to_le_bytes());
    let mut word = mix(stream ^ (u64::from(index) << 40));
    for byte in 0..item_size {
        if byte % 8 == 0 {
            word = mix(word);
        }
        item.push((word >> ((byte % 8) * 8)) as u8);
    }
    item
}

/// What one client process saw of its streams, sent to the parent as one line:
/// `done streams=S completed=C cancelled=X items=I failed=F[ errors=<text>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct StreamReport {
    /// Streams this process opened.
    pub(super) streams: u64,
    /// Streams whose every item and reply were checked.
    pub(super) completed: u64,
    /// Streams dropped at their cancel point, every item before it checked.
    pub(super) cancelled: u64,
    /// Items checked byte for byte.
    pub(super) items: u64,
    /// Streams that went wrong: lost, duplicated, misrouted or corrupted items, a
    /// missing or wrong reply, a failed call.
    pub(super) failed: u64,
    /// What went wrong with each failed stream, sorted, joined by `; `.
    pub(super) errors: Option<String>,
}

impl StreamReport {
    pub(super) fn to_line(&self) -> String {
        let mut line = format!(
            "{REPORT_PREFIX}streams={} completed={} cancelled={} items={} failed={}",
            self.streams, self.completed, self.cancelled, self.items, self.failed
        );
        if let Some(errors) = &self.errors {
            // Last, because it holds spaces; never a line break.
            line.push_str(" errors=");
            line.extend(errors.chars().map(|c| if c.is_control() { ' ' } else { c }));
        }
        line
    }

    pub(super) fn parse(line: &str) -> Result<StreamReport, String> {
        let body = line
            .strip_prefix(REPORT_PREFIX)
            .ok_or_else(|| format!("not a stream report: {line:?}"))?;
        let (fields, errors) = match body.split_once(" errors=") {
            Some((fields, errors)) => (fields, Some(errors.to_owned())),
            None => (body, None),
        };
        let mut report = StreamReport {
            errors,
            ..StreamReport::default()
        };
        for field in fields.split(' ') {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| format!("malformed field {field:?} in {line:?}"))?;
            let value: u64 = value
                .parse()
                .map_err(|_| format!("{name}={value:?} is not a count in {line:?}"))?;
            match name {
                "streams" => report.streams = value,
                "completed" => report.completed = value,
                "cancelled" => report.cancelled = value,
                "items" => report.items = value,
                "failed" => report.failed = value,
                _ => return Err(format!("unknown field {name:?} in {line:?}")),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_differ_by_stream_and_index() {
        assert_ne!(expected_item(0, 1, 16), expected_item(1, 1, 16));
        assert_ne!(expected_item(0, 1, 16)[12..], expected_item(0, 2, 16)[12..]);
    }

    #[test]
    fn cancel_points_leave_more_than_a_window_unsent() {
        let set = StreamSet {
            seed: 7,
            item_size: 64,
            fault: None,
        };
        for stream in 0..400 {
            let spec = set.spec(stream);
            if let Some(at) = spec.cancel_after {
                assert!(at >= 1 && at + WINDOW + 2 <= spec.count, "{spec:?}");
            }
        }
    }

    #[test]
    fn a_faulted_stream_is_never_cancelled() {
        // A seed that cancels stream 0 when no fault spares it.
        let seed = (0..100)
            .find(|&seed| {
                StreamSet {
                    seed,
                    item_size: 8,
                    fault: None,
                }
                .spec(0)
                .cancel_after
                .is_some()
            })
            .expect("some seed cancels stream 0");
        let spared = StreamSet {
            seed,
            item_size: 8,
            fault: Some(StreamFault::Skip),
        };
        assert_eq!(spared.spec(0).cancel_after, None);
    }

    #[test]
    fn reports_survive_their_line() {
        let report = StreamReport {
            streams: 100,
            completed: 70,
            cancelled: 27,
            items: 3_500,
            failed: 3,
            errors: Some("stream 0: item 1 lost (got 2 next); stream 4: reply\nmissing".into()),
        };
        let line = report.to_line();
        assert!(!line.contains('\n'));
        let parsed = StreamReport::parse(&line).unwrap();
        assert_eq!(
            parsed.errors.as_deref(),
            Some("stream 0: item 1 lost (got 2 next); stream 4: reply missing")
        );
        assert_eq!(
            StreamReport {
                errors: None,
                ..parsed
            },
            StreamReport {
                errors: None,
                ..report
            }
        );
        let clean = StreamReport::default();
        assert_eq!(StreamReport::parse(&clean.to_line()).unwrap(), clean);
        assert!(StreamReport::parse("ready 4").is_err());
        assert!(StreamReport::parse("done streams=x").is_err());
    }
}
