//! Mosquitto's password file format, written without `mosquitto_passwd`:
//! `user:$7$<iterations>$<base64 salt>$<base64 hash>`, hash = PBKDF2-HMAC-SHA512 of the
//! password, 64 bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::Sha512;

/// Mosquitto's own default. The passwords are generated with well over 128 bits of entropy, so
/// more stretching would only slow down every client connect.
pub const MOSQUITTO_PBKDF2_ITERATIONS: u32 = 101;

const OUT: usize = 64;

fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> [u8; OUT] {
    crate::hmac::hmac::<Sha512>(key, parts).into()
}

/// PBKDF2 (RFC 8018) with HMAC-SHA512, one 64-byte block: all Mosquitto needs.
pub fn pbkdf2_hmac_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; OUT] {
    let mut u = hmac_sha512(password, &[salt, &1u32.to_be_bytes()]);
    let mut t = u;
    for _ in 1..iterations {
        u = hmac_sha512(password, &[&u]);
        t.iter_mut().zip(u.iter()).for_each(|(a, b)| *a ^= b);
    }
    t
}

/// One line of a Mosquitto password file (without the newline).
pub fn mosquitto_password_line(user: &str, password: &str, salt: &[u8; 12]) -> String {
    let hash = pbkdf2_hmac_sha512(password.as_bytes(), salt, MOSQUITTO_PBKDF2_ITERATIONS);
    format!(
        "{user}:$7${MOSQUITTO_PBKDF2_ITERATIONS}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231 test case 2 (HMAC-SHA512, key "Jefe").
    #[test]
    fn hmac_matches_rfc4231() {
        let mac = hmac_sha512(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    // Published PBKDF2-HMAC-SHA512 vectors ("password"/"salt", 1 and 2 iterations).
    #[test]
    fn pbkdf2_matches_known_vectors() {
        assert_eq!(
            hex::encode(pbkdf2_hmac_sha512(b"password", b"salt", 1)),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        assert_eq!(
            hex::encode(pbkdf2_hmac_sha512(b"password", b"salt", 2)),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53cf76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    #[test]
    fn long_keys_are_hashed_first() {
        let long = [7u8; 200];
        assert_eq!(
            hmac_sha512(&long, &[b"x"]),
            hmac_sha512(&<Sha512 as sha2::Digest>::digest(long), &[b"x"])
        );
    }

    #[test]
    fn line_has_mosquittos_shape() {
        let line = mosquitto_password_line("atlas", "secret", &[1; 12]);
        let parts: Vec<&str> = line.split('$').collect();
        assert_eq!(parts[0], "atlas:");
        assert_eq!(parts[1], "7");
        assert_eq!(parts[2], "101");
        assert_eq!(STANDARD.decode(parts[3]).unwrap(), vec![1u8; 12]);
        assert_eq!(STANDARD.decode(parts[4]).unwrap().len(), 64);
    }
}
