//! Wire codec: encoding and decoding direct-message batches by payload size
//! and batch size.
//!
//! `cargo bench --bench codec`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use distribus::{testing, Payload};

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for size in [16usize, 256, 4096, 65_536] {
        let payload = Payload::postcard(&vec![7u8; size][..]).expect("payload");
        for batch in [1usize, 64] {
            let frame = testing::encode_batch(batch, &payload).expect("encode");
            let id = format!("{size}B_x{batch}");
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_with_input(BenchmarkId::new("encode", &id), &batch, |b, &n| {
                b.iter(|| testing::encode_batch(n, &payload).expect("encode"))
            });
            g.bench_with_input(BenchmarkId::new("decode", &id), &frame, |b, f| {
                b.iter(|| testing::decode_batch(f).expect("decode"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
