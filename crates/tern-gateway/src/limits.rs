//! Abuse limits, all on `governor` token buckets: logins per username and
//! per client IP, HTTP requests per IP, messages and connects per user.
//! Limits are per gateway node; behind a load balancer a client meets at
//! most `nodes ×` the configured rate.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

/// Configured rates (`TERN__GATEWAY__LIMITS__*`). A rate of 0 disables
/// that limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Login attempts per username per minute.
    pub logins_per_user_per_minute: u32,
    /// Login attempts per client IP per minute.
    pub logins_per_ip_per_minute: u32,
    /// HTTP requests per client IP per second (bursts of twice that).
    pub http_per_ip_per_second: u32,
    /// Messages a user may send per second (bursts of twice that).
    pub messages_per_user_per_second: u32,
    /// WebSocket connections a user may open per minute.
    pub connects_per_user_per_minute: u32,
    /// Take the client IP from the last `X-Forwarded-For` entry (the one the
    /// load balancer adds); only set this behind a load balancer.
    pub trust_forwarded_for: bool,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            logins_per_user_per_minute: 10,
            logins_per_ip_per_minute: 60,
            http_per_ip_per_second: 100,
            messages_per_user_per_second: 50,
            connects_per_user_per_minute: 60,
            trust_forwarded_for: false,
        }
    }
}

type Keyed<K> = Option<DefaultKeyedRateLimiter<K>>;

/// The node's limiters.
pub struct Limits {
    login_user: Keyed<String>,
    login_ip: Keyed<IpAddr>,
    http_ip: Keyed<IpAddr>,
    messages: Keyed<u64>,
    connects: Keyed<u64>,
}

fn per_minute<K: std::hash::Hash + Eq + Clone>(n: u32) -> Keyed<K> {
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

fn per_second<K: std::hash::Hash + Eq + Clone>(n: u32) -> Keyed<K> {
    let burst = NonZeroU32::new(n.saturating_mul(2))?;
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_second(n).allow_burst(burst)))
}

fn allow<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>, key: &K) -> bool {
    limiter.as_ref().is_none_or(|l| l.check_key(key).is_ok())
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Self> {
        let limits = Arc::new(Self {
            login_user: per_minute(settings.logins_per_user_per_minute),
            login_ip: per_minute(settings.logins_per_ip_per_minute),
            http_ip: per_second(settings.http_per_ip_per_second),
            messages: per_second(settings.messages_per_user_per_second),
            connects: per_minute(settings.connects_per_user_per_minute),
        });
        // Forget idle keys now and then, so the maps stay small.
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limits) = weak.upgrade() else { return };
                limits.forget_idle();
            }
        });
        limits
    }

    fn forget_idle(&self) {
        fn retain<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>) {
            if let Some(l) = limiter {
                l.retain_recent();
            }
        }
        retain(&self.login_user);
        retain(&self.login_ip);
        retain(&self.http_ip);
        retain(&self.messages);
        retain(&self.connects);
    }

    /// A login attempt for `username` from `ip`.
    pub fn login(&self, username: &str, ip: IpAddr) -> bool {
        // Both buckets are charged, so guessing one user's password from
        // many addresses and many users' from one address are both slowed.
        let by_ip = allow(&self.login_ip, &ip);
        let by_user = allow(&self.login_user, &username.to_ascii_lowercase());
        by_ip && by_user
    }

    pub fn http(&self, ip: IpAddr) -> bool {
        allow(&self.http_ip, &ip)
    }

    pub fn message(&self, user: u64) -> bool {
        allow(&self.messages, &user)
    }

    pub fn connect(&self, user: u64) -> bool {
        allow(&self.connects, &user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buckets_refuse_past_the_rate_and_zero_disables() {
        let limits = Limits::new(LimitSettings {
            logins_per_user_per_minute: 2,
            messages_per_user_per_second: 0,
            ..Default::default()
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(limits.login("Alice", ip));
        assert!(limits.login("alice", ip));
        assert!(!limits.login("ALICE", ip), "usernames are limited case-insensitively");
        assert!(limits.login("bob", ip), "other users are not affected");
        assert!((0..1000).all(|_| limits.message(1)), "0 disables the limit");
    }
}
