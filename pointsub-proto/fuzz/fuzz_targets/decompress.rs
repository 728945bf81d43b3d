//! libFuzzer target: `pointsub_proto::check::decompress` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pointsub_proto::check::decompress(data);
});
