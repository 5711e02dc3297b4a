//! Which CDC partition a payment's changes go to, computed as Kafka Connect's Java
//! producer does it (murmur2 of the key bytes, positive, modulo the partition count), so
//! that state for a partition can be rebuilt from a database query.

use uuid::Uuid;

/// Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The record key Debezium's JSON converter (schemas off) writes for a payment.
pub fn cdc_key(id: Uuid) -> String {
    format!("{{\"id\":\"{id}\"}}")
}

/// The partition of `id`'s changes among `partitions`.
pub fn partition_for(id: Uuid, partitions: i32) -> i32 {
    (murmur2(cdc_key(id).as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafka_reference_values() {
        let cases: [(&[u8], i32); 8] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"1", -1_993_445_489),
            (b"12345", -1_188_365_604),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for _ in 0..1000 {
            let id = Uuid::now_v7();
            let p = partition_for(id, 4);
            assert!((0..4).contains(&p));
            assert_eq!(p, partition_for(id, 4));
        }
        assert_eq!(
            cdc_key(Uuid::nil()),
            r#"{"id":"00000000-0000-0000-0000-000000000000"}"#
        );
    }
}
