//! libFuzzer target: `pointsub_proto::check::server_inbound` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pointsub_proto::check::server_inbound(data);
});
