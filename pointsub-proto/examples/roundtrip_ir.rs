//! Round trips through both cores in memory, for counting instructions
//! per request: the core's own cost, with no I/O, runtime or cipher.
//!
//! ```text
//! cargo build --release -p pointsub-proto --example roundtrip_ir
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/roundtrip_ir 100 20000
//! callgrind_annotate /tmp/cg.out | head -30
//! ```
//!
//! Arguments: requests in flight per batch (default 100) and requests in
//! all (default 20,000). Two batches run first to open and pool the
//! streams. Instructions per request: the total `Ir` divided by the
//! requests (the warm-up and process start are a small part of it; run
//! twice with different totals and divide the difference for the exact
//! figure).

#[path = "../benches/support/pair.rs"]
mod pair;

use bytes::Bytes;

fn main() {
    let mut args = std::env::args().skip(1);
    let in_flight: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let body = Bytes::from(vec![0x5a; 581]);
    let mut pair = pair::Pair::new();
    pair.batch(&body, in_flight);
    pair.batch(&body, in_flight);
    let batches = total / in_flight.max(1);
    for _ in 0..batches {
        pair.batch(&body, in_flight);
    }
    println!(
        "{} requests of 581 B, {in_flight} in flight, {} streams opened",
        batches * in_flight,
        pair.opened
    );
}
