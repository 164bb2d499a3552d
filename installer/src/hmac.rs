//! HMAC (RFC 2104) over any of sha2's hashes: Mosquitto's PBKDF2-HMAC-SHA512 and the keyed
//! digests that stand for pushed files (HMAC-SHA256), so that a stored hash cannot be used to
//! guess what a file holds.

use sha2::digest::core_api::BlockSizeUser;
use sha2::digest::{Digest, Output};

/// HMAC of the concatenation of `parts` under `key`.
pub fn hmac<D: Digest + BlockSizeUser>(key: &[u8], parts: &[&[u8]]) -> Output<D> {
    let block = D::block_size();
    let mut k = vec![0u8; block];
    if key.len() > block {
        let h = D::digest(key);
        k[..h.len()].copy_from_slice(&h);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = D::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    for p in parts {
        inner.update(p);
    }
    let mut outer = D::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(inner.finalize());
    outer.finalize()
}

/// HMAC-SHA256 of `parts` under `key`, hex.
pub fn sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac::<sha2::Sha256>(key, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231 test case 2 (key "Jefe").
    #[test]
    fn rfc4231_case_2() {
        let msg: &[u8] = b"what do ya want for nothing?";
        assert_eq!(
            sha256_hex(b"Jefe", &[&msg[..10], &msg[10..]]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac::<sha2::Sha512>(b"Jefe", &[msg])),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    // RFC 4231 test case 6: a key longer than the block is hashed first.
    #[test]
    fn long_keys_are_hashed() {
        let key = [0xaa; 131];
        assert_eq!(
            sha256_hex(
                &key,
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
