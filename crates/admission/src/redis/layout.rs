//! Where a campaign's admission state lives in Redis: one set of keys per bucket (`shards` in
//! the campaign file, default 1), each under a hash tag of its own so that a Redis Cluster
//! puts the buckets on different slots, and so on different primaries.
//!
//! Bucket 0's tag is the campaign id itself, so a campaign of one bucket keeps the keys it
//! always had. Bucket `b` (≥ 1) takes the first tag `{id}#{b}.{n}` (n = 0, 1, …) whose slot
//! falls in the `b`-th of `buckets` equal arcs of the 16,384 slots, counted from bucket 0's
//! slot. A cluster whose primaries each hold one contiguous range (what `redis-cli --cluster
//! create` makes) then gives K buckets to K different primaries when K ≤ primaries; every
//! host computes the same tags.

/// Redis Cluster's slot count.
const SLOTS: u32 = 16_384;

/// The keys of one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// Hash: capacity (the bucket's stock), opens_at, closes_at, admitted, seq, touched, and
    /// for the grants: buckets, received, given.
    pub meta: String,
    /// Hash: user id -> position (the per-user guard).
    pub users: String,
    /// Stream of admitted requests, read by the issuers' consumer group.
    pub queue: String,
    /// Hash of the grants of stock this bucket gave or received: `out:<id>` / `in:<id>` ->
    /// coupons (see `give.lua`).
    pub ledger: String,
}

/// A campaign's buckets and their keys.
#[derive(Debug)]
pub struct Layout {
    pub buckets: u32,
    pub keys: Vec<Keys>,
}

impl Layout {
    /// The layout of `campaign_id` split into `buckets` (at least 1).
    pub fn new(campaign_id: &str, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let keys = (0..buckets)
            .map(|b| {
                let tag = tag(campaign_id, b, buckets);
                Keys {
                    meta: format!("fc:{{{tag}}}:meta"),
                    users: format!("fc:{{{tag}}}:users"),
                    queue: format!("fc:{{{tag}}}:queue"),
                    ledger: format!("fc:{{{tag}}}:ledger"),
                }
            })
            .collect();
        Self { buckets, keys }
    }

    /// The keys of bucket `b` (`b < buckets`).
    pub fn bucket(&self, b: u32) -> &Keys {
        &self.keys[b as usize]
    }
}

/// Redis Cluster's slot of a hash tag: CRC-16/XMODEM modulo 16,384 (the cluster
/// specification's `HASH_SLOT`).
pub fn slot(tag: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes())) % SLOTS
}

/// The hash tag of bucket `b` (see the module's documentation).
fn tag(campaign_id: &str, bucket: u32, buckets: u32) -> String {
    if bucket == 0 {
        return campaign_id.to_owned();
    }
    let width = SLOTS / buckets;
    let start = (slot(campaign_id) + bucket * width) % SLOTS;
    // Each try lands in the arc with probability 1/buckets ≥ 1/64: 10,000 tries fail with
    // probability below 1e-60.
    (0..10_000)
        .map(|n| format!("{campaign_id}#{bucket}.{n}"))
        .find(|t| (slot(t) + SLOTS - start) % SLOTS < width)
        .unwrap_or_else(|| format!("{campaign_id}#{bucket}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // The values `CLUSTER KEYSLOT` gives, from the Redis documentation.
        assert_eq!(slot("somekey"), 11_058);
        assert_eq!(slot("hash_tag"), 2_515);
    }

    #[test]
    fn one_bucket_keeps_the_old_keys() {
        let l = Layout::new("spring", 1);
        assert_eq!(l.buckets, 1);
        assert_eq!(l.bucket(0).meta, "fc:{spring}:meta");
        assert_eq!(l.bucket(0).queue, "fc:{spring}:queue");
    }

    #[test]
    fn buckets_spread_over_the_slot_space() {
        for id in ["spring", "a", "sale-2026"] {
            let l = Layout::new(id, 3);
            let home = slot(id);
            let arcs: Vec<u32> = l
                .keys
                .iter()
                .map(|k| {
                    let tag = &k.meta[k.meta.find('{').unwrap() + 1..k.meta.find('}').unwrap()];
                    ((slot(tag) + SLOTS - home) % SLOTS) / (SLOTS / 3)
                })
                .collect();
            assert_eq!(arcs, vec![0, 1, 2], "{id}: {:?}", l.keys);
            assert_eq!(
                l.keys,
                Layout::new(id, 3).keys,
                "every host computes the same"
            );
        }
    }
}
