//! ES256 signatures in low-S form only.
//!
//! An ECDSA signature `(r, s)` verifies exactly when `(r, n − s)` does, so without
//! a rule every ES256 token has a second valid spelling with another fingerprint:
//! a replay detector keyed on `token_fp` would not see the twin. tokenwatch's
//! signer always emits the low-S form (`s ≤ n/2`) and the verifier refuses the
//! other one (`bad_signature`), so each token has exactly one accepted encoding.

/// The order n of the P-256 group, big-endian.
const N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// ⌊n / 2⌋, big-endian: the largest low S.
const HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// The JWS length of an ES256 signature: `r || s`, 32 bytes each (RFC 7518 §3.4).
const SIG_LEN: usize = 64;

/// True for a 64-byte `r || s` whose `s` is above n/2. Equal-length big-endian byte
/// strings compare as the numbers they encode.
pub(crate) fn is_high_s(sig: &[u8]) -> bool {
    sig.len() == SIG_LEN && sig[32..] > HALF_N[..]
}

/// Rewrites a high `s` as `n − s`, which verifies the same message with the same key.
pub(crate) fn normalize(sig: &mut [u8]) {
    if is_high_s(sig) {
        n_minus_s(sig);
    }
}

/// `s := n − s` by schoolbook subtraction (0 < s < n, so it never underflows).
fn n_minus_s(sig: &mut [u8]) {
    let s = &mut sig[32..];
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let diff = u16::from(N[i])
            .wrapping_sub(u16::from(s[i]))
            .wrapping_sub(borrow);
        // The low byte is the digit; bit 8 is set when this digit borrowed.
        s[i] = diff as u8;
        borrow = (diff >> 8) & 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig_with_s(s: [u8; 32]) -> Vec<u8> {
        let mut sig = vec![1u8; 32];
        sig.extend_from_slice(&s);
        sig
    }

    #[test]
    fn half_n_is_the_boundary() {
        assert!(!is_high_s(&sig_with_s(HALF_N)));
        let mut above = HALF_N;
        above[31] += 1;
        assert!(is_high_s(&sig_with_s(above)));
        // Wrong lengths are left to the signature check.
        assert!(!is_high_s(&[0xff; 63]));
    }

    #[test]
    fn normalize_maps_s_to_n_minus_s() {
        let mut above = HALF_N;
        above[31] += 1; // s = (n + 1) / 2, so n − s = (n − 1) / 2 = HALF_N
        let mut sig = sig_with_s(above);
        normalize(&mut sig);
        assert_eq!(&sig[32..], &HALF_N[..]);
        assert_eq!(&sig[..32], &[1u8; 32][..], "r is untouched");
        // n − 1 becomes 1.
        let mut n_minus_1 = N;
        n_minus_1[31] -= 1;
        let mut sig = sig_with_s(n_minus_1);
        normalize(&mut sig);
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(&sig[32..], &one[..]);
        // A low S is left alone; its twin is high and maps back.
        let low = sig.clone();
        normalize(&mut sig);
        assert_eq!(sig, low);
        n_minus_s(&mut sig);
        assert!(is_high_s(&sig));
        normalize(&mut sig);
        assert_eq!(sig, low);
    }
}
