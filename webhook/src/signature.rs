//! Stripe's webhook signature: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, where
//! each v1 is HMAC-SHA256(secret, "<t>.<raw body>"). Several v1 appear during a secret
//! roll at Stripe; several secrets are configured during a roll here. Any match passes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches a configured secret")]
    Mismatch,
}

impl SignatureError {
    /// The reason code in 400 answers and in the rejection metric.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Stale => "signature_stale",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks `header` against `payload` for any of `secrets`, at `now` (unix seconds), with
/// `tolerance_secs` either side (a timestamp too far in the future is as suspect as an old one).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[String],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            // v0 (test-mode legacy) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // abs_diff: any i64 a sender puts in `t` (i64::MIN included) is a number, not a panic.
    if now.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        // verify_slice compares in constant time.
        if candidates
            .iter()
            .any(|c| mac.clone().verify_slice(c).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000;

    fn sign(secret: &str, t: i64, payload: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{payload}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn every_case() {
        let body = r#"{"id":"evt_1"}"#;
        let ok = format!("t={NOW},v1={}", sign("whsec_a", NOW, body));
        let check = |h: Option<&str>, b: &str, s: &[&str], now: i64| {
            verify(h, b.as_bytes(), &secrets(s), now, 300)
        };
        assert_eq!(check(Some(&ok), body, &["whsec_a"], NOW), Ok(()), "valid");
        assert_eq!(
            check(Some(&ok), body, &["whsec_b"], NOW),
            Err(SignatureError::Mismatch),
            "wrong secret"
        );
        assert_eq!(
            check(Some(&ok), r#"{"id":"evt_2"}"#, &["whsec_a"], NOW),
            Err(SignatureError::Mismatch),
            "tampered body"
        );
        assert_eq!(
            check(Some(&ok), body, &["whsec_a"], NOW + 301),
            Err(SignatureError::Stale),
            "stale"
        );
        assert_eq!(
            check(Some(&ok), body, &["whsec_a"], NOW + 300),
            Ok(()),
            "at the tolerance"
        );
        assert_eq!(
            check(Some(&ok), body, &["whsec_a"], NOW - 301),
            Err(SignatureError::Stale),
            "from the future"
        );
        let two = format!(
            "t={NOW},v1={},v1={}",
            sign("whsec_old", NOW, body),
            sign("whsec_new", NOW, body)
        );
        assert_eq!(
            check(Some(&two), body, &["whsec_new"], NOW),
            Ok(()),
            "several v1 (Stripe rolling)"
        );
        assert_eq!(
            check(Some(&ok), body, &["whsec_new", "whsec_a"], NOW),
            Ok(()),
            "rotated secret (we roll)"
        );
        assert_eq!(
            check(None, body, &["whsec_a"], NOW),
            Err(SignatureError::Missing)
        );
        for bad in [
            "",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={NOW}"),
            &format!("t={NOW},v1=zz"),
            "garbage",
        ] {
            assert_eq!(
                check(Some(bad), body, &["whsec_a"], NOW),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        for extreme in [i64::MIN, i64::MAX, -1, 0] {
            assert_eq!(
                check(Some(&format!("t={extreme},v1=00")), body, &["whsec_a"], NOW),
                Err(SignatureError::Stale),
                "t={extreme}"
            );
        }
        let with_v0 = format!("t={NOW},v1={},v0=deadbeef", sign("whsec_a", NOW, body));
        assert_eq!(
            check(Some(&with_v0), body, &["whsec_a"], NOW),
            Ok(()),
            "v0 ignored"
        );
    }

    proptest! {
        /// Whatever a sender puts in the header, and whatever the clocks say, verifying
        /// answers (it never panics) and never accepts without a matching MAC.
        #[test]
        fn any_header_and_clock_is_an_answer(header in "\\PC{0,80}", t in any::<i64>(), now in any::<i64>(), tolerance in any::<i64>()) {
            let body = b"{}";
            prop_assert!(verify(Some(&header), body, &secrets(&["whsec_a"]), now, tolerance).is_err());
            let forged = format!("t={t},v1={}", "00".repeat(32));
            prop_assert!(verify(Some(&forged), body, &secrets(&["whsec_a"]), now, tolerance).is_err());
        }
    }
}
