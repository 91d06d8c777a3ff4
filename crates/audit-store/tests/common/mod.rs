#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use audit_store::{NewEvent, Outcome, StoreConfig};

pub fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::in_data_dir(dir);
    c.busy_timeout = Duration::from_millis(200);
    c
}

pub const DAY_US: i64 = 86_400_000_000;
pub const HOUR_US: i64 = 3_600_000_000;

/// A deterministic spread of events: several kinds, IPs, users and reasons.
pub fn sample(i: i64, time_us: i64) -> NewEvent {
    let fail = i % 3 == 0;
    let mut e = NewEvent::new(
        if fail {
            "auth.login.failure"
        } else {
            "token.verified"
        },
        if fail {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    )
    .with_time_us(time_us)
    .with_client_ip(format!("10.0.0.{}", i % 7))
    .with_jti(format!("jti-{i}"));
    if i % 2 == 0 {
        e = e.with_username(format!("user{}", i % 5));
    } else {
        e = e.with_subject(format!("user{}", i % 4));
    }
    if fail {
        e = e.with_reason(if i % 2 == 0 {
            "bad_password"
        } else {
            "expired"
        });
    }
    e
}
