//! Token buckets on admission requests (per shopper and per client address, governor's GCRA)
//! and caps on live streams (per address and per shopper), from `limits.*` and a campaign's
//! own `[limits]`.
//!
//! A shopper's bucket is taken first: requests a shopper's own bucket refused do not spend the
//! address's, so one greedy shopper behind a shared address (a carrier's NAT, an office) does
//! not lock out the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;
use firstcome_core::campaign::Campaign;
use firstcome_core::user::UserId;
use firstcome_platform::config::LimitsConfig;

/// One keyed token bucket set, or none when its rate is 0.
#[derive(Debug)]
struct Buckets<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    rate: (u32, u32),
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `per_s` sustained, `burst` at once (a burst of 0 is `per_s`).
    fn new(per_s: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_s).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            rate: (per_s, burst),
        }
    }

    /// `Err(wait)` when the key's bucket is empty.
    fn take(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn sweep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The admission buckets of one set of rates (the host's, or a campaign's own).
#[derive(Debug)]
struct AdmissionBuckets {
    users: Buckets<UserId>,
    addresses: Buckets<IpAddr>,
}

impl AdmissionBuckets {
    fn new(rates: [u32; 4]) -> Self {
        Self {
            users: Buckets::new(rates[0], rates[1]),
            addresses: Buckets::new(rates[2], rates[3]),
        }
    }

    fn rates(&self) -> [u32; 4] {
        [
            self.users.rate.0,
            self.users.rate.1,
            self.addresses.rate.0,
            self.addresses.rate.1,
        ]
    }
}

/// The host's limits: admission buckets (its own and each campaign's that sets rates) and
/// the count of open live streams per address and per shopper.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    host: AdmissionBuckets,
    /// Buckets of campaigns with their own `[limits]`, rebuilt when those change.
    campaigns: Mutex<HashMap<String, Arc<AdmissionBuckets>>>,
    streams: Arc<Mutex<HashMap<StreamKey, u32>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum StreamKey {
    Address(IpAddr),
    User(UserId),
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            host: AdmissionBuckets::new([
                config.per_user_per_s,
                config.per_user_burst,
                config.per_address_per_s,
                config.per_address_burst,
            ]),
            config: config.clone(),
            campaigns: Mutex::default(),
            streams: Arc::default(),
        }
    }

    fn buckets_of(&self, campaign: &Campaign) -> Option<Arc<AdmissionBuckets>> {
        let own = campaign.limits();
        if own.is_empty() {
            return None;
        }
        let c = &self.config;
        let rates = [
            own.per_user_per_s.unwrap_or(c.per_user_per_s),
            own.per_user_burst.unwrap_or(c.per_user_burst),
            own.per_address_per_s.unwrap_or(c.per_address_per_s),
            own.per_address_burst.unwrap_or(c.per_address_burst),
        ];
        let mut campaigns = self.campaigns.lock().expect("never poisoned");
        let buckets = campaigns
            .entry(campaign.id().to_owned())
            .or_insert_with(|| Arc::new(AdmissionBuckets::new(rates)));
        if buckets.rates() != rates {
            *buckets = Arc::new(AdmissionBuckets::new(rates));
        }
        Some(buckets.clone())
    }

    /// Takes one admission request of `user` from `address` for `campaign`.
    pub fn admit(
        &self,
        campaign: &Campaign,
        user: &UserId,
        address: IpAddr,
    ) -> Result<(), ApiError> {
        let own = self.buckets_of(campaign);
        let buckets = own.as_deref().unwrap_or(&self.host);
        if let Err(wait) = buckets.users.take(user) {
            metrics::counter!("firstcome_rate_limited_total", "by" => "user").increment(1);
            return Err(ApiError::too_many(
                "rate_limited",
                "too many requests from this shopper; try again after Retry-After seconds",
                wait,
            ));
        }
        if let Err(wait) = buckets.addresses.take(&bucket_address(address)) {
            metrics::counter!("firstcome_rate_limited_total", "by" => "address").increment(1);
            return Err(ApiError::too_many(
                "rate_limited",
                "too many requests from this address; try again after Retry-After seconds",
                wait,
            ));
        }
        Ok(())
    }

    /// A place among the open streams of `address` and of `user`; refused with
    /// `429 too_many_streams` when either is at its cap.
    pub fn open_stream(
        &self,
        address: IpAddr,
        user: Option<&UserId>,
    ) -> Result<StreamPermit, ApiError> {
        let mut keys = vec![(
            StreamKey::Address(bucket_address(address)),
            self.config.streams_per_address,
        )];
        if let Some(user) = user {
            keys.push((StreamKey::User(user.clone()), self.config.streams_per_user));
        }
        let mut open = self.streams.lock().expect("never poisoned");
        for (key, cap) in &keys {
            if open.get(key).copied().unwrap_or(0) >= *cap {
                metrics::counter!("firstcome_streams_refused_total").increment(1);
                let whose = match key {
                    StreamKey::Address(_) => "this address",
                    StreamKey::User(_) => "this shopper",
                };
                return Err(ApiError::too_many(
                    "too_many_streams",
                    format!("{whose} has {cap} live streams open already; close one first"),
                    Duration::from_secs(5),
                ));
            }
        }
        for (key, _) in &keys {
            *open.entry(key.clone()).or_default() += 1;
        }
        Ok(StreamPermit {
            keys: keys.into_iter().map(|(key, _)| key).collect(),
            streams: self.streams.clone(),
        })
    }

    /// How long a live stream may stay open (`limits.stream_max_lifetime_s`).
    pub fn stream_lifetime(&self) -> Duration {
        Duration::from_secs(self.config.stream_max_lifetime_s)
    }

    /// Forgets buckets that have refilled, and the buckets of campaigns no longer asked about.
    pub fn sweep(&self) {
        self.host.users.sweep();
        self.host.addresses.sweep();
        let campaigns: Vec<_> = self
            .campaigns
            .lock()
            .expect("never poisoned")
            .values()
            .cloned()
            .collect();
        for buckets in campaigns {
            buckets.users.sweep();
            buckets.addresses.sweep();
        }
    }
}

/// The address a bucket is kept for: an IPv4 address itself, an IPv6 address's /64 (one
/// subscriber's network: a client given a /64 would otherwise have 2^64 buckets).
pub(crate) fn bucket_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// A live stream's place; dropping it (the stream ended or the client left) frees it.
#[derive(Debug)]
pub struct StreamPermit {
    keys: Vec<StreamKey>,
    streams: Arc<Mutex<HashMap<StreamKey, u32>>>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.streams.lock().expect("never poisoned");
        for key in &self.keys {
            if let Some(count) = open.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firstcome_core::campaign::CampaignSpec;

    fn campaign(limits: firstcome_core::campaign::CampaignLimits) -> Campaign {
        let spec = CampaignSpec::from_toml("name = \"c\"\ncapacity = 10\nvalue = 1\n").unwrap();
        Campaign::new("c", CampaignSpec { limits, ..spec }).unwrap()
    }

    #[test]
    fn a_greedy_shopper_does_not_spend_the_address() {
        let limits = Limits::new(&LimitsConfig {
            per_user_per_s: 1,
            per_user_burst: 2,
            per_address_per_s: 1,
            per_address_burst: 5,
            ..LimitsConfig::default()
        });
        let c = campaign(Default::default());
        let here: IpAddr = "198.51.100.1".parse().unwrap();
        let greedy = UserId::parse("greedy").unwrap();
        assert!(limits.admit(&c, &greedy, here).is_ok());
        assert!(limits.admit(&c, &greedy, here).is_ok());
        for _ in 0..50 {
            let e = limits.admit(&c, &greedy, here).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (429, "rate_limited"));
            assert!(
                e.headers
                    .iter()
                    .any(|(n, v)| *n == "retry-after" && v.parse::<u64>().unwrap() >= 1)
            );
        }
        for i in 0..3 {
            let other = UserId::parse(&format!("other-{i}")).unwrap();
            assert!(limits.admit(&c, &other, here).is_ok(), "shopper {i}");
        }
        let late = UserId::parse("late").unwrap();
        assert!(
            limits.admit(&c, &late, here).is_err(),
            "the address's burst is spent"
        );
    }

    #[test]
    fn an_ipv6_network_shares_one_bucket() {
        let limits = Limits::new(&LimitsConfig {
            per_address_per_s: 1,
            per_address_burst: 2,
            ..LimitsConfig::default()
        });
        let c = campaign(Default::default());
        for (i, address) in ["2001:db8:1:1::1", "2001:db8:1:1::2", "2001:db8:1:1:ffff::9"]
            .iter()
            .enumerate()
        {
            let user = UserId::parse(&format!("u{i}")).unwrap();
            let answer = limits.admit(&c, &user, address.parse().unwrap());
            assert_eq!(answer.is_ok(), i < 2, "{address}");
        }
        let elsewhere = UserId::parse("v").unwrap();
        assert!(
            limits
                .admit(&c, &elsewhere, "2001:db8:1:2::1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn a_campaign_sets_its_own_rates_and_zero_turns_a_bucket_off() {
        let limits = Limits::new(&LimitsConfig::default());
        let c = campaign(firstcome_core::campaign::CampaignLimits {
            per_user_per_s: Some(0),
            ..Default::default()
        });
        let user = UserId::parse("u").unwrap();
        let here: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..100 {
            assert!(limits.admit(&c, &user, here).is_ok());
        }
    }

    #[test]
    fn streams_are_capped_and_freed() {
        let limits = Limits::new(&LimitsConfig {
            streams_per_address: 2,
            streams_per_user: 1,
            ..LimitsConfig::default()
        });
        let here: IpAddr = "198.51.100.1".parse().unwrap();
        let alice = UserId::parse("alice").unwrap();
        let first = limits.open_stream(here, Some(&alice)).unwrap();
        let e = limits.open_stream(here, Some(&alice)).unwrap_err();
        assert_eq!(e.code, "too_many_streams");
        let second = limits.open_stream(here, None).unwrap();
        assert!(limits.open_stream(here, None).is_err());
        drop(first);
        drop(second);
        assert!(limits.streams.lock().unwrap().is_empty());
        let _again = limits.open_stream(here, Some(&alice)).unwrap();
    }
}
